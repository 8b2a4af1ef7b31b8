"""From packed rows to training batches: prefixes before every document, loss masks, document ids, padding.

Two halves, so that the phase (conditioning or cooldown) is decided per batch in the main process:
- ``PackedCollator`` runs in the dataloader workers: it gathers rows and tokenizes each segment's prefix
  (``PrefixTokens``, a bounded cache per metadata string), but injects nothing.
- ``PrefixInjector`` runs in the main process as the DataSpec's ``batch_transforms``, right after the
  batch leaves the loader: with ``enabled`` it puts each prefix before its segment. A batch prefetched before
  the cooldown boundary therefore cannot carry prefixes past it: nothing is injected until its own step.

Rows packed with room (``convert/pack.py --reserve-prefix``) have slots for every prefix, so nothing is
dropped; what a row does not use (the baseline, the cooldown, a shorter prefix than its room, packing
leftovers) is padding at the row's end. Rows packed without room hold ``max_seq_len`` document tokens, and each
prefix token pushes one document token off the row (counted as dropped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from meco_callbacks.data.metadata import MetadataConfig
from meco_callbacks.data.prefix import EMPTY_IDS as _EMPTY
from meco_callbacks.data.prefix import PrefixTokens

IGNORE_INDEX = -100


@dataclass
class Segment:
    """One piece of a document inside a row, with what injection needs to know about it."""

    start: int  # offset of its first token in the row's stored tokens
    length: int
    room: int  # slots reserved for its prefix at packing (0 in sets packed without room)
    prefix: np.ndarray
    new_document: bool
    starts_with_bos: bool


@dataclass
class PackedBatch:
    """Stored rows (their document tokens) and their segments, before any injection."""

    tokens: list[np.ndarray]
    segments: list[list[Segment]]
    urls: list[list[str]]

    def __len__(self) -> int:
        return len(self.segments)


class PackedCollator:
    """Worker half: gathers packed rows, checks their layout and attaches each segment's tokenized prefix.

    ``bos_id`` is the BOS id when the packed set's documents start with one (its ``meco_dataset.json``
    record says so), else None.
    """

    def __init__(self, tokenizer: Any, metadata: MetadataConfig, max_seq_len: int, bos_id: int | None) -> None:
        self.tokenizer = tokenizer
        self.metadata = metadata
        self.max_seq_len = max_seq_len
        self.bos_id = bos_id
        self.prefixes = PrefixTokens(tokenizer, metadata)

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> PackedBatch:
        tokens, rows, urls = [], [], []
        for sample in samples:
            row = np.asarray(sample['input_ids'], dtype=np.int64)
            lengths = np.asarray(sample['segment_lengths']).tolist()  # a few segments: Python ints beat numpy calls
            reserved = sample.get('prefix_room') is not None
            rooms = np.asarray(sample['prefix_room']).tolist() if reserved else [0] * len(lengths)
            self._check(len(row), sum(lengths), sum(rooms), reserved)
            extras, row_urls = sample['metadata'], sample['urls']
            segments = []
            start = 0
            for s, (length, room) in enumerate(zip(lengths, rooms)):
                new_document = s > 0 or not sample['continued']
                segments.append(
                    Segment(
                        start=start,
                        length=length,
                        room=room,
                        prefix=self.prefixes.for_document(row_urls[s], extras[s] if extras else None),
                        new_document=new_document,
                        starts_with_bos=self.bos_id is not None and new_document and int(row[start]) == self.bos_id,
                    )
                )
                start += length
            tokens.append(row)
            rows.append(segments)
            urls.append(list(row_urls))
        return PackedBatch(tokens=tokens, segments=rows, urls=urls)

    def _check(self, tokens: int, lengths: int, rooms: int, reserved: bool) -> None:
        """Refuse a row that does not fit the training row length (another max_seq_len, or a corrupt set)."""
        if lengths != tokens:
            raise ValueError(
                f"a packed row's segment_lengths sum to {lengths}, not its {tokens} tokens: "
                'the dataset is corrupt or not a MeCo packed dataset.'
            )
        if reserved and tokens + rooms > self.max_seq_len:
            raise ValueError(
                f'a packed row needs {tokens + rooms} slots but max_seq_len is {self.max_seq_len}: '
                'pack the dataset with convert/pack.py --max-seq-len equal to the training max_seq_len.'
            )
        if not reserved and tokens != self.max_seq_len:
            raise ValueError(
                f'packed rows hold {tokens} tokens but max_seq_len is {self.max_seq_len}: '
                'pack the dataset with convert/pack.py --max-seq-len equal to the training max_seq_len.'
            )


@dataclass
class InjectionStats:
    """Token accounting of the batches injected so far (and of the last one)."""

    tokens: int = 0
    metadata_tokens: int = 0
    dropped_tokens: int = 0
    document_tokens: int = 0
    padding_tokens: int = 0
    last: dict[str, int] = field(default_factory=dict)

    def add(self, tokens: int, metadata_tokens: int, dropped_tokens: int, document_tokens: int, padding: int) -> None:
        self.tokens += tokens
        self.metadata_tokens += metadata_tokens
        self.dropped_tokens += dropped_tokens
        self.document_tokens += document_tokens
        self.padding_tokens += padding
        self.last = {
            'tokens': tokens,
            'metadata_tokens': metadata_tokens,
            'dropped_tokens': dropped_tokens,
            'document_tokens': document_tokens,
            'padding_tokens': padding,
        }


class PrefixInjector:
    """Main-process half: turns a ``PackedBatch`` into the model's batch, with or without prefixes.

    Output, each ``[batch, max_seq_len]``: ``input_ids``; ``labels`` (unshifted, ``-100`` on prefix tokens,
    on padding and on each new document's first token, so nothing is trained across a document boundary);
    ``attention_mask`` (0 on the padding at a row's end); with ``document_masking`` also ``sequence_id`` (one
    id per segment, its prefix included, and one of its own for the padding) and ``position_ids`` restarting
    at 0 at each segment. Each segment is laid out as ``[BOS] prefix document`` (a BOS stays first).
    """

    def __init__(self, max_seq_len: int, enabled: bool, document_masking: bool, pad_token_id: int = 0) -> None:
        self.max_seq_len = max_seq_len
        self.enabled = enabled
        self.document_masking = document_masking
        self.pad_token_id = pad_token_id
        self.stats = InjectionStats()
        self._arange = np.arange(max_seq_len)
        self._minus_ones = np.full(max_seq_len, -1)
        self._pad = np.full(max_seq_len, pad_token_id)

    def __call__(self, batch: PackedBatch | Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if not isinstance(batch, PackedBatch):
            return dict(batch)  # already a model batch (e.g. Composer re-applying transforms)
        return self.inject(batch)[0]

    def inject(self, batch: PackedBatch) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        """The model batch, and for each of its slots the index of its token in the stored row (-1: prefix/pad).

        The batch is assembled from views (the segments' tokens, their prefixes, slices of one ``arange``) with
        one concatenation per output: numpy calls release the GIL, and each one in the main process gives the
        dataset's background threads a chance to hold it, so their number per batch matters more than their size.
        Labels follow from the layout: a slot is trained when it holds a document token (``sources`` >= 0) that
        does not start a new document.
        """
        n, length = len(batch), self.max_seq_len
        arange, minus_ones = self._arange, self._minus_ones
        ids: list[np.ndarray] = []
        src: list[np.ndarray] = []
        pos: list[np.ndarray] = []
        seq_values: list[int] = []
        seq_counts: list[int] = []
        starts: list[int] = []  # flat index of each new document's first slot: never predicted from the one before
        used = np.empty(n, dtype=np.int64)
        metadata_tokens = dropped = 0
        for r, (row, segments) in enumerate(zip(batch.tokens, batch.segments)):
            write = kept_meta = 0
            for s, seg in enumerate(segments):
                if write >= length:
                    break
                end = seg.start + seg.length
                prefix = seg.prefix if self.enabled else _EMPTY
                p = len(prefix)
                head = 1 if (seg.starts_with_bos and p) else 0  # a BOS stays first, before the prefix
                if p:
                    seg_ids = [row[seg.start : seg.start + head], prefix, row[seg.start + head : end]]
                    seg_src = [arange[seg.start : seg.start + head], minus_ones[:p], arange[seg.start + head : end]]
                else:
                    seg_ids, seg_src = [row[seg.start : end]], [arange[seg.start : end]]
                kept = min(seg.length + p, length - write)
                if kept < seg.length + p:  # the row ends inside this segment (a set packed without room)
                    seg_ids, seg_src = [np.concatenate(seg_ids)[:kept]], [np.concatenate(seg_src)[:kept]]
                ids += seg_ids
                src += seg_src
                pos.append(arange[:kept])
                seq_values.append(s)
                seq_counts.append(kept)
                if seg.new_document:
                    starts.append(r * length + write)
                kept_meta += min(p, max(kept - head, 0))
                write += kept
            if write < length:  # padding: no loss, and an id no segment has, so no real token attends to it
                ids.append(self._pad[: length - write])
                src.append(minus_ones[: length - write])
                pos.append(arange[: length - write])
                seq_values.append(len(segments))
                seq_counts.append(length - write)
            used[r] = write
            metadata_tokens += kept_meta
            dropped += len(row) - (write - kept_meta)
        input_ids = np.concatenate(ids).reshape(n, length)
        sources = np.concatenate(src).reshape(n, length)
        labels = np.where(sources >= 0, input_ids, IGNORE_INDEX)
        labels.reshape(-1)[starts] = IGNORE_INDEX
        total, real = n * length, int(used.sum())
        self.stats.add(total, metadata_tokens, dropped, real - metadata_tokens, total - real)
        out = {
            'input_ids': torch.from_numpy(input_ids),
            'labels': torch.from_numpy(labels),
            'attention_mask': torch.from_numpy(arange[None, :] < used[:, None]),
        }
        if self.document_masking:
            out['sequence_id'] = torch.from_numpy(np.repeat(np.asarray(seq_values), seq_counts).reshape(n, length))
            out['position_ids'] = torch.from_numpy(np.concatenate(pos).reshape(n, length))
        return out, sources
