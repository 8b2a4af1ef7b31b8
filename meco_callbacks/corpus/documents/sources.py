"""Corpus conversion inputs: find the sources the user named, check their columns, and cut them into units of work.

Formats: JSON Lines (``.jsonl``, ``.json``, ``.ndjson``, each optionally ``.gz`` or ``.zst``), a JSON array in a
``.json`` file, Parquet, a Hugging Face dataset saved with ``save_to_disk``, and MDS: either text with a URL, or
the MeCo authors' per-document token format (``input_ids`` as ``uint32`` or ``int32`` arrays, ``url``,
``length``), whose tokens are passed through. Fields are dotted paths into a record (``metadata.url``); typed
formats (Parquet, Arrow, MDS) are refused up front when they lack a named column.

A unit is a byte range of a plain JSON Lines file, a whole compressed or array file, a run of Parquet row groups,
one Arrow file, or a run of MDS shards. Units never depend on the number of workers or jobs, so every split of
the work gives the same output; ``readers.UnitReader`` reads one.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from meco_callbacks.corpus.packing.mds import TOKEN_ENCODINGS

JSON_SUFFIXES = ('.jsonl', '.json', '.ndjson')
COMPRESSIONS = {'.gz': 'gzip', '.zst': 'zstd', '.zstd': 'zstd'}
DEFAULT_UNIT_BYTES = 64 << 20
MIN_UNIT_BYTES = 1 << 20
UNITS_PER_INPUT = 64  # small inputs get smaller units (never below MIN_UNIT_BYTES) so that workers share the tail


class InputError(ValueError):
    """The inputs or field names cannot be converted as given; the message says what to change."""


class UnreadableFile(Exception):
    """A file could not be read (corrupt, truncated, permission denied); its problem is counted, not fatal."""


@dataclass(frozen=True)
class FieldMapping:
    """Where a record keeps its text, its URL and the extra metadata columns to carry along (dotted paths)."""

    text: str = 'text'
    url: str = 'url'
    metadata: tuple[str, ...] = ()

    def metadata_columns(self) -> dict[str, str]:
        """Output column name (the path's last part) -> field path, refusing clashes."""
        columns: dict[str, str] = {}
        for path in self.metadata:
            name = path.rsplit('.', 1)[-1]
            if name in columns or name in ('input_ids', 'length', 'url'):
                raise InputError(
                    f'metadata field {path!r} would be stored as column {name!r}, which is already taken; '
                    'metadata columns are named by the last part of their path and must be distinct'
                )
            columns[name] = path
        return columns


@dataclass(frozen=True)
class Source:
    """One input (absolute path): a file, one Arrow file of a Hugging Face dataset, or an MDS directory."""

    path: str
    format: str  # 'jsonl', 'json-array', 'parquet', 'arrow', 'mds-text' or 'mds-tokens'
    compression: str | None
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Unit:
    """A piece of one source converted on its own: a byte, row-group or shard range ``[start, stop)``."""

    index: int
    source: Source
    start: int
    stop: int
    size: int


@dataclass
class Discovery:
    """The sources found for the inputs, and the files that could not be opened at all (path -> problem)."""

    sources: list[Source] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)


def find_sources(inputs: Sequence[str], fields: FieldMapping, require_url: bool = True) -> Discovery:
    """Expand files, globs and dataset directories into sources, checking column names of typed formats.

    Raises InputError for an input that matches nothing or whose format is unknown, and for Parquet, Arrow or
    MDS data without the named text, metadata or (when ``require_url``) URL column.
    """
    wanted = [('text', fields.text)] + [('url', fields.url)] * require_url + [('metadata', p) for p in fields.metadata]
    found = Discovery()
    seen: set[str] = set()
    for pattern in inputs:
        paths = sorted(glob.glob(pattern, recursive=True)) if any(c in pattern for c in '*?[') else [pattern]
        if not paths:
            raise InputError(f'input pattern {pattern!r} matches no files')
        for path in map(os.path.abspath, paths):
            if path in seen:
                continue
            seen.add(path)
            if not os.path.lexists(path):
                raise InputError(f'input {path!r} does not exist')
            try:
                found.sources.extend(_sources_at(path, wanted))
            except UnreadableFile as problem:
                found.unreadable[path] = str(problem)
    return found


def plan_units(sources: Sequence[Source], unit_bytes: int) -> list[Unit]:
    """Cut sources into units of at most ``unit_bytes`` of input; every source gets at least one unit.

    A small input gets smaller units (1/UNITS_PER_INPUT of it, at least MIN_UNIT_BYTES), so that workers share it.
    """
    total = sum(source.size for source in sources)
    unit_bytes = min(unit_bytes, max(MIN_UNIT_BYTES, total // UNITS_PER_INPUT))
    units: list[Unit] = []

    def add(source: Source, start: int, stop: int, size: int) -> None:
        units.append(Unit(len(units), source, start, stop, size))

    for source in sources:
        if source.format == 'jsonl' and source.compression is None and source.size > 0:
            for start in range(0, source.size, unit_bytes):
                stop = min(start + unit_bytes, source.size)
                add(source, start, stop, stop - start)
        elif source.format in ('parquet', 'mds-text', 'mds-tokens'):
            sizes = _parquet_group_sizes(source) if source.format == 'parquet' else _mds_shard_sizes(source)
            start, total = 0, 0
            for i, size in enumerate(sizes):
                total += size
                if total >= unit_bytes or i == len(sizes) - 1:
                    add(source, start, i + 1, total)
                    start, total = i + 1, 0
            if not sizes:
                add(source, 0, 0, 0)
        else:
            add(source, 0, 1, source.size)
    return units


def _sources_at(path: str, wanted: list[tuple[str, str]]) -> list[Source]:
    """The source(s) one path names; raises InputError for what cannot be converted, UnreadableFile for damage."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, 'index.json')):
            return [_mds_source(path, wanted)]
        if os.path.isfile(os.path.join(path, 'state.json')):
            return _hf_sources(path, wanted)
        if os.path.isfile(os.path.join(path, 'dataset_dict.json')):
            splits = json.loads(Path(path, 'dataset_dict.json').read_text())['splits']
            raise InputError(
                f'{path} is a Hugging Face DatasetDict with splits {splits}; pass one split directory, '
                f'e.g. {os.path.join(path, splits[0])}'
            )
        raise InputError(
            f'{path} is a directory but neither an MDS dataset (index.json) nor a Hugging Face '
            f'save_to_disk dataset (state.json); pass its files instead, e.g. "{path}/*.jsonl"'
        )
    name = os.path.basename(path).lower()
    compression = None
    for suffix, kind in COMPRESSIONS.items():
        if name.endswith(suffix):
            name, compression = name[: -len(suffix)], kind
    try:
        stat = os.stat(path)
    except OSError as error:
        raise UnreadableFile(f'{type(error).__name__}: {error.strerror}') from error
    if name.endswith('.parquet') and compression is None:
        _check_columns(path, _parquet_schema_names(path), wanted, 'Parquet file')
        return [Source(path, 'parquet', None, stat.st_size, stat.st_mtime_ns)]
    if not name.endswith(JSON_SUFFIXES):
        raise InputError(
            f'cannot tell the format of {path} from its name; use .jsonl/.json/.ndjson (optionally '
            '.gz or .zst), .parquet, an MDS directory or a Hugging Face save_to_disk directory'
        )
    fmt = 'json-array' if name.endswith('.json') and _starts_with_bracket(path, compression) else 'jsonl'
    return [Source(path, fmt, compression, stat.st_size, stat.st_mtime_ns)]


def _check_columns(path: str, names: dict[str, Any], wanted: list[tuple[str, str]], what: str) -> None:
    """Refuse typed data (Parquet, Arrow, MDS) that lacks a wanted (role, path) column; typed nesting is checked."""
    for role, field_path in wanted:
        if not _schema_has(names, field_path):
            flag = {'text': '--text-field', 'url': '--url-field', 'metadata': '--metadata-fields'}[role]
            raise InputError(
                f'{what} {path} has no {role} column {field_path!r} (columns: {sorted(names)}); '
                f'name the right one with {flag}'
            )


def _schema_has(names: dict[str, Any], field_path: str) -> bool:
    if field_path in names:
        return True
    top, _, rest = field_path.partition('.')
    if not rest or top not in names:
        return False
    nested = names[top]
    if nested is None:  # an untyped column (MDS json): its keys are only known per record
        return True
    return _schema_has(nested, rest) if isinstance(nested, dict) else False


def _parquet_schema_names(path: str) -> dict[str, Any]:
    import pyarrow.parquet as pq

    try:
        return _arrow_names(pq.ParquetFile(path).schema_arrow)
    except (OSError, ValueError) as error:
        raise UnreadableFile(f'{type(error).__name__}: {error}') from error


def _arrow_names(schema: Any) -> dict[str, Any]:
    """Column name -> nested names for struct columns, else False (a leaf), for column checks."""
    import pyarrow as pa

    names: dict[str, Any] = {}
    for column in schema:
        names[column.name] = _arrow_names(column.type) if pa.types.is_struct(column.type) else False
    return names


def _parquet_group_sizes(source: Source) -> list[int]:
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(source.path).metadata
    return [metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)]


def _hf_sources(path: str, wanted: list[tuple[str, str]]) -> list[Source]:
    import pyarrow as pa

    state = json.loads(Path(path, 'state.json').read_text())
    sources = []
    for entry in state['_data_files']:
        file = os.path.join(path, entry['filename'])
        try:
            with pa.memory_map(file) as mapped:
                names = _arrow_names(pa.ipc.open_stream(mapped).schema)
            stat = os.stat(file)
        except (OSError, ValueError) as error:
            raise UnreadableFile(f'{entry["filename"]}: {type(error).__name__}: {error}') from error
        _check_columns(file, names, wanted, 'Hugging Face dataset file')
        sources.append(Source(file, 'arrow', None, stat.st_size, stat.st_mtime_ns))
    return sources


def mds_index(directory: str) -> dict[str, Any]:
    """An MDS directory's ``index.json``."""
    return json.loads(Path(directory, 'index.json').read_text())


def _mds_source(directory: str, wanted: list[tuple[str, str]]) -> Source:
    """An MDS directory: text to tokenize when it has the text column, else ``input_ids`` passed through."""
    shards = mds_index(directory)['shards']
    layouts = {(tuple(s['column_names']), tuple(s['column_encodings'])) for s in shards}
    if len(layouts) > 1:
        raise InputError(f'MDS dataset {directory} has shards with different columns: {sorted(layouts)}')
    names, encodings = layouts.pop() if layouts else ((), ())
    encoding_of = dict(zip(names, encodings))
    columns = {name: (None if encoding == 'json' else False) for name, encoding in encoding_of.items()}
    size = sum(shard['raw_data']['bytes'] for shard in shards)
    mtime = os.stat(os.path.join(directory, 'index.json')).st_mtime_ns
    text_path = wanted[0][1]
    if _schema_has(columns, text_path) or 'input_ids' not in columns:
        _check_columns(directory, columns, wanted, 'MDS dataset')
        return Source(directory, 'mds-text', None, size, mtime)
    if encoding_of['input_ids'] not in TOKEN_ENCODINGS:
        raise InputError(
            f'MDS dataset {directory} stores input_ids as {encoding_of["input_ids"]}; token passthrough '
            f'reads {" or ".join(TOKEN_ENCODINGS)} (the MeCo release format)'
        )
    _check_columns(directory, columns, wanted[1:], 'MDS dataset')
    return Source(directory, 'mds-tokens', None, size, mtime)


def _mds_shard_sizes(source: Source) -> list[int]:
    return [shard['raw_data']['bytes'] for shard in mds_index(source.path)['shards']]


def decompressed(raw: BinaryIO, compression: str | None) -> BinaryIO:
    """``raw`` read through its decompressor (``gzip``, ``zstd`` across frames), or as is."""
    if compression == 'gzip':
        return gzip.GzipFile(fileobj=raw, mode='rb')
    if compression == 'zstd':
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))
    return raw


def _starts_with_bracket(path: str, compression: str | None) -> bool:
    """Whether a .json file holds one JSON array (else it is read as JSON Lines)."""
    try:
        with open(path, 'rb') as raw:
            head = decompressed(raw, compression).read(4096)
    except (OSError, EOFError) as error:
        raise UnreadableFile(f'{type(error).__name__}: {error}') from error
    return head.lstrip(b'\xef\xbb\xbf \t\r\n').startswith(b'[')
