"""Corpus conversion stage 2: a document MDS becomes a packed MDS of rows of exactly ``max_seq_len`` tokens.

Documents are laid end to end, each as ``[BOS] doc EOS`` (BOS only when the tokenizer itself adds one, EOS
always), and the stream is cut into rows. A document longer than the rest of a row continues in the next
rows; each row records its segments' lengths, URLs and metadata, so the collator can insert a prefix before
every segment and rebuild ``sequence_id`` at load time (formats.py describes the columns).

Parallel design (output byte-identical for any number of workers): the documents are split into contiguous
ranges by a plan that depends only on the dataset. Pass 1 measures each range's stream length (tokens with
BOS/EOS, after skips), which fixes where every row begins. Pass 2 gives each range a part: the rows that
begin inside it, written by one worker into its own MDS part (reading a little into the next ranges to
finish its last row). The parts are joined in plan order into one index. Reading, cutting and writing all
run in the workers; the serial run executes the same plan in-process.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from streaming import MDSWriter
from tqdm import tqdm

from meco_callbacks.corpus.mds import (
    METADATA_ENCODINGS,
    TOKEN_ENCODINGS,
    Spans,
    array_spans,
    column_integers,
    column_spans,
    column_texts,
    raw_shard_path,
    sample_bytes,
)
from meco_callbacks.formats import DOCUMENT_FORMAT, PACKED_COLUMNS, PACKED_FORMAT, read_dataset_info, write_dataset_info
from meco_callbacks.tokenizer.fingerprint import tokenizer_info

logger = logging.getLogger(__name__)

DEFAULT_DOCUMENTS_PER_TASK = 16384  # about one 64 MB shard of web documents
READ_AHEAD_DOCUMENTS = 256  # documents read at a time past a part's own range to finish its last row
SKIP_EMPTY = 'empty_document'
SKIP_LENGTH_MISMATCH = 'length_column_mismatch'
SKIP_DROPPED_TAIL = 'in_dropped_last_partial_row'


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


@dataclass(frozen=True)
class RangeMeasure:
    """Pass 1's result for a range: its stream length and what its documents amount to."""

    stream_tokens: int  # tokens of the kept documents with their BOS/EOS: the range's share of the rows
    document_tokens: int
    documents_read: int
    documents_kept: int
    skipped: dict[str, int]


@dataclass(frozen=True)
class PartTask:
    """Pass 2's unit of work: write ``rows`` rows, the first beginning ``skip`` tokens into ``documents``."""

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


def open_document_dataset(documents_dir: str | Path, metadata_columns: Sequence[str] | None = None) -> DocumentDataset:
    """Read and check a document MDS's index: ``input_ids`` and ``url`` columns, consistent across shards.

    ``metadata_columns`` selects the extra columns carried into each segment's metadata; None carries all.
    """
    directory = Path(documents_dir)
    index_path = directory / 'index.json'
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
    )


def plan_ranges(
    dataset: DocumentDataset, documents_per_task: int, special: SpecialTokens, vocab_size: int | None
) -> list[DocumentRange]:
    """Split the dataset into contiguous document ranges, in dataset order, independent of the worker count.

    Uncompressed shards are split into ranges of at most ``documents_per_task`` documents; a shard stored only
    compressed is one range, since it must be decompressed whole.
    """
    ranges = []
    first = 0
    for shard in dataset.shards:
        samples = shard['samples']
        step = documents_per_task if raw_shard_path(str(dataset.directory), shard).is_file() else max(samples, 1)
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
                )
            )
        first += samples
    return ranges


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
    _check_token_ids(tokens, lengths, kept, task)
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
    """Give each range the rows that begin inside it; ranges where no row begins get no part."""
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
                out=str(parts_dir / f'part.{len(parts):05d}'),
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
            raw = raw_shard_path(following.directory, following.shard).is_file()
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


def pack_documents(
    documents_dir: str | Path,
    out_dir: str | Path,
    max_seq_len: int,
    tokenizer: Any = None,
    num_workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    metadata_columns: Sequence[str] | None = None,
    compression: str | None = None,
    documents_per_task: int = DEFAULT_DOCUMENTS_PER_TASK,
) -> dict[str, Any]:
    """Pack a document MDS into rows of exactly ``max_seq_len`` tokens in ``out_dir``; returns the stats.

    ``tokenizer`` (a path, hub name or loaded tokenizer) is required when the documents carry no info file
    (e.g. the MeCo authors' release) and must match the recorded fingerprint when they do. ``out_dir`` is
    written in a temporary sibling and renamed when complete; one that holds a different dataset is refused
    unless ``overwrite``. ``num_workers`` processes read, cut and write; the output does not depend on it.
    """
    if max_seq_len < 1:
        raise ValueError(f'max_seq_len must be at least 1, got {max_seq_len}.')
    if num_workers < 1:
        raise ValueError(f'num_workers must be at least 1, got {num_workers}.')
    if documents_per_task < 1:
        raise ValueError(f'documents_per_task must be at least 1, got {documents_per_task}.')
    documents = Path(documents_dir).resolve()
    out = Path(out_dir).resolve()
    doc_info = read_dataset_info(documents)
    if doc_info is not None and doc_info.get('format') != DOCUMENT_FORMAT:
        raise ValueError(
            f'{documents} holds a {doc_info.get("format")!r} dataset, not documents '
            f'({DOCUMENT_FORMAT!r}); the packer reads the output of convert/documents.py.'
        )
    dataset = open_document_dataset(documents, metadata_columns)
    tokenizer_entry = resolve_tokenizer(documents, doc_info, tokenizer)
    special = SpecialTokens(
        eos=int(tokenizer_entry['eos_token_id']),
        bos=int(tokenizer_entry['bos_token_id']) if tokenizer_entry['adds_bos'] else None,
    )
    info: dict[str, Any] = {
        'format': PACKED_FORMAT,
        'max_seq_len': max_seq_len,
        'tokenizer': tokenizer_entry,
        'source': {
            'path': str(documents),
            'format': doc_info.get('format') if doc_info else None,
            'documents': dataset.num_documents,
            'metadata_columns': list(dataset.metadata_columns),
        },
        'compression': compression,
    }
    _check_output_dir(out, documents, info, overwrite)
    ranges = plan_ranges(dataset, documents_per_task, special, tokenizer_entry.get('vocab_size'))
    staging = out.with_name(out.name + '.packing')
    if staging.exists():
        logger.warning('Removing %s left by an interrupted packing run.', staging)
        shutil.rmtree(staging)
    started = time.perf_counter()
    try:
        stats = _pack(ranges, staging, max_seq_len, num_workers, progress, compression)
        if stats['rows'] == 0:
            raise ValueError(
                f'{documents} holds {stats["tokens_dropped"]} tokens (BOS/EOS included), fewer than '
                f'one row of max_seq_len={max_seq_len}: nothing to train on. Use a smaller '
                f'--max-seq-len or more documents.'
            )
        write_dataset_info(staging, {**info, 'stats': stats})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    staging.rename(out)
    seconds = time.perf_counter() - started
    logger.info(
        'Packed %d documents (%d skipped: %s) into %d rows of %d tokens in %s with %d worker(s): '
        '%.0f documents/s, %.0f tokens/s; %d tokens dropped at the end.',
        stats['documents_packed'],
        sum(stats['skipped'].values()),
        stats['skipped'],
        stats['rows'],
        max_seq_len,
        out,
        num_workers,
        stats['documents_read'] / seconds,
        stats['tokens'] / seconds,
        stats['tokens_dropped'],
    )
    return stats


def resolve_tokenizer(documents_dir: Path, doc_info: dict[str, Any] | None, tokenizer: Any) -> dict[str, Any]:
    """The tokenizer entry to pack with and record: the documents' own, checked against ``tokenizer`` if given."""
    recorded = doc_info.get('tokenizer') if doc_info else None
    if tokenizer is None:
        if recorded is None:
            raise ValueError(
                f"{documents_dir} has no tokenizer record (no meco_dataset.json, e.g. the MeCo authors' "
                f'released data): pass --tokenizer with the tokenizer that produced its input_ids '
                f'(for the MeCo release: meta-llama/Meta-Llama-3-8B) so its fingerprint is recorded.'
            )
        missing = {'fingerprint', 'eos_token_id', 'bos_token_id', 'adds_bos'} - recorded.keys()
        if missing:
            raise ValueError(
                f'the tokenizer record of {documents_dir} lacks {sorted(missing)}: pass --tokenizer '
                f'with the tokenizer that produced the documents.'
            )
        return recorded
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    given = tokenizer_info(tokenizer)
    if recorded is not None and recorded.get('fingerprint') != given['fingerprint']:
        raise ValueError(
            f'tokenizer {given["name"]!r} (fingerprint {given["fingerprint"]}) is not the one that '
            f'produced {documents_dir}: it was tokenized with {recorded.get("name")!r} (fingerprint '
            f'{recorded.get("fingerprint")}). Pass that tokenizer, or omit --tokenizer to use the record.'
        )
    if given['eos_token_id'] is None:
        raise ValueError(f'tokenizer {given["name"]!r} has no EOS token; the packer ends every document with one.')
    return {**given, **recorded} if recorded is not None else given


def _pack(
    ranges: list[DocumentRange],
    staging: Path,
    max_seq_len: int,
    num_workers: int,
    progress: bool,
    compression: str | None,
) -> dict[str, Any]:
    """Run both passes (in worker processes when ``num_workers`` > 1), join the parts, and total the stats."""
    with _task_map(num_workers) as run:
        measured = run(measure_range, ranges)
        measures = []
        with tqdm(
            total=sum(task.end - task.begin for task in ranges), unit='doc', desc='measuring', disable=not progress
        ) as bar:
            for measure in measured:
                measures.append(measure)
                bar.update(measure.documents_read)
        parts = plan_parts(ranges, measures, max_seq_len, staging / 'parts', compression)
        written = run(write_part, parts)
        part_stats = []
        with tqdm(total=sum(part.rows for part in parts), unit='row', desc='packing', disable=not progress) as bar:
            for stats in written:
                part_stats.append(stats)
                bar.update(stats.rows)
                bar.set_postfix(tokens_per_s=f'{bar.n * max_seq_len / max(bar.format_dict["elapsed"], 1e-9):.3g}')
    _join_parts(staging, [Path(part.out) for part in parts])
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


@contextmanager
def _task_map(num_workers: int) -> Iterator[Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]]:
    """An order-preserving ``map``: in this process, or over a pool of ``num_workers`` processes.

    Workers are forked (where the platform can) when the first tasks are submitted, before tqdm's or any
    writer's threads exist in this process.
    """
    if num_workers == 1:
        yield map
        return
    method = 'fork' if 'fork' in multiprocessing.get_all_start_methods() else 'spawn'
    pool = ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context(method))
    try:
        yield lambda function, tasks: pool.map(function, tasks)
    finally:  # on an error, tasks not yet started are dropped rather than run to completion
        pool.shutdown(wait=True, cancel_futures=True)


def _join_parts(staging: Path, part_dirs: list[Path]) -> None:
    """Move the parts' shards into ``staging`` under one numbering, in order, and write the joint index."""
    shards = []
    for part_dir in part_dirs:
        for shard in json.loads((part_dir / 'index.json').read_text())['shards']:
            old_name = shard['raw_data']['basename']
            new_name = f'shard.{len(shards):05d}.mds'
            for key in ('raw_data', 'zip_data'):
                if shard.get(key):
                    basename = shard[key]['basename']
                    shard[key]['basename'] = new_name + basename[len(old_name) :]
                    if (part_dir / basename).is_file():
                        (part_dir / basename).rename(staging / shard[key]['basename'])
            shards.append(shard)
    staging.mkdir(parents=True, exist_ok=True)
    # The index as MDSWriter writes it, so the joint dataset reads like a single writer's.
    (staging / 'index.json').write_text(json.dumps({'version': 2, 'shards': shards}, sort_keys=True))
    shutil.rmtree(staging / 'parts', ignore_errors=True)


def _check_output_dir(out: Path, documents: Path, info: dict[str, Any], overwrite: bool) -> None:
    """Refuse an output that is (or contains, or is inside) the input, or that holds a different dataset."""
    if out == documents or documents.is_relative_to(out) or out.is_relative_to(documents):
        raise ValueError(f'the output {out} overlaps the documents {documents}; choose a separate directory.')
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if overwrite:
        logger.warning('Replacing %s (--overwrite).', out)
        return
    existing = read_dataset_info(out) if out.is_dir() else None
    if existing is None or existing.get('format') != PACKED_FORMAT:
        raise FileExistsError(
            f'{out} already exists and holds something other than a packed dataset; pass '
            f'--overwrite (overwrite=True) to replace it, or choose another output directory.'
        )
    differences = [key for key, value in _identity(info).items() if _identity(existing).get(key) != value]
    if differences:
        raise FileExistsError(
            f'{out} holds a different packed dataset (it differs in {", ".join(differences)}); '
            f'pass --overwrite (overwrite=True) to replace it, or choose another output directory.'
        )
    logger.info('%s holds a packed dataset made with the same settings; rebuilding it.', out)


def _identity(info: dict[str, Any]) -> dict[str, Any]:
    """What makes two packed datasets the same dataset: their source, settings and tokenizer."""
    source = info.get('source') or {}
    return {
        'max_seq_len': info.get('max_seq_len'),
        'tokenizer fingerprint': (info.get('tokenizer') or {}).get('fingerprint'),
        'source path': source.get('path'),
        'metadata columns': source.get('metadata_columns'),
        'compression': info.get('compression'),
    }


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
    skipped = {
        SKIP_LENGTH_MISMATCH: int(np.count_nonzero(~lengths_agree)),
        SKIP_EMPTY: int(np.count_nonzero(empty & lengths_agree)),
    }
    return _RangeLayout(
        blob=blob,
        spans=spans,
        encodings=encodings,
        token_starts=token_starts,
        token_counts=token_counts,
        kept=np.flatnonzero(lengths_agree & ~empty),
        documents_read=count,
        skipped={reason: n for reason, n in skipped.items() if n},
    )


def _check_token_ids(tokens: np.ndarray, lengths: np.ndarray, kept: np.ndarray, task: DocumentRange) -> None:
    """Fail on a token id the tokenizer cannot have: negative (int32 data) or beyond its vocabulary."""
    if not len(tokens):
        return
    low, high = int(tokens.min()), int(tokens.max())
    limit = task.vocab_size
    if low >= 0 and (limit is None or high < limit):
        return
    bad = int(np.flatnonzero((tokens < 0) | (tokens >= (limit if limit is not None else np.iinfo(np.int64).max)))[0])
    document = task.first_document + kept[int(np.searchsorted(np.cumsum(lengths), bad, side='right'))]
    if int(tokens[bad]) < 0:
        raise ValueError(
            f'document {document} of {task.directory} has the negative token id {int(tokens[bad])}: '
            f'its input_ids are not token ids. Re-convert it with convert/documents.py.'
        )
    raise ValueError(
        f'document {document} of {task.directory} has token id {int(tokens[bad])}, outside the '
        f"tokenizer's vocabulary of {limit} ids: the documents were made with another tokenizer. "
        f'Pass the one that produced them with --tokenizer.'
    )
