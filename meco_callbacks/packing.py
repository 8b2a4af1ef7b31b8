"""Corpus conversion stage 2: a document MDS becomes a packed MDS of rows of exactly ``max_seq_len`` tokens.

Documents are laid end to end, each as ``[BOS] doc EOS`` (BOS only when the tokenizer itself adds one, EOS
always), and the stream is cut into rows. A document longer than the rest of a row continues in the next
rows; each row records its segments' lengths, URLs and metadata, so the collator can insert a prefix before
every segment and rebuild ``sequence_id`` at load time (formats.py describes the columns).

Parallel design: the document dataset is split into contiguous ranges of rows whose plan depends only on
the dataset (never on the number of workers). Worker processes read and decode the ranges into token
streams; the calling process is the single writer and consumes the ranges strictly in plan order, so the
rows, the shard files and the index are byte-identical to a serial run. Cutting rows does not depend on
where ranges begin or end, only on the order of the documents.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from streaming import MDSWriter
from streaming.base.compression import decompress
from streaming.base.format import reader_from_json
from streaming.base.format.mds import MDSReader
from tqdm import tqdm

from meco_callbacks.fingerprint import tokenizer_info
from meco_callbacks.formats import (DOCUMENT_FORMAT, PACKED_COLUMNS, PACKED_FORMAT, read_dataset_info,
                                    write_dataset_info)

logger = logging.getLogger(__name__)

TOKEN_ENCODINGS = {'ndarray:uint32': np.uint32, 'ndarray:int32': np.int32}
# Scalar encodings a metadata column may have; their values are carried as strings.
METADATA_ENCODINGS = frozenset({
    'str', 'int', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64',
    'float16', 'float32', 'float64', 'str_int', 'str_float', 'str_decimal',
})
DEFAULT_DOCUMENTS_PER_TASK = 4096
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
        raise FileNotFoundError(f'{directory} holds no index.json: it is not an MDS dataset. Point the packer at '
                                f'the output of convert/documents.py or at the MeCo authors\' released MDS data.')
    shards = json.loads(index_path.read_text())['shards']
    if not shards:
        raise ValueError(f'{index_path} lists no shards: the document dataset is empty.')
    for shard in shards:
        if shard.get('format') != 'mds':
            raise ValueError(f'{index_path}: shard {shard["raw_data"]["basename"]} is in format '
                             f'{shard.get("format")!r}; the packer reads MDS shards only.')
    names, encodings = shards[0]['column_names'], shards[0]['column_encodings']
    for shard in shards[1:]:
        if shard['column_names'] != names or shard['column_encodings'] != encodings:
            raise ValueError(f'{index_path}: shards disagree on their columns ({names} vs {shard["column_names"]}); '
                             f'a dataset must have one schema.')
    columns = dict(zip(names, encodings))
    for required in ('input_ids', 'url'):
        if required not in columns:
            raise ValueError(f'{directory} has no {required!r} column (columns: {sorted(columns)}); a document '
                             f'dataset needs input_ids, url and optionally length (see meco_callbacks/formats.py).')
    if columns['input_ids'] not in TOKEN_ENCODINGS:
        raise ValueError(f'{directory}: input_ids is stored as {columns["input_ids"]!r}; the packer reads '
                         f'{" or ".join(TOKEN_ENCODINGS)}. Re-convert the documents with convert/documents.py.')
    extra = [name for name in names if name not in ('input_ids', 'url', 'length')]
    chosen = tuple(extra if metadata_columns is None else metadata_columns)
    for name in chosen:
        if name not in columns:
            raise ValueError(f'metadata column {name!r} is not in {directory} (extra columns: {extra}).')
        if name in ('input_ids', 'url', 'length'):
            raise ValueError(f'{name!r} is not a metadata column; choose among the extra columns {extra}.')
        if columns[name] not in METADATA_ENCODINGS:
            others = ','.join(column for column in extra if column != name) or "''"
            raise ValueError(f'metadata column {name!r} of {directory} is stored as {columns[name]!r}, which cannot '
                             f'be carried as text; leave it out with --metadata-columns {others}.')
    return DocumentDataset(directory=directory, shards=shards, token_dtype=columns['input_ids'],
                           metadata_columns=chosen, num_documents=sum(shard['samples'] for shard in shards))


def plan_ranges(dataset: DocumentDataset, documents_per_task: int, special: SpecialTokens,
                vocab_size: int | None) -> list[DocumentRange]:
    """Split the dataset into contiguous document ranges, in dataset order, independent of the worker count.

    Uncompressed shards are split into ranges of at most ``documents_per_task`` documents; a shard stored only
    compressed is one range, since it must be decompressed whole.
    """
    ranges = []
    first = 0
    for shard in dataset.shards:
        samples = shard['samples']
        step = documents_per_task if _raw_shard_path(str(dataset.directory), shard).is_file() else max(samples, 1)
        for begin in range(0, samples, step):
            end = min(begin + step, samples)
            ranges.append(DocumentRange(directory=str(dataset.directory), shard=shard, begin=begin, end=end,
                                        first_document=first + begin, token_dtype=dataset.token_dtype,
                                        metadata_columns=dataset.metadata_columns, special=special,
                                        vocab_size=vocab_size))
        first += samples
    return ranges


def read_range(task: DocumentRange) -> DocumentChunk:
    """Decode a range's documents and lay the kept ones end to end as ``[BOS] doc EOS``; skips are counted."""
    reader = reader_from_json(task.directory, None, task.shard)
    assert isinstance(reader, MDSReader)
    samples = _sample_bytes(task, reader)
    dtype = TOKEN_ENCODINGS[task.token_dtype]
    eos = np.array([task.special.eos], dtype)
    bos = None if task.special.bos is None else np.array([task.special.bos], dtype)
    parts: list[np.ndarray] = []
    lengths: list[int] = []
    urls: list[str] = []
    metadata: list[dict[str, str]] = []
    kept: list[int] = []  # each kept document's index in the range
    skipped: Counter[str] = Counter()
    document_tokens = 0
    for position, data in enumerate(samples):
        sample = reader.decode_sample(data)
        ids = sample['input_ids']
        if 'length' in sample and int(sample['length']) != len(ids):
            skipped[SKIP_LENGTH_MISMATCH] += 1
            continue
        if len(ids) == 0:
            skipped[SKIP_EMPTY] += 1
            continue
        if bos is not None:
            parts.append(bos)
        parts += (ids, eos)
        lengths.append(len(ids) + 1 + (bos is not None))
        document_tokens += len(ids)
        kept.append(position)
        urls.append(sample['url'])
        metadata.append({name: _as_text(sample[name]) for name in task.metadata_columns})
    tokens = np.concatenate(parts) if parts else np.empty(0, dtype)
    _check_token_ids(tokens, np.asarray(lengths, np.int64), kept, task)
    return DocumentChunk(tokens=tokens.astype(np.uint32, copy=False), lengths=np.asarray(lengths, np.int64),
                         urls=urls, metadata=metadata, documents_read=len(samples), document_tokens=document_tokens,
                         skipped=dict(skipped))


class RowPacker:
    """Cuts the document stream into rows of exactly ``max_seq_len`` tokens and records each row's segments.

    Feed chunks in order with ``add``; tokens that do not fill a last row stay pending and are what ``finish``
    reports as dropped. The rows depend only on the documents' order, not on how they are chunked.
    """

    def __init__(self, max_seq_len: int) -> None:
        self.max_seq_len = max_seq_len
        self.rows = 0
        self.segments = 0
        self.continued_segments = 0
        self._tokens = np.empty(0, np.uint32)
        self._lengths = np.empty(0, np.int64)  # pending documents' tokens not yet written
        self._written = 0  # tokens of the first pending document already written in earlier rows
        self._urls: list[str] = []
        self._metadata: list[dict[str, str]] = []

    def add(self, chunk: DocumentChunk) -> Iterator[dict[str, Any]]:
        """Yield every row completed by the chunk's documents, as packed-MDS samples."""
        size = self.max_seq_len
        tokens = np.concatenate([self._tokens, chunk.tokens])
        lengths = np.concatenate([self._lengths, chunk.lengths])
        urls = self._urls + chunk.urls
        metadata = self._metadata + chunk.metadata
        ends = np.cumsum(lengths)
        starts = ends - lengths
        if len(starts):
            starts[0] -= self._written
        num_rows = len(tokens) // size
        row_starts = np.arange(num_rows, dtype=np.int64) * size
        firsts = np.searchsorted(ends, row_starts, side='right')
        lasts = np.searchsorted(ends, row_starts + size - 1, side='right') + 1
        for lo, first, last in zip(row_starts.tolist(), firsts.tolist(), lasts.tolist()):
            hi = lo + size
            segment_lengths = np.minimum(ends[first:last], hi) - np.maximum(starts[first:last], lo)
            continued = int(starts[first] < lo)
            self.rows += 1
            self.segments += last - first
            self.continued_segments += continued
            yield {
                'input_ids': tokens[lo:hi],
                'segment_lengths': segment_lengths.astype(np.uint32),
                'continued': continued,
                'urls': urls[first:last],
                'metadata': metadata[first:last],
            }
        cut = num_rows * size
        pending = int(np.searchsorted(ends, cut, side='right'))
        self._tokens = tokens[cut:].copy()
        self._written = max(0, cut - int(starts[pending])) if pending < len(ends) else 0
        self._lengths = ends[pending:] - np.maximum(starts[pending:], cut)
        self._urls = urls[pending:]
        self._metadata = metadata[pending:]

    def finish(self) -> tuple[int, int]:
        """``(tokens, documents)`` left in the last partial row: dropped; the documents are those never written."""
        documents = len(self._lengths) - (1 if self._written else 0)
        return len(self._tokens), documents


def pack_documents(documents_dir: str | Path, out_dir: str | Path, max_seq_len: int, tokenizer: Any = None,
                   num_workers: int = 1, overwrite: bool = False, progress: bool = True,
                   metadata_columns: Sequence[str] | None = None, compression: str | None = None,
                   documents_per_task: int = DEFAULT_DOCUMENTS_PER_TASK) -> dict[str, Any]:
    """Pack a document MDS into rows of exactly ``max_seq_len`` tokens in ``out_dir``; returns the stats.

    ``tokenizer`` (a path, hub name or loaded tokenizer) is required when the documents carry no info file
    (e.g. the MeCo authors' release) and must match the recorded fingerprint when they do. ``out_dir`` is
    written in a temporary sibling and renamed when complete; one that holds a different dataset is refused
    unless ``overwrite``. ``num_workers`` processes decode documents; the output does not depend on it.
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
        raise ValueError(f'{documents} holds a {doc_info.get("format")!r} dataset, not documents '
                         f'({DOCUMENT_FORMAT!r}); the packer reads the output of convert/documents.py.')
    dataset = open_document_dataset(documents, metadata_columns)
    tokenizer_entry = resolve_tokenizer(documents, doc_info, tokenizer)
    special = SpecialTokens(eos=int(tokenizer_entry['eos_token_id']),
                            bos=int(tokenizer_entry['bos_token_id']) if tokenizer_entry['adds_bos'] else None)
    info: dict[str, Any] = {
        'format': PACKED_FORMAT,
        'max_seq_len': max_seq_len,
        'tokenizer': tokenizer_entry,
        'source': {'path': str(documents), 'format': doc_info.get('format') if doc_info else None,
                   'documents': dataset.num_documents, 'metadata_columns': list(dataset.metadata_columns)},
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
        stats = _write_rows(ranges, staging, max_seq_len, num_workers, progress, compression, dataset.num_documents)
        if stats['rows'] == 0:
            raise ValueError(f'{documents} holds {stats["tokens_dropped"]} tokens (BOS/EOS included), fewer than '
                             f'one row of max_seq_len={max_seq_len}: nothing to train on. Use a smaller '
                             f'--max-seq-len or more documents.')
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
    logger.info('Packed %d documents (%d skipped: %s) into %d rows of %d tokens in %s: %.0f documents/s, '
                '%.0f tokens/s; %d tokens dropped at the end.', stats['documents_packed'],
                sum(stats['skipped'].values()), stats['skipped'], stats['rows'], max_seq_len, out,
                stats['documents_read'] / seconds, stats['tokens'] / seconds, stats['tokens_dropped'])
    return stats


def resolve_tokenizer(documents_dir: Path, doc_info: dict[str, Any] | None, tokenizer: Any) -> dict[str, Any]:
    """The tokenizer entry to pack with and record: the documents' own, checked against ``tokenizer`` if given."""
    recorded = doc_info.get('tokenizer') if doc_info else None
    if tokenizer is None:
        if recorded is None:
            raise ValueError(f'{documents_dir} has no tokenizer record (no meco_dataset.json, e.g. the MeCo authors\' '
                             f'released data): pass --tokenizer with the tokenizer that produced its input_ids '
                             f'(for the MeCo release: meta-llama/Meta-Llama-3-8B) so its fingerprint is recorded.')
        missing = {'fingerprint', 'eos_token_id', 'bos_token_id', 'adds_bos'} - recorded.keys()
        if missing:
            raise ValueError(f'the tokenizer record of {documents_dir} lacks {sorted(missing)}: pass --tokenizer '
                             f'with the tokenizer that produced the documents.')
        return recorded
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    given = tokenizer_info(tokenizer)
    if recorded is not None and recorded.get('fingerprint') != given['fingerprint']:
        raise ValueError(f'tokenizer {given["name"]!r} (fingerprint {given["fingerprint"]}) is not the one that '
                         f'produced {documents_dir}: it was tokenized with {recorded.get("name")!r} (fingerprint '
                         f'{recorded.get("fingerprint")}). Pass that tokenizer, or omit --tokenizer to use the record.')
    if given['eos_token_id'] is None:
        raise ValueError(f'tokenizer {given["name"]!r} has no EOS token; the packer ends every document with one.')
    return {**given, **recorded} if recorded is not None else given


def _write_rows(ranges: list[DocumentRange], staging: Path, max_seq_len: int, num_workers: int, progress: bool,
                compression: str | None, num_documents: int) -> dict[str, Any]:
    """Read the ranges (in worker processes when ``num_workers`` > 1), pack them in order, write the rows."""
    packer = RowPacker(max_seq_len)
    documents_read = 0
    document_tokens = 0
    special_tokens = 0
    skipped: Counter[str] = Counter()
    # Worker processes are forked before the writer's and tqdm's threads exist.
    with _OrderedChunks(ranges, num_workers) as chunks, \
            MDSWriter(out=str(staging), columns=PACKED_COLUMNS, compression=compression) as writer, \
            tqdm(total=num_documents, unit='doc', desc='packing', disable=not progress) as bar:
        started = time.perf_counter()
        for chunk in chunks:
            for row in packer.add(chunk):
                writer.write(row)
            documents_read += chunk.documents_read
            document_tokens += chunk.document_tokens
            special_tokens += len(chunk.tokens) - chunk.document_tokens
            skipped.update(chunk.skipped)
            bar.update(chunk.documents_read)
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(rows=packer.rows, tokens_per_s=f'{packer.rows * max_seq_len / elapsed:.3g}')
    tokens_dropped, documents_dropped = packer.finish()
    if documents_dropped:
        skipped[SKIP_DROPPED_TAIL] += documents_dropped
    return {
        'rows': packer.rows,
        'tokens': packer.rows * max_seq_len,
        'documents_read': documents_read,
        'documents_packed': packer.segments - packer.continued_segments,
        'skipped': dict(sorted(skipped.items())),
        'segments': packer.segments,
        'continued_segments': packer.continued_segments,
        'document_tokens': document_tokens,
        'special_tokens': special_tokens,
        'tokens_dropped': tokens_dropped,
    }


class _OrderedChunks:
    """Context manager yielding the ranges' chunks in plan order: read here, or by a bounded process pool."""

    def __init__(self, ranges: list[DocumentRange], num_workers: int) -> None:
        self.ranges = ranges
        self.num_workers = num_workers
        self.pool: ProcessPoolExecutor | None = None
        self.pending: deque[Future[DocumentChunk]] = deque()

    def __enter__(self) -> Iterator[DocumentChunk]:
        if self.num_workers == 1 or len(self.ranges) == 1:
            return map(read_range, self.ranges)
        self.pool = ProcessPoolExecutor(self.num_workers, mp_context=multiprocessing.get_context('fork'))
        tasks = iter(self.ranges)
        window = 2 * self.num_workers  # bounds memory: at most this many decoded chunks wait for the writer
        for task in tasks:
            self.pending.append(self.pool.submit(read_range, task))
            if len(self.pending) == window:
                break
        return self._drain(tasks)

    def _drain(self, tasks: Iterator[DocumentRange]) -> Iterator[DocumentChunk]:
        assert self.pool is not None
        while self.pending:
            chunk = self.pending.popleft().result()
            task = next(tasks, None)
            if task is not None:
                self.pending.append(self.pool.submit(read_range, task))
            yield chunk

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


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
        raise FileExistsError(f'{out} already exists and holds something other than a packed dataset; pass '
                              f'--overwrite (overwrite=True) to replace it, or choose another output directory.')
    differences = [key for key, value in _identity(info).items() if _identity(existing).get(key) != value]
    if differences:
        raise FileExistsError(f'{out} holds a different packed dataset (it differs in {", ".join(differences)}); '
                              f'pass --overwrite (overwrite=True) to replace it, or choose another output directory.')
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


def _raw_shard_path(directory: str, shard: dict[str, Any]) -> Path:
    return Path(directory) / shard['raw_data']['basename']


def _sample_bytes(task: DocumentRange, reader: MDSReader) -> list[bytes]:
    """The encoded samples ``[begin, end)`` of the task's shard, read from the raw file or the decompressed one."""
    raw = _raw_shard_path(task.directory, task.shard)
    if raw.is_file():
        with open(raw, 'rb', 0) as f:
            f.seek(4 * (1 + task.begin))
            offsets = np.frombuffer(f.read(4 * (task.end - task.begin + 1)), np.uint32).astype(np.int64)
            f.seek(int(offsets[0]))
            blob = f.read(int(offsets[-1] - offsets[0]))
        offsets -= offsets[0]
    else:
        zip_info = task.shard.get('zip_data')
        if not zip_info or not (Path(task.directory) / zip_info['basename']).is_file():
            raise FileNotFoundError(f'shard {raw} is missing (neither its raw nor its compressed file is there).')
        data = decompress(reader.compression, (Path(task.directory) / zip_info['basename']).read_bytes())
        offsets = np.frombuffer(data, np.uint32, count=task.end - task.begin + 1, offset=4 * (1 + task.begin))
        blob = data
    bounds = offsets.tolist()
    return [blob[bounds[i]:bounds[i + 1]] for i in range(task.end - task.begin)]


def _check_token_ids(tokens: np.ndarray, lengths: np.ndarray, kept: list[int], task: DocumentRange) -> None:
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
        raise ValueError(f'document {document} of {task.directory} has the negative token id {int(tokens[bad])}: '
                         f'its input_ids are not token ids. Re-convert it with convert/documents.py.')
    raise ValueError(f'document {document} of {task.directory} has token id {int(tokens[bad])}, outside the '
                     f'tokenizer\'s vocabulary of {limit} ids: the documents were made with another tokenizer. '
                     f'Pass the one that produced them with --tokenizer.')


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)
