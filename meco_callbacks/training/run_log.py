"""A training run read back from its console log: the loss per batch, tokens seen and the cooldown boundary.

Composer's console logger prints a block per logged batch (every ``console_log_interval``)::

    [batch=12/40]:
             Train time/batch: 11
             Train time/token: 5632
             Train loss/train/total: 3.2107

``[batch=N/M]`` counts the batches done, so the block's loss is that of batch ``N - 1`` (0-based), and
``time/token`` holds the tokens trained before it. ``composer train.py`` (``meco-train``) appends the console to
``<save_folder>/train.log``; a resumed run appends its blocks after the first run's, and the later value of a
batch wins. The cooldown boundary comes from ``meco/cooldown_start_batch`` (logged at the switch), the
``meco_cooldown`` log line at the switch, or the ``meco/cooldown_boundary`` hyperparameter printed at start (in
batches), whichever the log holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_BATCH = re.compile(r'^\[(?:epoch=\d+\]\[)?batch=(\d+)/(\d+)\]:?\s*$')
_METRIC = re.compile(r'^\s+Train ([^:]+): (\S+)\s*$')
_SWITCH = re.compile(r'meco_cooldown: switched to plain documents at batch (\d+)')
_BOUNDARY = re.compile(r'^\s*meco/cooldown_boundary: (\d+)ba\s*$')


@dataclass
class RunLog:
    """One training run as its console log recorded it: loss and tokens per logged batch, cooldown start."""

    name: str
    losses: dict[int, float] = field(default_factory=dict)
    tokens: dict[int, int] = field(default_factory=dict)
    max_batches: int | None = None
    cooldown_start_batch: int | None = None

    @property
    def complete(self) -> bool:
        """Whether the log reaches the run's last batch."""
        return self.max_batches is not None and self.max_batches in self.losses

    @property
    def final_loss(self) -> float:
        """The training loss logged for the last batch."""
        return self.losses[max(self.losses)]

    def tokens_before(self, batches_done: int) -> int | None:
        """Tokens trained in the first ``batches_done`` batches: as logged, or estimated from the logged batches.

        ``time/token`` counts the tokens that are not padding, so batches differ: between two logged batches the
        count is interpolated linearly, outside them it follows the run's average tokens per batch.
        """
        points = sorted((batch - 1, tokens) for batch, tokens in self.tokens.items())
        if batches_done + 1 in self.tokens:
            return self.tokens[batches_done + 1]
        for (b0, t0), (b1, t1) in zip(points, points[1:]):
            if b0 < batches_done < b1:
                return round(t0 + (t1 - t0) * (batches_done - b0) / (b1 - b0))
        done, tokens = points[-1] if points else (0, 0)
        return round(tokens * batches_done / done) if done else None


def read_run_log(path: str | Path, name: str | None = None) -> RunLog:
    """Parse a Composer console log (any ``console_log_interval``); ``name`` defaults to the file's folder."""
    path = Path(path)
    run = RunLog(name if name is not None else path.parent.name)
    batch = None
    boundary = None
    for line in path.read_text(encoding='utf-8', errors='replace').splitlines():
        header = _BATCH.match(line)
        if header:
            batch, run.max_batches = int(header.group(1)), int(header.group(2))
            continue
        metric = _METRIC.match(line)
        if metric and batch is not None:
            key, value = metric.groups()
            if key == 'loss/train/total':
                run.losses[batch] = float(value)
            elif key == 'time/token':
                run.tokens[batch] = int(value)
            elif key == 'meco/cooldown_start_batch':
                run.cooldown_start_batch = int(value)
            continue
        switch = _SWITCH.search(line)
        if switch:
            run.cooldown_start_batch = int(switch.group(1))
            continue
        planned = _BOUNDARY.match(line)
        if planned:
            boundary = int(planned.group(1))
    if run.cooldown_start_batch is None:
        run.cooldown_start_batch = boundary
    return run
