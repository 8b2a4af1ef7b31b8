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

from meco_callbacks.corpus.document_set import DocumentRange, RangeMeasure, describe_range
from meco_callbacks.corpus.joint_index import part_name, write_joint_index
from meco_callbacks.corpus.remote import Remote, upload_directory
from meco_callbacks.corpus.reserved_rows import WindowStats, WindowTask, window_stats, write_window
from meco_callbacks.corpus.stream_rows import PartStats, PartTask, measure_ranges, plan_parts, stream_stats, write_part
from meco_callbacks.corpus.workers import ProcessMap
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


@dataclass
class PartStore:
    """Where the parts of one packing lie: ``staging`` (renamed into place when joined), and ``remote`` if any."""

    staging: Path
    packing_id: str
    remote: Remote | None

    def finished(self, index: int) -> dict[str, Any] | None:
        """Part ``index``'s counts when it is finished for this packing, else None.

        With a remote, the remote's ``part.json`` decides; a part renamed here whose upload a killed run left
        unfinished is uploaded again rather than packed again.
        """
        marker = self.staging / part_name(index) / MARKER
        on_remote = self.remote is not None and self.remote.fetch(f'{part_name(index)}/{MARKER}')
        record = json.loads(marker.read_text()) if marker.is_file() else None
        if record is None or record.get('packing') != self.packing_id:
            return None
        if self.remote is not None and not on_remote:
            if not (self.staging / part_name(index) / 'index.json').is_file():
                return None
            self._upload(index)
        return record['stats']

    def commit(self, index: int, written: Path, stats: WindowStats | PartStats) -> None:
        """Make the complete part in ``written`` part ``index``: its counts, a rename, then the upload."""
        (written / MARKER).write_text(json.dumps({'packing': self.packing_id, 'stats': asdict(stats)}, sort_keys=True))
        final = self.staging / part_name(index)
        shutil.rmtree(final, ignore_errors=True)  # only a marker of another packing can be there
        written.rename(final)
        if self.remote is not None:
            self._upload(index)

    def part_index(self, index: int) -> Path:
        """The local directory of part ``index`` holding its ``index.json`` (downloaded if the part was made elsewhere)."""
        if self.remote is not None:
            self.remote.download(f'{part_name(index)}/index.json')
        return self.staging / part_name(index)

    def _upload(self, index: int) -> None:
        """Upload a renamed part, ``part.json`` last; then drop the local shards (the remote holds them)."""
        assert self.remote is not None
        name = part_name(index)
        for file in upload_directory(self.remote, name, MARKER):
            if file != 'index.json':  # kept for the join
                (self.staging / name / file).unlink()


@dataclass(frozen=True)
class PartJob:
    """Pack one part: the task writes it (as ``<out>.tmp``), the store makes it finished."""

    index: int
    task: WindowTask | PartTask
    store: PartStore


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
    """Keep what a run of this packing left in ``staging`` (its parts, its measures) and remove anything else."""
    keep = {MEASURES} | {name for k in range(windows) for name in (part_name(k), part_name(k) + '.tmp')}
    if not staging.is_dir():
        staging.mkdir(parents=True)
        return
    for entry in staging.iterdir():
        if entry.name not in keep:
            logger.warning('Removing %s, which this packing did not write.', entry)
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def pack_parts(
    ranges: list[DocumentRange],
    store: PartStore,
    info: dict[str, Any],
    num_workers: int,
    progress: bool,
    selection: PartSelection | None,
) -> dict[str, Any] | None:
    """Pack the parts of ``selection`` (all when None) not finished yet, and join every part once all are.

    Returns the dataset's stats after joining (``staging/index.json`` written), or None while other machines'
    parts are still missing.
    """
    max_seq_len, strategy = info['max_seq_len'], info['strategy']
    reservation = PrefixReservation.from_info(info['reserve_prefix']) if info['reserve_prefix'] else None
    stream = reservation is None and strategy == 'stream'
    if stream:
        measures = _measures(ranges, store, num_workers, progress)
        parts = plan_parts(ranges, measures, max_seq_len, store.staging, info['compression'])
        tasks: dict[int, WindowTask | PartTask] = {task.window: task for task in parts}
    else:
        tasks = {
            k: WindowTask(
                out=str(store.staging / part_name(k)),
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
    finished = {k: store.finished(k) for k in tasks}
    todo = [PartJob(k, task, store) for k, task in tasks.items() if k in mine and finished[k] is None]
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
    with (
        ProcessMap(_run_part, todo, num_workers, describe=_describe) as run,
        tqdm(total=len(todo), unit='part', desc='packing', disable=not progress) as bar,
    ):
        for job, stats in zip(todo, run):
            finished[job.index] = asdict(stats)
            bar.update(1)
    for k in [k for k, record in finished.items() if record is None]:  # other machines may have finished theirs
        finished[k] = store.finished(k)
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
    with_rows = [k for k in sorted(tasks) if finished[k]['rows']]
    write_joint_index(store.staging, [store.part_index(k) for k in with_rows])
    logger.info('Joined %d parts (%d packed by this run, %d reused).', len(tasks), len(todo), len(tasks) - len(todo))
    if stream:
        return stream_stats(measures, [PartStats(**finished[k]) for k in sorted(tasks)], max_seq_len)
    return window_stats([WindowStats(**finished[k]) for k in sorted(tasks)], max_seq_len)


def _measures(ranges: list[DocumentRange], store: PartStore, num_workers: int, progress: bool) -> list[RangeMeasure]:
    """Every window's pass-1 measure: saved by an earlier run or machine of this packing, else measured and saved."""
    path = store.staging / MEASURES
    if store.remote is not None:
        store.remote.fetch(MEASURES)
    if path.is_file():
        record = json.loads(path.read_text())
        if record.get('packing') == store.packing_id:
            logger.info('Reusing the measures of %d windows from %s.', len(ranges), path)
            return [RangeMeasure(**measure) for measure in record['measures']]
    measures = measure_ranges(ranges, num_workers, progress)
    written = path.with_name(MEASURES + '.tmp')
    written.write_text(json.dumps({'packing': store.packing_id, 'measures': [asdict(m) for m in measures]}))
    written.rename(path)
    if store.remote is not None:
        store.remote.upload(MEASURES)
    return measures


def _run_part(job: PartJob) -> WindowStats | PartStats:
    """Write a part under a temporary name and make it finished."""
    written = Path(job.task.out + '.tmp')
    shutil.rmtree(written, ignore_errors=True)  # left by a killed run
    task = replace(job.task, out=str(written))
    stats = write_window(task) if isinstance(task, WindowTask) else write_part(task)
    job.store.commit(job.index, written, stats)
    return stats


def _describe(job: PartJob) -> str:
    """A part for messages about a worker that died on it."""
    return f'{part_name(job.index)}: {describe_range(job.task.documents)}'
