"""The demo's report: training losses read back from each run's own console log, a plot, and a Markdown summary.

Logs are read with the library's ``training.run_log`` (what ``meco-plot`` reads too).

Numbers come only from the runs' logs (Composer's console logger, one block per batch) and the evaluation
results handed in, so the report cannot disagree with what the runs printed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from meco_callbacks.training.run_log import RunLog


def wrong_url_condition(url: str) -> str:
    """The evaluation condition's name for a wrong URL, as the demo labels it and the report reads it."""
    return f'wrong URL ({url})'


def reading(evaluation: Mapping[str, Mapping[str, float]], wrong_url: str, tokens_per_run: int) -> list[str]:
    """Report lines that spell out the comparisons the paper makes, as differences of held-out loss."""
    meco, baseline = evaluation.get('meco', {}), evaluation.get('baseline', {})
    wrong = wrong_url_condition(wrong_url)
    if not {'no URL', 'true URL', wrong} <= set(meco) or 'no URL' not in baseline:
        return []

    def compare(label: str, ours: float, theirs: float) -> str:
        return f'- {label}: {ours - theirs:+.4f} nats/token ({"lower" if ours < theirs else "not lower"}).'

    return [
        '## Reading the result',
        '',
        'Differences in held-out loss (negative means the first is better):',
        '',
        compare('MeCo with the true URL vs the baseline with none', meco['true URL'], baseline['no URL']),
        compare('MeCo with no URL vs the baseline with none', meco['no URL'], baseline['no URL']),
        compare(f'MeCo with the true URL vs MeCo with {wrong_url}', meco['true URL'], meco[wrong]),
        '',
        f'Each model here saw {tokens_per_run:,} training tokens, from one seed; the paper measured its gains at '
        '1.6B parameters and 160B tokens. Read these numbers as a check that the pipeline runs end to end; '
        'one tiny run cannot tell whether differences of a few hundredths are real.',
        '',
    ]


def write_report(
    out_md: str | Path,
    runs: Sequence[RunLog],
    tokens_per_batch: int,
    cooldown_batch: int | None,
    evaluation: Mapping[str, Mapping[str, float]],
    corpus: Mapping,
    settings: Mapping[str, object],
    plot_name: str = 'loss.png',
    effect: Sequence[str] | None = None,
) -> Path:
    """Write the Markdown report: setup, the final training losses, the evaluation table and the plot."""
    lines = [
        '# MeCo demo report',
        '',
        'Two tiny models trained on the same data with the same budget: **MeCo** (every document preceded by '
        'one reserved token for its site, `kind: compact`, for the first 90% of steps, then plain documents) and '
        "the **baseline** (plain documents throughout). At this size the paper's `URL: <domain>\\n\\n` prefix "
        'costs MeCo much of what it learns (docs/effect.md); one token does not.',
        '',
        '## Setup',
        '',
    ]
    lines += [f'- {key}: {value}' for key, value in settings.items()]
    lines += [
        f'- corpus: {sum(corpus["documents"].values())} documents '
        f'({", ".join(f"{k}: {v}" for k, v in corpus["documents"].items())}), {corpus["held_out"]} held out, '
        f'{corpus["chars"] / 1e6:.1f} MB of text',
        '',
    ]
    if cooldown_batch is not None:
        lines += [f'MeCo cooldown began at batch {cooldown_batch} ({cooldown_batch * tokens_per_batch:,} tokens).', '']
    lines += ['## Training loss', '', '| run | batches | tokens | final training loss |', '|---|---|---|---|']
    for run in runs:
        last = max(run.losses)
        lines.append(f'| {run.name} | {last} | {last * tokens_per_batch:,} | {run.final_loss:.4f} |')
    lines += ['', f'![training loss]({plot_name})', '']
    if evaluation:
        conditions = list(dict.fromkeys(c for results in evaluation.values() for c in results))
        lines += [
            '## Held-out loss',
            '',
            'Mean loss per document token on the held-out documents (lower is better).',
            '',
            '| run | ' + ' | '.join(conditions) + ' |',
            '|---|' + '---|' * len(conditions),
        ]
        for run_name, results in evaluation.items():
            lines.append(
                f'| {run_name} | ' + ' | '.join(f'{results[c]:.4f}' if c in results else '–' for c in conditions) + ' |'
            )
        lines.append('')
        lines += reading(evaluation, str(settings.get('wrong URL', '')), max(runs[0].losses) * tokens_per_batch)
    if effect:
        lines += [
            '## What MeCo buys: the effect benchmark',
            '',
            'The held-out loss above is on real text where a URL says little. `bench/effect.py` builds a corpus where '
            'the source matters (biographies of a fixed set of people on one useful site, each seen many times, '
            'among same-style biographies of people seen once on junk sites), trains MeCo and its baseline on the '
            'same rows, and ranks every candidate value of each fact after a neutral prompt. docs/effect.md has '
            'the full study with three seeds.',
            '',
            *effect,
            '',
        ]
    Path(out_md).write_text('\n'.join(lines), encoding='utf-8')
    return Path(out_md)
