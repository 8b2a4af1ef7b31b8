"""Bounded local disk when packing a document set read from object storage: shards evicted once no window needs them.

Stage 2 reads a remote document set through a local cache, downloading each shard when a window first needs it
(``fetch_shard``). Without a limit every shard stays, so the local disk must hold the whole set. With
a limit, each pass over the windows runs with a bounded look-ahead (``ProcessMap(ahead=...)``) and, as the results
come back in order, deletes the shards that no later job of the pass reads: at most the shards of the jobs in
flight are on disk at once. A pass that needs them again (stream packing's second pass) downloads them again.
The cache's use is sampled before each eviction (when it is largest) and the peak is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from meco_callbacks.corpus.packing.mds import raw_shard_path
from meco_callbacks.corpus.storage.remote import Remote


class ShardReader(Protocol):
    """What this module needs of a document range (``document_set.DocumentRange``, which reads through it)."""

    directory: str
    shard: dict[str, Any]
    remote: Remote | None


logger = logging.getLogger(__name__)


def stored_raw(directory: str, shard: dict[str, Any], remote: Remote | None) -> bool:
    """Whether a shard can be read in ranges: its raw file is kept (a remote keeps it only when not compressed)."""
    if raw_shard_path(directory, shard).is_file():
        return True
    return remote is not None and not shard.get('zip_data')


def fetch_shard(task: ShardReader) -> None:
    """Download the range's shard into the local cache unless a copy of its size is there (raw, or compressed)."""
    if task.remote is None:
        return
    for key in ('raw_data', 'zip_data'):
        stored = task.shard.get(key)
        if stored and _has_size(Path(task.directory) / stored['basename'], stored['bytes']):
            return
    stored = task.shard.get('zip_data') or task.shard['raw_data']
    if not task.remote.fetch(stored['basename']):
        raise FileNotFoundError(f'{task.remote.remote_path(stored["basename"])}, listed in its index.json, is missing.')


def _has_size(path: Path, size: int) -> bool:
    """Whether ``path`` is a file of ``size`` bytes (a cached shard, not one of another dataset by the same name)."""
    return path.is_file() and path.stat().st_size == size


def shard_files(task: ShardReader) -> tuple[str, ...]:
    """The names a range's shard may have in the cache (raw and compressed)."""
    return tuple(task.shard[key]['basename'] for key in ('raw_data', 'zip_data') if task.shard.get(key))


@dataclass
class CacheLimit:
    """At most ``limit`` bytes of document shards in the local ``directory`` (a remote set's cache)."""

    directory: Path
    limit: int
    peak: int = 0
    evicted: int = field(default=0)

    def ahead(self, shard_bytes: int, num_workers: int) -> int:
        """How many jobs may run ahead of the next result so that their shards fit the limit; refuses a limit
        under two of the largest shards (one being read, one being fetched)."""
        if self.limit < 2 * shard_bytes:
            raise ValueError(
                f"--cache-limit {self.limit} bytes is under two of the document set's largest shards "
                f'({shard_bytes} bytes each); raise it or write the documents in smaller shards.'
            )
        return max(1, min(num_workers, self.limit // shard_bytes - 1))

    def pass_over(self, jobs: Sequence[Sequence[ShardReader]], num_workers: int) -> ShardEviction:
        """The eviction of one pass whose jobs, in order, read the ranges ``jobs[i]``."""
        largest = max((task.shard.get('zip_data') or task.shard['raw_data'])['bytes'] for job in jobs for task in job)
        last: dict[str, int] = {}
        for position, job in enumerate(jobs):
            for task in job:
                for name in shard_files(task):
                    last[name] = position
        evict_after: dict[int, list[str]] = {}
        for name, position in last.items():
            evict_after.setdefault(position, []).append(name)
        return ShardEviction(self, evict_after, self.ahead(largest, num_workers))

    def used(self) -> int:
        """Bytes of files in the cache now."""
        return sum(path.stat().st_size for path in self.directory.rglob('*') if path.is_file())

    def log(self) -> None:
        """Report the peak use against the limit."""
        logger.info(
            'Document cache %s: peak %d bytes of the %d-byte limit; %d shard downloads evicted.',
            self.directory,
            self.peak,
            self.limit,
            self.evicted,
        )


@dataclass
class ShardEviction:
    """One pass's eviction: call ``done(position)`` as each job's result is taken, in order."""

    cache: CacheLimit
    evict_after: dict[int, list[str]]
    ahead: int

    def done(self, position: int) -> None:
        """Job ``position`` and all before it are done: delete the shards no later job reads."""
        names = self.evict_after.get(position)
        if not names:
            return
        self.cache.peak = max(self.cache.peak, self.cache.used())
        for name in names:
            path = self.cache.directory / name
            if path.is_file():
                path.unlink()
                self.cache.evicted += 1
