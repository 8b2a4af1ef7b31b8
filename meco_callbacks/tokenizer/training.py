"""Train a byte-level BPE tokenizer on local text, saved as a Hugging Face tokenizer directory.

For a user without the model hub (and for tests and the demo): the GPT-2 recipe (byte-level BPE, the GPT-2
pre-tokenization regex, ``<|endoftext|>`` as EOS) at any size. ``train_tokenizer_on_corpus`` reads the inputs
conversion reads, through the same readers, and trains on a bounded sample spread over the whole corpus. A corpus
too small or too repetitive for the vocabulary asked for gives fewer tokens; that is said, never passed over.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from meco_callbacks.data.compact import COMPACT_KIND, META_TOKEN
from meco_callbacks.data.metadata import DEFAULT_TEMPLATE, MetadataConfig

log = logging.getLogger(__name__)

EOS_TOKEN = '<|endoftext|>'
TOP_SITES = 10
DEFAULT_MAX_BYTES = 64 << 20


def train_bpe_tokenizer(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = 2048, metadata_tokens: int = 0
) -> Path:
    """Train a GPT-2-style byte-level BPE on ``texts`` and save it with ``<|endoftext|>`` as EOS.

    ``metadata_tokens`` N adds the special tokens ``<|meta_0|>`` ... ``<|meta_{N-1}|>`` (ids 1 to N, right after
    EOS; counted in ``vocab_size``), never produced from text: the reserved tokens of the ``compact`` metadata kind.
    Logs a warning when the texts cannot fill ``vocab_size`` (the saved tokenizer then has fewer tokens).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    meta_tokens = [META_TOKEN.format(k) for k in range(metadata_tokens)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, *meta_tokens],
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
        **({'additional_special_tokens': meta_tokens} if meta_tokens else {}),
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
    metadata_tokens: int = 0,
    prefix_kinds: Sequence[str] = (),
    template: str = DEFAULT_TEMPLATE,
    url_field: str = 'url',
) -> dict[str, Any]:
    """Train on about ``max_bytes`` of the inputs' text (files, globs, dataset directories, as conversion reads them).

    The text is sampled evenly over the corpus (``corpus.text_sample``). Returns a summary: the vocabulary asked
    for and obtained (with ``shortfall`` saying why they differ, else None), and how much text was read.
    ``metadata_tokens`` adds that many reserved special tokens (``train_bpe_tokenizer``). With ``prefix_kinds``
    (metadata kinds as the loader's ``metadata.kind``) each sampled document is trained on with its prefixes,
    ``template.format(metadata)`` of each kind from its URL (``url_field``), so that frequent prefixes become few
    tokens; the summary's ``prefixes`` then says what they cost (``prefix_costs``). A prefix is a text of its own
    here, as the loader tokenizes it on its own (joined to the document, its ``\\n\\n`` would be split before the
    document's first word and never merged).
    """
    from tokenizers import Tokenizer

    from meco_callbacks.corpus.documents.sources import (
        DEFAULT_UNIT_BYTES,
        FieldMapping,
        InputError,
        find_sources,
        plan_units,
    )
    from meco_callbacks.corpus.documents.text_sample import sample_records

    configs = prefix_configs(prefix_kinds, template)
    columns = tuple(dict.fromkeys(c.kind[len('column:') :] for c in configs if c.kind.startswith('column:')))
    fields = FieldMapping(text=text_field, url=url_field, metadata=columns)
    discovery = find_sources(inputs, fields, require_url=False)
    records = sample_records(plan_units(discovery.sources, DEFAULT_UNIT_BYTES), fields, max_bytes)
    paths = fields.metadata_columns()  # a column kind names the field as conversion carries it, or by its path
    records = [(text, url, {**columns, **{paths[n]: v for n, v in columns.items()}}) for text, url, columns in records]
    if not records:
        raise InputError(f'the inputs hold no text in the field {text_field!r} to train on; name it with --text-field')
    text_bytes = sum(len(text.encode('utf-8')) for text, _, _ in records)
    texts = [  # the loader tokenizes a prefix on its own, so it is learnt on its own: "\n\n" then ends a text
        piece
        for text, url, columns in records
        for piece in (*(config.prefix_for(config.metadata_for(url, columns)) for config in configs), text)
        if piece
    ]
    log.info(
        'Training a byte-level BPE of %d tokens on %d texts (%.1f MB, of %.1f MB of input in %d files).',
        vocab_size,
        len(records),
        text_bytes / (1 << 20),
        sum(source.size for source in discovery.sources) / (1 << 20),
        len(discovery.sources),
    )
    out = train_bpe_tokenizer(texts, out_dir, vocab_size, metadata_tokens)
    trained = Tokenizer.from_file(str(out / 'tokenizer.json')).get_vocab_size()
    log.info('Saved a tokenizer of %d tokens to %s.', trained, out)
    prefixes = {'prefixes': prefix_costs(out, configs, records)} if configs else {}
    return {
        'output': str(out),
        'vocab_size_requested': vocab_size,
        'vocab_size': trained,
        'shortfall': vocabulary_shortfall(vocab_size, trained),
        'texts': len(records),
        'text_bytes': text_bytes,
        'max_bytes': max_bytes,
        'inputs': len(discovery.sources),
        'inputs_unreadable': discovery.unreadable,
        **({'metadata_tokens': metadata_tokens} if metadata_tokens else {}),
        **prefixes,
    }


def prefix_configs(kinds: Sequence[str], template: str) -> list[MetadataConfig]:
    """The metadata settings whose prefixes the tokenizer learns; kinds with nothing to learn are refused."""
    configs = []
    for kind in dict.fromkeys(kinds):
        if kind in ('none', COMPACT_KIND) or kind.startswith('bins:'):
            raise ValueError(
                f'--prefix-kind {kind}: this kind has no prefix text to learn (none), or its text is decided at '
                'packing (compact: reserved tokens, --metadata-tokens; bins: labels k/N); name text kinds such as '
                'domain, url, registered_domain, hash, column:<name> or constant:<text>.'
            )
        configs.append(MetadataConfig(kind=kind, template=template))
    return configs


def prefix_costs(
    tokenizer_dir: Path, configs: Sequence[MetadataConfig], records: Sequence[tuple[str, str, dict[str, Any]]]
) -> dict[str, Any]:
    """Per kind, what its prefixes cost with the trained tokenizer, tokenized as the loader does (``PrefixTokens``).

    ``mean_tokens`` over the sampled documents that get a prefix (``documents``), and the ``TOP_SITES`` most frequent
    sites of the sample (the URL's host): documents in the sample and the tokens of their prefix (the first one's,
    for kinds that differ within a site, such as url).
    """
    from meco_callbacks.data.metadata import url_host
    from meco_callbacks.data.prefix import PrefixTokens
    from meco_callbacks.tokenizer.loading import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_dir))
    sites = Counter(url_host(url) for _, url, _ in records if url_host(url))
    costs = {}
    for config in configs:
        prefix = PrefixTokens(tokenizer, config)
        lengths = prefix.lengths([config.metadata_for(url, columns) for _, url, columns in records])
        first = {}
        for (_, url, columns), length in zip(records, lengths.tolist()):
            first.setdefault(url_host(url), (config.prefix_for(config.metadata_for(url, columns)), length))
        with_prefix = lengths[lengths > 0]
        costs[config.kind] = {
            'template': config.template,
            'documents': int(with_prefix.size),
            'mean_tokens': round(float(with_prefix.mean()), 3) if with_prefix.size else None,
            'top_sites': [
                {'site': site, 'documents': n, 'prefix': first[site][0], 'tokens': first[site][1]}
                for site, n in sorted(sites.items(), key=lambda item: (-item[1], item[0]))[:TOP_SITES]
            ],
        }
    return costs
