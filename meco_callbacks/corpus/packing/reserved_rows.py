"""Rows with room reserved for each segment's prefix, packed one window of documents at a time.

A window is one range of the document set (``document_set.plan_ranges``); each window is planned
(``row_planning``) and written as its own MDS part, so windows are independent: the output is byte-identical
for any number of workers, and the only cost is the padding at the end of each window's last row. Each row
stores its document tokens (at most ``max_seq_len`` minus the rooms), the segments' lengths and rooms, and the
URLs and metadata the loader turns into prefixes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from streaming import MDSWriter

from meco_callbacks.corpus.packing.document_set import DocumentRange, read_range
from meco_callbacks.corpus.packing.row_planning import plan_rows
from meco_callbacks.data.prefix import PrefixReservation, RoomMeasure
from meco_callbacks.formats import RESERVED_PACKED_COLUMNS
from meco_callbacks.tokenizer.loading import load_tokenizer

# Tokenizers of this process by fingerprint: the parent fills it before forking workers, which inherit it.
_TOKENIZERS: dict[str, Any] = {}
# Room measures of this process, kept across windows so each distinct prefix is tokenized once per process.
_MEASURES: dict[tuple[str, PrefixReservation], RoomMeasure] = {}


@dataclass(frozen=True)
class WindowTask:
    """Pack one window of documents into ``out``; ``reservation`` None packs with no room (BFD alone)."""

    out: str
    documents: DocumentRange
    max_seq_len: int
    strategy: str
    reservation: PrefixReservation | None
    tokenizer_name: str
    tokenizer_fingerprint: str
    compression: str | None


@dataclass(frozen=True)
class WindowStats:
    """What a window's part holds, in rows, segments, documents and slots."""

    rows: int
    segments: int
    continued_segments: int
    documents_read: int
    documents_packed: int
    documents_split: int
    document_tokens: int
    stream_tokens: int
    reserved_tokens: int
    skipped: dict[str, int]


def remember_tokenizer(tokenizer: Any, fingerprint: str) -> None:
    """Make ``tokenizer`` the one windows with this fingerprint measure prefixes with (inherited by forks)."""
    _TOKENIZERS[fingerprint] = tokenizer


def _tokenizer(task: WindowTask) -> Any:
    if task.tokenizer_fingerprint not in _TOKENIZERS:  # a spawned worker: load it by name
        _TOKENIZERS[task.tokenizer_fingerprint] = load_tokenizer(task.tokenizer_name)
    return _TOKENIZERS[task.tokenizer_fingerprint]


def write_window(task: WindowTask) -> WindowStats:
    """Plan and write one window's rows; returns its stats."""
    chunk = read_range(task.documents)
    if task.reservation is None:
        rooms = np.zeros(len(chunk.lengths), dtype=np.int64)
    else:
        key = (task.tokenizer_fingerprint, task.reservation)
        if key not in _MEASURES:
            _MEASURES[key] = RoomMeasure(_tokenizer(task), task.reservation)
        rooms = _MEASURES[key](chunk.urls, chunk.metadata)
    rows = plan_rows(chunk.lengths, rooms, task.max_seq_len, task.strategy)
    starts = (np.cumsum(chunk.lengths) - chunk.lengths).tolist()
    segments = continued = reserved = 0
    with MDSWriter(out=task.out, columns=RESERVED_PACKED_COLUMNS, compression=task.compression) as writer:
        for row in rows:
            pieces = [chunk.tokens[starts[p.document] + p.start : starts[p.document] + p.start + p.count] for p in row]
            writer.write(
                {
                    'input_ids': np.concatenate(pieces),
                    'segment_lengths': np.asarray([p.count for p in row], dtype=np.uint32),
                    'prefix_room': np.asarray([p.room for p in row], dtype=np.uint32),
                    'continued': int(row[0].start > 0),
                    'urls': [chunk.urls[p.document] for p in row],
                    'metadata': [chunk.metadata[p.document] for p in row],
                }
            )
            segments += len(row)
            continued += row[0].start > 0
            reserved += sum(p.room for p in row)
    return WindowStats(
        rows=len(rows),
        segments=segments,
        continued_segments=continued,
        documents_read=chunk.documents_read,
        documents_packed=len(chunk.lengths),
        documents_split=len({row[0].document for row in rows if row[0].start > 0}),
        document_tokens=chunk.document_tokens,
        stream_tokens=int(chunk.lengths.sum()),
        reserved_tokens=reserved,
        skipped=chunk.skipped,
    )


def window_stats(results: list[WindowStats], max_seq_len: int) -> dict[str, Any]:
    """The dataset's stats from every window's counts."""
    rows = sum(r.rows for r in results)
    skipped: Counter[str] = Counter()
    for r in results:
        skipped.update(r.skipped)
    stream_tokens = sum(r.stream_tokens for r in results)
    reserved = sum(r.reserved_tokens for r in results)
    document_tokens = sum(r.document_tokens for r in results)
    return {
        'rows': rows,
        'tokens': rows * max_seq_len,
        'documents_read': sum(r.documents_read for r in results),
        'documents_packed': sum(r.documents_packed for r in results),
        'documents_split': sum(r.documents_split for r in results),
        'skipped': {reason: count for reason, count in sorted(skipped.items()) if count},
        'segments': sum(r.segments for r in results),
        'continued_segments': sum(r.continued_segments for r in results),
        'document_tokens': document_tokens,
        'special_tokens': stream_tokens - document_tokens,
        'reserved_tokens': reserved,
        'padding_tokens': rows * max_seq_len - stream_tokens - reserved,
        'tokens_dropped': 0,
    }
