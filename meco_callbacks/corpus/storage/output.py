"""The one rule both conversion stages follow for their output directory: never replace another dataset unasked.

A stage writes its dataset in a staging directory and renames it into place when complete, so a killed run
never leaves half a dataset at the output. Before starting, it asks ``existing_output`` what the output holds:
nothing (go on), the very dataset it would write (stage 1 keeps it, stage 2 rebuilds it), or something else,
which is refused unless the user passed ``--overwrite``. Datasets are the same when their format and their
identity fields (a stage's own choice: a conversion id, or the settings and tokenizer) are equal.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meco_callbacks.corpus.storage.errors import ConversionError
from meco_callbacks.corpus.storage.remote import Remote
from meco_callbacks.formats import DATASET_INFO_FILE, read_dataset_info

log = logging.getLogger(__name__)


class OutputTaken(ConversionError, FileExistsError):
    """The output holds another dataset or other files, and replacing them was not asked for."""


def existing_output(
    out: Path, info: Mapping[str, Any], identity: Mapping[str, str], what: str, overwrite: bool
) -> dict[str, Any] | None:
    """The info of the dataset at ``out`` when it is the one ``info`` describes, else None once ``out`` may be written.

    ``identity`` names the fields that make two datasets of ``info['format']`` the same: label -> dotted path into
    the info (``{'max_seq_len': 'max_seq_len', 'tokenizer fingerprint': 'tokenizer.fingerprint'}``). ``what``
    names such a dataset for messages (``'packed dataset'``). An absent or empty ``out`` gives None; other files,
    another format, or a dataset that differs in an identity field raise OutputTaken unless ``overwrite``.
    """
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return None
    existing = read_dataset_info(out) if out.is_dir() else None
    if existing is not None and existing.get('format') == info['format']:
        differences = [
            f'{label} ({_field(existing, path)!r} there, {_field(info, path)!r} asked)'
            for label, path in identity.items()
            if _field(existing, path) != _field(info, path)
        ]
        if not differences:
            return existing
        held = f'a different {info["format"]} dataset (it differs in {", ".join(differences)})'
    else:
        kind = f' (a {existing.get("format")} dataset)' if existing is not None else ''
        held = f'other files, something other than a {what}{kind}'
    if not overwrite:
        raise OutputTaken(
            f'{out} already holds {held}; pass --overwrite (overwrite=True) to replace it once the new one is '
            'complete, or choose another output directory'
        )
    log.warning('%s holds %s: it will be replaced (--overwrite).', out, held)
    return None


def existing_remote_output(
    remote: Remote, info: Mapping[str, Any], identity: Mapping[str, str], what: str, overwrite: bool
) -> dict[str, Any] | None:
    """``existing_output`` for a dataset on object storage (its info file fetched into a scratch directory)."""
    with tempfile.TemporaryDirectory() as scratch:
        if not Remote(remote.url, Path(scratch)).fetch(DATASET_INFO_FILE):
            return None
        try:
            return existing_output(Path(scratch), info, identity, what, overwrite)
        except OutputTaken as taken:
            raise OutputTaken(str(taken).replace(scratch, remote.url)) from None


def replace_output(out: Path, staging: Path) -> None:
    """Rename the complete ``staging`` directory to ``out``, retiring what ``out`` held only once it is out of the way."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    retired = out.with_name(out.name + '.replaced')
    if retired.is_dir():  # left by a run killed in the middle of replacing
        shutil.rmtree(retired)
    if not out.exists():
        staging.rename(out)
        return
    out.rename(retired)
    staging.rename(out)
    if retired.is_dir():
        shutil.rmtree(retired)
    else:
        retired.unlink()


def _field(info: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` in the info, or None where a part is missing."""
    value: Any = info
    for part in path.split('.'):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value
