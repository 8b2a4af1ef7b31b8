"""A Hugging Face byte-level BPE as an equivalent tiktoken encoding, or the reason it cannot be one.

tiktoken runs a byte-level BPE several times faster than Hugging Face ``tokenizers``, but it can express only
part of what a ``tokenizer.json`` can say: one pre-tokenization regex, byte-level tokens, merges applied in id
order, no normalizer, no added tokens matched inside text, and whole pieces looked up in the vocabulary before
merging. This module builds the encoding from the tokenizer's own files and raises BackendError naming the first
thing it cannot express; ``tokenization`` then still verifies the encoding's ids against Hugging Face's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

# The pre-tokenization regex of the ByteLevel pre-tokenizer with ``use_regex=True`` (GPT-2's).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class BackendError(ValueError):
    """The requested tokenization backend cannot run this tokenizer exactly as Hugging Face does."""


def tiktoken_encoding_for(tokenizer: Any) -> tuple[Any, str]:
    """Build the tiktoken encoding equivalent to ``tokenizer`` and name its pre-tokenizer style.

    Raises BackendError saying what tiktoken cannot express: a model other than byte-level BPE, a normalizer,
    a pre-tokenizer that is not one regex plus byte-level mapping, non-special added tokens (matched inside
    text), missing byte tokens, merges whose order differs from the token ids (tiktoken merges by id), or, for a
    BPE that only merges (``ignore_merges`` false), a vocabulary token its own merges do not build.
    """
    return encoding_from_spec(tokenizer_spec(tokenizer))


def tokenizer_spec(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer's full ``tokenizer.json`` description."""
    return json.loads(backend_tokenizer(tokenizer).to_str())


def encoding_from_spec(spec: dict[str, Any]) -> tuple[Any, str]:
    """The tiktoken encoding for a tokenizer described by its ``tokenizer.json``, and its regex style."""
    import tiktoken

    model = spec['model']
    _check_bpe_model(model, spec.get('normalizer'))
    pattern, style = _pre_tokenizer_regex(spec)
    added = spec.get('added_tokens') or []
    plain_added = [token['content'] for token in added if not token.get('special')]
    if plain_added:
        raise BackendError(
            f'it has {len(plain_added)} non-special added tokens (e.g. {plain_added[0]!r}) that Hugging '
            'Face matches inside text, which tiktoken ordinary encoding cannot do'
        )
    added_contents = {token['content'] for token in added}
    ranks = _mergeable_ranks(model, added_contents)
    return tiktoken.Encoding(f'meco-{style}', pat_str=pattern, mergeable_ranks=ranks, special_tokens={}), style


def backend_tokenizer(tokenizer: Any) -> Any:
    """The Rust ``tokenizers.Tokenizer`` inside a Hugging Face fast tokenizer."""
    backend = getattr(tokenizer, 'backend_tokenizer', None)
    if backend is None:
        raise BackendError(
            f'{type(tokenizer).__name__} is not a Hugging Face fast tokenizer (no backend_tokenizer); '
            'load one with AutoTokenizer.from_pretrained(..., use_fast=True)'
        )
    return backend


def _pre_tokenizer_regex(spec: dict[str, Any]) -> tuple[str, str]:
    """The regex tiktoken must split with, for a GPT-2 ByteLevel or a Split-regex + ByteLevel pre-tokenizer."""
    pre = spec.get('pre_tokenizer')
    if pre is None:
        raise BackendError('it has no pre-tokenizer (tiktoken needs a byte-level BPE with a splitting regex)')
    steps = pre['pretokenizers'] if pre['type'] == 'Sequence' else [pre]
    kinds = [step['type'] for step in steps]
    if kinds == ['ByteLevel']:
        _check_byte_level(steps[0], use_regex=True)
        return GPT2_PATTERN, 'gpt2'
    if kinds == ['Split', 'ByteLevel']:
        split, byte_level = steps
        _check_byte_level(byte_level, use_regex=False)
        pattern = split['pattern']
        if 'Regex' not in pattern or split.get('behavior') != 'Isolated' or split.get('invert'):
            raise BackendError(
                f'its Split pre-tokenizer ({json.dumps(split, ensure_ascii=False)[:120]}) is not an '
                'isolating regex split'
            )
        return pattern['Regex'], 'split-regex'
    raise BackendError(f'its pre-tokenizer {kinds} is not ByteLevel or Split(regex) + ByteLevel')


def _check_byte_level(step: dict[str, Any], use_regex: bool) -> None:
    if step.get('add_prefix_space'):
        raise BackendError('its ByteLevel pre-tokenizer adds a prefix space')
    if bool(step.get('use_regex', True)) != use_regex:
        raise BackendError(
            'its ByteLevel pre-tokenizer '
            + ('does not split with the GPT-2 regex' if use_regex else 'splits a second time with the GPT-2 regex')
        )


def _check_bpe_model(model: dict[str, Any], normalizer: dict[str, Any] | None) -> None:
    if model.get('type') != 'BPE':
        raise BackendError(f'its model is {model.get("type")}, not BPE')
    if normalizer is not None and not (normalizer.get('type') == 'Sequence' and not normalizer.get('normalizers')):
        raise BackendError(f'it has a {normalizer.get("type")} normalizer')
    for option in ('dropout', 'continuing_subword_prefix', 'end_of_word_suffix'):
        if model.get(option):
            raise BackendError(f'its BPE model sets {option}={model[option]!r}')
    if model.get('byte_fallback'):
        raise BackendError('its BPE model uses byte_fallback (SentencePiece style), not byte-level tokens')


def _mergeable_ranks(model: dict[str, Any], added_contents: set[str]) -> dict[bytes, int]:
    """tiktoken ranks (= token ids) from a byte-level BPE vocabulary, checked against the merge order."""
    to_bytes = _byte_level_decoder()
    vocab: dict[str, int] = model['vocab']
    ranks: dict[bytes, int] = {}
    for token, token_id in vocab.items():
        if token in added_contents:
            continue
        try:
            ranks[token.translate(to_bytes).encode('latin-1')] = token_id
        except UnicodeEncodeError:
            raise BackendError(f'vocabulary token {token!r} is not in the byte-level alphabet') from None
    missing = [byte for byte in range(256) if bytes([byte]) not in ranks]
    if missing:
        raise BackendError(
            f'{len(missing)} of the 256 single-byte tokens are missing (e.g. byte {missing[0]}); '
            'tiktoken needs every byte'
        )
    pairs = [tuple(merge.split(' ', 1)) if isinstance(merge, str) else tuple(merge) for merge in model['merges']]
    made = [left + right for left, right in pairs]
    made_ids = [vocab.get(token) for token in made]
    if None in made_ids or not added_contents.isdisjoint(made) or made_ids != sorted(set(made_ids)):
        _explain_merge_problem(pairs, made_ids, added_contents)
    merged = set(made)
    orphans = [token for token in vocab if len(token) > 1 and token not in merged and token not in added_contents]
    if orphans:
        raise BackendError(
            f'{len(orphans)} vocabulary tokens are made by no merge (e.g. {orphans[0]!r}), which tiktoken '
            'would still produce'
        )
    if not model.get('ignore_merges'):
        _check_merges_build_every_token(model['vocab'], pairs, made)
    return ranks


def _check_merges_build_every_token(vocab: dict[str, int], pairs: list[tuple[str, str]], made: list[str]) -> None:
    """Refuse a BPE that only merges (``ignore_merges`` false) when a token made by a merge is not what its bytes merge into.

    tiktoken looks a whole piece up in the vocabulary before merging; Hugging Face does so only with
    ``ignore_merges``. Without it they agree only if every token's own bytes merge back into that token. Running
    the BPE on every token costs about 0.1-0.2 s for a 32k vocabulary; a check that reasons about the merge tree
    instead was not faster in Python.
    """
    from tokenizers import models

    tokenize = models.BPE(vocab=vocab, merges=pairs).tokenize
    for token in made:
        pieces = tokenize(token)
        if len(pieces) != 1:
            raise BackendError(
                f'its BPE model merges without looking whole pieces up (ignore_merges is false), and vocabulary '
                f'token {token!r} is not what its own merges build ({[piece.value for piece in pieces]}), '
                'while tiktoken would give it whole'
            )


def _explain_merge_problem(pairs: list[Sequence[str]], made_ids: list[int | None], added_contents: set[str]) -> None:
    """Raise the BackendError naming the first merge that tiktoken cannot reproduce."""
    previous = -1
    for number, ((left, right), token_id) in enumerate(zip(pairs, made_ids)):
        if token_id is None:
            raise BackendError(f'merge #{number} ({left!r}, {right!r}) makes a token outside the vocabulary')
        if left + right in added_contents:
            raise BackendError(f'merge #{number} makes the added token {left + right!r}, so its text can become its id')
        if token_id <= previous:
            raise BackendError(
                f'merge #{number} makes token id {token_id} after id {previous}: the merge order differs '
                'from the id order, and tiktoken merges by id'
            )
        previous = token_id


def _byte_level_decoder() -> dict[int, int]:
    """A ``str.translate`` table from byte-level characters to the bytes they stand for (as code points < 256).

    Code points below 256 that are not in the byte-level alphabet map to U+FFFF, so that encoding the
    translated token as Latin-1 fails for any character outside the alphabet.
    """
    table = dict.fromkeys(range(256), 65535)
    table.update({ord(char): byte for byte, char in _byte_to_unicode().items()})
    return table


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, used by every byte-level BPE vocabulary."""
    printable = [
        *range(ord('!'), ord('~') + 1),
        *range(ord('\u00a1'), ord('\u00ac') + 1),
        *range(ord('\u00ae'), ord('\u00ff') + 1),
    ]
    mapping = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping
