"""Spark tasks over stage 1's units: each converts its units as a local worker does, reading the input itself.

A task's units are the local converter's (``sources.plan_units``), grouped into a few balanced tasks; each unit is
written by ``unit_conversion.write_unit`` into a part of the part store named by the unit (``part-00003``), with
its counts in ``part.json``, under the task attempt's own name until complete, so a retried task never duplicates.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from meco_callbacks.corpus.documents.sources import Unit
from meco_callbacks.corpus.documents.spark_inputs import local_uri
from meco_callbacks.corpus.documents.unit_conversion import UnitContext, write_unit
from meco_callbacks.corpus.storage.errors import ConversionError
from meco_callbacks.corpus.storage.parts import PartStore

PART_STATS_FILE = 'part.json'
TASKS_PER_CORE = 2  # tasks over the units per Spark core


def balanced_groups(units: Sequence[Unit], count: int) -> list[list[Unit]]:
    """The units in at most ``count`` groups of about equal input, largest unit first: one Spark task each, as few
    as keep every core busy to the end (a task costs about a second of scheduling on a busy machine)."""
    groups: list[list[Unit]] = [[] for _ in range(min(count, len(units)))]
    sizes = [0] * len(groups)
    for unit in sorted(units, key=lambda unit: -unit.size):
        smallest = sizes.index(min(sizes))
        groups[smallest].append(unit)
        sizes[smallest] += unit.size
    return groups


def part_name(number: int) -> str:
    """The directory name of part ``number``: sorted names follow the part order."""
    return f'part-{number:05d}'


def convert_units(task: Any, units: Iterator[Unit]) -> Iterator[str]:
    """Runs in a Spark task: convert its units as the local converter does (``unit_conversion.write_unit``), each
    read by the task itself from the input, into a part named by the unit, with its counts beside it."""
    from pyspark import TaskContext

    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')  # parallelism comes from Spark's tasks
    store = PartStore(Path(task.staging), PART_STATS_FILE)
    context = UnitContext(task.fields, task.checker, task.backend.value, store.directory, task.first_part)
    for unit in units:
        if not os.path.isfile(unit.source.path) or os.path.getsize(unit.source.path) != unit.source.size:
            raise ConversionError(
                f'{unit.source.path} is not on this executor as the driver found it: a path that every task '
                'reads itself must be on a filesystem every executor mounts; name a cluster filesystem by its URL'
            )
        name = part_name(unit.index)
        attempt = store.attempt(name, str(TaskContext.get().taskAttemptId()))
        stats = write_unit(context, unit, attempt, lambda *_: None).stats
        stats.files_unreadable = {local_uri(path): problem for path, problem in stats.files_unreadable.items()}
        read = {local_uri(unit.source.path): stats.documents_read} if stats.documents_read else {}
        store.commit(name, attempt, dict(stats.to_dict(), records_per_file=read))
        yield name
