"""Where each document goes in rows that reserve room for its prefix: streaming or best-fit-decreasing.

A document of ``length`` tokens (``[BOS] doc EOS``) with a prefix room of ``room`` tokens takes ``room +
length`` slots. Rows hold at most ``max_seq_len`` slots; what is left is padding. Two rules hold for both
strategies: a segment always has at least one document token after its room (a row never ends in a bare
prefix), and a document cut at a row's end leaves at least two tokens to its continuation (never a lone EOS
behind a prefix). A continued segment is always the first segment of its row and gets its room again, so the
loader can give it its prefix again.

- ``stream``: documents in order, cut at row ends (today's packing, plus the room).
- ``bfd``: best-fit-decreasing (Ding et al. 2024, "Fewer Truncations Improve Language Modeling"): documents
  that fit a row are placed whole, longest first, each into the open row with the least free room that holds
  it; only documents longer than a row are cut, into full rows and a remainder that opens a row of its own.

Plans depend only on the lengths and rooms they are given, so packing a window of documents is
deterministic, and windows planned in separate processes give the same rows as one process.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

STRATEGIES = ('stream', 'bfd')
MIN_CONTINUATION = 2  # tokens a cut leaves to the continued segment: never only the EOS


@dataclass(frozen=True)
class Placement:
    """One segment: ``count`` tokens of document ``document`` from token ``start``, after ``room`` slots."""

    document: int
    start: int
    count: int
    room: int


def plan_rows(lengths: np.ndarray, rooms: np.ndarray, max_seq_len: int, strategy: str) -> list[list[Placement]]:
    """The rows of a window of documents, each a list of placements in row order."""
    if strategy not in STRATEGIES:
        raise ValueError(f'packing strategy {strategy!r} is not known; use one of {", ".join(STRATEGIES)}.')
    too_big = np.flatnonzero(rooms + MIN_CONTINUATION > max_seq_len)
    if len(too_big):
        raise ValueError(
            f'a prefix of {int(rooms[too_big[0]])} tokens leaves no room for a document token in a row of '
            f'{max_seq_len}: raise --max-seq-len or shorten the metadata (max_chars).'
        )
    if strategy == 'stream':
        return _stream(lengths.tolist(), rooms.tolist(), max_seq_len)
    return _best_fit_decreasing(lengths.tolist(), rooms.tolist(), max_seq_len)


def _cut(free: int, room: int, remaining: int) -> int:
    """Tokens of a document that go into a row with ``free`` slots when the rest continues in the next row."""
    return min(free - room, remaining - MIN_CONTINUATION)


def _stream(lengths: list[int], rooms: list[int], max_seq_len: int) -> list[list[Placement]]:
    rows: list[list[Placement]] = []
    row: list[Placement] = []
    free = max_seq_len
    for document, (length, room) in enumerate(zip(lengths, rooms)):
        start = 0
        while start < length:
            remaining = length - start
            if room + remaining <= free:
                row.append(Placement(document, start, remaining, room))
                free -= room + remaining
                break
            count = _cut(free, room, remaining)
            if count >= 1:
                row.append(Placement(document, start, count, room))
                start += count
            rows.append(row)
            row, free = [], max_seq_len
    if row:
        rows.append(row)
    return rows


def _best_fit_decreasing(lengths: list[int], rooms: list[int], max_seq_len: int) -> list[list[Placement]]:
    rows: list[list[Placement]] = []
    open_rows: list[tuple[int, int]] = []  # (free slots, row index), sorted
    pieces: list[tuple[int, int, int, int]] = []  # (slots, document, start, count) of whole documents
    for document, (length, room) in enumerate(zip(lengths, rooms)):
        if room + length <= max_seq_len:
            pieces.append((room + length, document, 0, length))
            continue
        start = 0
        while room + length - start > max_seq_len:  # a full row of this document, then the rest
            count = _cut(max_seq_len, room, length - start)
            rows.append([Placement(document, start, count, room)])
            start += count
        rows.append([Placement(document, start, length - start, room)])
        bisect.insort(open_rows, (max_seq_len - room - (length - start), len(rows) - 1))
    pieces.sort(key=lambda piece: (-piece[0], piece[1]))  # longest first; ties in document order
    for slots, document, start, count in pieces:
        at = bisect.bisect_left(open_rows, (slots, -1))
        if at == len(open_rows):
            rows.append([])
            free, index = max_seq_len, len(rows) - 1
        else:
            free, index = open_rows.pop(at)
        rows[index].append(Placement(document, start, count, slots - count))
        if free > slots:
            bisect.insort(open_rows, (free - slots, index))
    return rows
