"""Plot the training loss of one or more runs over the tokens they trained on, the cooldown boundary marked.

  python recipes/plot.py runs/meco-tiny-cpu runs/baseline-tiny-cpu --output loss.png
  python recipes/plot.py runs/meco-1b/train.log --output meco-1b.png --names "MeCo 1.6B"

Each RUN is a training run's save_folder (holding the train.log that `composer train.py` writes there) or a
console log file. The runs share one set of axes: the loss of each logged batch, faint, and its moving
average; a dashed line in the run's colour where its cooldown began. Points are as frequent as the run's
console_log_interval (the tiny recipes log every batch).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from meco_callbacks.cli.train import TRAIN_LOG
from meco_callbacks.training.run_log import RunLog, read_run_log


def run_log_path(run: str | Path) -> Path:
    """A run's console log: ``run`` itself if it is a file, else ``run/train.log``."""
    path = Path(run)
    log = path if path.is_file() else path / TRAIN_LOG
    if not log.is_file():
        raise SystemExit(f'error: {run} is neither a log file nor a run folder holding {TRAIN_LOG}.')
    return log


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Mean of each value and up to ``window - 1`` before it: per-batch losses are too noisy to read by eye."""
    sums = [0.0]
    for value in values:
        sums.append(sums[-1] + value)
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(window, i + 1) for i in range(len(values))]


def position(run: RunLog, batches_done: int, slots_per_batch: int | None) -> int | None:
    """Where a run is after ``batches_done`` batches: tokens it trained, or batch slots when ``slots_per_batch``."""
    return batches_done * slots_per_batch if slots_per_batch else run.tokens_before(batches_done)


def loss_curve(run: RunLog, slots_per_batch: int | None = None) -> tuple[list[int], list[float]]:
    """(position before each logged batch, its loss), in batch order."""
    batches = [batch for batch in sorted(run.losses) if position(run, batch - 1, slots_per_batch) is not None]
    return [position(run, batch - 1, slots_per_batch) for batch in batches], [run.losses[batch] for batch in batches]


def plot_runs(
    runs: Sequence[RunLog], output: str | Path, title: str | None = None, slots_per_batch: int | None = None
) -> Path:
    """Draw the runs' loss curves on one set of axes and save the figure to ``output`` (format from its suffix).

    The x axis is the tokens each run trained (Composer's ``time/token``: document tokens for the meco loader,
    prefixes and padding not counted, so MeCo and its baseline on the same rows share it), or with
    ``slots_per_batch`` the batch slots.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in runs:
        tokens, losses = loss_curve(run, slots_per_batch)
        (raw,) = ax.plot(tokens, losses, lw=0.8, alpha=0.3)
        colour = raw.get_color()
        ax.plot(tokens, moving_average(losses, max(1, len(losses) // 30)), color=colour, lw=1.8, label=run.name)
        start = run.cooldown_start_batch
        boundary = None if start is None else position(run, start, slots_per_batch)
        if boundary is not None:
            ax.axvline(
                boundary,
                color=colour,
                ls='--',
                lw=1,
                label=f'{run.name}: cooldown from batch {run.cooldown_start_batch}',
            )
    ax.set_xlabel('training slots (batches x batch size x row length)' if slots_per_batch else 'training tokens')
    ax.set_ylabel('training loss (nats/token)')
    ax.set_title(title or 'Training loss')
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return Path(output)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, read each run's log and write the plot."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', nargs='+', metavar='RUN', help='a run folder (holding train.log) or a console log')
    parser.add_argument('--output', required=True, help='the image to write, e.g. loss.png (or .pdf, .svg)')
    parser.add_argument('--names', nargs='+', help="the runs' names in the legend (default: their folder names)")
    parser.add_argument('--title', help='the plot title (default: "Training loss")')
    parser.add_argument(
        '--slots-per-batch',
        type=int,
        metavar='N',
        help='plot against batch slots (N = global batch size x row length) instead of the tokens each run logged: '
        'the same axis for any runs that read rows of one length',
    )
    args = parser.parse_args(argv)
    if args.names and len(args.names) != len(args.runs):
        parser.error(f'--names gives {len(args.names)} names for {len(args.runs)} runs.')
    names = args.names or [None] * len(args.runs)
    runs = []
    for run, name in zip(args.runs, names):
        log = run_log_path(run)
        parsed = read_run_log(log, name)
        if not parsed.losses:
            raise SystemExit(f'error: {log} holds no training loss (is it a Composer console log?).')
        runs.append(parsed)
    output = plot_runs(runs, args.output, args.title, args.slots_per_batch)
    for run in runs:
        last = max(run.losses)
        print(f'{run.name}: {len(run.losses)} logged batches, last {last}, loss {run.final_loss:.4f}')
    print(f'wrote {output}')
