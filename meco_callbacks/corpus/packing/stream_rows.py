"""Rows cut from one document stream with no room for prefixes (the first packed layout, kept as an option).

Documents are laid end to end and the stream is cut every ``max_seq_len`` tokens; a document longer than the
rest of a row continues in the next. Every row holds exactly ``max_seq_len`` document tokens, so the loader's
prefixes push tokens off each row; ``convert/pack.py --reserve-prefix`` packs with room instead.

Parallel design (output byte-identical for any number of workers): pass 1 measures each range's stream length
(tokens with BOS/EOS, after skips), which fixes where every row begins. Pass 2 gives each range a part: the rows
that begin inside it, written by one worker into its own MDS part (reading a little into the next ranges to
finish its last row).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from streaming import MDSWriter
from tqdm import tqdm

from meco_callbacks.corpus.packing.document_set import (
    DocumentChunk,
    DocumentRange,
    RangeMeasure,
    describe_range,
    measure_range,
    read_range,
)
from meco_callbacks.corpus.packing.shard_cache import CacheLimit, stored_raw
from meco_callbacks.corpus.storage.joint_index import part_name
from meco_callbacks.corpus.storage.workers import ProcessMap
from meco_callbacks.formats import PACKED_COLUMNS

SKIP_DROPPED_TAIL = 'in_dropped_last_partial_row'
READ_AHEAD_DOCUMENTS = 256  # documents read at a time past a part's own range to finish its last row


@dataclass(frozen=True)
class PartTask:
    """Pass 2's unit of work: write ``rows`` rows, the first beginning ``skip`` tokens into ``documents``."""

    window: int  # the index of ``documents`` among the ranges: the part's name
    out: str
    documents: DocumentRange
    skip: int
    rows: int
    read_ahead: tuple[DocumentRange, ...]  # the following ranges the last row may reach into
    max_seq_len: int
    compression: str | None


@dataclass(frozen=True)
class PartStats:
    """What a part holds: rows, segments, and how many segments continue a document from the row before."""

    rows: int
    segments: int
    continued_segments: int


class RowPacker:
    """Cuts a document stream into rows of exactly ``max_seq_len`` tokens and records each row's segments.

    ``extend`` appends documents, ``discard`` drops tokens from the front (a part starting mid-document),
    ``take_rows`` cuts the complete rows. The rows depend only on the documents' order, not on the chunking.
    """

    def __init__(self, max_seq_len: int) -> None:
        self.max_seq_len = max_seq_len
        self.rows = 0
        self.segments = 0
        self.continued_segments = 0
        self._tokens = np.empty(0, np.uint32)
        self._lengths = np.empty(0, np.int64)  # pending documents' tokens not yet cut
        self._consumed = 0  # tokens of the first pending document already cut or discarded
        self._urls: list[str] = []
        self._metadata: list[dict[str, str]] = []

    def extend(self, chunk: DocumentChunk) -> None:
        """Append a chunk's documents to the pending stream."""
        self._tokens = np.concatenate([self._tokens, chunk.tokens])
        self._lengths = np.concatenate([self._lengths, chunk.lengths])
        self._urls += chunk.urls
        self._metadata += chunk.metadata

    def discard(self, count: int) -> None:
        """Drop the first ``count`` pending tokens; a document cut here continues in the next row."""
        self._drop(count)

    def take_rows(self, limit: int) -> list[dict[str, Any]]:
        """Cut up to ``limit`` complete rows from the front of the pending stream, as packed-MDS samples."""
        size = self.max_seq_len
        num_rows = min(limit, len(self._tokens) // size)
        ends, starts = self._bounds()
        row_starts = np.arange(num_rows, dtype=np.int64) * size
        firsts = np.searchsorted(ends, row_starts, side='right')
        lasts = np.searchsorted(ends, row_starts + size - 1, side='right') + 1
        rows = []
        for lo, first, last in zip(row_starts.tolist(), firsts.tolist(), lasts.tolist()):
            segment_lengths = np.minimum(ends[first:last], lo + size) - np.maximum(starts[first:last], lo)
            continued = int(starts[first] < lo)
            self.segments += last - first
            self.continued_segments += continued
            rows.append(
                {
                    'input_ids': self._tokens[lo : lo + size],
                    'segment_lengths': segment_lengths.astype(np.uint32),
                    'continued': continued,
                    'urls': self._urls[first:last],
                    'metadata': self._metadata[first:last],
                }
            )
        self.rows += num_rows
        self._drop(num_rows * size)
        return rows

    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Pending documents' end and start positions in the pending stream (the first may start before 0)."""
        ends = np.cumsum(self._lengths)
        starts = ends - self._lengths
        if len(starts):
            starts[0] -= self._consumed
        return ends, starts

    def _drop(self, count: int) -> None:
        ends, starts = self._bounds()
        first = int(np.searchsorted(ends, count, side='right'))
        self._consumed = max(0, count - int(starts[first])) if first < len(ends) else 0
        self._lengths = ends[first:] - np.maximum(starts[first:], count)
        self._tokens = self._tokens[count:].copy()
        self._urls = self._urls[first:]
        self._metadata = self._metadata[first:]


def plan_parts(
    ranges: list[DocumentRange],
    measures: list[RangeMeasure],
    max_seq_len: int,
    parts_dir: Path,
    compression: str | None,
) -> list[PartTask]:
    """Give each range the rows that begin inside it, as part ``k`` for range ``k``; ranges where no row begins get none."""
    ends = np.cumsum([measure.stream_tokens for measure in measures], dtype=np.int64)
    starts = ends - np.asarray([measure.stream_tokens for measure in measures], np.int64)
    total_rows = int(ends[-1]) // max_seq_len if len(ends) else 0
    parts = []
    for k, (begin, end) in enumerate(zip(starts.tolist(), ends.tolist())):
        first_row = -(-begin // max_seq_len)
        stop_row = min(-(-end // max_seq_len), total_rows)
        if stop_row <= first_row:
            continue
        needed = stop_row * max_seq_len  # the stream position the last row reaches
        last = k if end >= needed else int(np.searchsorted(ends, needed, side='left'))
        parts.append(
            PartTask(
                window=k,
                out=str(parts_dir / part_name(k)),
                documents=ranges[k],
                skip=first_row * max_seq_len - begin,
                rows=stop_row - first_row,
                read_ahead=tuple(ranges[k + 1 : last + 1]),
                max_seq_len=max_seq_len,
                compression=compression,
            )
        )
    return parts


def write_part(task: PartTask) -> PartStats:
    """Pass 2: cut and write one part's rows, reading into the following ranges only as far as its last row."""
    packer = RowPacker(task.max_seq_len)
    with MDSWriter(out=task.out, columns=PACKED_COLUMNS, compression=task.compression) as writer:
        packer.extend(read_range(task.documents))
        packer.discard(task.skip)
        for row in packer.take_rows(task.rows):
            writer.write(row)
        for following in task.read_ahead:
            raw = stored_raw(following.directory, following.shard, following.remote)
            step = READ_AHEAD_DOCUMENTS if raw else following.end - following.begin
            for begin in range(following.begin, following.end, step):
                if packer.rows == task.rows:
                    break
                piece = replace(
                    following,
                    begin=begin,
                    end=min(begin + step, following.end),
                    first_document=following.first_document + begin - following.begin,
                )
                packer.extend(read_range(piece))
                for row in packer.take_rows(task.rows - packer.rows):
                    writer.write(row)
    if packer.rows != task.rows:
        raise RuntimeError(f'internal error: part {task.out} cut {packer.rows} rows, planned {task.rows}.')
    return PartStats(rows=packer.rows, segments=packer.segments, continued_segments=packer.continued_segments)


def measure_ranges(
    ranges: list[DocumentRange], num_workers: int, progress: bool, cache: CacheLimit | None = None
) -> list[RangeMeasure]:
    """Pass 1 over every range (in worker processes when ``num_workers`` > 1): their stream lengths, in order.

    With ``cache``, shards of a remote set are evicted as soon as no later range reads them."""
    measures = []
    eviction = cache.pass_over([[task] for task in ranges], num_workers) if cache else None
    with (
        ProcessMap(
            measure_range, ranges, num_workers, describe=describe_range, ahead=eviction and eviction.ahead
        ) as measured,
        tqdm(
            total=sum(task.end - task.begin for task in ranges), unit='doc', desc='measuring', disable=not progress
        ) as bar,
    ):
        for measure in measured:
            measures.append(measure)
            bar.update(measure.documents_read)
            if eviction is not None:
                eviction.done(len(measures) - 1)
    return measures


def stream_stats(measures: list[RangeMeasure], part_stats: list[PartStats], max_seq_len: int) -> dict[str, Any]:
    """The dataset's stats from every range's measure and every part's counts."""
    rows = sum(stats.rows for stats in part_stats)
    segments = sum(stats.segments for stats in part_stats)
    continued = sum(stats.continued_segments for stats in part_stats)
    stream_tokens = sum(measure.stream_tokens for measure in measures)
    document_tokens = sum(measure.document_tokens for measure in measures)
    skipped: Counter[str] = Counter()
    for measure in measures:
        skipped.update(measure.skipped)
    # Documents whose every token falls in the dropped last partial row were never written.
    skipped[SKIP_DROPPED_TAIL] = sum(measure.documents_kept for measure in measures) - (segments - continued)
    return {
        'rows': rows,
        'tokens': rows * max_seq_len,
        'documents_read': sum(measure.documents_read for measure in measures),
        'documents_packed': segments - continued,
        'skipped': {reason: count for reason, count in sorted(skipped.items()) if count},
        'segments': segments,
        'continued_segments': continued,
        'document_tokens': document_tokens,
        'special_tokens': stream_tokens - document_tokens,
        'tokens_dropped': stream_tokens - rows * max_seq_len,
    }
