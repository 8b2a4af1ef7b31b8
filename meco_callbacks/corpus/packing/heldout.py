"""The held-out split in one pass: the training parts set the held-out documents aside, packed afterwards as a set.

With ``--holdout f``, the documents whose URL hash falls in the fraction ``f`` (``document_set.Split``) are the
held-out side. The training side is packed as usual, window by window; each training part also copies the
held-out documents of its window, sample bytes as stored, into ``heldout/`` inside the part (``set_aside``), so the
document set is read once. When the training parts are joined, those copies are gathered in window order into one
document set of normal-size shards (``gather_held_out``), and that small set is packed into the held-out dataset
with windows of the usual size: its rows are as full as the training rows, not one padded tail per window.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from streaming import MDSWriter

from meco_callbacks.corpus.packing.document_set import DocumentRange, Split
from meco_callbacks.corpus.packing.mds import column_spans, sample_bytes
from meco_callbacks.corpus.packing.shard_cache import fetch_shard
from meco_callbacks.corpus.storage.remote import Remote
from meco_callbacks.formats import DOCUMENT_FORMAT, write_dataset_info

HELD_OUT = 'heldout'  # the directory of a training part holding its window's held-out documents


class _RawSampleWriter(MDSWriter):
    """An MDSWriter of samples already encoded (copied from a shard of the same columns)."""

    def encode_sample(self, sample: Any) -> bytes:
        return sample


def _columns(shard: dict[str, Any]) -> dict[str, str]:
    return dict(zip(shard['column_names'], shard['column_encodings']))


def set_aside(task: DocumentRange, part: Path) -> None:
    """Copy the documents of ``task`` on the held-out side of its split into ``part/heldout`` (a document MDS)."""
    assert task.split is not None
    fetch_shard(task)
    blob, offsets = sample_bytes(task.directory, task.shard, task.begin, task.end)
    starts, sizes = column_spans(blob, offsets, task.shard)['url']
    held = Split(task.split.fraction, held_out=True).keeps(
        [blob[a : a + n] for a, n in zip(starts.tolist(), sizes.tolist())]
    )
    with _RawSampleWriter(out=str(part / HELD_OUT), columns=_columns(task.shard)) as writer:
        for i in np.flatnonzero(held).tolist():
            writer.write(blob[int(offsets[i]) : int(offsets[i + 1])])


def gather_held_out(joining: Path, out: Path, tokenizer: dict[str, Any], remote: Remote | None) -> Path:
    """Gather every training part's held-out documents, in window order, into one document set at ``out``.

    The parts' copies then leave the training set. With a remote, the copies of parts finished on other machines
    are downloaded from there first.
    """
    shutil.rmtree(out, ignore_errors=True)
    helds = [path / HELD_OUT for path in sorted(joining.iterdir()) if path.is_dir() and path.name.startswith('part.')]
    for held in helds:
        if remote is not None and not (held / 'index.json').is_file():
            _download(Remote(remote.remote_path(f'{held.parent.name}/{HELD_OUT}'), held))
    shards = [(held, shard) for held in helds for shard in json.loads((held / 'index.json').read_text())['shards']]
    if not shards:
        raise ValueError('the held-out split holds no documents: use a larger --holdout or more documents.')
    with _RawSampleWriter(out=str(out), columns=_columns(shards[0][1])) as writer:
        for held, shard in shards:
            blob, offsets = sample_bytes(str(held), shard, 0, shard['samples'])
            for i in range(shard['samples']):
                writer.write(blob[int(offsets[i]) : int(offsets[i + 1])])
    for held in helds:
        shutil.rmtree(held)
    write_dataset_info(out, {'format': DOCUMENT_FORMAT, 'tokenizer': tokenizer})
    return out


def _download(remote: Remote) -> None:
    """A part's held-out copy from the remote: its index, then its shards."""
    index = remote.download('index.json')
    for shard in json.loads(index.read_text())['shards']:
        remote.download((shard.get('zip_data') or shard['raw_data'])['basename'])
