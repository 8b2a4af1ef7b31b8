"""How Spark reads each input of stage 1, and how a task turns its rows back into the local reader's records.

  - plain JSON Lines (``.jsonl``, ``.ndjson``): Spark's text source, split across tasks, each line cast to raw
    bytes (so invalid UTF-8 stays a counted ``invalid_utf8``, not replacement characters);
  - compressed or ``.json`` files (``.gz``, ``.zst``, a JSON array): whole, with Spark's ``binaryFile`` source,
    decompressed and read by ``UnitReader`` exactly as locally (Hadoop's zstd codec needs native libraries that
    pip's pyspark lacks);
  - Parquet: Spark's Parquet source (row groups split across tasks), only the needed columns.

Every record is then judged by ``readers.UnitReader`` exactly as the local converter judges it. Spark packs
file splits into partitions plain JSON Lines first, then whole files, then Parquet, and within each largest
first, by ``spark.sql.files.maxPartitionBytes`` and ``minPartitionNum``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from meco_callbacks.corpus.documents.conversion import SAMPLE_BYTES, SAMPLE_TEXT_CHARS
from meco_callbacks.corpus.documents.document_checks import DocumentPolicy, text_problem
from meco_callbacks.corpus.documents.readers import BYTE_ORDER_MARK, Record, UnitReader
from meco_callbacks.corpus.documents.sources import (
    COMPRESSIONS,
    JSON_SUFFIXES,
    FieldMapping,
    InputError,
    UnreadableFile,
    find_sources,
    plan_units,
)

SAMPLE_ROWS = 256  # lines or rows from the front of the line and Parquet inputs, to verify the backend on


def input_kind(pattern: str) -> str:
    """How Spark reads an input named ``pattern``: ``lines`` (plain JSON Lines), ``files`` (whole) or ``parquet``."""
    name = pattern.rstrip('/').rsplit('/', 1)[-1].lower()
    compressed = any(name.endswith(suffix) for suffix in COMPRESSIONS)
    for suffix in COMPRESSIONS:
        name = name.removesuffix(suffix)
    if name.endswith('.parquet') and not compressed:
        return 'parquet'
    if name.endswith(JSON_SUFFIXES):
        return 'files' if compressed or name.endswith('.json') else 'lines'
    raise InputError(
        f'cannot tell the format of {pattern!r} from its name; the Spark converter reads JSON Lines (.jsonl, '
        '.ndjson, .json, optionally .gz or .zst) and Parquet (.parquet), so name files or globs with their '
        'suffix (e.g. "s3a://bucket/dclm/*.jsonl.zst"); Hugging Face and MDS directories: use convert/documents.py'
    )


def input_frames(
    spark: Any, inputs: Sequence[str], fields: FieldMapping, policy: DocumentPolicy
) -> tuple[dict[str, Any], list[str]]:
    """One DataFrame per input kind (``lines``, ``files``, ``parquet``) over ``inputs``, and every input file."""
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    by_kind: dict[str, list[str]] = {}
    for pattern in inputs:
        by_kind.setdefault(input_kind(pattern), []).append(pattern)
    frames: dict[str, Any] = {}
    files: list[str] = []
    try:
        if 'lines' in by_kind:
            text = spark.read.option('lineSep', '\n').text(by_kind['lines'])
            files += text.inputFiles()
            frames['lines'] = text.select(
                F.col('value').cast('binary').alias('line'), F.input_file_name().alias('file')
            )
        if 'files' in by_kind:
            whole = spark.read.format('binaryFile').load(by_kind['files'])
            files += whole.inputFiles()
            frames['files'] = whole.select('path', 'content')
        if 'parquet' in by_kind:
            table = spark.read.parquet(*by_kind['parquet'])
            files += table.inputFiles()
            frames['parquet'] = _parquet_columns(table, fields, policy)
    except AnalysisException as error:
        raise InputError(f'Spark cannot read the inputs: {error}') from None
    return frames, sorted({file_uri(file) for file in files})


def file_uri(path: str) -> str:
    """One spelling per file: Spark writes local files as ``file:/x`` in some places and ``file:///x`` in others."""
    return 'file:///' + path.removeprefix('file:').lstrip('/') if path.startswith('file:') else path


def local_uri(path: str) -> str:
    """A local file's name as Spark spells it (``file:///...``), so task-read and Spark-read inputs count alike."""
    return file_uri('file:' + os.path.abspath(path))


def _parquet_columns(table: Any, fields: FieldMapping, policy: DocumentPolicy) -> Any:
    """The Parquet columns that record lookups need (a dotted path's first part), refusing a missing one."""
    from pyspark.sql import functions as F

    roles = [('text', fields.text), ('url', fields.url)] + [('metadata', path) for path in fields.metadata]
    needed: dict[str, None] = {}
    for role, path in roles:
        name = path if path in table.columns else path.split('.', 1)[0]
        if name in table.columns:
            needed[name] = None
        elif role != 'url' or policy.missing_url == 'skip':
            flag = {'text': '--text-field', 'url': '--url-field', 'metadata': '--metadata-fields'}[role]
            raise InputError(
                f'the Parquet inputs have no {role} column {path!r} (columns: {sorted(table.columns)}); '
                f'name the right one with {flag}'
            )
    return table.select(*[F.col(f'`{name}`') for name in needed], F.input_file_name().alias('__file__'))


def records(kind: str, rows: Iterable[dict[str, Any]], fields: FieldMapping) -> Iterator[tuple[str, Any]]:
    """``(file, Record | Skip | UnreadableFile)`` for each input record in ``rows`` of a frame of ``kind``.

    Lines and rows are judged by ``UnitReader`` as the local converter judges them; a whole file is written to a
    temporary file and read by ``UnitReader`` itself (a damaged file yields what it held, then the problem).
    """
    reader = UnitReader(None, fields)  # type: ignore[arg-type]  # judging lines and rows needs no unit
    for row in rows:
        if kind == 'lines':
            line = row['line']
            yield row['file'], reader.line_record(line[3:] if line.startswith(BYTE_ORDER_MARK) else line)
        elif kind == 'parquet':
            file = row.pop('__file__')
            yield file, reader.row_record(row)
        else:
            yield from _file_records(row['path'], row['content'], fields)


def _file_records(path: str, content: bytes, fields: FieldMapping) -> Iterator[tuple[str, Any]]:
    """A whole input file's records, read by ``UnitReader`` from a temporary copy named like the input."""
    with tempfile.TemporaryDirectory(prefix='meco-spark-') as scratch:
        local = os.path.join(scratch, path.rsplit('/', 1)[-1])
        Path(local).write_bytes(content)
        discovery = find_sources([local], fields)
        for problem in discovery.unreadable.values():
            yield path, UnreadableFile(problem)
        try:
            for unit in plan_units(discovery.sources, max(1, len(content))):
                for item in UnitReader(unit, fields):
                    yield path, item
        except UnreadableFile as problem:
            yield path, problem


def sample_texts(frames: dict[str, Any], fields: FieldMapping, policy: DocumentPolicy) -> list[str]:
    """About SAMPLE_BYTES of acceptable texts from the front of the inputs, to verify the tokenizer backend on."""
    texts: list[str] = []
    for kind, frame in frames.items():
        rows = (row.asDict(recursive=True) for row in frame.limit(1 if kind == 'files' else SAMPLE_ROWS).collect())
        budget = SAMPLE_BYTES // len(frames)
        for _, item in records(kind, rows, fields):
            if isinstance(item, Record) and text_problem(item.text, policy.max_document_chars) is None:
                texts.append(item.text[:SAMPLE_TEXT_CHARS])
                budget -= len(texts[-1].encode('utf-8'))
                if budget <= 0:
                    break
    return texts
