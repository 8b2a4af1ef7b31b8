"""Stage 1 on Spark: the same document MDS as ``documents.convert_documents``, with Spark scheduling the work.

Inputs that Spark would read from the local filesystem (paths on a ``local[N]`` master or wherever the default
filesystem is local, ``file:`` URLs, mounts such as ``/dbfs/...``) are cut into the local converter's own units
(``sources.plan_units``), and each unit is one Spark task that reads its input itself and converts it exactly as
a local worker does (``unit_conversion.write_unit``): Spark only schedules, no record crosses from the JVM to
Python, and the rows are the local converter's, in its order. Inputs only Spark's Hadoop client reaches
(``s3a://``, ``gs://``, ``abfss://``, ``dbfs:/``, a cluster's HDFS) are read by Spark instead and handed to each
task as Arrow batches, judged by the project's own reader and checks (``readers.UnitReader``,
``document_checks``); how each is read: ``spark_inputs``. Either way every skip is counted under the local
converter's reasons, the backend is the one the driver chose and verified (``tokenization``), and each task
writes its own MDS part with its counts, as Streaming's ``dataframe_to_mds`` does (one ``MDSWriter`` per task).

Why the building blocks (``MDSWriter`` per task, one joint index) rather than ``dataframe_to_mds`` itself: that
function names each task's directory by its task attempt id, which restarts at 0 in every Spark application and
changes on retry, and it returns no counts. Here each part is named by its unit or partition and renamed into
place only when complete (``storage.parts``), with its counts beside it, so a retried or speculative task never
duplicates a document, and the dataset's counts are summed from the finished parts (not from accumulators, which
retries inflate). Parts are joined by ``joint_index`` (the project's one joiner), in part order.

Order: the units' parts first, in input order; then the partitions of Spark-read inputs as Spark plans them
(``spark_inputs``): the same for the same inputs and settings, but not the order given.

A run writes under ``<output>.spark-partial`` and renames it to ``<output>`` when complete; a killed run is
redone from the start by the next one (a part is only valid within the run that planned the partitions). The
output must be a path that the driver and every executor see (a local disk with ``local[N]``; on a cluster a
shared or mounted filesystem such as ``/dbfs/...`` or ``/Volumes/...``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from meco_callbacks.corpus.documents.conversion import special_token_ids, verified_backend
from meco_callbacks.corpus.documents.document_checks import (
    ConversionStats,
    DocumentChecker,
    DocumentPolicy,
)
from meco_callbacks.corpus.documents.document_merge import claim_document_output, publish_documents
from meco_callbacks.corpus.documents.readers import Skip
from meco_callbacks.corpus.documents.sources import (
    DEFAULT_UNIT_BYTES,
    FieldMapping,
    InputError,
    Unit,
    UnreadableFile,
    find_sources,
    plan_units,
)
from meco_callbacks.corpus.documents.spark_inputs import (
    file_uri,
    input_frames,
    input_kind,
    local_uri,
    records,
    sample_texts,
)
from meco_callbacks.corpus.documents.spark_setup import (  # noqa: F401  (callers start Spark from here)
    require_java,
    spark_session,
    task_readable,
)
from meco_callbacks.corpus.documents.spark_units import (
    PART_STATS_FILE,
    TASKS_PER_CORE,
    balanced_groups,
    convert_units,
    part_name,
)
from meco_callbacks.corpus.documents.unit_conversion import BATCH_CHARS, BATCH_DOCUMENTS, DocumentBatch, write_batch
from meco_callbacks.corpus.storage.errors import ConversionError
from meco_callbacks.corpus.storage.joint_index import write_joint_index
from meco_callbacks.corpus.storage.output import replace_output
from meco_callbacks.corpus.storage.parts import PartStore
from meco_callbacks.corpus.storage.remote import check_remote
from meco_callbacks.formats import DOCUMENT_COLUMNS, DOCUMENT_FORMAT, write_dataset_info
from meco_callbacks.tokenizer.fingerprint import tokenizer_info
from meco_callbacks.tokenizer.loading import load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class SparkReport:
    """What a Spark conversion did: the dataset info, whether it was already there, and its wall time."""

    output: Path
    info: dict[str, Any]
    reused: bool
    partitions: int
    wall_seconds: float

    @property
    def tokens_per_second(self) -> float:
        """Tokens written over the run's wall time (0 when the dataset was already there)."""
        return 0.0 if self.reused else self.info['stats']['tokens_written'] / max(self.wall_seconds, 1e-9)


@dataclass
class _PartitionTask:
    """What every task needs (pickled into the Spark job): fields, checks, the backend, where to write."""

    fields: FieldMapping
    checker: DocumentChecker
    backend: Any  # a Spark broadcast of the TokenizerBackend
    staging: str
    columns: dict[str, str]
    first_part: int = 0  # the number of the part of partition 0 (row partitions come after the units)


def convert_documents_on_spark(
    inputs: Sequence[str],
    output: str | Path,
    tokenizer: Any,
    *,
    spark: Any,
    fields: FieldMapping = FieldMapping(),
    policy: DocumentPolicy = DocumentPolicy(),
    tokenizer_backend: str = 'auto',
    partitions: int | None = None,
    overwrite: bool = False,
    remote: str | None = None,
    started: float | None = None,
) -> SparkReport:
    """Convert ``inputs`` (files and globs Spark can read) into a document MDS at ``output`` with ``spark``.

    Inputs on the local filesystem are converted in the local converter's units, one task each; ``partitions``
    asks Spark for at least that many tasks over the splittable inputs it reads itself (plain JSON Lines, Parquet
    row groups). The dataset is the one ``convert_documents`` writes for the same inputs, settings and tokenizer:
    same rows, same counts, in its order for local inputs (see the module docstring).
    With ``remote`` (an object-storage URL), the finished dataset is uploaded there through Streaming's uploader,
    each part with its counts last, then ``index.json``, then ``meco_dataset.json``; a rerun uploads what is missing.
    """
    start = time.perf_counter() if started is None else started
    if '://' in str(output) and not str(output).startswith('file://'):
        raise InputError(
            f'--output {output} is a URL; write to a path that the driver and every executor see (a shared or '
            'mounted filesystem such as /dbfs/... or /Volumes/...), then copy it to object storage'
        )
    if remote is not None:
        check_remote(remote)
    output = Path(str(output).removeprefix('file://')).absolute()
    tok = load_tokenizer(tokenizer, require_fast=True) if isinstance(tokenizer, (str, Path)) else tokenizer
    columns = dict(DOCUMENT_COLUMNS, **dict.fromkeys(fields.metadata_columns(), 'str'))
    if partitions is None:  # Spark's default: its default parallelism (not what an earlier call asked for)
        spark.conf.unset('spark.sql.files.minPartitionNum')
    else:
        spark.conf.set('spark.sql.files.minPartitionNum', str(partitions))
    for pattern in inputs:
        input_kind(pattern)  # the formats Spark reads, refused alike wherever they are
    local = {pattern: task_readable(spark, pattern) for pattern in inputs}
    discovery = find_sources([path for path in local.values() if path], fields, policy.missing_url == 'skip')
    units = plan_units(discovery.sources, DEFAULT_UNIT_BYTES)
    remote_inputs = [pattern for pattern, path in local.items() if path is None]
    frames, files = input_frames(spark, remote_inputs, fields, policy) if remote_inputs else ({}, [])
    files = sorted(
        {*files, *(local_uri(path) for path in [*(s.path for s in discovery.sources), *discovery.unreadable])}
    )
    info = {
        'format': DOCUMENT_FORMAT,
        'tokenizer': tokenizer_info(tok),
        'columns': columns,
        'conversion': {
            'engine': 'spark',
            'fields': asdict(fields),
            'policy': asdict(policy),
            'tokenizer_backend_requested': tokenizer_backend,
        },
    }
    identity = dict(info, inputs=files, tokenizer=info['tokenizer']['fingerprint'])
    info['conversion']['id'] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    finished = claim_document_output(output, info['conversion']['id'], overwrite)
    if finished is not None:
        log.info('%s already holds this conversion (%d documents); nothing to do.', output, _written(finished))
        if remote is not None:
            _publish(output, remote)
        return SparkReport(output, finished, True, finished['conversion']['partitions'], time.perf_counter() - start)
    staging = output.with_name(output.name + '.spark-partial')
    if staging.exists():
        log.info('Discarding %s, left by an interrupted run: Spark conversions restart from the beginning.', staging)
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    threads = spark.sparkContext.defaultParallelism
    sample = sample_texts(frames, fields, policy) if frames else []
    backend = verified_backend(units, fields, policy, tok, tokenizer_backend, threads, extra_sample=sample)
    checker = DocumentChecker(policy, info['tokenizer']['vocab_size'], special_token_ids(tok))
    task = _PartitionTask(fields, checker, spark.sparkContext.broadcast(backend), str(staging), columns, len(units))
    log.info(
        'Converting %d input files with Spark (%s); tokenizer backend %s.',
        len(files),
        spark.sparkContext.master,
        backend.name,
    )
    parts = _run(spark, units, frames, task)
    PartStore(staging, PART_STATS_FILE).clean()  # attempts of failed or speculative tasks: their parts are finished
    stats, records_per_file = _sum_parts(staging, parts)
    stats.files_unreadable.update({local_uri(path): problem for path, problem in discovery.unreadable.items()})
    write_joint_index(staging, [staging / name for name in parts])
    info['tokenizer_backend'], info['tokenizer_backend_reason'] = backend.name, backend.reason
    info['conversion']['partitions'] = len(parts)
    empty = sorted(set(files) - set(records_per_file) - set(stats.files_unreadable))
    info['stats'] = dict(stats.to_dict(), inputs_read=len(files), inputs_empty=empty)
    write_dataset_info(staging, info)
    claim_document_output(output, info['conversion']['id'], overwrite)
    replace_output(output, staging)
    if remote is not None:
        _publish(output, remote)
    report = SparkReport(output, info, False, len(parts), time.perf_counter() - start)
    log.info(
        'Wrote %d documents (%d tokens) of %d read in %d Spark partitions; skipped %s. %.1fs wall, %.0f tokens/s.',
        stats.documents_written,
        stats.tokens_written,
        stats.documents_read,
        len(parts),
        dict(stats.skipped) or 'none',
        report.wall_seconds,
        report.tokens_per_second,
    )
    return report


def _publish(output: Path, remote: str) -> None:
    """Upload a finished dataset (parts not on the remote yet, then its index and info); a run before this
    store could leave the attempts of failed tasks in it: they are removed, never uploaded."""
    PartStore(output, PART_STATS_FILE).clean()
    publish_documents(output, remote, PART_STATS_FILE)


def _written(info: dict[str, Any]) -> int:
    return info['stats']['documents_written']


def _run(spark: Any, units: Sequence[Unit], frames: dict[str, Any], task: _PartitionTask) -> list[str]:
    """Convert every unit (in a few balanced Spark tasks), then every partition of ``frames`` (one job); the names
    of the finished parts, in part order: the units' in input order, then the partitions'."""
    import functools

    parts = []
    if units:
        groups = balanced_groups(units, TASKS_PER_CORE * spark.sparkContext.defaultParallelism)
        jobs = spark.sparkContext.parallelize(groups, len(groups)).flatMap(lambda group: group)
        parts += jobs.mapPartitions(functools.partial(convert_units, task)).collect()
    results = None
    for kind, frame in frames.items():
        converted = frame.mapInArrow(functools.partial(_convert_partition, task, kind), 'part string')
        results = converted if results is None else results.union(converted)
    if results is not None:
        parts += [row['part'] for row in results.collect()]
    return sorted(parts)


def _convert_partition(task: _PartitionTask, kind: str, batches: Iterator[Any]) -> Iterator[Any]:
    """Runs in a Spark task: judge, tokenize and write this partition's records into its own part, counts beside it."""
    import pyarrow as pa
    from pyspark import TaskContext
    from streaming import MDSWriter

    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')  # parallelism comes from Spark's tasks
    context = TaskContext.get()
    name = part_name(task.first_part + context.partitionId())
    store = PartStore(Path(task.staging), PART_STATS_FILE)
    attempt = store.attempt(name, str(context.taskAttemptId()))
    backend, checker = task.backend.value, task.checker
    stats, records_per_file = ConversionStats(), Counter()
    rows = (row for batch in batches for row in batch.to_pylist())
    with MDSWriter(out=str(attempt), columns=task.columns) as writer:
        documents, chars = [], 0
        for file, item in records(kind, rows, task.fields):
            file = file_uri(file)
            if isinstance(item, UnreadableFile):
                stats.files_unreadable[file] = f'{item} (after {records_per_file[file]} records)'
                continue
            records_per_file[file] += 1
            stats.documents_read += 1
            if isinstance(item, Skip):
                stats.skipped[item.reason] += 1
                continue
            document = checker.document(item, stats)
            if document is None:
                continue
            documents.append(document)
            chars += len(document.text) if document.text is not None else 4 * document.token_ids.size
            if chars >= BATCH_CHARS or len(documents) >= BATCH_DOCUMENTS:
                _write_documents(documents, backend, writer, checker, stats)
                documents, chars = [], 0
        _write_documents(documents, backend, writer, checker, stats)
    store.commit(name, attempt, dict(stats.to_dict(), records_per_file=dict(sorted(records_per_file.items()))))
    yield pa.RecordBatch.from_pylist([{'part': name}], schema=pa.schema([('part', pa.string())]))


def _write_documents(documents: list[Any], backend: Any, writer: Any, checker: DocumentChecker, stats: Any) -> None:
    """Tokenize a batch of checked documents and write them, as a local unit does (``unit_conversion``)."""
    texts = [document.text for document in documents if document.token_ids is None]
    encoded = backend.encode_batch(texts) if texts else []
    write_batch(DocumentBatch(documents, 0), encoded, writer, checker, stats, lambda *_: None)


def _sum_parts(staging: Path, parts: Sequence[str]) -> tuple[ConversionStats, Counter]:
    """The dataset's counts, summed from the finished parts' own files; refuses counts that do not add up."""
    stats, records_per_file = ConversionStats(), Counter()
    for name in parts:
        counts = json.loads((staging / name / PART_STATS_FILE).read_text())
        records_per_file.update(counts.pop('records_per_file'))
        stats.add(ConversionStats.from_dict(counts))
    if stats.documents_read != stats.documents_written + sum(stats.skipped.values()):
        raise ConversionError(f'internal error: counts do not add up in {staging}: {stats.to_dict()}')
    return stats, records_per_file
