"""The end of stage 1: the finished units under ``<output>.partial`` become one document dataset at ``<output>``.

The merge is the only step that needs every unit, so it runs once, after the last job: it refuses while a unit
is missing (naming them), sums the units' counts (refusing if read = written + skipped does not hold), writes
one index over the units' shards in input order and the dataset's info file, and renames the partial directory
into place. Its result is the same bytes whichever jobs and workers converted the units.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from meco_callbacks.corpus.documents.conversion_plan import PLAN_FILE, UNIT_STATS_FILE, partial_dir, unit_name
from meco_callbacks.corpus.documents.document_checks import ConversionStats
from meco_callbacks.corpus.documents.unit_conversion import unit_store
from meco_callbacks.corpus.storage.errors import ConversionError
from meco_callbacks.corpus.storage.joint_index import write_joint_index
from meco_callbacks.corpus.storage.output import existing_output, replace_output
from meco_callbacks.corpus.storage.parts import PartStore
from meco_callbacks.corpus.storage.remote import Remote
from meco_callbacks.formats import DATASET_INFO_FILE, DOCUMENT_FORMAT, read_dataset_info, write_dataset_info

log = logging.getLogger(__name__)

DOCUMENT_IDENTITY = {'conversion': 'conversion.id'}
"""Two document datasets are the same when the same conversion (inputs, settings, tokenizer) made them."""


def claim_document_output(output: Path, plan_id: str, overwrite: bool) -> dict[str, Any] | None:
    """The info of ``output`` when it already holds this conversion, else None; another dataset is refused unless ``overwrite``."""
    wanted = {'format': DOCUMENT_FORMAT, 'conversion': {'id': plan_id}}
    return existing_output(output, wanted, DOCUMENT_IDENTITY, 'document dataset', overwrite)


def merge_document_parts(output: str | Path, overwrite: bool = False, remote: str | None = None) -> dict[str, Any]:
    """Join the converted units in ``<output>.partial`` into one dataset at ``output``; returns its info.

    Refuses while any unit is missing (naming them), and refuses to replace a different dataset at ``output``
    unless ``overwrite``. With ``remote`` (a URL), units that other machines converted and uploaded count too
    (their ``unit.json`` and ``index.json`` are downloaded; the shards stay on the remote), and the joined
    dataset is then uploaded there (``publish_documents``).
    """
    output = Path(output)
    partial = partial_dir(output)
    plan_path = partial / PLAN_FILE
    if not plan_path.is_file():
        finished = read_dataset_info(output) if output.is_dir() else None
        if finished is not None and finished.get('format') == DOCUMENT_FORMAT:
            if remote is not None:
                publish_documents(output, remote)
            return finished
        raise ConversionError(f'nothing to merge: {partial} holds no conversion in progress')
    plan = json.loads(plan_path.read_text())
    count = len(plan['units'])
    names = [unit_name(i, count) for i in range(count)]
    records = unit_store(partial, Remote(remote, partial) if remote is not None else None).finished(names)
    missing = [i for i, name in enumerate(names) if name not in records]
    if missing:
        raise ConversionError(
            f'{len(missing)} of {count} units are not converted yet (e.g. {missing[:5]}); run the '
            'parts that hold them (unit i belongs to job i % num_jobs) and merge again'
        )
    stats = ConversionStats(files_unreadable=dict(plan['unreadable_inputs']))
    records_per_source: Counter = Counter()
    for (source, *_), name in zip(plan['units'], names):
        unit_stats = ConversionStats.from_dict(records[name])
        stats.add(unit_stats)
        records_per_source[source] += unit_stats.documents_read
    if stats.documents_read != stats.documents_written + sum(stats.skipped.values()):
        raise ConversionError(f'internal error: counts do not add up in {partial}: {stats.to_dict()}')
    write_joint_index(partial, [partial / name for name in names])
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
    claim_document_output(output, plan['id'], overwrite)
    replace_output(output, partial)
    log.info('Merged %d units into %s.', count, output)
    if remote is not None:
        publish_documents(output, remote)
    return info


def publish_documents(directory: Path, remote: str, marker: str = UNIT_STATS_FILE) -> None:
    """Upload a finished set: its parts not on ``remote`` yet (each with its ``marker`` last; one listing of the
    remote finds them), then index.json, then meco_dataset.json last, so a reader never finds an index naming
    shards that are not there."""
    target = Remote(remote, directory)
    published = PartStore(directory, marker, target).publish()
    target.upload('index.json')
    target.upload(DATASET_INFO_FILE)
    log.info('Uploaded %s to %s (%d parts were not there yet).', directory, remote, published)
