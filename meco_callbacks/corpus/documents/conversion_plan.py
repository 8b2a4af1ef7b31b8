"""Plan and resume of stage 1: a conversion's identity, and the ``<output>.partial`` directory that holds its units.

A conversion is identified by its inputs as found (paths, sizes, modification times), its units, its settings and
its tokenizer's fingerprint; the plan records them under ``<output>.partial`` before any unit is written. Each
unit is written as ``unit-00000.tmp`` and renamed to ``unit-00000`` when complete, so a rerun with the same
arguments finds the plan, trusts the finished units and converts only the rest, and several jobs on several
machines can share one partial directory: the first job to record the plan wins, the others must agree with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from meco_callbacks.corpus.documents.document_checks import DocumentPolicy
from meco_callbacks.corpus.documents.sources import FieldMapping, Source, Unit
from meco_callbacks.corpus.storage.errors import ConversionError
from meco_callbacks.formats import DOCUMENT_COLUMNS, DOCUMENT_FORMAT
from meco_callbacks.tokenizer.fingerprint import tokenizer_info

log = logging.getLogger(__name__)

PLAN_FILE = 'meco_conversion_plan.json'
UNIT_STATS_FILE = 'unit.json'


def plan_conversion(
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


def partial_dir(output: Path) -> Path:
    """Where a conversion into ``output`` keeps its plan and finished units until they are merged."""
    return output.with_name(output.name + '.partial')


def unit_name(index: int, count: int) -> str:
    """The directory name of unit ``index`` of ``count``: sorted names follow the input order."""
    return f'unit-{index:0{max(5, len(str(count - 1)))}d}'


def recorded_plan(partial: Path, plan_id: str, overwrite: bool) -> dict[str, Any] | None:
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


def record_plan(partial: Path, plan: dict[str, Any]) -> None:
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
