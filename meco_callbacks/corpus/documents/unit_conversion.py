"""Converting one unit of stage 1: read its records, check them, tokenize in batches, write its own MDS part.

A unit is converted whole or not at all: it is a part of the part store (``storage.parts``), written under its
attempt's own name with its counts in ``unit.json`` last and renamed into place when complete, so a killed run
leaves only finished units behind; with object storage it is then uploaded, ``unit.json`` last. Within a unit the
stages (read, tokenize, write) run one after another on batches of about a megabyte of text: parallelism comes
from converting several units at once in worker processes; threads inside a worker measured slower (the
tokenizers hand the GIL back and forth with parsing and writing).
"""

from __future__ import annotations

import array
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from streaming import MDSWriter

from meco_callbacks.corpus.documents.conversion_plan import UNIT_STATS_FILE, unit_name
from meco_callbacks.corpus.documents.document_checks import ConversionStats, Document, DocumentChecker
from meco_callbacks.corpus.documents.readers import Skip, UnitReader
from meco_callbacks.corpus.documents.sources import FieldMapping, Unit, UnreadableFile
from meco_callbacks.corpus.documents.tokenization import TokenizerBackend
from meco_callbacks.corpus.storage.parts import PartStore
from meco_callbacks.corpus.storage.remote import Remote
from meco_callbacks.formats import DOCUMENT_COLUMNS

BATCH_CHARS = 1 << 20
BATCH_DOCUMENTS = 2048

Progress = Callable[[int, int, int], None]
"""Called as ``progress(input_bytes, documents, tokens)`` after each written batch."""


@dataclass
class UnitContext:
    """Everything needed to convert any unit of one conversion (inherited by forked workers, never pickled)."""

    fields: FieldMapping
    checker: DocumentChecker
    backend: TokenizerBackend
    partial: Path
    unit_count: int
    remote: Remote | None = None  # where each finished unit is uploaded (``Remote(url, partial)``)

    def unit_dir(self, unit: Unit) -> Path:
        """Where the finished unit lies."""
        return self.partial / unit_name(unit.index, self.unit_count)

    def store(self) -> PartStore:
        """The part store the units are written in."""
        return unit_store(self.partial, self.remote)


def unit_store(partial: Path, remote: Remote | None) -> PartStore:
    """Stage 1's units in ``partial`` (and on ``remote``): parts marked finished by their counts, ``unit.json``."""
    return PartStore(partial, UNIT_STATS_FILE, remote)


@dataclass
class UnitResult:
    """What converting a unit took (CPU seconds per stage) and gave (its counts)."""

    seconds: dict[str, float]
    stats: ConversionStats


@dataclass
class DocumentBatch:
    """Records read together and tokenized in one call; ``input_bytes`` is their share of the input, for progress."""

    documents: list[Document]
    input_bytes: int


def describe_unit(unit: Unit) -> str:
    """The unit and the part of its input it covers, for messages."""
    kind = 'bytes' if unit.source.format == 'jsonl' and unit.source.compression is None else 'parts'
    return f'unit {unit.index} ({unit.source.path}, {kind} {unit.start}-{unit.stop})'


def convert_unit(context: UnitContext, unit: Unit, progress: Progress) -> UnitResult:
    """Convert one unit into its own MDS directory, renamed into place when complete."""
    store, name = context.store(), context.unit_dir(unit).name
    staging = store.attempt(name)
    result = write_unit(context, unit, staging, progress)
    store.commit(name, staging, result.stats.to_dict())
    return result


def write_unit(context: UnitContext, unit: Unit, out: Path, progress: Progress) -> UnitResult:
    """Read, check, tokenize and write one unit's documents as an MDS directory at ``out`` (an attempt's)."""
    stats = ConversionStats()
    columns = dict(DOCUMENT_COLUMNS, **dict.fromkeys(context.fields.metadata_columns(), 'str'))
    seconds = {'read': 0.0, 'tokenize': 0.0, 'write': 0.0}
    with MDSWriter(out=str(out), columns=columns) as writer:
        batches = _read_batches(unit, context, stats)
        while True:
            began = time.thread_time()
            batch = next(batches, None)
            tokenizing = time.thread_time()
            seconds['read'] += tokenizing - began
            if batch is None:
                break
            texts = [doc.text for doc in batch.documents if doc.token_ids is None]
            encoded = context.backend.encode_batch(texts) if texts else []
            writing = time.thread_time()
            seconds['tokenize'] += writing - tokenizing
            write_batch(batch, encoded, writer, context.checker, stats, progress)
            seconds['write'] += time.thread_time() - writing
    return UnitResult(seconds, stats)


def _read_batches(unit: Unit, context: UnitContext, stats: ConversionStats) -> Iterator[DocumentBatch]:
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
                yield DocumentBatch(documents, reader.bytes_done - reported)
                documents, chars, reported = [], 0, reader.bytes_done
    except UnreadableFile as problem:
        stats.files_unreadable[unit.source.path] = (
            f'{problem} (after {stats.documents_read} records of unit {unit.index})'
        )
    yield DocumentBatch(documents, unit.size - reported)


def write_batch(
    batch: DocumentBatch,
    encoded_texts: list[list[int]],
    writer: Any,
    checker: DocumentChecker,
    stats: ConversionStats,
    progress: Progress,
) -> None:
    """Write a batch's documents with their token ids, skipping (and counting) those the ids disqualify."""
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
    progress(batch.input_bytes, written, tokens)
