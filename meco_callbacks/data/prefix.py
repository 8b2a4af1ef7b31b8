"""A metadata prefix as token ids, and the room reserved for it in packed rows.

The packer and the loader must agree to the token on how long each segment's prefix is: the packer leaves that
many slots free in a row, the loader fills them. Both go through ``PrefixTokens``, with the dataset's tokenizer
and the same ``MetadataConfig``, so they cannot disagree. ``PrefixReservation`` is what a packed set records
about the room it reserved: the kinds it was packed for and the template, length cap and ``strip_www`` that
shape their text, and the bin edges of its ``bins:<column>`` kinds. The same room holds a suffix
(``metadata.position: suffix``): it is the same text, put after the document instead of before it.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from meco_callbacks.data.compact import COMPACT_KIND, check_vocabulary
from meco_callbacks.data.metadata import DEFAULT_MAX_CHARS, DEFAULT_TEMPLATE, MetadataConfig
from meco_callbacks.data.quality_bins import bins_column

Bins = tuple[tuple[str, tuple[float, ...], int | None], ...]
"""Bin edges per ``bins:`` column: (column, edges, quantiles or None when the edges were given)."""

EMPTY_IDS = np.zeros(0, dtype=np.int64)
DEFAULT_CACHE_SIZE = 65536  # distinct metadata strings kept per process (web corpora have tens of millions)


class PrefixTokens:
    """Token ids of a metadata string's prefix (``template.format(metadata)``), tokenized once per string.

    The cache is a bounded LRU: a web corpus has tens of millions of domains, and a loader worker must not
    grow without bound. Tokens are encoded without special tokens and with ``split_special_tokens`` on, so
    metadata text can never produce a special-token id.
    """

    def __init__(self, tokenizer: Any, metadata: MetadataConfig, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.tokenizer = tokenizer
        self.metadata = metadata
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def __call__(self, metadata: str) -> np.ndarray:
        """The prefix ids for a normalised metadata string; '' (no metadata) has no prefix."""
        if not metadata:
            return EMPTY_IDS
        ids = self._cache.get(metadata)
        if ids is not None:
            self._cache.move_to_end(metadata)
            return ids
        self._tokenize([metadata])
        return self._cache[metadata]

    def lengths(self, metadata: Sequence[str]) -> np.ndarray:
        """Prefix lengths for many metadata strings; those not cached are tokenized in one batch call."""
        missing = list(dict.fromkeys(m for m in metadata if m and m not in self._cache))
        if missing:
            self._tokenize(missing)
        return np.asarray([len(self(m)) for m in metadata], dtype=np.int64)

    def _tokenize(self, metadata: list[str]) -> None:
        """Tokenize the prefixes of ``metadata`` in one call into the cache, evicting the least recently used.

        A fast tokenizer's Rust backend is called directly (Hugging Face's per-encoding Python conversion cost
        more than the tokenizing); ``encode_special_tokens`` is what ``split_special_tokens=True`` sets, so the
        ids are the same.
        """
        if self.metadata.kind == COMPACT_KIND:
            self._tokenize_compact(metadata)
            return
        texts = [self.metadata.prefix_for(m) for m in metadata]
        backend = getattr(self.tokenizer, 'backend_tokenizer', None)
        if backend is not None and hasattr(backend, 'encode_special_tokens'):
            saved = backend.encode_special_tokens
            backend.encode_special_tokens = True
            try:
                encoded = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
            finally:
                backend.encode_special_tokens = saved
        else:
            encoded = self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True)['input_ids']
        self._store(metadata, encoded)

    def _store(self, metadata: list[str], encoded: Sequence[Sequence[int]]) -> None:
        """Cache the prefix ids of ``metadata``, evicting the least recently used."""
        for m, ids in zip(metadata, encoded):
            self._cache[m] = np.asarray(ids, dtype=np.int64)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _tokenize_compact(self, tokens: list[str]) -> None:
        """Kind ``compact``: the template's text on either side of ``{}``, tokenized as text, around the token's id.

        The metadata string is one of the vocabulary's reserved tokens (never text from a document), so its id is
        put in as it is; the template around it is text and cannot produce a special id either.
        """
        head, tail = self.metadata.template.split('{}')
        for token in tokens:
            if self.tokenizer.convert_tokens_to_ids(token) != self.metadata.compact_token_id(token):
                raise ValueError(
                    f'metadata.compact gives {token} the id {self.metadata.compact_token_id(token)}, but tokenizer '
                    f'{getattr(self.tokenizer, "name_or_path", "?")!r} has it as '
                    f'{self.tokenizer.convert_tokens_to_ids(token)}: the vocabulary was made for another tokenizer; '
                    'use the tokenizer the set was packed with.'
                )
        encoded = self.tokenizer([head, tail], add_special_tokens=False, split_special_tokens=True)['input_ids']
        self._store(tokens, [[*encoded[0], self.metadata.compact_token_id(t), *encoded[1]] for t in tokens])

    def for_document(self, url: str, columns: Mapping[str, Any] | None = None) -> np.ndarray:
        """The prefix ids of one document (its URL and carried columns) under this metadata setting."""
        return self(self.metadata.metadata_for(url, columns))


@dataclass(frozen=True)
class PrefixReservation:
    """The prefix room a packed set reserves per segment: the longest prefix among ``kinds``."""

    kinds: tuple[str, ...]
    template: str = DEFAULT_TEMPLATE
    max_chars: int = DEFAULT_MAX_CHARS
    strip_www: bool = False
    bins: Bins = ()
    compact: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.kinds:
            raise ValueError('a prefix reservation needs at least one metadata kind, e.g. domain.')
        recorded = {column for column, _, _ in self.bins}
        for kind in self.kinds:  # MetadataConfig validates each kind, the template and max_chars
            column = bins_column(kind)
            pending = column is not None and column not in recorded  # edges come from the documents (packing_bins)
            if kind == COMPACT_KIND and self.compact is None:  # the vocabulary comes from the documents too
                kind = 'constant:x'
            MetadataConfig(
                kind=f'column:{column}' if pending else kind,
                template=self.template,
                max_chars=self.max_chars,
                strip_www=self.strip_www,
                **({} if pending else self._bins_of(kind)),
                **self._compact_of(kind),
            )

    def configs(self) -> list[MetadataConfig]:
        """One metadata setting per reserved kind (a ``bins:`` kind with its recorded edges)."""
        return [
            MetadataConfig(
                kind=kind,
                template=self.template,
                max_chars=self.max_chars,
                strip_www=self.strip_www,
                **self._bins_of(kind),
                **self._compact_of(kind),
            )
            for kind in self.kinds
        ]

    def __hash__(self) -> int:  # the compact vocabulary is a dict (JSON-shaped): hashed through its JSON text
        return hash((self.kinds, self.template, self.max_chars, self.strip_www, self.bins, _json(self.compact)))

    def _compact_of(self, kind: str) -> dict[str, Any]:
        """``compact`` (the recorded vocabulary) for kind ``compact``; nothing for other kinds."""
        if kind != COMPACT_KIND:
            return {}
        if self.compact is None:
            raise ValueError('the reservation for kind compact records no vocabulary.')
        return {'compact': self.compact}

    def _bins_of(self, kind: str) -> dict[str, Any]:
        """``bins`` and ``quantiles`` recorded for a ``bins:`` kind; nothing for other kinds."""
        column = bins_column(kind)
        if column is None:
            return {}
        for name, edges, quantiles in self.bins:
            if name == column:
                return {'bins': edges, 'quantiles': quantiles}
        raise ValueError(f'the reservation for kind {kind!r} records no bin edges for column {column!r}.')

    def covers(self, metadata: MetadataConfig) -> bool:
        """Whether every prefix ``metadata`` produces fits the room (a kind reserved here, same text shape)."""
        if not metadata.active:
            return True
        if not (
            metadata.kind in self.kinds
            and metadata.template == self.template
            and metadata.max_chars == self.max_chars
            and metadata.strip_www == self.strip_www
        ):
            return False
        if metadata.kind == COMPACT_KIND:
            return metadata.compact is None or metadata.compact == self._compact_of(COMPACT_KIND)['compact']
        if bins_column(metadata.kind) is None:
            return True
        recorded = self._bins_of(metadata.kind)
        if metadata.bins is not None:
            return metadata.bins == recorded['bins']
        return metadata.quantiles == recorded['quantiles']

    def with_recorded_bins(self, metadata: MetadataConfig) -> MetadataConfig:
        """``metadata`` with the edges this set recorded, for a ``bins:`` kind given as ``quantiles: N``."""
        if bins_column(metadata.kind) is None or metadata.bins is not None or metadata.kind not in self.kinds:
            return metadata
        return replace(metadata, bins=self._bins_of(metadata.kind)['bins'])

    def with_recorded_compact(self, metadata: MetadataConfig) -> MetadataConfig:
        """``metadata`` with this set's compact vocabulary, for kind ``compact`` given without one."""
        if metadata.kind != COMPACT_KIND or metadata.compact is not None or metadata.kind not in self.kinds:
            return metadata
        return replace(metadata, compact=self._compact_of(COMPACT_KIND)['compact'])

    def to_info(self, tokenizer_fingerprint: str) -> dict[str, Any]:
        """The record written to ``meco_dataset.json`` (``bins``, ``compact`` only when such a kind is reserved)."""
        record = {**asdict(self), 'kinds': list(self.kinds), 'tokenizer_fingerprint': tokenizer_fingerprint}
        record.pop('bins')
        if record['compact'] is None:
            record.pop('compact')
        if self.bins:
            record['bins'] = {column: {'edges': list(edges), 'quantiles': q} for column, edges, q in self.bins}
        return record

    @classmethod
    def from_info(cls, record: Mapping[str, Any]) -> PrefixReservation:
        """Read back a ``meco_dataset.json`` record (its fingerprint is checked with the dataset's tokenizer)."""
        return cls(
            kinds=tuple(record['kinds']),
            template=record['template'],
            max_chars=int(record['max_chars']),
            strip_www=bool(record['strip_www']),
            bins=tuple(
                (column, tuple(float(e) for e in entry['edges']), entry['quantiles'])
                for column, entry in (record.get('bins') or {}).items()
            ),
            compact=check_vocabulary(record['compact']) if record.get('compact') is not None else None,
        )


def _json(value: Any) -> str:
    """A JSON-shaped value as canonical text (for hashing)."""
    return json.dumps(value, sort_keys=True)


class RoomMeasure:
    """The room each document needs: the longest of its prefixes under the reserved kinds, in tokens."""

    def __init__(self, tokenizer: Any, reservation: PrefixReservation) -> None:
        self.prefixes = [PrefixTokens(tokenizer, config) for config in reservation.configs()]

    def __call__(self, urls: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Room per document, ``int64``."""
        rooms = np.zeros(len(urls), dtype=np.int64)
        for prefix in self.prefixes:
            metadata_for = prefix.metadata.metadata_for
            np.maximum(rooms, prefix.lengths([metadata_for(u, c) for u, c in zip(urls, metadata)]), out=rooms)
        return rooms
