"""A test-only Composer callback that writes one JSON line per batch: its fingerprint, phase and loss.

Registered into llm-foundry's real callbacks registry (as ``batch_recorder``) by ``register()``; also used
from ``tests/train_recorded.py`` for multi-rank runs under the ``composer`` launcher.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist


def batch_fingerprint(batch: dict) -> str:
    """A hash of every tensor of the model batch (keys, dtypes and values)."""
    digest = hashlib.sha256()
    for key in sorted(batch):
        value = batch[key]
        digest.update(key.encode())
        digest.update(str(value.dtype).encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class BatchRecorder(Callback):
    """Append ``{batch, rank, hash, prefixed, metadata_tokens, first_row, row_hashes, loss}`` for every training batch to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._pending: dict = {}

    def after_dataloader(self, state: State, logger: Logger) -> None:
        loader = state.train_dataloader
        self._pending = {
            'batch': int(state.timestamp.batch),
            'rank': dist.get_global_rank(),
            'hash': batch_fingerprint(state.batch),
            'prefixed': bool(loader.injector.enabled),
            'metadata_tokens': loader.injector.stats.last.get('metadata_tokens', 0),
            'first_row': state.batch['input_ids'][0].tolist(),
            'row_hashes': [batch_fingerprint({'input_ids': row}) for row in state.batch['input_ids']],
        }

    def batch_end(self, state: State, logger: Logger) -> None:
        record = dict(self._pending, loss=float(state.loss.item() if hasattr(state.loss, 'item') else state.loss))
        with self.path.open('a') as f:
            f.write(json.dumps(record) + '\n')


def register() -> None:
    """Make ``callbacks: {batch_recorder: {path: ...}}`` available in llm-foundry YAMLs of this process."""
    from llmfoundry import registry

    if 'batch_recorder' not in registry.callbacks:
        registry.callbacks.register('batch_recorder', func=BatchRecorder)


def read_records(path: str | Path) -> list[dict]:
    """The recorded batches, in the order they were trained."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]
