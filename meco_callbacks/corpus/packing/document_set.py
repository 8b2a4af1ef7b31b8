"""A document MDS as the packer reads it: validated, cut into ranges, decoded a range at a time.

A range is a contiguous run of one shard's documents, the packer's unit of work. Decoding lays its kept
documents end to end as ``[BOS] doc EOS`` (BOS only when the tokenizer itself adds one, EOS always); empty
documents and documents whose ``length`` column disagrees with their tokens are counted skips, and a token id
the tokenizer cannot have is an error. Columns are located with ``corpus.mds`` for a whole range at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meco_callbacks.corpus.packing.mds import (
    METADATA_ENCODINGS,
    TOKEN_ENCODINGS,
    Spans,
    array_spans,
    check_token_ids,
    column_integers,
    column_spans,
    column_texts,
    sample_bytes,
)
from meco_callbacks.corpus.packing.shard_cache import fetch_shard, stored_raw
from meco_callbacks.corpus.storage.remote import Remote

SKIP_EMPTY = 'empty_document'

WINDOW_BYTES = 32 << 20  # a range's share of shard bytes: ~8M tokens, one padded row in thousands at 8192
IN_OTHER_SPLIT = 'in_the_other_split'  # counted with the skips, reported apart: not lost, in the other split
SKIP_LENGTH_MISMATCH = 'length_column_mismatch'


@dataclass(frozen=True)
class SpecialTokens:
    """The ids written around each document: ``bos`` before it (None: no BOS), ``eos`` after it."""

    eos: int
    bos: int | None


@dataclass(frozen=True)
class DocumentRange:
    """A contiguous range ``[begin, end)`` of one shard's documents: the unit of work a reader decodes."""

    directory: str
    shard: dict[str, Any]
    begin: int
    end: int
    first_document: int  # the dataset-wide index of document ``begin``, for error messages
    token_dtype: str
    metadata_columns: tuple[str, ...]
    special: SpecialTokens
    vocab_size: int | None
    split: Split | None = None
    remote: Remote | None = None  # where the shard is when ``directory`` is the local cache of a remote set


@dataclass(frozen=True)
class Split:
    """One side of a held-out split by URL hash: ``held_out`` selects the ``fraction`` side, else the rest."""

    fraction: float
    held_out: bool

    def keeps(self, urls: list[bytes]) -> np.ndarray:
        """Which of these URLs (UTF-8 bytes) belong to this side."""
        threshold = int(self.fraction * 2**64)
        held = np.fromiter(
            (int.from_bytes(hashlib.sha256(url).digest()[:8], 'big') < threshold for url in urls), bool, len(urls)
        )
        return held if self.held_out else ~held


@dataclass(frozen=True)
class RangeMeasure:
    """Pass 1's result for a range: its stream length and what its documents amount to."""

    stream_tokens: int  # tokens of the kept documents with their BOS/EOS: the range's share of the rows
    document_tokens: int
    documents_read: int
    documents_kept: int
    skipped: dict[str, int]


@dataclass
class DocumentChunk:
    """A range's documents as one token stream: ``tokens`` holds each kept document as ``[BOS] doc EOS``."""

    tokens: np.ndarray  # uint32
    lengths: np.ndarray  # int64, one per kept document, BOS and EOS included
    urls: list[str]
    metadata: list[dict[str, str]]
    documents_read: int
    document_tokens: int  # tokens of the kept documents, without BOS/EOS
    skipped: dict[str, int]


@dataclass(frozen=True)
class DocumentDataset:
    """A validated document MDS: its shards, token dtype and the metadata columns carried into rows."""

    directory: Path
    shards: list[dict[str, Any]]
    token_dtype: str
    metadata_columns: tuple[str, ...]
    num_documents: int
    remote: Remote | None = None


def open_document_dataset(
    documents_dir: str | Path, metadata_columns: Sequence[str] | None = None, remote: Remote | None = None
) -> DocumentDataset:
    """Read and check a document MDS's index: ``input_ids`` and ``url`` columns, consistent across shards.

    ``metadata_columns`` selects the extra columns carried into each segment's metadata; None carries all. With
    ``remote``, ``documents_dir`` is its local cache: the index is downloaded now, each shard when first read.
    """
    directory = Path(documents_dir)
    index_path = directory / 'index.json'
    if remote is not None and not remote.fetch('index.json'):
        raise FileNotFoundError(
            f'{remote.url} holds no index.json: it is not an MDS dataset, or it cannot be reached. Point the packer '
            'at the output of convert/documents.py.'
        )
    if not index_path.is_file():
        raise FileNotFoundError(
            f'{directory} holds no index.json: it is not an MDS dataset. Point the packer at '
            f"the output of convert/documents.py or at the MeCo authors' released MDS data."
        )
    shards = json.loads(index_path.read_text())['shards']
    if not shards:
        raise ValueError(f'{index_path} lists no shards: the document dataset is empty.')
    for shard in shards:
        if shard.get('format') != 'mds':
            raise ValueError(
                f'{index_path}: shard {shard["raw_data"]["basename"]} is in format '
                f'{shard.get("format")!r}; the packer reads MDS shards only.'
            )
    names, encodings = shards[0]['column_names'], shards[0]['column_encodings']
    for shard in shards[1:]:
        if shard['column_names'] != names or shard['column_encodings'] != encodings:
            raise ValueError(
                f'{index_path}: shards disagree on their columns ({names} vs {shard["column_names"]}); '
                f'a dataset must have one schema.'
            )
    columns = dict(zip(names, encodings))
    for required in ('input_ids', 'url'):
        if required not in columns:
            raise ValueError(
                f'{directory} has no {required!r} column (columns: {sorted(columns)}); a document '
                f'dataset needs input_ids, url and optionally length (see meco_callbacks/formats.py).'
            )
    if columns['input_ids'] not in TOKEN_ENCODINGS:
        raise ValueError(
            f'{directory}: input_ids is stored as {columns["input_ids"]!r}; the packer reads '
            f'{" or ".join(TOKEN_ENCODINGS)}. Re-convert the documents with convert/documents.py.'
        )
    extra = [name for name in names if name not in ('input_ids', 'url', 'length')]
    chosen = tuple(extra if metadata_columns is None else metadata_columns)
    for name in chosen:
        if name not in columns:
            raise ValueError(f'metadata column {name!r} is not in {directory} (extra columns: {extra}).')
        if name in ('input_ids', 'url', 'length'):
            raise ValueError(f'{name!r} is not a metadata column; choose among the extra columns {extra}.')
        if columns[name] not in METADATA_ENCODINGS:
            others = ','.join(column for column in extra if column != name) or "''"
            raise ValueError(
                f'metadata column {name!r} of {directory} is stored as {columns[name]!r}, which cannot '
                f'be carried as text; leave it out with --metadata-columns {others}.'
            )
    return DocumentDataset(
        directory=directory,
        shards=shards,
        token_dtype=columns['input_ids'],
        metadata_columns=chosen,
        num_documents=sum(shard['samples'] for shard in shards),
        remote=remote,
    )


def plan_ranges(
    dataset: DocumentDataset, documents_per_task: int | None, special: SpecialTokens, vocab_size: int | None
) -> list[DocumentRange]:
    """Split the dataset into contiguous document ranges, in dataset order, independent of the worker count.

    Uncompressed shards are split into ranges of at most ``documents_per_task`` documents, or by default of about
    ``WINDOW_BYTES`` of shard (so a range holds about as many tokens whatever the documents' lengths); a shard
    stored only compressed is one range, since it must be decompressed whole.
    """
    ranges = []
    first = 0
    for shard in dataset.shards:
        samples = shard['samples']
        if not stored_raw(str(dataset.directory), shard, dataset.remote):
            step = max(samples, 1)
        elif documents_per_task:
            step = documents_per_task
        else:
            step = max(1, samples * WINDOW_BYTES // max(shard['raw_data']['bytes'], 1))
        for begin in range(0, samples, step):
            end = min(begin + step, samples)
            ranges.append(
                DocumentRange(
                    directory=str(dataset.directory),
                    shard=shard,
                    begin=begin,
                    end=end,
                    first_document=first + begin,
                    token_dtype=dataset.token_dtype,
                    metadata_columns=dataset.metadata_columns,
                    special=special,
                    vocab_size=vocab_size,
                    remote=dataset.remote,
                )
            )
        first += samples
    return ranges


def describe_range(task: DocumentRange) -> str:
    """A range for messages about a worker that died on it."""
    return f'packing documents {task.first_document}-{task.first_document + task.end - task.begin - 1}'


def measure_range(task: DocumentRange) -> RangeMeasure:
    """Pass 1: a range's stream length and document counts, from the sample layout alone (no token copies)."""
    layout = _decode_layout(task)
    counts = layout.token_counts[layout.kept]
    return RangeMeasure(
        stream_tokens=int(counts.sum()) + len(counts) * (1 + (task.special.bos is not None)),
        document_tokens=int(counts.sum()),
        documents_read=layout.documents_read,
        documents_kept=len(counts),
        skipped=layout.skipped,
    )


def read_range(task: DocumentRange) -> DocumentChunk:
    """Decode a range's documents and lay the kept ones end to end as ``[BOS] doc EOS``; skips are counted.

    Columns are located for all documents at once from the MDS sample layout (numpy, no per-token work);
    Python touches each document only to copy its tokens and decode its URL and metadata strings.
    """
    layout = _decode_layout(task)
    blob, spans, kept = layout.blob, layout.spans, layout.kept
    dtype = TOKEN_ENCODINGS[task.token_dtype]
    counts = layout.token_counts[kept]
    bos = task.special.bos is not None
    lengths = counts + 1 + bos
    starts = np.cumsum(lengths) - lengths
    tokens = np.empty(int(lengths.sum()), dtype)
    if bos:
        tokens[starts] = task.special.bos
    tokens[starts + lengths - 1] = task.special.eos
    for source, size, target in zip(layout.token_starts[kept].tolist(), counts.tolist(), (starts + bos).tolist()):
        tokens[target : target + size] = np.frombuffer(blob, dtype, size, source)
    check_token_ids(tokens, lengths, kept, task.first_document, task.directory, task.vocab_size)
    url_starts, url_sizes = (column[kept].tolist() for column in spans['url'])
    urls = [blob[start : start + size].decode('utf-8') for start, size in zip(url_starts, url_sizes)]
    columns = [column_texts(blob, spans[name], kept, layout.encodings[name]) for name in task.metadata_columns]
    metadata = (
        [dict(zip(task.metadata_columns, values)) for values in zip(*columns)]
        if columns
        else [{} for _ in range(len(kept))]
    )
    return DocumentChunk(
        tokens=tokens.astype(np.uint32, copy=False),
        lengths=lengths.astype(np.int64),
        urls=urls,
        metadata=metadata,
        documents_read=layout.documents_read,
        document_tokens=int(counts.sum()),
        skipped=layout.skipped,
    )


@dataclass
class _RangeLayout:
    """Where a range's columns lie in its bytes, which documents are kept, and why the others were skipped."""

    blob: bytes
    spans: dict[str, Spans]
    encodings: dict[str, str]
    token_starts: np.ndarray
    token_counts: np.ndarray
    kept: np.ndarray
    documents_read: int
    skipped: dict[str, int]


def _decode_layout(task: DocumentRange) -> _RangeLayout:
    """Locate every document's columns in the range's bytes and decide which documents are kept."""
    fetch_shard(task)
    blob, offsets = sample_bytes(task.directory, task.shard, task.begin, task.end)
    count = len(offsets) - 1
    spans = column_spans(blob, offsets, task.shard)
    encodings = dict(zip(task.shard['column_names'], task.shard['column_encodings']))
    itemsize = np.dtype(TOKEN_ENCODINGS[task.token_dtype]).itemsize
    token_starts, token_counts = array_spans(blob, *spans['input_ids'], itemsize, task.first_document, task.directory)
    lengths_agree = (
        column_integers(blob, spans['length'], encodings['length']) == token_counts
        if 'length' in spans
        else np.ones(count, bool)
    )
    empty = token_counts == 0
    ours = np.ones(count, bool)
    if task.split is not None:
        url_starts, url_sizes = (column.tolist() for column in spans['url'])
        ours = task.split.keeps([blob[a : a + n] for a, n in zip(url_starts, url_sizes)])
    skipped = {
        SKIP_LENGTH_MISMATCH: int(np.count_nonzero(~lengths_agree & ours)),
        SKIP_EMPTY: int(np.count_nonzero(empty & lengths_agree & ours)),
        IN_OTHER_SPLIT: int(np.count_nonzero(~ours)),
    }
    return _RangeLayout(
        blob=blob,
        spans=spans,
        encodings=encodings,
        token_starts=token_starts,
        token_counts=token_counts,
        kept=np.flatnonzero(lengths_agree & ~empty & ours),
        documents_read=count,
        skipped={reason: n for reason, n in skipped.items() if n},
    )
