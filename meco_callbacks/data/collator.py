"""From packed rows to training batches: prefixes before every document, loss masks, document ids.

Two halves, so that the phase (conditioning or cooldown) is decided per batch in the main process:
- ``PackedCollator`` runs in the dataloader workers: it stacks rows and tokenizes each segment's prefix
  (cached per metadata string), but injects nothing.
- ``PrefixInjector`` runs in the main process as the DataSpec's ``batch_transforms``, right after the
  batch leaves the loader: with ``enabled`` it puts each prefix before its segment and truncates the row
  back to ``max_seq_len``. A batch prefetched before the cooldown boundary therefore cannot carry
  prefixes past it: nothing is injected until the batch's own step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from meco_callbacks.data.metadata import MetadataConfig

IGNORE_INDEX = -100
_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass
class Segment:
    """One piece of a document inside a row, with what injection needs to know about it."""

    length: int
    prefix: np.ndarray
    new_document: bool
    starts_with_bos: bool


@dataclass
class PackedBatch:
    """Rows of exactly ``max_seq_len`` document tokens and their segments, before any injection."""

    tokens: np.ndarray
    segments: list[list[Segment]]

    def __len__(self) -> int:
        return len(self.segments)


class PackedCollator:
    """Worker half: stacks packed rows and attaches each segment's tokenized prefix."""

    def __init__(self, tokenizer: Any, metadata: MetadataConfig, max_seq_len: int, adds_bos: bool) -> None:
        self.tokenizer = tokenizer
        self.metadata = metadata
        self.max_seq_len = max_seq_len
        self.bos_id = tokenizer.bos_token_id if adds_bos else None
        self._prefix_cache: dict[str, np.ndarray] = {}

    def prefix_ids(self, metadata: str) -> np.ndarray:
        """The prefix's token ids for a metadata string, tokenized once per distinct string."""
        cached = self._prefix_cache.get(metadata)
        if cached is None:
            text = self.metadata.prefix_for(metadata)
            ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)['input_ids'] if text else []
            cached = self._prefix_cache[metadata] = np.asarray(ids, dtype=np.int64)
        return cached

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> PackedBatch:
        tokens = np.stack([np.asarray(s['input_ids'], dtype=np.int64) for s in samples])
        if tokens.shape[1] != self.max_seq_len:
            raise ValueError(
                f'packed rows hold {tokens.shape[1]} tokens but max_seq_len is {self.max_seq_len}: '
                'pack the dataset with convert/pack.py --max-seq-len equal to the training max_seq_len.'
            )
        rows = []
        for row, sample in zip(tokens, samples):
            lengths = np.asarray(sample['segment_lengths'], dtype=np.int64)
            if int(lengths.sum()) != self.max_seq_len:
                raise ValueError(
                    f"a packed row's segment_lengths sum to {int(lengths.sum())}, not max_seq_len "
                    f'{self.max_seq_len}: the dataset is corrupt or not a MeCo packed dataset.'
                )
            urls, extras = sample['urls'], sample['metadata']
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            segments = []
            for s, (length, start) in enumerate(zip(lengths.tolist(), starts.tolist())):
                new_document = not (s == 0 and bool(sample['continued']))
                meta = self.metadata.metadata_for(urls[s], extras[s] if extras else None)
                segments.append(
                    Segment(
                        length=length,
                        prefix=self.prefix_ids(meta) if meta else _EMPTY,
                        new_document=new_document,
                        starts_with_bos=self.bos_id is not None and new_document and int(row[start]) == self.bos_id,
                    )
                )
            rows.append(segments)
        return PackedBatch(tokens=tokens, segments=rows)


@dataclass
class InjectionStats:
    """Token accounting of the batches injected so far (and of the last one)."""

    tokens: int = 0
    metadata_tokens: int = 0
    dropped_tokens: int = 0
    document_tokens: int = 0
    last: dict[str, int] = field(default_factory=dict)

    def add(self, tokens: int, metadata_tokens: int, dropped_tokens: int, document_tokens: int) -> None:
        self.tokens += tokens
        self.metadata_tokens += metadata_tokens
        self.dropped_tokens += dropped_tokens
        self.document_tokens += document_tokens
        self.last = {
            'tokens': tokens,
            'metadata_tokens': metadata_tokens,
            'dropped_tokens': dropped_tokens,
            'document_tokens': document_tokens,
        }


class PrefixInjector:
    """Main-process half: turns a ``PackedBatch`` into the model's batch, with or without prefixes.

    Output, each ``[batch, max_seq_len]``: ``input_ids``; ``labels`` (unshifted, ``-100`` on prefix tokens
    and on each new document's first token, so nothing is trained across a document boundary);
    ``attention_mask``; with ``document_masking`` also ``sequence_id`` (one id per segment, its prefix
    included) and ``position_ids`` restarting at 0 at each segment.
    """

    def __init__(self, max_seq_len: int, enabled: bool, document_masking: bool) -> None:
        self.max_seq_len = max_seq_len
        self.enabled = enabled
        self.document_masking = document_masking
        self.stats = InjectionStats()

    def __call__(self, batch: PackedBatch | Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if not isinstance(batch, PackedBatch):
            return dict(batch)  # already a model batch (e.g. Composer re-applying transforms)
        n, length = len(batch), self.max_seq_len
        input_ids = np.empty((n, length), dtype=np.int64)
        labels = np.empty((n, length), dtype=np.int64)
        sequence_id = np.empty((n, length), dtype=np.int64)
        position_ids = np.empty((n, length), dtype=np.int64)
        metadata_tokens = sum(
            self._inject_row(row, segments, input_ids[r], labels[r], sequence_id[r], position_ids[r])
            for r, (row, segments) in enumerate(zip(batch.tokens, batch.segments))
        )
        total = n * length
        # A row holds exactly max_seq_len document tokens and the output as many slots, so every metadata token
        # kept pushed exactly one document token off the end of its row.
        self.stats.add(total, metadata_tokens, metadata_tokens, total - metadata_tokens)
        out = {
            'input_ids': torch.from_numpy(input_ids),
            'labels': torch.from_numpy(labels),
            'attention_mask': torch.ones((n, length), dtype=torch.bool),
        }
        if self.document_masking:
            out['sequence_id'] = torch.from_numpy(sequence_id)
            out['position_ids'] = torch.from_numpy(position_ids)
        return out

    def _inject_row(
        self,
        row: np.ndarray,
        segments: list[Segment],
        ids_out: np.ndarray,
        labels_out: np.ndarray,
        seq_out: np.ndarray,
        pos_out: np.ndarray,
    ) -> int:
        """Fill one output row in place; returns the number of metadata tokens it kept."""
        length = self.max_seq_len
        write = 0  # next free position in the output row
        offset = 0  # next unread token of the packed row
        metadata_tokens = 0
        for s, seg in enumerate(segments):
            if write >= length:
                break
            doc = row[offset : offset + seg.length]
            offset += seg.length
            prefix = seg.prefix if self.enabled else _EMPTY
            head = 1 if (seg.starts_with_bos and len(prefix)) else 0  # a BOS stays first, before the prefix
            pieces = (doc[:head], prefix, doc[head:]) if head else (prefix, doc)
            masked = head + len(prefix)
            if seg.new_document:
                masked = max(masked, 1)  # the first token of a document is never predicted from the previous one
            seg_len = seg.length + len(prefix)
            end = min(write + seg_len, length)
            kept = end - write
            if kept > 0:
                ids = np.concatenate(pieces)[:kept] if len(prefix) else doc[:kept]
                ids_out[write:end] = ids
                labels_out[write:end] = ids
                labels_out[write : write + min(masked, kept)] = IGNORE_INDEX
                seq_out[write:end] = s
                pos_out[write:end] = np.arange(kept)
                metadata_tokens += min(len(prefix), max(kept - head, 0))
            write += seg_len
        return metadata_tokens
