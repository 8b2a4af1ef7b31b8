"""What makes a raw record a document: the checks of stage 1, and the counts that keep read = written + skipped.

A record becomes a document only with text (or token ids passed through), a URL fit to be metadata, and
metadata values that are valid text. Every record that does not is counted under its reason and dropped, never
raised: one bad line must not stop a conversion of billions. A URL is untrusted text that will stand in front
of a document at training time, so one with a newline, a control character or excessive length is refused; a
plain space is percent-encoded by default (``%20``, as a browser would), since it is common in real file names
and harmless once encoded.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from meco_callbacks.corpus.documents.readers import MISSING, Record

URL_SPACES = ('encode', 'skip')


@dataclass(frozen=True)
class DocumentPolicy:
    """What makes a document acceptable, and what happens to one without a URL or with spaces in it.

    ``missing_url``: ``skip`` drops a document whose URL is missing, null, empty or not a string; ``placeholder``
    keeps it with ``placeholder_url`` ('' means: no metadata prefix at training time). ``url_spaces``: ``encode``
    writes each space of a URL as ``%20`` (counted), ``skip`` drops the document. A URL with other whitespace or
    control characters, or longer than ``max_url_chars`` (after encoding), is always skipped. Text longer than
    ``max_document_chars`` is skipped.
    """

    missing_url: str = 'skip'
    placeholder_url: str = ''
    max_url_chars: int = 2000
    max_document_chars: int = 16_000_000
    url_spaces: str = 'encode'

    def __post_init__(self) -> None:
        if self.missing_url not in ('skip', 'placeholder'):
            raise ValueError(f"missing_url must be 'skip' or 'placeholder', not {self.missing_url!r}")
        if self.url_spaces not in URL_SPACES:
            raise ValueError(f"url_spaces must be 'encode' or 'skip', not {self.url_spaces!r}")
        if url_problem(self.placeholder_url, self.max_url_chars) not in (None, 'empty_url'):
            raise ValueError(f'placeholder_url {self.placeholder_url!r} is itself not a valid URL')


@dataclass
class ConversionStats:
    """Counts of one unit or a whole conversion; documents_read = documents_written + sum(skipped)."""

    documents_read: int = 0
    documents_written: int = 0
    tokens_written: int = 0
    skipped: Counter = field(default_factory=Counter)
    urls_replaced_by_placeholder: Counter = field(default_factory=Counter)
    urls_spaces_encoded: int = 0
    metadata_missing: Counter = field(default_factory=Counter)
    files_unreadable: dict[str, str] = field(default_factory=dict)

    def add(self, other: ConversionStats) -> None:
        """Add another unit's counts to these."""
        self.documents_read += other.documents_read
        self.documents_written += other.documents_written
        self.tokens_written += other.tokens_written
        self.skipped.update(other.skipped)
        self.urls_replaced_by_placeholder.update(other.urls_replaced_by_placeholder)
        self.urls_spaces_encoded += other.urls_spaces_encoded
        self.metadata_missing.update(other.metadata_missing)
        self.files_unreadable.update(other.files_unreadable)

    def to_dict(self) -> dict[str, Any]:
        """JSON form with sorted keys, so equal counts give equal bytes."""
        return {
            'documents_read': self.documents_read,
            'documents_written': self.documents_written,
            'tokens_written': self.tokens_written,
            'skipped': dict(sorted(self.skipped.items())),
            'urls_replaced_by_placeholder': dict(sorted(self.urls_replaced_by_placeholder.items())),
            'urls_spaces_encoded': self.urls_spaces_encoded,
            'metadata_missing': dict(sorted(self.metadata_missing.items())),
            'files_unreadable': dict(sorted(self.files_unreadable.items())),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConversionStats:
        """Read back what ``to_dict`` wrote."""
        return cls(
            data['documents_read'],
            data['documents_written'],
            data['tokens_written'],
            Counter(data['skipped']),
            Counter(data['urls_replaced_by_placeholder']),
            data['urls_spaces_encoded'],
            Counter(data['metadata_missing']),
            dict(data['files_unreadable']),
        )


@dataclass
class Document:
    """A checked document: text to tokenize, or token ids passed through."""

    text: str | None
    token_ids: np.ndarray | None
    url: str
    metadata: dict[str, str]


def text_problem(text: Any, max_chars: int) -> str | None:
    """Why ``text`` cannot be a document's text, or None."""
    if text is MISSING or text is None:
        return 'missing_text'
    if not isinstance(text, str):
        return 'text_not_string'
    if not text or text.isspace():
        return 'empty_text'
    if len(text) > max_chars:
        return 'document_too_long'
    if not text.isascii() and not _encodable(text):
        return 'text_invalid_unicode'
    return None


def url_problem(url: Any, max_chars: int) -> str | None:
    """Why ``url`` cannot be stored as a document's URL, or None."""
    if url is MISSING or url is None:
        return 'missing_url'
    if not isinstance(url, str):
        return 'url_not_string'
    if not url:
        return 'empty_url'
    if len(url) > max_chars:
        return 'url_too_long'
    if ' ' in url or not url.isprintable():  # isprintable() is False for every other space and control character
        return 'url_has_whitespace' if any(char.isspace() for char in url) else 'url_has_control_characters'
    return None


class DocumentChecker:
    """Turns raw records into documents, counting every skip, placeholder URL, encoded URL and missing metadata value."""

    PLACEHOLDER_REASONS = ('missing_url', 'url_not_string', 'empty_url')

    def __init__(self, policy: DocumentPolicy, vocab_size: int, special_ids: Sequence[int]) -> None:
        self.policy = policy
        self.vocab_size = vocab_size
        self.is_special = np.zeros(vocab_size, dtype=bool)
        self.is_special[list(special_ids)] = True

    def document(self, record: Record, stats: ConversionStats) -> Document | None:
        """The record as a document, or None after counting why it was skipped (tokens are checked later)."""
        if record.token_ids is None:
            problem = text_problem(record.text, self.policy.max_document_chars)
        else:
            problem = self.token_problem(record.token_ids, record.length)
        url, encoded = record.url, False
        if problem is None:
            if self.policy.url_spaces == 'encode' and isinstance(url, str) and ' ' in url:
                url, encoded = url.replace(' ', '%20'), True
            problem = url_problem(url, self.policy.max_url_chars)
            if problem in self.PLACEHOLDER_REASONS and self.policy.missing_url == 'placeholder':
                stats.urls_replaced_by_placeholder[problem] += 1
                problem, url = None, self.policy.placeholder_url
        metadata = {}
        if problem is None:
            metadata, problem = self._metadata(record.metadata, stats)
        if problem is not None:
            stats.skipped[problem] += 1
            return None
        stats.urls_spaces_encoded += encoded
        tokens = None if record.token_ids is None else record.token_ids.astype(np.uint32, copy=False)
        return Document(record.text if tokens is None else None, tokens, url, metadata)

    def token_problem(self, ids: np.ndarray, length: Any = MISSING) -> str | None:
        """Why token ids (made by a tokenizer or passed through) cannot be stored, or None."""
        if ids.size == 0:
            return 'no_tokens'
        if ids.dtype.kind == 'i' and int(ids.min()) < 0:
            return 'negative_token_id'
        if int(ids.max()) >= self.vocab_size:
            return 'token_id_out_of_vocabulary'
        if length is not MISSING and int(length) != ids.size:
            return 'length_mismatch'
        if self.is_special[ids].any():
            return 'special_token_ids'
        return None

    def _metadata(self, values: dict[str, Any], stats: ConversionStats) -> tuple[dict[str, str], str | None]:
        """Metadata values as text (JSON for structures, numbers as MDS numeric columns print), or why not."""
        metadata = {}
        for name, value in values.items():
            if value is MISSING or value is None:
                stats.metadata_missing[name] += 1
                value = ''
            elif isinstance(value, np.generic):
                value = str(value)
            elif not isinstance(value, str):
                value = json.dumps(value, ensure_ascii=False, sort_keys=True)
            if not value.isascii() and not _encodable(value):
                return {}, 'metadata_invalid_unicode'
            metadata[name] = value
        return metadata, None


def _encodable(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (False for lone surrogates)."""
    try:
        text.encode('utf-8')
    except UnicodeEncodeError:
        return False
    return True
