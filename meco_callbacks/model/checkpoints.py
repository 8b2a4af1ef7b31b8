"""Read the model weights of a Composer checkpoint: one ``.pt`` file, or a sharded directory, on the CPU.

Composer writes a run's checkpoints to ``save_folder`` in one of two forms:

* a single file (``ep0-ba40-rank0.pt``, ``latest-rank0.pt``): ``torch.save`` of ``{'state': {'model': ...}, ...}``
  (single-process runs, DDP, FSDP with ``state_dict_type: full``);
* a directory (``ep0-ba36000/`` holding ``__<rank>_0.distcp`` files and ``.metadata``) written by
  ``torch.distributed.checkpoint`` under FSDP with ``state_dict_type: sharded``, as the paper recipes do. The
  ``latest-rank0.pt`` symlink of such a run points at a directory too.

:func:`load_model_weights` reads either into one plain state dict, in one process without a process group: for a
directory only the model's tensors are read (``state.model.*``), not the optimizer's, through
``torch.distributed.checkpoint.load(..., no_dist=True)``, which reassembles every tensor from its shards.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = [
    'CheckpointError',
    'CheckpointNotFound',
    'describe_checkpoint',
    'is_sharded_checkpoint',
    'load_model_weights',
    'strip_prefix',
]

log = logging.getLogger(__name__)

MODEL_PATH = ('state', 'model')  # where Composer keeps the model's state dict in a checkpoint


class CheckpointError(ValueError):
    """The path is not a Composer checkpoint (file or sharded directory) this module can read."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """Nothing at the path."""


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a directory written by ``torch.distributed.checkpoint`` (it holds ``.metadata``)."""
    return Path(path).is_dir() and (Path(path) / '.metadata').is_file()


def strip_prefix(state_dict: dict[str, Any], prefix: str = 'model.') -> dict[str, Any]:
    """``state_dict`` with ``prefix`` removed from every key that has it (Composer's ``model.`` by default)."""
    return {key.removeprefix(prefix): value for key, value in state_dict.items()}


def load_model_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict (Composer's keys, e.g. ``model.transformer.wte.weight``) of a checkpoint file or dir.

    Raises :class:`CheckpointError` naming what was found when ``path`` is neither a Composer checkpoint file nor
    a sharded checkpoint directory.
    """
    location = Path(path)
    if location.is_file():
        return _load_file(location)
    if is_sharded_checkpoint(location):
        return _load_sharded(location)
    if location.is_dir():
        inside = sorted(p.name for p in location.iterdir())[:6]
        raise CheckpointError(
            f'{path} is a directory but not a sharded Composer checkpoint (no .metadata file; it holds {inside}). '
            'Pass a checkpoint directory such as runs/meco-1b/ep0-ba36000 (with __0_0.distcp and .metadata) or a '
            'single checkpoint file such as runs/meco-tiny-cpu/checkpoints/ep0-ba40-rank0.pt.'
        )
    raise CheckpointNotFound(
        f'no Composer checkpoint at {path}: pass a sharded checkpoint directory (<save_folder>/ep<E>-ba<B>, holding '
        '__<rank>_0.distcp and .metadata) or a single checkpoint file (<save_folder>/ep<E>-ba<B>-rank0.pt, '
        "latest-rank0.pt) from the run's save_folder."
    )


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(str(path), map_location='cpu', weights_only=False)
    except Exception as error:  # a pickle of something else, a truncated file, a text file...
        raise CheckpointError(f'{path} is not a readable Composer checkpoint file: {error}') from error
    weights = state.get('state', {}).get('model') if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise CheckpointError(
            f'{path} is not a Composer checkpoint (no state.model); for a Hugging Face directory use --hf.'
        )
    log.info('read %d model tensors from the checkpoint file %s', len(weights), path)
    return weights


def _load_sharded(path: Path) -> dict[str, torch.Tensor]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(path))
    metadata = reader.read_metadata()
    weights: dict[str, torch.Tensor] = {}
    skipped = []
    for key, item in metadata.state_dict_metadata.items():
        route = metadata.planner_data.get(key, (key,))
        if tuple(route[: len(MODEL_PATH)]) != MODEL_PATH:
            continue  # optimizer state, rng, timestamp...
        if not isinstance(item, TensorStorageMetadata):
            skipped.append(key)
            continue
        name = '.'.join(str(part) for part in route[len(MODEL_PATH) :])
        weights[name] = torch.empty(item.size, dtype=item.properties.dtype)
    if not weights:
        raise CheckpointError(
            f'{path} is a torch.distributed checkpoint without model weights under state.model: not a Composer '
            'checkpoint of a training run.'
        )
    if skipped:
        log.info('%s: left out non-tensor model entries %s', path, skipped)
    nested: dict[str, Any] = {MODEL_PATH[0]: {MODEL_PATH[1]: weights}}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings('ignore', message='torch.distributed is disabled')
        dcp.load(nested, storage_reader=reader, no_dist=True)
    shards = sorted(p.name for p in path.glob('*.distcp'))
    log.info('read %d model tensors from the sharded checkpoint %s (%d shard files)', len(weights), path, len(shards))
    return weights


def describe_checkpoint(path: str | Path) -> str:
    """'sharded checkpoint directory' or 'checkpoint file', for logs."""
    return 'sharded checkpoint directory' if is_sharded_checkpoint(path) else 'checkpoint file'
