"""Corpus conversion reading: a unit's records, in input order, as raw fields or a counted reason they cannot be read.

Readers only parse. A line that is not JSON, not UTF-8 or not an object becomes a counted ``Skip``; judging a
record's text and URL is ``document_checks``'s job. ``UnitReader.bytes_done`` follows the unit's input, so that
progress is reported in input bytes. MDS inputs are decoded with ``corpus.mds``, the decoder the packer uses:
each shard's columns are located for all its samples at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import zstandard
from streaming.base.format.mds.encodings import mds_decode

from meco_callbacks.corpus.documents.sources import FieldMapping, Unit, UnreadableFile, decompressed, mds_index
from meco_callbacks.corpus.packing import mds

MISSING: Any = type('Missing', (), {'__repr__': lambda self: 'MISSING'})()
"""What a field lookup returns when the record has no such field (``None`` is a present null)."""

BYTE_ORDER_MARK = b'\xef\xbb\xbf'


@dataclass
class Record:
    """A record's raw fields as found (``MISSING`` when absent); ``token_ids`` only for MDS token passthrough."""

    text: Any
    url: Any
    metadata: dict[str, Any]
    token_ids: np.ndarray | None = None
    length: Any = MISSING


@dataclass(frozen=True)
class Skip:
    """A record that could not even be parsed, and why."""

    reason: str


def lookup(record: Any, path: str) -> Any:
    """The value at a dotted ``path`` in nested dicts (a key that itself contains the dots wins), else MISSING."""
    if isinstance(record, dict) and path in record:
        return record[path]
    value = record
    for part in path.split('.'):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


class UnitReader:
    """Iterate a unit's records (``Record`` or ``Skip``); ``bytes_done`` tracks progress through its input."""

    def __init__(self, unit: Unit, fields: FieldMapping) -> None:
        self.unit = unit
        self.fields = fields
        self.metadata_columns = fields.metadata_columns()
        self.bytes_done = 0

    def __iter__(self) -> Iterator[Record | Skip]:
        """Records in input order; raises UnreadableFile (after what could be read) when the file is damaged."""
        source = self.unit.source
        readers = {
            'jsonl': self._jsonl,
            'json-array': self._json_array,
            'parquet': self._parquet,
            'arrow': self._arrow,
            'mds-text': self._mds,
            'mds-tokens': self._mds,
        }
        try:
            yield from readers[source.format]()
        except (OSError, EOFError, ValueError, zstandard.ZstdError) as error:
            raise UnreadableFile(f'{type(error).__name__}: {error}') from error
        self.bytes_done = self.unit.size

    def line_record(self, line: bytes) -> Record | Skip:
        """One JSON Lines line (byte-order mark removed) as a record, or the Skip that says why it is none.

        Public for readers that cut lines themselves (``spark_conversion``), so that they judge lines as this one does.
        """
        if not line or line.isspace():
            return Skip('blank_line')
        obj = _parsed(line)
        return obj if isinstance(obj, Skip) else self._record(obj)

    def row_record(self, row: Any) -> Record | Skip:
        """A parsed JSON value or table row as a record (a Skip when it is not an object), for rows read elsewhere."""
        return self._record(row)

    def _record(self, obj: Any) -> Record | Skip:
        if not isinstance(obj, dict):
            return Skip('not_a_json_object')
        return Record(
            text=lookup(obj, self.fields.text), url=lookup(obj, self.fields.url), metadata=self._metadata(obj)
        )

    def _metadata(self, obj: dict[str, Any]) -> dict[str, Any]:
        return {name: lookup(obj, path) for name, path in self.metadata_columns.items()}

    def _jsonl(self) -> Iterator[Record | Skip]:
        unit = self.unit
        with open(unit.source.path, 'rb') as raw:
            stream, start = _open_lines(raw, unit)
            position = start
            for line in stream:
                if position >= unit.stop and unit.source.compression is None:
                    break
                at_start, position = position == 0, position + len(line)  # the mark counts: units cut raw bytes
                if at_start and line.startswith(BYTE_ORDER_MARK):
                    line = line[len(BYTE_ORDER_MARK) :]
                self.bytes_done = (position - start) if unit.source.compression is None else raw.tell()
                yield self.line_record(line)

    def _json_array(self) -> Iterator[Record | Skip]:
        with open(self.unit.source.path, 'rb') as raw:
            items = _parsed(decompressed(raw, self.unit.source.compression).read())
        if isinstance(items, Skip):
            yield items
            return
        for item in items if isinstance(items, list) else [items]:
            yield self._record(item)

    def _needed(self, names: Any) -> list[str]:
        """The top-level columns among ``names`` that a lookup may need: a path itself (dotted names) and its first part."""
        paths = [self.fields.text, self.fields.url, *self.metadata_columns.values()]
        wanted = dict.fromkeys(name for path in paths for name in (path, path.split('.', 1)[0]))
        return [name for name in wanted if name in set(names)]

    def _parquet(self) -> Iterator[Record | Skip]:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(self.unit.source.path)
        columns = self._needed(parquet.schema_arrow.names)  # wide files: read only what is needed
        for group in range(self.unit.start, self.unit.stop):
            for row in parquet.read_row_group(group, columns=columns).to_pylist():
                yield self._record(row)
            self.bytes_done += parquet.metadata.row_group(group).total_byte_size

    def _arrow(self) -> Iterator[Record | Skip]:
        import pyarrow as pa

        with pa.memory_map(self.unit.source.path) as mapped:
            for batch in pa.ipc.open_stream(mapped):
                for row in batch.select(self._needed(batch.schema.names)).to_pylist():
                    yield self._record(row)

    def _mds(self) -> Iterator[Record | Skip]:
        directory = self.unit.source.path
        shards = mds_index(directory)['shards']
        first = sum(shard['samples'] for shard in shards[: self.unit.start])
        for shard in shards[self.unit.start : self.unit.stop]:
            count = shard['samples']
            blob, offsets = mds.sample_bytes(directory, shard, 0, count)
            spans = mds.column_spans(blob, offsets, shard)
            encodings = dict(zip(shard['column_names'], shard['column_encodings']))
            columns = {name: _column_values(blob, spans[name], encodings[name]) for name in self._needed(spans)}
            rows = [dict(zip(columns, values)) for values in zip(*columns.values())] or [{}] * count
            if self.unit.source.format == 'mds-text':
                yield from map(self._record, rows)
            else:
                yield from self._token_records(blob, spans, encodings, rows, first, directory)
            first += count
            self.bytes_done += shard['raw_data']['bytes']

    def _token_records(
        self,
        blob: bytes,
        spans: dict[str, mds.Spans],
        encodings: dict[str, str],
        rows: list[dict[str, Any]],
        first: int,
        directory: str,
    ) -> Iterator[Record]:
        """A token shard's records: ``input_ids`` passed through (with ``length`` to check them against), no text."""
        dtype = mds.TOKEN_ENCODINGS[encodings['input_ids']]
        starts, sizes = mds.array_spans(blob, *spans['input_ids'], np.dtype(dtype).itemsize, first, directory)
        lengths = (
            mds.column_integers(blob, spans['length'], encodings['length']).tolist()
            if 'length' in spans
            else [MISSING] * len(rows)
        )
        for row, start, size, length in zip(rows, starts.tolist(), sizes.tolist(), lengths):
            yield Record(
                text=MISSING,
                url=lookup(row, self.fields.url),
                metadata=self._metadata(row),
                token_ids=np.frombuffer(blob, dtype, size, start),
                length=length,
            )


def _parsed(data: bytes) -> Any:
    """The JSON value ``data`` holds, or the Skip that says why it holds none."""
    try:
        return json.loads(data.decode('utf-8'))
    except UnicodeDecodeError:
        return Skip('invalid_utf8')
    except ValueError:
        return Skip('malformed_json')


def _column_values(blob: bytes, span: mds.Spans, encoding: str) -> list[Any]:
    """An MDS column's value for every sample, as Streaming decodes it (strings without per-sample calls)."""
    if encoding == 'str':
        return mds.column_texts(blob, span, np.arange(len(span[0])), encoding)
    return [mds_decode(encoding, blob[start : start + size]) for start, size in zip(*(part.tolist() for part in span))]


def _open_lines(raw: BinaryIO, unit: Unit) -> tuple[BinaryIO, int]:
    """A line stream positioned at the first line that starts inside the unit, and that line's offset."""
    if unit.source.compression is not None or unit.start == 0:
        return decompressed(raw, unit.source.compression), 0
    raw.seek(unit.start - 1)
    if raw.read(1) != b'\n':
        raw.readline()
    return raw, raw.tell()
