"""Train a byte-level BPE tokenizer on local text, saved as a Hugging Face tokenizer directory.

For a user without the model hub (and for tests and the demo): the GPT-2 recipe (byte-level BPE, the GPT-2
pre-tokenization regex, ``<|endoftext|>`` as EOS) at any size. ``train_tokenizer_on_corpus`` reads the inputs
conversion reads, through the same readers, and trains on a bounded sample spread over the whole corpus. A corpus
too small or too repetitive for the vocabulary asked for gives fewer tokens; that is said, never passed over.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EOS_TOKEN = '<|endoftext|>'
DEFAULT_MAX_BYTES = 64 << 20


def train_bpe_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 2048) -> Path:
    """Train a GPT-2-style byte-level BPE on ``texts`` and save it with ``<|endoftext|>`` as EOS.

    Logs a warning when the texts cannot fill ``vocab_size`` (the saved tokenizer then has fewer tokens).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    shortfall = vocabulary_shortfall(vocab_size, tokenizer.get_vocab_size())
    if shortfall is not None:
        log.warning('Tokenizer: %s.', shortfall)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        model_max_length=int(1e30),
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(out)
    return out


def vocabulary_shortfall(requested: int, trained: int) -> str | None:
    """What to tell the user when training gave fewer tokens than asked for, or None."""
    if trained >= requested:
        return None
    return (
        f'the corpus filled only {trained} of the {requested} tokens asked for (its text has no more pairs of '
        f'tokens to merge), so the tokenizer has {trained}; train on more text or ask for fewer'
    )


def train_tokenizer_on_corpus(
    inputs: Sequence[str],
    out_dir: str | Path,
    vocab_size: int,
    *,
    text_field: str = 'text',
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[str, Any]:
    """Train on about ``max_bytes`` of the inputs' text (files, globs, dataset directories, as conversion reads them).

    The text is sampled evenly over the corpus (``corpus.text_sample``). Returns a summary: the vocabulary asked
    for and obtained (with ``shortfall`` saying why they differ, else None), and how much text was read.
    """
    from tokenizers import Tokenizer

    from meco_callbacks.corpus.documents.sources import (
        DEFAULT_UNIT_BYTES,
        FieldMapping,
        InputError,
        find_sources,
        plan_units,
    )
    from meco_callbacks.corpus.documents.text_sample import sample_texts

    fields = FieldMapping(text=text_field)
    discovery = find_sources(inputs, fields, require_url=False)
    texts = sample_texts(plan_units(discovery.sources, DEFAULT_UNIT_BYTES), fields, max_bytes)
    if not texts:
        raise InputError(f'the inputs hold no text in the field {text_field!r} to train on; name it with --text-field')
    text_bytes = sum(len(text.encode('utf-8')) for text in texts)
    log.info(
        'Training a byte-level BPE of %d tokens on %d texts (%.1f MB, of %.1f MB of input in %d files).',
        vocab_size,
        len(texts),
        text_bytes / (1 << 20),
        sum(source.size for source in discovery.sources) / (1 << 20),
        len(discovery.sources),
    )
    out = train_bpe_tokenizer(texts, out_dir, vocab_size)
    trained = Tokenizer.from_file(str(out / 'tokenizer.json')).get_vocab_size()
    log.info('Saved a tokenizer of %d tokens to %s.', trained, out)
    return {
        'output': str(out),
        'vocab_size_requested': vocab_size,
        'vocab_size': trained,
        'shortfall': vocabulary_shortfall(vocab_size, trained),
        'texts': len(texts),
        'text_bytes': text_bytes,
        'max_bytes': max_bytes,
        'inputs': len(discovery.sources),
        'inputs_unreadable': discovery.unreadable,
    }
