"""Stage 1 of corpus conversion: raw records -> document MDS, one row per document, tokenized once.

Each document becomes ``input_ids`` (uint32, no BOS/EOS), ``length``, ``url`` and the carried metadata columns
(``formats.DOCUMENT_COLUMNS``). Bad records are skipped with a counted reason, so that after every run
documents read = written + skipped; the counts, the tokenizer's fingerprint and the backend that tokenized
go into the dataset's info file.

The inputs are cut into units (``readers.plan_units``) that never depend on the number of workers or jobs.
Each unit is converted into its own MDS directory under ``<output>.partial`` and renamed into place when
complete, so a killed conversion resumes where it stopped, and every worker count and job split gives the
same bytes. The merge writes one index over all units and renames ``<output>.partial`` to ``<output>``.
Worker processes (forked, largest unit first) overlap reading, tokenizing and writing across units.
"""

from __future__ import annotations

import array
import hashlib
import json
import logging
import math
import multiprocessing
import os
import queue
import shutil
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from streaming import MDSWriter

from meco_callbacks.corpus.readers import (
    MISSING,
    FieldMapping,
    Record,
    Skip,
    Source,
    Unit,
    UnitReader,
    UnreadableFile,
    find_sources,
    plan_units,
)
from meco_callbacks.corpus.tokenization import TokenizerBackend, build_tokenizer_backend, load_tokenizer
from meco_callbacks.formats import DOCUMENT_COLUMNS, DOCUMENT_FORMAT, read_dataset_info, write_dataset_info
from meco_callbacks.tokenizer.fingerprint import tokenizer_info

log = logging.getLogger(__name__)

DEFAULT_UNIT_BYTES = 64 << 20
MIN_UNIT_BYTES = 1 << 20
UNITS_PER_INPUT = 64  # small inputs get smaller units (never below MIN_UNIT_BYTES) so that workers share the tail
PLAN_FILE = 'meco_conversion_plan.json'
UNIT_STATS_FILE = 'unit.json'
BATCH_CHARS = 1 << 20
BATCH_DOCUMENTS = 2048
SAMPLE_CHARS = 1 << 18
SAMPLE_UNITS = 16
SAMPLE_TEXT_CHARS = 1 << 12


class ConversionError(RuntimeError):
    """The conversion cannot go on as asked (existing data in the way, a worker died); the message says what to do."""


@dataclass(frozen=True)
class DocumentPolicy:
    """What makes a document acceptable, and what happens to one without a URL.

    ``missing_url``: ``skip`` drops a document whose URL is missing, null, empty or not a string; ``placeholder``
    keeps it with ``placeholder_url`` ('' means: no metadata prefix at training time). A URL with whitespace or
    control characters, or longer than ``max_url_chars``, is always skipped. Text longer than
    ``max_document_chars`` is skipped.
    """

    missing_url: str = 'skip'
    placeholder_url: str = ''
    max_url_chars: int = 2000
    max_document_chars: int = 16_000_000

    def __post_init__(self) -> None:
        if self.missing_url not in ('skip', 'placeholder'):
            raise ValueError(f"missing_url must be 'skip' or 'placeholder', not {self.missing_url!r}")
        if url_problem(self.placeholder_url, self.max_url_chars) not in (None, 'empty_url'):
            raise ValueError(f'placeholder_url {self.placeholder_url!r} is itself not a valid URL')


@dataclass
class ConversionStats:
    """Counts of one unit or a whole conversion; documents_read = documents_written + sum(skipped)."""

    documents_read: int = 0
    documents_written: int = 0
    tokens_written: int = 0
    skipped: Counter = field(default_factory=Counter)
    urls_replaced_by_placeholder: Counter = field(default_factory=Counter)
    metadata_missing: Counter = field(default_factory=Counter)
    files_unreadable: dict[str, str] = field(default_factory=dict)

    def add(self, other: ConversionStats) -> None:
        """Add another unit's counts to these."""
        self.documents_read += other.documents_read
        self.documents_written += other.documents_written
        self.tokens_written += other.tokens_written
        self.skipped.update(other.skipped)
        self.urls_replaced_by_placeholder.update(other.urls_replaced_by_placeholder)
        self.metadata_missing.update(other.metadata_missing)
        self.files_unreadable.update(other.files_unreadable)

    def to_dict(self) -> dict[str, Any]:
        """JSON form with sorted keys, so equal counts give equal bytes."""
        return {
            'documents_read': self.documents_read,
            'documents_written': self.documents_written,
            'tokens_written': self.tokens_written,
            'skipped': dict(sorted(self.skipped.items())),
            'urls_replaced_by_placeholder': dict(sorted(self.urls_replaced_by_placeholder.items())),
            'metadata_missing': dict(sorted(self.metadata_missing.items())),
            'files_unreadable': dict(sorted(self.files_unreadable.items())),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConversionStats:
        """Read back what ``to_dict`` wrote."""
        return cls(
            data['documents_read'],
            data['documents_written'],
            data['tokens_written'],
            Counter(data['skipped']),
            Counter(data['urls_replaced_by_placeholder']),
            Counter(data['metadata_missing']),
            dict(data['files_unreadable']),
        )


@dataclass
class ConversionReport:
    """What a conversion run did: the dataset info once the dataset is complete (None for an unmerged job part)."""

    output: Path
    info: dict[str, Any] | None
    units_converted: int
    tokenizer_backend: str
    stage_seconds: dict[str, float]
    wall_seconds: float
    convert_seconds: float = 0.0


def text_problem(text: Any, max_chars: int) -> str | None:
    """Why ``text`` cannot be a document's text, or None."""
    if text is MISSING or text is None:
        return 'missing_text'
    if not isinstance(text, str):
        return 'text_not_string'
    if not text or text.isspace():
        return 'empty_text'
    if len(text) > max_chars:
        return 'document_too_long'
    if not text.isascii() and not _encodable(text):
        return 'text_invalid_unicode'
    return None


def url_problem(url: Any, max_chars: int) -> str | None:
    """Why ``url`` cannot be stored as a document's URL, or None."""
    if url is MISSING or url is None:
        return 'missing_url'
    if not isinstance(url, str):
        return 'url_not_string'
    if not url:
        return 'empty_url'
    if len(url) > max_chars:
        return 'url_too_long'
    if ' ' in url or not url.isprintable():  # isprintable() is False for every other space and control character
        return 'url_has_whitespace' if any(char.isspace() for char in url) else 'url_has_control_characters'
    return None


class DocumentChecker:
    """Turns raw records into documents, counting every skip, placeholder URL and missing metadata value."""

    PLACEHOLDER_REASONS = ('missing_url', 'url_not_string', 'empty_url')

    def __init__(self, policy: DocumentPolicy, vocab_size: int, special_ids: Sequence[int]) -> None:
        self.policy = policy
        self.vocab_size = vocab_size
        self.is_special = np.zeros(vocab_size, dtype=bool)
        self.is_special[list(special_ids)] = True

    def document(self, record: Record, stats: ConversionStats) -> Document | None:
        """The record as a document, or None after counting why it was skipped (tokens are checked later)."""
        if record.token_ids is None:
            problem = text_problem(record.text, self.policy.max_document_chars)
        else:
            problem = self.token_problem(record.token_ids, record.length)
        url = record.url
        if problem is None:
            problem = url_problem(url, self.policy.max_url_chars)
            if problem in self.PLACEHOLDER_REASONS and self.policy.missing_url == 'placeholder':
                stats.urls_replaced_by_placeholder[problem] += 1
                problem, url = None, self.policy.placeholder_url
        metadata = {}
        if problem is None:
            metadata, problem = self._metadata(record.metadata, stats)
        if problem is not None:
            stats.skipped[problem] += 1
            return None
        tokens = None if record.token_ids is None else record.token_ids.astype(np.uint32, copy=False)
        return Document(record.text if tokens is None else None, tokens, url, metadata)

    def token_problem(self, ids: np.ndarray, length: Any = MISSING) -> str | None:
        """Why token ids (made by a tokenizer or passed through) cannot be stored, or None."""
        if ids.size == 0:
            return 'no_tokens'
        if ids.dtype.kind == 'i' and int(ids.min()) < 0:
            return 'negative_token_id'
        if int(ids.max()) >= self.vocab_size:
            return 'token_id_out_of_vocabulary'
        if length is not MISSING and int(length) != ids.size:
            return 'length_mismatch'
        if self.is_special[ids].any():
            return 'special_token_ids'
        return None

    def _metadata(self, values: dict[str, Any], stats: ConversionStats) -> tuple[dict[str, str], str | None]:
        metadata = {}
        for name, value in values.items():
            if value is MISSING or value is None:
                stats.metadata_missing[name] += 1
                value = ''
            elif not isinstance(value, str):
                value = json.dumps(value, ensure_ascii=False, sort_keys=True)
            if not value.isascii() and not _encodable(value):
                return {}, 'metadata_invalid_unicode'
            metadata[name] = value
        return metadata, None


@dataclass
class Document:
    """A checked document: text to tokenize, or token ids passed through."""

    text: str | None
    token_ids: np.ndarray | None
    url: str
    metadata: dict[str, str]


def convert_documents(
    inputs: Sequence[str],
    output: str | Path,
    tokenizer: Any,
    *,
    fields: FieldMapping = FieldMapping(),
    policy: DocumentPolicy = DocumentPolicy(),
    tokenizer_backend: str = 'auto',
    num_workers: int = 1,
    job_index: int = 0,
    num_jobs: int = 1,
    unit_bytes: int = DEFAULT_UNIT_BYTES,
    overwrite: bool = False,
    progress: bool = True,
) -> ConversionReport:
    """Convert ``inputs`` (files, globs, dataset directories) into a document MDS at ``output``.

    ``tokenizer`` is a Hugging Face fast tokenizer or its name/path. With ``num_jobs`` > 1 this converts only
    the units of part ``job_index`` and leaves the merge (``merge_document_parts``) for when all parts are
    done; otherwise it merges and returns the dataset info. Rerunning an interrupted conversion with the
    same arguments resumes it; rerunning a finished one changes nothing.
    """
    start = time.perf_counter()
    if num_workers < 1 or num_jobs < 1 or not 0 <= job_index < num_jobs:
        raise ValueError(
            f'need num_workers >= 1 and 0 <= job_index < num_jobs, got {num_workers}, {job_index}, {num_jobs}'
        )
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')  # parallelism comes from worker processes
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    output = Path(output)
    discovery = find_sources(inputs, fields, require_url=policy.missing_url == 'skip')
    total = sum(source.size for source in discovery.sources)
    units = plan_units(discovery.sources, min(unit_bytes, max(MIN_UNIT_BYTES, total // UNITS_PER_INPUT)))
    plan = _plan(discovery.sources, discovery.unreadable, units, fields, policy, tok, tokenizer_backend, unit_bytes)
    finished = _finished_dataset(output, plan['id'], overwrite)
    if finished is not None:
        log.info(
            '%s already holds this conversion (%d documents); nothing to do.',
            output,
            finished['stats']['documents_written'],
        )
        return ConversionReport(output, finished, 0, finished['tokenizer_backend'], {}, time.perf_counter() - start)
    partial = _partial_dir(output)
    recorded = _recorded_plan(partial, plan['id'], overwrite)
    checker = DocumentChecker(policy, plan['tokenizer']['vocab_size'], _special_ids(tok))
    requested = recorded['tokenizer_backend'] if recorded else tokenizer_backend
    backend = build_tokenizer_backend(tok, requested, _sample_texts(units, fields, checker), num_threads=num_workers)
    if recorded is None:
        _record_plan(partial, dict(plan, tokenizer_backend=backend.name, tokenizer_backend_reason=backend.reason))
    mine = [unit for unit in units if unit.index % num_jobs == job_index]
    pending = [unit for unit in mine if not _unit_dir(partial, unit, len(units)).is_dir()]
    log.info(
        'Converting %d inputs: %d units%s, %d already done; %d workers; tokenizer backend %s.',
        len(discovery.sources),
        len(mine),
        f' (part {job_index} of {num_jobs})' if num_jobs > 1 else '',
        len(mine) - len(pending),
        num_workers,
        backend.name,
    )
    context = _UnitContext(fields, checker, backend, partial, len(units))
    converting = time.perf_counter()
    stage_seconds = _run_units(pending, context, num_workers, progress)
    converted = time.perf_counter() - converting
    if num_jobs > 1:
        log.info(
            'Part %d of %d is done. When every part is, merge them: python convert/merge.py --output %s',
            job_index,
            num_jobs,
            output,
        )
        return ConversionReport(
            output, None, len(pending), backend.name, stage_seconds, time.perf_counter() - start, converted
        )
    info = merge_document_parts(output, overwrite=overwrite)
    wall = time.perf_counter() - start
    _log_summary(info, stage_seconds, wall, converted)
    return ConversionReport(output, info, len(pending), backend.name, stage_seconds, wall, converted)


def merge_document_parts(output: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Join the converted units in ``<output>.partial`` into one dataset at ``output``; returns its info.

    Refuses while any unit is missing (naming them), and refuses to replace a different dataset at ``output``
    unless ``overwrite``.
    """
    output = Path(output)
    partial = _partial_dir(output)
    plan_path = partial / PLAN_FILE
    if not plan_path.is_file():
        finished = read_dataset_info(output) if output.is_dir() else None
        if finished is not None and finished.get('format') == DOCUMENT_FORMAT:
            return finished
        raise ConversionError(f'nothing to merge: {partial} holds no conversion in progress')
    plan = json.loads(plan_path.read_text())
    count = len(plan['units'])
    missing = [i for i in range(count) if not (partial / _unit_name(i, count)).is_dir()]
    if missing:
        raise ConversionError(
            f'{len(missing)} of {count} units are not converted yet (e.g. {missing[:5]}); run the '
            'parts that hold them (unit i belongs to job i % num_jobs) and merge again'
        )
    stats = ConversionStats(files_unreadable=dict(plan['unreadable_inputs']))
    records_per_source: Counter = Counter()
    shards = []
    for i in range(count):
        name = _unit_name(i, count)
        unit_stats = ConversionStats.from_dict(json.loads((partial / name / UNIT_STATS_FILE).read_text()))
        stats.add(unit_stats)
        records_per_source[plan['units'][i][0]] += unit_stats.documents_read
        for shard in json.loads((partial / name / 'index.json').read_text())['shards']:
            for key in ('raw_data', 'zip_data', 'raw_meta', 'zip_meta'):
                if shard.get(key):
                    shard[key]['basename'] = f'{name}/{shard[key]["basename"]}'
            shards.append(shard)
    if stats.documents_read != stats.documents_written + sum(stats.skipped.values()):
        raise ConversionError(f'internal error: counts do not add up in {partial}: {stats.to_dict()}')
    with open(partial / 'index.json', 'w') as out:
        json.dump({'version': 2, 'shards': shards}, out, sort_keys=True)
    paths = [source['path'] for source in plan['inputs']]
    empty = sorted({paths[i] for i in range(len(paths)) if records_per_source[i] == 0} - set(stats.files_unreadable))
    info = {
        'format': DOCUMENT_FORMAT,
        'tokenizer': plan['tokenizer'],
        'tokenizer_backend': plan['tokenizer_backend'],
        'tokenizer_backend_reason': plan['tokenizer_backend_reason'],
        'columns': plan['columns'],
        'conversion': {key: plan[key] for key in ('id', 'fields', 'policy', 'unit_bytes')} | {'units': count},
        'stats': dict(stats.to_dict(), inputs_read=len(paths), inputs_empty=empty),
    }
    write_dataset_info(partial, info)
    _replace(output, partial, plan['id'], overwrite)
    log.info('Merged %d units into %s.', count, output)
    return info


@dataclass
class _UnitContext:
    """Everything a worker needs to convert any unit (inherited by forked workers, never pickled)."""

    fields: FieldMapping
    checker: DocumentChecker
    backend: TokenizerBackend
    partial: Path
    unit_count: int


def _convert_unit(
    unit: Unit,
    context: _UnitContext,
    on_progress: Callable[[int, int, int], None] = lambda size, docs, tokens: None,
    heartbeat: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Convert one unit into its own MDS directory, renamed into place when complete; returns CPU seconds per stage.

    ``on_progress(bytes, documents, tokens)`` is called after each written batch; ``heartbeat`` once per batch.
    The stages run one after another: parallelism comes from the worker processes, and threads inside a worker
    measured slower (the tokenizers hand the GIL back and forth with parsing and writing).
    """
    final = _unit_dir(context.partial, unit, context.unit_count)
    staging = final.with_name(final.name + '.tmp')
    shutil.rmtree(staging, ignore_errors=True)
    stats = ConversionStats()
    columns = dict(DOCUMENT_COLUMNS, **dict.fromkeys(context.fields.metadata_columns(), 'str'))
    seconds = {'read': 0.0, 'tokenize': 0.0, 'write': 0.0}
    with MDSWriter(out=str(staging), columns=columns) as writer:
        batches = _read_batches(unit, context, stats)
        while True:
            began = time.thread_time()
            batch = next(batches, None)
            tokenizing = time.thread_time()
            seconds['read'] += tokenizing - began
            if batch is None:
                break
            heartbeat()
            texts = [doc.text for doc in batch.documents if doc.token_ids is None]
            encoded = context.backend.encode_batch(texts) if texts else []
            writing = time.thread_time()
            seconds['tokenize'] += writing - tokenizing
            _write_batch(batch, encoded, writer, context.checker, stats, on_progress)
            seconds['write'] += time.thread_time() - writing
    (staging / UNIT_STATS_FILE).write_text(json.dumps(stats.to_dict(), indent=1, sort_keys=True) + '\n')
    staging.rename(final)
    return seconds


@dataclass
class _Batch:
    documents: list[Document]
    input_bytes: int


def _read_batches(unit: Unit, context: _UnitContext, stats: ConversionStats) -> Iterator[_Batch]:
    """Checked documents of a unit in batches of about BATCH_CHARS; damage to the file is counted, not raised."""
    reader = UnitReader(unit, context.fields)
    documents: list[Document] = []
    chars, reported = 0, 0
    try:
        for item in reader:
            stats.documents_read += 1
            if isinstance(item, Skip):
                stats.skipped[item.reason] += 1
                continue
            document = context.checker.document(item, stats)
            if document is None:
                continue
            documents.append(document)
            chars += len(document.text) if document.text is not None else 4 * document.token_ids.size
            if chars >= BATCH_CHARS or len(documents) >= BATCH_DOCUMENTS:
                yield _Batch(documents, reader.bytes_done - reported)
                documents, chars, reported = [], 0, reader.bytes_done
    except UnreadableFile as problem:
        stats.files_unreadable[unit.source.path] = (
            f'{problem} (after {stats.documents_read} records of unit {unit.index})'
        )
    yield _Batch(documents, unit.size - reported)


def _write_batch(
    batch: _Batch,
    encoded_texts: list[list[int]],
    writer: Any,
    checker: DocumentChecker,
    stats: ConversionStats,
    on_progress: Callable[[int, int, int], None],
) -> None:
    encoded = iter(encoded_texts)
    written = tokens = 0
    for document in batch.documents:
        if document.token_ids is None:
            ids = np.frombuffer(array.array('I', next(encoded)), dtype=np.uint32)  # 4x faster than np.array
            problem = checker.token_problem(ids)
            if problem is not None:
                stats.skipped[problem] += 1
                continue
        else:
            ids = document.token_ids
        writer.write({'input_ids': ids, 'length': int(ids.size), 'url': document.url, **document.metadata})
        written += 1
        tokens += int(ids.size)
    stats.documents_written += written
    stats.tokens_written += tokens
    on_progress(batch.input_bytes, written, tokens)


def _run_units(units: list[Unit], context: _UnitContext, num_workers: int, progress: bool) -> dict[str, float]:
    """Convert ``units`` in this process or in ``num_workers`` forked processes; CPU seconds per stage summed."""
    from tqdm import tqdm

    seconds = {'read': 0.0, 'tokenize': 0.0, 'write': 0.0}
    if not units:
        return seconds
    workers = min(num_workers, len(units))
    units = sorted(units, key=lambda unit: -unit.size)  # largest first, so no worker is left with a big one at the end
    pool = _WorkerPool(units, context, workers) if workers > 1 else None
    bar = tqdm(
        total=sum(unit.size for unit in units),
        unit='B',
        unit_scale=True,
        desc='documents',
        disable=not progress,
        dynamic_ncols=True,
    )
    counts = {'documents': 0, 'tokens': 0}
    began = time.perf_counter()

    def advance(size: int, documents: int, tokens: int) -> None:
        counts['documents'] += documents
        counts['tokens'] += tokens
        elapsed = max(time.perf_counter() - began, 1e-9)
        bar.set_postfix_str(
            f'{counts["documents"] / elapsed:,.0f} docs/s, {counts["tokens"] / elapsed:,.0f} tokens/s', refresh=False
        )
        bar.update(size)

    try:
        if pool is None:
            for unit in units:
                for stage, spent in _convert_unit(unit, context, advance).items():
                    seconds[stage] += spent
        else:
            for stage, spent in pool.run(advance).items():
                seconds[stage] += spent
    finally:
        bar.close()
    return seconds


class _WorkerPool:
    """Forked worker processes that take units from a queue and report progress, completion or failure."""

    def __init__(self, units: list[Unit], context: _UnitContext, workers: int) -> None:
        fork = multiprocessing.get_context('fork')
        self.units = {unit.index: unit for unit in units}
        self.context = context
        self.tasks = fork.Queue()
        self.events = fork.Queue()
        for unit in units:
            self.tasks.put(unit.index)
        for _ in range(workers):
            self.tasks.put(None)
        parent = os.getpid()
        self.processes = [fork.Process(target=self._work, args=(parent,), daemon=True) for _ in range(workers)]
        for process in self.processes:
            process.start()

    def _work(self, parent: int) -> None:
        """Worker process body: convert units until the None sentinel."""

        def heartbeat() -> None:
            if os.getppid() != parent:  # the parent was killed: stop instead of writing on as an orphan
                os._exit(3)

        def on_progress(size: int, documents: int, tokens: int) -> None:
            self.events.put(('progress', size, documents, tokens))

        os.environ['TOKENIZERS_PARALLELISM'] = 'false'
        while (index := self.tasks.get()) is not None:
            self.events.put(('start', index, os.getpid()))
            try:
                seconds = _convert_unit(self.units[index], self.context, on_progress, heartbeat)
            except BaseException:
                self.events.put(('error', index, traceback.format_exc()))
                return
            self.events.put(('done', index, seconds))

    def run(self, advance: Callable[[int, int, int], None]) -> dict[str, float]:
        """Wait for every unit, forwarding progress; raise ConversionError when a unit fails or a worker dies."""
        seconds = {'read': 0.0, 'tokenize': 0.0, 'write': 0.0}
        remaining = set(self.units)
        working: dict[int, int] = {}
        try:
            while remaining:
                try:
                    event = self.events.get(timeout=0.5)
                except queue.Empty:
                    self._check_alive(working, remaining)
                    continue
                kind = event[0]
                if kind == 'progress':
                    advance(*event[1:])
                elif kind == 'start':
                    working[event[2]] = event[1]
                elif kind == 'done':
                    remaining.discard(event[1])
                    for stage, spent in event[2].items():
                        seconds[stage] += spent
                else:
                    raise ConversionError(f'converting {_describe(self.units[event[1]])} failed:\n{event[2]}')
        finally:
            for process in self.processes:
                if process.is_alive():
                    process.terminate()
                process.join()
        return seconds

    def _check_alive(self, working: dict[int, int], remaining: set[int]) -> None:
        for process in self.processes:
            if process.exitcode not in (None, 0):
                unit = working.get(process.pid)
                doing = f' while converting {_describe(self.units[unit])}' if unit in remaining else ''
                how = f'signal {-process.exitcode}' if process.exitcode < 0 else f'exit code {process.exitcode}'
                raise ConversionError(
                    f'worker process {process.pid} died ({how}){doing}. The {len(self.units) - len(remaining)} units '
                    f'finished in this run are kept in {self.context.partial}: run the same command again to resume.'
                )


def _describe(unit: Unit) -> str:
    kind = 'bytes' if unit.source.format == 'jsonl' and unit.source.compression is None else 'parts'
    return f'unit {unit.index} ({unit.source.path}, {kind} {unit.start}-{unit.stop})'


def _plan(
    sources: list[Source],
    unreadable: dict[str, str],
    units: list[Unit],
    fields: FieldMapping,
    policy: DocumentPolicy,
    tokenizer: Any,
    backend: str,
    unit_bytes: int,
) -> dict[str, Any]:
    """The conversion's identity: inputs as found, units, settings and tokenizer; ``id`` hashes all but names."""
    index = {source: i for i, source in enumerate(sources)}
    plan = {
        'format': DOCUMENT_FORMAT,
        'inputs': [asdict(source) for source in sources],
        'unreadable_inputs': dict(unreadable),
        'units': [[index[unit.source], unit.start, unit.stop, unit.size] for unit in units],
        'fields': asdict(fields),
        'policy': asdict(policy),
        'columns': dict(DOCUMENT_COLUMNS, **dict.fromkeys(fields.metadata_columns(), 'str')),
        'tokenizer': tokenizer_info(tokenizer),
        'tokenizer_backend_requested': backend,
        'unit_bytes': unit_bytes,
    }
    identity = dict(plan, tokenizer=plan['tokenizer']['fingerprint'])
    plan['id'] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return plan


def _partial_dir(output: Path) -> Path:
    return output.with_name(output.name + '.partial')


def _unit_name(index: int, count: int) -> str:
    return f'unit-{index:0{max(5, len(str(count - 1)))}d}'


def _unit_dir(partial: Path, unit: Unit, count: int) -> Path:
    return partial / _unit_name(unit.index, count)


def _finished_dataset(output: Path, plan_id: str, overwrite: bool) -> dict[str, Any] | None:
    """The info of ``output`` when it already holds this conversion; refuses other data unless ``overwrite``."""
    if not output.exists() or (output.is_dir() and not any(output.iterdir())):
        return None
    info = read_dataset_info(output) if output.is_dir() else None
    if info is not None and info.get('conversion', {}).get('id') == plan_id:
        return info
    if not overwrite:
        what = (
            f'a different {info.get("format")} dataset (conversion {info.get("conversion", {}).get("id")})'
            if info
            else 'other files'
        )
        raise ConversionError(
            f'{output} already holds {what}; pass --overwrite (overwrite=True) to replace it once '
            'the new one is complete, or choose another output'
        )
    return None


def _recorded_plan(partial: Path, plan_id: str, overwrite: bool) -> dict[str, Any] | None:
    """The plan of a conversion in progress at ``partial`` when it is this one; another is refused or discarded."""
    plan_path = partial / PLAN_FILE
    if not plan_path.is_file():  # not started, or another job of this conversion is writing the plan right now
        return None
    recorded = json.loads(plan_path.read_text())
    if recorded['id'] == plan_id:
        return recorded
    if not overwrite:
        raise ConversionError(
            f'{partial} holds a different conversion in progress; rerun it with its own arguments '
            'to finish it, or pass --overwrite (overwrite=True) to discard it'
        )
    log.warning('Discarding the different conversion in progress at %s (--overwrite).', partial)
    shutil.rmtree(partial)
    return None


def _record_plan(partial: Path, plan: dict[str, Any]) -> None:
    """Write the plan once; concurrent jobs race safely (the first link wins, the rest must agree)."""
    partial.mkdir(parents=True, exist_ok=True)
    target = partial / PLAN_FILE
    staging = partial / f'{PLAN_FILE}.{os.getpid()}.tmp'
    staging.write_text(json.dumps(plan, indent=1, sort_keys=True) + '\n')
    try:
        os.link(staging, target)
    except FileExistsError:
        if json.loads(target.read_text())['id'] != plan['id']:
            raise ConversionError(f'{partial} was started by a different conversion at the same time') from None
    finally:
        staging.unlink()


def _replace(output: Path, partial: Path, plan_id: str, overwrite: bool) -> None:
    """Rename the finished ``partial`` to ``output``, replacing what is there only when allowed."""
    _finished_dataset(output, plan_id, overwrite)
    if output.is_dir() and not any(output.iterdir()):
        output.rmdir()
    retired = output.with_name(output.name + '.replaced')
    if retired.is_dir():  # left by a run killed in the middle of replacing
        shutil.rmtree(retired)
    if output.exists():
        output.rename(retired)
        partial.rename(output)
        if retired.is_dir():
            shutil.rmtree(retired)
        else:
            retired.unlink()
    else:
        partial.rename(output)


def _sample_texts(units: list[Unit], fields: FieldMapping, checker: DocumentChecker) -> list[str]:
    """Up to SAMPLE_CHARS of acceptable texts from up to SAMPLE_UNITS evenly spread units, for backend verification."""
    step = max(1, math.ceil(len(units) / SAMPLE_UNITS))
    per_unit = SAMPLE_CHARS // min(SAMPLE_UNITS, max(1, len(units)))
    texts: list[str] = []
    for unit in units[::step]:
        taken = 0
        try:
            for item in UnitReader(unit, fields):
                if isinstance(item, Record) and item.token_ids is None:
                    if text_problem(item.text, checker.policy.max_document_chars) is None:
                        texts.append(item.text[:SAMPLE_TEXT_CHARS])
                        taken += len(texts[-1])
                if taken >= per_unit:
                    break
        except UnreadableFile:
            continue  # counted when the unit itself is converted
    return texts


def _special_ids(tokenizer: Any) -> list[int]:
    """Ids that document text must never produce: every special token, except an unknown-token id of its own."""
    ids = set(tokenizer.all_special_ids)
    boundaries = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id not in boundaries:
        ids.discard(tokenizer.unk_token_id)
    return sorted(ids)


def _encodable(text: str) -> bool:
    try:
        text.encode('utf-8')
    except UnicodeEncodeError:
        return False
    return True


def _log_summary(info: dict[str, Any], seconds: dict[str, float], wall: float, converting: float) -> None:
    stats = info['stats']
    log.info(
        'Wrote %d documents (%d tokens) of %d read; skipped %s; %d unreadable and %d empty input files. '
        'Tokenizer backend: %s.',
        stats['documents_written'],
        stats['tokens_written'],
        stats['documents_read'],
        stats['skipped'] or 'none',
        len(stats['files_unreadable']),
        len(stats['inputs_empty']),
        info['tokenizer_backend'],
    )
    for path, problem in stats['files_unreadable'].items():
        log.warning('Unreadable input %s: %s', path, problem)
    busy = sum(seconds.values())
    if busy > 0:
        shares = ', '.join(f'{stage} {100 * spent / busy:.0f}%' for stage, spent in seconds.items())
        log.info(
            '%.1fs wall (%.1fs converting units, the rest loading, planning, verifying and merging), %.0f tokens/s; '
            'CPU time by stage: %s.',
            wall,
            converting,
            stats['tokens_written'] / wall,
            shares,
        )
