"""Bulk tokenization backends: the Hugging Face fast tokenizer, or an equivalent tiktoken encoding verified against it.

Tokenizing is almost all of the cost of converting a corpus. A byte-level BPE whose pre-tokenizer is a regex
(GPT-2 style, Llama-3 / cl100k style) can be run by tiktoken, several times faster than Hugging Face
``tokenizers``. The tiktoken encoding is built from the Hugging Face tokenizer's own files (``tiktoken_encoding``) and is never
trusted: it must reproduce the Hugging Face ids exactly on a built-in set of hard strings and on a sample of
the real input, or ``auto`` falls back to Hugging Face and says why.

Both backends keep document text as text: the literal text of a special token (``<|endoftext|>``, ``<s>``,
``<|begin_of_text|>``) is encoded as ordinary characters and never yields the special token's id.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from meco_callbacks.corpus.documents.tiktoken_encoding import (
    BackendError,
    backend_tokenizer,
    encoding_from_spec,
    tokenizer_spec,
)

log = logging.getLogger(__name__)

BACKENDS = ('auto', 'hf', 'tiktoken')

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

        rust = Tokenizer.from_str(backend_tokenizer(tokenizer).to_str())
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
    rust = backend_tokenizer(tokenizer)
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
        spec = tokenizer_spec(tokenizer)
        encoding, style = encoding_from_spec(spec)
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


def hard_strings_for(tokenizer: Any) -> list[str]:
    """The built-in hard strings plus the tokenizer's own special and added tokens, alone and inside text."""
    return _hard_strings_from_spec(tokenizer_spec(tokenizer))


def _hard_strings_from_spec(spec: dict[str, Any]) -> list[str]:
    """The hard strings for a tokenizer described by its ``tokenizer.json``."""
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


def _preview(text: str, limit: int = 60) -> str:
    """``text`` quoted, cut at ``limit`` characters, for messages."""
    shown = text if len(text) <= limit else text[:limit] + '...'
    return repr(shown)
