"""Object storage for both conversion stages, through Streaming's own storage layer.

A dataset on object storage is named by a URL (``s3://bucket/path``, ``gs://``, ``oci://``, ``azure://``, ...: any
scheme Streaming's ``CloudUploader`` and ``CloudDownloader`` know) and always has a local side, Streaming's
``(local, remote)`` convention: a stage writes a file in its local directory and uploads it once it is complete;
stage 2 downloads a remote document set file by file into its local directory as it needs them. A remote that is a
plain directory goes through Streaming's local uploader and downloader, which is how the tests exercise this path.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streaming.base.storage.download import DOWNLOADER_MAPPINGS, CloudDownloader
from streaming.base.storage.upload import UPLOADERS, CloudUploader

from meco_callbacks.corpus.storage.errors import ConversionError

# What a provider raises for a missing object: the local copy's FileNotFoundError, or a message like S3's.
_MISSING_MARKERS = ('not found', 'notfound', 'nosuchkey', '404', 'no such file', 'does not exist')


class RemoteMissing(ConversionError, FileNotFoundError):
    """A file the remote dataset must hold is not there."""


def check_remote(url: str) -> str:
    """``url`` itself when Streaming can both upload to and download from it, else a ValueError naming the schemes."""
    scheme = urllib.parse.urlparse(url).scheme
    if url.startswith('dbfs:/Volumes'):
        scheme = 'dbfs:/Volumes'
    downloads = 'dbfs-uc' if scheme == 'dbfs:/Volumes' else scheme
    if scheme not in UPLOADERS or downloads not in DOWNLOADER_MAPPINGS:
        known = ', '.join(f'{name}://' for name in sorted(set(UPLOADERS) & set(DOWNLOADER_MAPPINGS)) if name)
        raise ValueError(f'{url}: object storage scheme {scheme!r} is not supported; use one of {known}.')
    return url


def is_remote(path: str | Path) -> bool:
    """Whether ``path`` names object storage (``s3://...``) rather than a local directory."""
    return len(urllib.parse.urlparse(str(path)).scheme) > 1  # one letter is a Windows drive


@dataclass
class Remote:
    """A dataset directory on object storage (``url``) and the local directory (``local``) mirroring it.

    Files are named by their path under both, e.g. ``part.00003/shard.00000.mds``. Uploads and downloads go
    through Streaming's uploader and downloader for ``url``'s scheme, made once per process.
    """

    url: str
    local: Path
    _uploader: Any = field(default=None, init=False, repr=False, compare=False)
    _pid: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_remote(self.url)
        self.local = Path(self.local)

    def remote_path(self, name: str) -> str:
        """The remote address of the file ``name``."""
        return os.path.join(self.url, name)

    def upload(self, name: str) -> None:
        """Upload the local file ``name`` to the same name on the remote."""
        if not urllib.parse.urlparse(self.url).scheme:  # Streaming's local uploader makes only the top directory
            Path(self.remote_path(name)).parent.mkdir(parents=True, exist_ok=True)
        self._upload_client().upload_file(name)

    def download(self, name: str) -> Path:
        """The local copy of the remote file ``name``, downloaded unless already there; RemoteMissing if absent."""
        local = self.local / name
        if local.is_file():
            return local
        if not self.fetch(name):
            raise RemoteMissing(f'{self.remote_path(name)} does not exist (or cannot be read).')
        return local

    def fetch(self, name: str) -> bool:
        """Download the remote file ``name`` over its local copy; False when the remote has no such file.

        The file is downloaded under a name of this process's own and renamed, so that processes fetching the
        same file at once never see part of it.
        """
        local = self.local / name
        self.local.mkdir(parents=True, exist_ok=True)
        partial = self.local / f'.{name.replace("/", "%")}.{os.getpid()}.download'  # no directory made for nothing
        partial.unlink(missing_ok=True)
        try:
            CloudDownloader.direct_download(self.remote_path(name), str(partial))
        except Exception as error:  # each provider has its own exception for a missing object
            partial.unlink(missing_ok=True)
            if isinstance(error, FileNotFoundError) or any(m in str(error).lower() for m in _MISSING_MARKERS):
                return False
            raise
        local.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, local)
        return True

    def list_files(self) -> list[str]:
        """Every file under the remote directory, by its path under it (``part.00003/part.json``): one listing."""
        parsed = urllib.parse.urlparse(self.url)
        if (
            not parsed.scheme
        ):  # a directory standing for object storage (Streaming's local uploader lists its local side)
            root = Path(self.url)
            return sorted(path.relative_to(root).as_posix() for path in root.rglob('*') if path.is_file())
        prefix = parsed.path.strip('/')
        objects = self._upload_client().list_objects() or []
        return sorted(key.removeprefix(prefix).lstrip('/') for key in objects if key.startswith(prefix))

    def _upload_client(self) -> Any:
        """Streaming's uploader for ``(local, url)``, made once per process (clients do not survive a fork)."""
        if self._uploader is None or self._pid != os.getpid():
            self.local.mkdir(parents=True, exist_ok=True)
            with _quiet('streaming.base.storage.upload'):  # it warns that the local side already holds files
                self._uploader = CloudUploader.get((str(self.local), self.url), keep_local=True, exist_ok=True)
            self._pid = os.getpid()
        return self._uploader

    def __getstate__(self) -> dict[str, Any]:
        return {'url': self.url, 'local': self.local, '_uploader': None, '_pid': 0}


def upload_directory(
    remote: Remote, name: str, last: str, reached: Callable[[str], None] = lambda step: None
) -> list[str]:
    """Upload every file under the local directory ``name``, the file ``last`` (its done-marker) last; their paths.

    ``reached('uploaded <file>')`` is called after each file (the part store's steps)."""
    root = remote.local / name
    files = sorted(
        path.relative_to(root).as_posix() for path in root.rglob('*') if path.is_file() and path.name != last
    )
    for file in [*files, last]:
        remote.upload(f'{name}/{file}')
        reached(f'uploaded {file}')
    return files


@contextmanager
def _quiet(logger_name: str):
    """Hide a library logger's warnings for the duration of a call."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
