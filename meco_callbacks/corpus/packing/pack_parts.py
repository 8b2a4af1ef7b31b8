"""Stage 2 as parts that any number of machines run, each resumable, joined into one packed dataset.

Every window of documents (``document_set.plan_ranges``) is packed by its own ``MDSWriter`` into its own part,
``part.KKKKK`` for window k, and the joint index lists the parts' shards in window order
(``part.00003/shard.00000.mds``): the dataset's bytes depend neither on the number of workers, nor on how the
parts were shared out among machines, nor on whether a run was interrupted. A part is written as
``part.KKKKK.tmp`` and renamed when complete with its counts in ``part.json``; with object storage its files are
uploaded once it is renamed, ``part.json`` last. A part is finished exactly when its ``part.json`` is there and
names this packing (``packing_id``), so a rerun or another machine reuses it and redoes only the rest; nothing
finished is ever deleted. Machine I of N (``--part I/N``) packs a contiguous block of the windows; whichever run
finds every part finished joins them.

Rows without room (``stream_rows``) need every window's stream length before any part can be cut (pass 1); the
measures are saved as ``measures.json`` beside the parts, so reruns and the other machines read them instead of
the documents.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from meco_callbacks.corpus.packing.document_set import DocumentRange, RangeMeasure, describe_range
from meco_callbacks.corpus.packing.heldout import set_aside
from meco_callbacks.corpus.packing.reserved_rows import WindowStats, WindowTask, window_stats, write_window
from meco_callbacks.corpus.packing.shard_cache import CacheLimit
from meco_callbacks.corpus.packing.stream_rows import (
    PartStats,
    PartTask,
    measure_ranges,
    plan_parts,
    stream_stats,
    write_part,
)
from meco_callbacks.corpus.storage.joint_index import part_name, write_joint_index
from meco_callbacks.corpus.storage.parts import ATTEMPT, PartStore, attempt_token, is_attempt
from meco_callbacks.corpus.storage.remote import Remote
from meco_callbacks.corpus.storage.workers import ProcessMap
from meco_callbacks.data.prefix import PrefixReservation

logger = logging.getLogger(__name__)

MARKER = 'part.json'
MEASURES = 'measures.json'


@dataclass(frozen=True)
class PartSelection:
    """Machine ``index`` of ``count``: it packs the ``index``-th of ``count`` contiguous blocks of windows."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> PartSelection:
        """``'I/N'`` (0 <= I < N), as ``--part`` takes it."""
        try:
            index, count = (int(value) for value in text.split('/'))
        except ValueError:
            raise ValueError(f'--part takes I/N, e.g. 0/8 for the first of 8 parts; got {text!r}.') from None
        if not 0 <= index < count:
            raise ValueError(f'--part {text}: need 0 <= I < N.')
        return cls(index, count)

    def windows(self, total: int) -> range:
        """The windows of this block."""
        return range(self.index * total // self.count, (self.index + 1) * total // self.count)

    def __str__(self) -> str:
        return f'{self.index}/{self.count}'


@dataclass(frozen=True)
class SamePacking:
    """Accepts a part's record when it names this packing: parts of another packing count as not finished."""

    packing_id: str

    def __call__(self, record: dict[str, Any]) -> bool:
        return record.get('packing') == self.packing_id


def packing_store(staging: Path, packing: str, remote: Remote | None) -> PartStore:
    """The parts of packing ``packing`` in ``staging`` (and on ``remote``, which then keeps their shards)."""
    return PartStore(staging, MARKER, remote, accept=SamePacking(packing), keep_shards=remote is None)


@dataclass(frozen=True)
class PartJob:
    """Pack one part: the task writes it (as ``<out>.tmp``), the store makes it finished."""

    index: int
    task: WindowTask | PartTask
    store: PartStore
    packing: str


def packing_id(info: dict[str, Any], documents_index: bytes, ranges: list[DocumentRange]) -> str:
    """What makes parts interchangeable: the packed set's settings, the documents' index, and the windows."""
    windows = [[task.shard['raw_data']['basename'], task.begin, task.end] for task in ranges]
    identity = {
        'info': {key: value for key, value in info.items() if key != 'stats'},
        'documents': hashlib.sha256(documents_index).hexdigest(),
        'windows': windows,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def prepare_staging(staging: Path, windows: int) -> None:
    """Keep what runs of this packing left in ``staging`` (parts, attempts, measures) and remove anything else."""
    keep = {MEASURES} | {part_name(k) for k in range(windows)}
    if not staging.is_dir():
        staging.mkdir(parents=True, exist_ok=True)
        return
    for entry in staging.iterdir():
        if entry.name not in keep and not (is_attempt(entry.name) and entry.name.split(ATTEMPT)[0] in keep):
            logger.warning('Removing %s, which this packing did not write.', entry)
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def pack_parts(
    ranges: list[DocumentRange],
    store: PartStore,
    packing: str,
    info: dict[str, Any],
    num_workers: int,
    progress: bool,
    selection: PartSelection | None,
    cache: CacheLimit | None = None,
) -> dict[str, Any] | None:
    """Pack the parts of ``selection`` (all when None) not finished yet, and join every part once all are.

    Returns the dataset's stats once every part is finished (the caller joins them, ``join_parts``), or None
    while other machines' parts are still missing. With ``cache``, document shards read from object storage are
    evicted once no later part reads them.
    """
    max_seq_len, strategy = info['max_seq_len'], info['strategy']
    reservation = PrefixReservation.from_info(info['reserve_prefix']) if info['reserve_prefix'] else None
    stream = reservation is None and strategy == 'stream'
    if stream:
        measures = _measures(ranges, store, packing, num_workers, progress, cache)
        parts = plan_parts(ranges, measures, max_seq_len, store.directory, info['compression'])
        tasks: dict[int, WindowTask | PartTask] = {task.window: task for task in parts}
    else:
        tasks = {
            k: WindowTask(
                out=str(store.directory / part_name(k)),
                documents=task,
                max_seq_len=max_seq_len,
                strategy=strategy,
                reservation=reservation,
                tokenizer_name=str(info['tokenizer'].get('name')),
                tokenizer_fingerprint=info['tokenizer']['fingerprint'],
                compression=info['compression'],
            )
            for k, task in enumerate(ranges)
        }
    mine = set(selection.windows(len(ranges)) if selection else range(len(ranges)))
    store.clean(part_name(k) for k in mine)  # attempts of this run's parts: their writers are gone
    finished = _finished(store, tasks)
    todo = [PartJob(k, task, store, packing) for k, task in tasks.items() if k in mine and finished[k] is None]
    reused = sum(1 for k in tasks if k in mine and finished[k] is not None)
    scope = f'part {selection}: windows {min(mine, default=0)}-{max(mine, default=-1)}' if selection else 'all windows'
    logger.info(
        '%s: %d parts to pack, %d already finished, reused; %d of %d parts of the whole set finished before this run.',
        scope,
        len(todo),
        reused,
        sum(record is not None for record in finished.values()),
        len(tasks),
    )
    eviction = cache.pass_over([_reads(job.task) for job in todo], num_workers) if cache and todo else None
    with (
        ProcessMap(_run_part, todo, num_workers, describe=_describe, ahead=eviction and eviction.ahead) as run,
        tqdm(total=len(todo), unit='part', desc='packing', disable=not progress) as bar,
    ):
        for position, (job, stats) in enumerate(zip(todo, run)):
            finished[job.index] = asdict(stats)
            bar.update(1)
            if eviction is not None:
                eviction.done(position)
    if any(record is None for record in finished.values()):  # other machines may have finished theirs
        finished = _finished(store, tasks)
    missing = [k for k, record in finished.items() if record is None]
    if missing:
        logger.info(
            'Packed %d parts; %d of %d parts are not finished yet (e.g. windows %s): the run that finishes the last '
            'one joins them, or run without --part to pack what is left and join.',
            len(todo),
            len(missing),
            len(tasks),
            missing[:5],
        )
        return None
    logger.info('All %d parts are finished (%d packed by this run).', len(tasks), len(todo))
    if stream:
        return stream_stats(measures, [PartStats(**finished[k]) for k in sorted(tasks)], max_seq_len)
    return window_stats([WindowStats(**finished[k]) for k in sorted(tasks)], max_seq_len)


def claim_join(staging: Path) -> Path | None:
    """Take the finished parts in ``staging`` for joining, by renaming it to a name of this job's own.

    Two ``--part`` jobs that finish the last parts at once both find every part finished; the rename lets exactly
    one of them join (the other gets None), so neither writes into a directory the other has renamed into place.
    """
    joining = staging.with_name(f'{staging.name}.join{ATTEMPT}{attempt_token()}.tmp')
    try:
        staging.rename(joining)
    except FileNotFoundError:
        return None
    for entry in joining.iterdir():  # attempts of parts finished by another attempt (no writer is left)
        if is_attempt(entry.name):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return joining


def reclaim_join(staging: Path) -> None:
    """Give back to ``staging`` the parts a join killed before it finished had taken (``claim_join``)."""
    for joining in staging.parent.glob(f'{staging.name}.join{ATTEMPT}*.tmp'):
        if staging.exists():
            logger.warning('Removing %s, left by an interrupted join.', joining)
            shutil.rmtree(joining)
        else:
            logger.info('Resuming from %s, left by an interrupted join.', joining)
            joining.rename(staging)


def join_parts(directory: Path) -> None:
    """Write ``directory/index.json`` over the shards of its finished parts that hold rows, in window order."""
    parts = sorted(
        path.parent for path in directory.glob(f'{part_name(0)[:5]}*/{MARKER}') if not is_attempt(path.parent.name)
    )
    with_rows = [part for part in parts if json.loads((part / MARKER).read_text())['stats']['rows']]
    write_joint_index(directory, with_rows)


def _finished(store: PartStore, tasks: dict[int, Any]) -> dict[int, dict[str, Any] | None]:
    """Each window's part's counts when it is finished, else None: one listing of the parts (and the remote)."""
    records = store.finished(part_name(k) for k in tasks)
    return {k: records[part_name(k)]['stats'] if part_name(k) in records else None for k in tasks}


def _reads(task: WindowTask | PartTask) -> list[DocumentRange]:
    """The document ranges a part's task reads."""
    return [task.documents, *task.read_ahead] if isinstance(task, PartTask) else [task.documents]


def _measures(
    ranges: list[DocumentRange],
    store: PartStore,
    packing: str,
    num_workers: int,
    progress: bool,
    cache: CacheLimit | None,
) -> list[RangeMeasure]:
    """Every window's pass-1 measure: saved by an earlier run or machine of this packing, else measured and saved."""
    path = store.directory / MEASURES
    if store.remote is not None:
        store.remote.fetch(MEASURES)
    if path.is_file():
        record = json.loads(path.read_text())
        if record.get('packing') == packing:
            logger.info('Reusing the measures of %d windows from %s.', len(ranges), path)
            return [RangeMeasure(**measure) for measure in record['measures']]
    measures = measure_ranges(ranges, num_workers, progress, cache)
    written = path.with_name(f'{MEASURES}{ATTEMPT}{attempt_token()}.tmp')
    written.write_text(json.dumps({'packing': packing, 'measures': [asdict(m) for m in measures]}))
    written.rename(path)
    if store.remote is not None:
        store.remote.upload(MEASURES)
    return measures


def _run_part(job: PartJob) -> WindowStats | PartStats:
    """Write a part under its attempt's own name and make it finished."""
    written = job.store.attempt(part_name(job.index))
    task = replace(job.task, out=str(written))
    stats = write_window(task) if isinstance(task, WindowTask) else write_part(task)
    if task.documents.split is not None and not task.documents.split.held_out:
        set_aside(task.documents, written)  # the window's held-out documents, read once with it
    job.store.commit(part_name(job.index), written, {'packing': job.packing, 'stats': asdict(stats)})
    return stats


def _describe(job: PartJob) -> str:
    """A part for messages about a worker that died on it."""
    return f'{part_name(job.index)}: {describe_range(job.task.documents)}'
