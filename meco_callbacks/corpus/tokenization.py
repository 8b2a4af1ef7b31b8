"""Bulk tokenization backends: the Hugging Face fast tokenizer, or an equivalent tiktoken encoding verified against it.

Tokenizing is almost all of the cost of converting a corpus. A byte-level BPE whose pre-tokenizer is a regex
(GPT-2 style, Llama-3 / cl100k style) can be run by tiktoken, several times faster than Hugging Face
``tokenizers``. The tiktoken encoding is built from the Hugging Face tokenizer's own files and is never
trusted: it must reproduce the Hugging Face ids exactly on a built-in set of hard strings and on a sample of
the real input, or ``auto`` falls back to Hugging Face and says why.

Both backends keep document text as text: the literal text of a special token (``<|endoftext|>``, ``<s>``,
``<|begin_of_text|>``) is encoded as ordinary characters and never yields the special token's id.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

BACKENDS = ('auto', 'hf', 'tiktoken')

# The pre-tokenization regex of the ByteLevel pre-tokenizer with ``use_regex=True`` (GPT-2's).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Strings on which regex engines, Unicode tables and BPE details are known to disagree; the tokenizer's own
# special and added tokens are added to these at verification time.
HARD_STRINGS: tuple[str, ...] = (
    '',
    'The quick brown fox jumps over the lazy dog.',
    "don't I'll we've she'd they're it's I'm DON'T I'LL WE'VE SHE'D THEY'RE IT'S I'M",
    'don\u2019t say \u201cno\u201d \u2014 it\u2019s fine\u2026',
    'Hello, world! 123 abc!!! ??? ...',
    '1234567890123456789012345678901234567890',
    '3.14159 1,000,000 -42 +7e-10 0x1F 12:30:45 2024-01-31',
    '\u0663\u0664\u0665 \u00b2\u00b3 \u2167 \u00bd \u0e51\u0e52',
    'Les \u00e9l\u00e8ves \u00e9tudient \u00e0 l\u2019\u00e9cole. \u00c7a va tr\u00e8s bien.',
    'Stra\u00dfe \u00fcber \u00c4rger \u0130stanbul \u0131 \u017f',
    '\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac',
    '\u4eca\u65e5\u306f\u3044\u3044\u5929\u6c17\u3067\u3059\u306d\u3002\u6771\u4eac\u3078\u884c\u304d\u307e\u3059\u3002',
    '\u6211\u7231\u81ea\u7136\u8bed\u8a00\u5904\u7406\uff0c\u5b83\u5f88\u6709\u8da3\uff01',
    '\ud55c\uad6d\uc5b4 \ubb38\uc7a5\uc740 \uc5b4\ub835\uc2b5\ub2c8\ub2e4.',
    '\u0627\u0644\u0644\u063a\u0629 \u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u062c\u0645\u064a\u0644\u0629 \u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd',
    '\u0939\u093f\u0928\u094d\u0926\u0940 \u092e\u0947\u0902 \u0932\u093f\u0916\u093e \u0917\u092f\u093e \u0915\u094d\u0937\u0924\u094d\u0930\u093f\u092f',
    '\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22\u0e44\u0e21\u0e48\u0e21\u0e35\u0e0a\u0e48\u0e2d\u0e07\u0e27\u0e48\u0e32\u0e07',
    'e\u0301 a\u0308 n\u0303 Z\u0324\u0354\u0367\u0311\u0313a\u0348\u0356\u036d\u0308\u0307l\u036e\u0312\u036bg\u0317\u035a\u035ao\u0319\u0314\u036e\u0307\u0350\u0307',
    '\U0001f389\U0001f600 \U0001f44d\U0001f3fd \U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 \U0001f1eb\U0001f1f7 \u2764\ufe0f',
    '\U0001d400\U0001d401\U0001d402 \U00020000\U0002a6d6 \ue000\U0010fffd \ufffd',
    'a  b   c    d     e',
    '     leading spaces',
    'trailing spaces     ',
    'tabs\t\tand\tmore\t',
    'line\nbreaks\n\n\nand\r\nwindows\r\n\r\nends',
    ' \n \t \n\n  \t\t \r\n x',
    'nbsp\u00a0here \u3000ideographic \u2028line\u2029para \u0085next \x0b\x0c',
    ' ' * 100,
    '\n' * 50,
    '\t' * 30 + 'x',
    'a' * 1000,
    '1' * 100,
    '!' * 64 + '?' * 64,
    '\x00\x01\x02\x1b[31mred\x1b[0m\x7f',
    '\ufeffbom \u200bzero\u200cwidth\u200djoiner \u202eoverride\u202c \u00ad',
    'def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n',
    '    if (a && b || !c) { return a[i] + b->c; } // comment',
    'https://en.wikipedia.org/wiki/Main_Page?x=1&y=%20#top user@example.com',
    '<|endoftext|>',
    'text<|endoftext|>more text <|endoftext|> <| endoftext |>',
    '<s> </s> <unk> <pad> <mask> [CLS] [SEP] [PAD] [UNK] [MASK]',
    '<|begin_of_text|><|end_of_text|><|eot_id|><|start_header_id|>user<|end_header_id|>',
    '<|im_start|>system\nYou are helpful.<|im_end|>',
    'Mixed\u4e16\u754c123abc\u00e9\u00e9\u00e9   \u0645\u0631\u062d\u0628\u0627123',
)


class BackendError(ValueError):
    """The requested tokenization backend cannot run this tokenizer exactly as Hugging Face does."""


class TokenizerBackend(ABC):
    """Turns document texts into token ids exactly as the Hugging Face tokenizer would, without special tokens.

    ``name`` is ``'hf'`` or ``'tiktoken'``; ``reason`` says why this backend was chosen.
    """

    name: str
    reason: str

    @abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text: no BOS/EOS added, special-token text encoded as plain text."""


class HuggingFaceBackend(TokenizerBackend):
    """A Rust ``tokenizers.Tokenizer`` that reads special-token text as text, with no truncation or padding.

    Runs on the calling thread (it releases the GIL) unless ``TOKENIZERS_PARALLELISM`` allows its thread pool.
    """

    name = 'hf'

    def __init__(self, rust_tokenizer: Any, reason: str) -> None:
        self._tokenizer = rust_tokenizer
        self.reason = reason

    @classmethod
    def copy_of(cls, tokenizer: Any, reason: str) -> HuggingFaceBackend:
        """A backend on a private copy of ``tokenizer``'s Rust tokenizer, so that the caller's keeps its settings."""
        from tokenizers import Tokenizer

        rust = Tokenizer.from_str(_backend_tokenizer(tokenizer).to_str())
        rust.no_truncation()
        rust.no_padding()
        rust.encode_special_tokens = True
        return cls(rust, reason)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode ``texts`` in one call to the Rust tokenizer (no offsets computed)."""
        return [encoding.ids for encoding in self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]


@contextmanager
def verification_reference(tokenizer: Any) -> Iterator[HuggingFaceBackend]:
    """The Hugging Face side of verification: the caller's own Rust tokenizer, reading special-token text as text.

    Sharing it saves a copy (a tenth of a second for a 32k vocabulary, more for Llama-3's) in front of every
    conversion; its setting is restored on exit. A tokenizer set to truncate or pad is copied instead.
    """
    rust = _backend_tokenizer(tokenizer)
    if rust.truncation is not None or rust.padding is not None:
        yield HuggingFaceBackend.copy_of(tokenizer, 'the reference for verification')
        return
    before = rust.encode_special_tokens
    rust.encode_special_tokens = True
    try:
        yield HuggingFaceBackend(rust, 'the reference for verification')
    finally:
        rust.encode_special_tokens = before


class TiktokenBackend(TokenizerBackend):
    """A tiktoken encoding with the tokenizer's vocabulary, merges and pre-tokenization regex; no special tokens.

    ``encoding`` is the ``tiktoken.Encoding``; its ordinary encoding treats special-token text as text.
    """

    name = 'tiktoken'

    def __init__(self, encoding: Any, reason: str) -> None:
        self.encoding = encoding
        self.reason = reason

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode ``texts`` one after another on the calling thread (tiktoken releases the GIL)."""
        encode = self.encoding.encode_ordinary
        return [encode(text) for text in texts]


def load_tokenizer(name_or_path: str) -> Any:
    """Load a Hugging Face fast tokenizer from a local directory or a hub name; slow tokenizers are refused."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, use_fast=True)
    if not getattr(tokenizer, 'is_fast', False):
        raise BackendError(
            f'{name_or_path!r} loads as a slow (Python) tokenizer; conversion needs a fast one. '
            'Save it with a tokenizer.json (e.g. PreTrainedTokenizerFast.save_pretrained) and pass that.'
        )
    return tokenizer


def build_tokenizer_backend(
    tokenizer: Any, backend: str = 'auto', sample_texts: Sequence[str] = (), num_threads: int = 1
) -> TokenizerBackend:
    """The backend to tokenize with: ``hf``, ``tiktoken`` (verified, or a BackendError), or ``auto``.

    ``auto`` uses tiktoken when it can express the tokenizer and reproduces its ids on the hard strings and on
    ``sample_texts`` (a sample of the real input); otherwise Hugging Face, logging the reason. Verification
    runs on ``num_threads`` threads.
    """
    if backend not in BACKENDS:
        raise BackendError(f'unknown tokenizer backend {backend!r}; choose one of {", ".join(BACKENDS)}')
    if backend == 'hf':
        return HuggingFaceBackend.copy_of(tokenizer, 'hf was requested')
    try:
        spec = _spec(tokenizer)
        encoding, style = _encoding_from_spec(spec)
        hard = _hard_strings_from_spec(spec)
        with verification_reference(tokenizer) as reference:
            mismatch = first_mismatch(encoding, reference, hard, 'hard string', num_threads) or first_mismatch(
                encoding, reference, sample_texts, 'sample text', num_threads
            )
        if mismatch:
            raise BackendError(mismatch)
    except BackendError as error:
        if backend == 'tiktoken':
            raise BackendError(f'tiktoken cannot stand in for this tokenizer: {error}') from None
        fallback = HuggingFaceBackend.copy_of(tokenizer, f'tiktoken fell back to hf: {error}')
        log.warning('Tokenizer backend: %s', fallback.reason)
        return fallback
    sample_chars = sum(len(text) for text in sample_texts)
    reason = (
        f'tiktoken ({style} regex) matched hf on {len(hard)} hard strings and {len(sample_texts)} sample '
        f'texts ({sample_chars} characters)'
    )
    log.info('Tokenizer backend: %s', reason)
    return TiktokenBackend(encoding, reason)


def tiktoken_encoding_for(tokenizer: Any) -> tuple[Any, str]:
    """Build the tiktoken encoding equivalent to ``tokenizer`` and name its pre-tokenizer style.

    Raises BackendError saying what tiktoken cannot express: a model other than byte-level BPE, a normalizer,
    a pre-tokenizer that is not one regex plus byte-level mapping, non-special added tokens (matched inside
    text), missing byte tokens, or merges whose order differs from the token ids (tiktoken merges by id).
    """
    return _encoding_from_spec(_spec(tokenizer))


def hard_strings_for(tokenizer: Any) -> list[str]:
    """The built-in hard strings plus the tokenizer's own special and added tokens, alone and inside text."""
    return _hard_strings_from_spec(_spec(tokenizer))


def _spec(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer's full ``tokenizer.json`` description."""
    return json.loads(_backend_tokenizer(tokenizer).to_str())


def _encoding_from_spec(spec: dict[str, Any]) -> tuple[Any, str]:
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


def _hard_strings_from_spec(spec: dict[str, Any]) -> list[str]:
    own = [token['content'] for token in spec.get('added_tokens') or []]
    return list(HARD_STRINGS) + own + [f'before {token} after{token}' for token in own]


def first_mismatch(
    encoding: Any, reference: TokenizerBackend, texts: Sequence[str], kind: str, num_threads: int = 1
) -> str | None:
    """Describe the first of ``texts`` whose tiktoken ids differ from the reference's, or None when all agree."""

    def check(start: int) -> str | None:
        chunk = list(texts[start : start + 16])
        for offset, (text, want) in enumerate(zip(chunk, reference.encode_batch(chunk))):
            got = encoding.encode_ordinary(text)
            if got != want:
                at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                return (
                    f'ids differ from hf on {kind} #{start + offset} {_preview(text)} at token {at}: '
                    f'tiktoken {got[at : at + 4]} vs hf {want[at : at + 4]}'
                )
        return None

    with ThreadPoolExecutor(max(1, num_threads)) as pool:  # both tokenizers release the GIL
        return next((found for found in pool.map(check, range(0, len(texts), 16)) if found), None)


def _backend_tokenizer(tokenizer: Any) -> Any:
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
    pairs = [merge.split(' ', 1) if isinstance(merge, str) else merge for merge in model['merges']]
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
    return ranks


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


def _preview(text: str, limit: int = 60) -> str:
    shown = text if len(text) <= limit else text[:limit] + '...'
    return repr(shown)
