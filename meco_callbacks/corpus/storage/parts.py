"""The one part store: how every stage writes, finishes, lists and publishes its parts.

A part is one directory of a dataset written by one writer: a stage-1 unit (``unit-00003``), a Spark partition
(``part-00003``), a stage-2 window (``part.00003``). Every part lives the same life here:

1. it is written under a name of its attempt's own, ``<name>.attempt-<token>.tmp`` (a process id and a random
   token, or Spark's task attempt id), so two attempts never write into one directory;
2. its marker (``unit.json``, ``part.json``: its counts) is written last, inside the attempt;
3. it is finished by one rename to ``<name>``: the first attempt to rename wins, a later one finds the part
   finished and removes itself; a part is finished exactly when ``<name>/<marker>`` is there;
4. with object storage it is then published: its other files first, its marker last, so a marker on the bucket
   means the whole part is there. A part finished here whose marker is not on the bucket yet (a run killed while
   publishing) is published again by whichever run lists it next; nothing is uploaded twice once its marker is up.

Finished parts are found with one listing of the directory and, with object storage, one listing of the bucket
(not one request per part); only the markers and indexes of parts finished on other machines are downloaded,
concurrently. Attempts are never listed as parts, and a run removes the stale attempts of the parts it writes.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meco_callbacks.corpus.storage.remote import Remote, upload_directory

log = logging.getLogger(__name__)

ATTEMPT = '.attempt-'
DOWNLOAD_THREADS = 16


def reached(step: str) -> None:
    """Called at every step of a part's life (``'marker written'``, ``'renamed'``, ``'uploaded <file>'``, ...).

    Does nothing; the tests replace it to kill a part at any step.
    """


def attempt_token() -> str:
    """A token no other attempt on any machine uses: this process's id and 32 random bits."""
    return f'{os.getpid()}-{secrets.token_hex(4)}'


def is_attempt(name: str) -> bool:
    """Whether ``name`` is an attempt's directory rather than a part."""
    return ATTEMPT in name and name.endswith('.tmp')


@dataclass
class PartStore:
    """The parts under ``directory`` whose marker file is ``marker``, mirrored on ``remote`` when given.

    ``accept(record)`` says whether a finished part's marker belongs to this dataset (stage 2 keeps the parts of
    one packing); a part it refuses counts as not finished and is replaced when written again. With
    ``keep_shards=False`` a published part keeps only its index and marker locally (the bucket holds its shards).
    """

    directory: Path
    marker: str
    remote: Remote | None = None
    accept: Callable[[dict[str, Any]], bool] = field(default=lambda record: True, repr=False)
    keep_shards: bool = True

    def attempt(self, name: str, token: str | None = None) -> Path:
        """A new, empty directory path for writing part ``name``, unique to this attempt."""
        path = self.directory / f'{name}{ATTEMPT}{token or attempt_token()}.tmp'
        shutil.rmtree(path, ignore_errors=True)  # only a Spark attempt id can be reused (after a restart)
        return path

    def commit(self, name: str, attempt: Path, record: dict[str, Any]) -> bool:
        """Finish part ``name`` from the complete ``attempt``: its marker, one rename, then publishing.

        Returns False when another attempt had finished the part first (this one is then removed).
        """
        reached('shards written')
        (attempt / self.marker).write_text(json.dumps(record, indent=1, sort_keys=True) + '\n')
        reached('marker written')
        final = self.directory / name
        try:
            attempt.rename(final)
        except OSError:  # a finished part is there: another attempt's (keep it), or another dataset's (replace it)
            existing = self._record(final)
            if existing is not None and self.accept(existing):
                shutil.rmtree(attempt, ignore_errors=True)
                return False
            shutil.rmtree(final)
            attempt.rename(final)
        reached('renamed')
        if self.remote is not None:
            self._publish(name)
        return True

    def finished(self, names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """The finished parts (among ``names``, all when None) and their markers' records, from one listing.

        With a remote, a part counts when its marker is on the remote: one finished here but not there yet is
        published now, one finished there by another machine has its marker and index downloaded.
        """
        wanted = None if names is None else set(names)
        local = self._local_parts(wanted)
        if self.remote is None:
            return dict(sorted(local.items()))
        on_remote = self.published()
        for name in sorted(set(local) - on_remote):
            self._publish(name)
        elsewhere = sorted(name for name in on_remote - set(local) if wanted is None or name in wanted)
        with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
            fetched = dict(zip(elsewhere, pool.map(self._download, elsewhere)))
        local.update({name: record for name, record in fetched.items() if record is not None})
        return dict(sorted(local.items()))

    def published(self) -> set[str]:
        """The parts whose marker is on the remote: one listing of the remote."""
        assert self.remote is not None
        suffix = f'/{self.marker}'
        return {
            path.removesuffix(suffix)
            for path in self.remote.list_files()
            if path.endswith(suffix) and path.count('/') == 1 and not is_attempt(path.split('/')[0])
        }

    def publish(self) -> int:
        """Upload every finished part whose marker is not on the remote yet (marker last); how many."""
        missing = sorted(set(self._local_parts(None)) - self.published())
        for name in missing:
            self._publish(name)
        return len(missing)

    def clean(self, names: Iterable[str] | None = None) -> None:
        """Remove the stale attempts of the parts ``names`` (of every part when None): their writers are gone."""
        wanted = None if names is None else set(names)
        if not self.directory.is_dir():
            return
        for entry in self.directory.iterdir():
            if is_attempt(entry.name) and (wanted is None or entry.name.split(ATTEMPT)[0] in wanted):
                log.info('Removing %s, left by an attempt that did not finish.', entry)
                shutil.rmtree(entry, ignore_errors=True)

    def _local_parts(self, wanted: set[str] | None) -> dict[str, dict[str, Any]]:
        """The finished parts in the directory (one listing), with their accepted records."""
        if not self.directory.is_dir():
            return {}
        parts = {}
        for entry in os.scandir(self.directory):
            if is_attempt(entry.name) or not entry.is_dir() or (wanted is not None and entry.name not in wanted):
                continue
            record = self._record(Path(entry.path))
            if record is not None and self.accept(record):
                parts[entry.name] = record
        return parts

    def _record(self, part: Path) -> dict[str, Any] | None:
        """The record in ``part``'s marker, or None when it has none."""
        try:
            return json.loads((part / self.marker).read_text())
        except FileNotFoundError:
            return None

    def _publish(self, name: str) -> None:
        """Upload a finished part, its marker last; then drop its local shards unless ``keep_shards``."""
        assert self.remote is not None
        files = upload_directory(self.remote, name, self.marker, reached)
        if not self.keep_shards:
            for file in files:
                if file != 'index.json' and '/' not in file:  # the index is kept for the join, and folders
                    (self.directory / name / file).unlink()

    def _download(self, name: str) -> dict[str, Any] | None:
        """Download the marker and index of part ``name`` finished elsewhere into place here; its record."""
        assert self.remote is not None
        token = attempt_token()
        attempt = Remote(self.remote.remote_path(name), self.directory / f'{name}{ATTEMPT}{token}.tmp')
        try:
            if not (attempt.fetch(self.marker) and attempt.fetch('index.json')):
                return None
            record = self._record(attempt.local)
            if record is None or not self.accept(record):
                return None
            try:
                attempt.local.rename(self.directory / name)
            except OSError:  # fetched by another process at the same time
                pass
            return record
        finally:
            shutil.rmtree(attempt.local, ignore_errors=True)
