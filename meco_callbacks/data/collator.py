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

Variants (``MetadataConfig``): with ``drop_probability`` the collator leaves a document's metadata out when
``metadata_dropped`` says so (per document: a hash of its tokens, URL, seed and epoch; its room becomes padding); with ``position: suffix`` the metadata follows the
document's EOS, in the segment that holds that EOS (``[BOS] doc EOS metadata``, same room, same sequence id and
positions continuing), and a segment cut before its document's end gets none; with ``loss: true`` the
metadata tokens carry labels (as a suffix: the model predicts the metadata from the whole document).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from meco_callbacks.data.metadata import MetadataConfig
from meco_callbacks.data.prefix import EMPTY_IDS as _EMPTY
from meco_callbacks.data.prefix import PrefixTokens

IGNORE_INDEX = -100
UNTRAINED, TRAINED_METADATA = -1, -2  # source index of a slot holding no stored token: padding/metadata, or trained


def metadata_dropped(seed: int, epoch: int, url: str, tokens: np.ndarray, probability: float) -> bool:
    """Whether a document's metadata is left out this epoch: a pure function of (seed, epoch, URL, its tokens).

    Decided per document, as in Fan et al. (arXiv 2505.16570), not per site: the key is a hash of the segment's
    stored tokens (as int64, so the stored dtype does not matter) with its URL, so two documents of one site decide
    independently, and the same document decides alike on any rank or worker and after a resume. Packed rows carry
    no document index, so the two pieces of a document cut across rows hold different tokens and decide
    independently (each with probability ``probability``); exact duplicates (same URL, same tokens) decide alike.
    """
    if probability <= 0:
        return False
    digest = hashlib.blake2b(f'{seed}\0{epoch}\0{url}\0'.encode(), digest_size=8)
    digest.update(np.ascontiguousarray(tokens, dtype=np.int64).tobytes())
    return int.from_bytes(digest.digest(), 'big') < probability * 2**64


@dataclass
class Segment:
    """One piece of a document inside a row, with what injection needs to know about it."""

    start: int  # offset of its first token in the row's stored tokens
    length: int
    room: int  # slots reserved for its prefix at packing (0 in sets packed without room)
    prefix: np.ndarray  # its metadata tokens (before it, or after its EOS as a suffix); empty when it has none
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
    record says so), else None. ``seed`` (the dataset's shuffle seed) and each sample's ``epoch`` decide which
    documents lose their metadata under ``metadata.drop_probability``.
    """

    def __init__(
        self, tokenizer: Any, metadata: MetadataConfig, max_seq_len: int, bos_id: int | None, seed: int = 0
    ) -> None:
        self.tokenizer = tokenizer
        self.metadata = metadata
        self.max_seq_len = max_seq_len
        self.bos_id = bos_id
        self.seed = seed
        self.eos_id = tokenizer.eos_token_id
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
            epoch = int(sample.get('epoch', 0))
            segments = []
            start = 0
            for s, (length, room) in enumerate(zip(lengths, rooms)):
                new_document = s > 0 or not sample['continued']
                segments.append(
                    Segment(
                        start=start,
                        length=length,
                        room=room,
                        prefix=self._metadata_ids(
                            row, start, length, row_urls[s], extras[s] if extras else None, epoch
                        ),
                        new_document=new_document,
                        starts_with_bos=self.bos_id is not None and new_document and int(row[start]) == self.bos_id,
                    )
                )
                start += length
            tokens.append(row)
            rows.append(segments)
            urls.append(list(row_urls))
        return PackedBatch(tokens=tokens, segments=rows, urls=urls)

    def _metadata_ids(
        self, row: np.ndarray, start: int, length: int, url: str, columns: Mapping[str, Any] | None, epoch: int
    ) -> np.ndarray:
        """The segment's metadata tokens: none when dropped, or as a suffix on a segment its document does not end in."""
        metadata = self.metadata
        if metadata.position == 'suffix' and (length == 0 or int(row[start + length - 1]) != self.eos_id):
            return _EMPTY
        if metadata_dropped(self.seed, epoch, url, row[start : start + length], metadata.drop_probability):
            return _EMPTY
        return self.prefixes.for_document(url, columns)

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
    at 0 at each segment. Each segment is laid out as ``[BOS] prefix document`` (a BOS stays first), or with
    ``position='suffix'`` as ``[BOS] document EOS metadata``; ``metadata_loss`` gives the metadata tokens labels.
    ``document_start_target=False`` leaves the segment token right after a prefix untrained, so MeCo trains exactly
    the baseline's targets (by default it is predicted from the prefix: about 3% more targets on short documents).
    With ``summary_attention`` (``metadata.attention: summary``) and prefixes enabled, also ``prefix_mask`` (True on
    prefix slots): the model then lets document tokens see a prefix only through its last token.
    """

    def __init__(
        self,
        max_seq_len: int,
        enabled: bool,
        document_masking: bool,
        pad_token_id: int = 0,
        position: str = 'prefix',
        metadata_loss: bool = False,
        document_start_target: bool = True,
        summary_attention: bool = False,
    ) -> None:
        if summary_attention and position != 'prefix':
            raise ValueError('summary attention applies to prefixes only (metadata.position: prefix).')
        self.max_seq_len = max_seq_len
        self.document_start_target = document_start_target
        self.enabled = enabled
        self.document_masking = document_masking
        self.pad_token_id = pad_token_id
        self.suffix = position == 'suffix'
        self.metadata_loss = metadata_loss
        self.summary_attention = summary_attention
        self.stats = InjectionStats()
        self.last_input_ids: torch.Tensor | None = (
            None  # the last batch's input_ids: whose document tokens stats.last counts
        )
        self._arange = np.arange(max_seq_len)
        self._minus_ones = np.full(max_seq_len, UNTRAINED)
        self._metadata_src = np.full(max_seq_len, TRAINED_METADATA if metadata_loss else UNTRAINED)
        self._pad = np.full(max_seq_len, pad_token_id)

    def __call__(self, batch: PackedBatch | Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if not isinstance(batch, PackedBatch):
            return dict(batch)  # already a model batch (e.g. Composer re-applying transforms)
        return self.inject(batch)[0]

    def inject(self, batch: PackedBatch) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        """The model batch, and for each of its slots the index of its token in the stored row (< 0: metadata/pad).

        The batch is assembled from views (the segments' tokens, their prefixes, slices of one ``arange``) with
        one concatenation per output: numpy calls release the GIL, and each one in the main process gives the
        dataset's background threads a chance to hold it, so their number per batch matters more than their size.
        Labels follow from the layout: a slot is trained when it holds a document token (``sources`` >= 0), or a
        metadata token under ``metadata_loss`` (``TRAINED_METADATA``), that does not start a new document.
        """
        n, length = len(batch), self.max_seq_len
        arange, minus_ones, meta_src = self._arange, self._minus_ones, self._metadata_src
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
                head = 1 if (seg.starts_with_bos and p and not self.suffix) else 0  # a BOS stays first
                if p and self.suffix:
                    seg_ids, seg_src = [row[seg.start : end], prefix], [arange[seg.start : end], meta_src[:p]]
                elif p:
                    seg_ids = [row[seg.start : seg.start + head], prefix, row[seg.start + head : end]]
                    seg_src = [arange[seg.start : seg.start + head], meta_src[:p], arange[seg.start + head : end]]
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
                if p and not self.suffix and not self.document_start_target and kept > head + p:
                    starts.append(r * length + write + head + p)  # its first token after the prefix: as the baseline
                kept_meta += max(kept - seg.length, 0) if self.suffix else min(p, max(kept - head, 0))
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
        labels = np.where(sources != UNTRAINED if self.metadata_loss else sources >= 0, input_ids, IGNORE_INDEX)
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
        if self.summary_attention and self.enabled:  # metadata slots: no stored token, before the row's padding
            out['prefix_mask'] = torch.from_numpy((sources < 0) & (arange[None, :] < used[:, None]))
        self.last_input_ids = out['input_ids']
        return out, sources
