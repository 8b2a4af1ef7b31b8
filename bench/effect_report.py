"""Tables and the prefix-length plot of docs/effect.md, from the JSON lines that ``bench/effect.py --results`` appends.

Each MeCo run is paired with the baseline of the same experiment, rows and seed (same rows, seed and steps);
a row of the table gives both arms' means ± sd over seeds and the paired difference of MeCo minus baseline.
  python bench/effect_report.py results.jsonl [--plot docs/effect-prefix-length.png] [--delta-plot docs/effect-deltas.png]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

METRICS = (
    ('recall, no URL', 'none/recall'),
    ('recall, true URL', 'true/recall'),
    ('useful loss, no URL', 'loss/useful/none'),
    ('useful loss, true URL', 'loss/useful/true'),
    ('junk loss, no URL', 'loss/junk/none'),
)


def load(path: Path) -> list[dict]:
    """Every run recorded, the last record of a repeated (experiment, arm, rows, seed) winning."""
    records: dict[tuple, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if any(o.endswith('metadata.attention=summary') for o in r.get('overrides', ())):
                for key in [k for k in r if k.startswith(('true/', 'wrong/', 'loss/useful/true', 'loss/useful/wrong'))]:
                    del r[key]  # a Llama export attends to the whole prefix, not as a summary run was trained
                for key in [k for k in r if k.startswith(('loss/junk/true', 'loss/junk/wrong'))]:
                    del r[key]
            records[(r['experiment'], r['arm'], r['rows'], r['seed'])] = r
    return list(records.values())


def fmt(values: list[float]) -> str:
    """``mean ± sd`` (n) over seeds."""
    if not values:
        return '-'
    if len(values) == 1:
        return f'{values[0]:.3f}'
    return f'{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}'


def paired(records: list[dict]) -> dict[tuple[str, str], list[tuple[dict, dict]]]:
    """(experiment, arm) -> [(MeCo run, its baseline)] over seeds."""
    baselines = {(r['experiment'], r['rows'], r['seed']): r for r in records if r['arm'] == 'baseline'}
    pairs: dict[tuple[str, str], list[tuple[dict, dict]]] = defaultdict(list)
    for r in records:
        base = baselines.get((r['experiment'], r['rows'], r['seed']))
        if r['arm'] != 'baseline' and base is not None:
            pairs[(r['experiment'], r['arm'])].append((r, base))
    return pairs


def table(records: list[dict]) -> list[str]:
    """One row per (experiment, arm): MeCo, baseline and the paired difference per metric."""
    head = '| experiment | MeCo arm | seeds | steps | ' + ' | '.join(
        f'{name}: MeCo / baseline / Δ' for name, _ in METRICS
    )
    lines = [head + ' |', '|---' * (4 + len(METRICS)) + '|']
    for (experiment, arm), runs in sorted(paired(records).items(), key=lambda kv: (kv[0][0], order(kv[0][1]))):
        cells = [experiment, arm, str(len(runs)), str(runs[0][0].get('steps', '-'))]
        for _, key in METRICS:
            meco = [m[key] for m, _ in runs if key in m]
            base = [b[key] for _, b in runs if key in b]
            diff = [m[key] - b[key] for m, b in runs if key in m and key in b]
            cells.append(f'{fmt(meco)} / {fmt(base)} / {fmt(diff)}')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def order(arm: str) -> tuple:
    """Sort arms: kind, then prefix length."""
    match = re.fullmatch(r'(\w+):(\d+)', arm)
    return (match.group(1), int(match.group(2))) if match else (arm, 0)


def plot(records: list[dict], experiment: str, out: Path) -> None:
    """No-URL fact recall against prefix length, informative tags and constant text, baseline as a band."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    pairs = paired([r for r in records if r['experiment'] == experiment])
    fig, ax = plt.subplots(figsize=(10.0, 4.2))
    bases = list({b['seed']: b['none/recall'] for runs in pairs.values() for _, b in runs}.values())
    if bases:
        mean, sd = statistics.mean(bases), statistics.stdev(bases) if len(bases) > 1 else 0.0
        ax.axhspan(mean - sd, mean + sd, color='grey', alpha=0.2, label=f'baseline ({mean:.3f} ± {sd:.3f})')
    series = (
        ('tag', 'none/recall', 'informative tag (site), scored without it', 'C0', '-'),
        ('tag', 'true/recall', 'informative tag (site), scored behind the true tag', 'C0', ':'),
        ('const', 'none/recall', 'constant text, scored without it', 'C3', '-'),
    )
    for kind, key, label, colour, style in series:
        xs, means, sds = [], [], []
        for (_, arm), runs in sorted(pairs.items(), key=lambda kv: order(kv[0][1])):
            if arm.startswith(kind + ':'):
                values = [m[key] for m, _ in runs if key in m]
                if values:
                    xs.append(int(arm.split(':')[1]))
                    means.append(statistics.mean(values))
                    sds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        if xs:
            ax.errorbar(
                xs, means, yerr=sds, marker='o', capsize=3, color=colour, linestyle=style, label=f'MeCo, {label}'
            )
    others = paired([r for r in records if r['experiment'] != experiment])
    markers, colours = iter('s^vD*'), iter(('C2', 'C1', 'C4', 'C5', 'C6'))
    for (other, arm), runs in sorted(others.items()):
        if arm.startswith('tag:'):  # one change at a time from a tag arm: a marker beside its curve
            values = [m['none/recall'] for m, _ in runs]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            x = int(arm.split(':')[1])
            ax.errorbar(
                [x],
                [statistics.mean(values)],
                yerr=[sd],
                marker=next(markers, 'o'),
                color=next(colours, 'C7'),
                capsize=3,
                linestyle='none',
                label=f'MeCo, tag, {other}, scored without it',
            )
    ax.set_xscale('log', base=2)
    ax.set_xlabel('prefix length (tokens)')
    ax.set_ylabel('fact recall, top-1 among all candidates')
    ax.set_title('Prefix length against what MeCo learns (mean ± sd over seeds)')
    ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.02, 1.0))  # beside the axes: points fill them
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def delta_plot(records: list[dict], out: Path) -> None:
    """Every row's paired no-URL recall difference, MeCo minus its baseline: one dot per seed, mean ± sd, zero line."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = sorted(paired(records).items(), key=lambda kv: (kv[0][0], order(kv[0][1])))
    fig, ax = plt.subplots(figsize=(8.0, 0.38 * len(rows) + 1.6))
    for y, ((experiment, arm), runs) in enumerate(rows):
        diffs = [m['none/recall'] - b['none/recall'] for m, b in runs]
        mean = statistics.mean(diffs)
        sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        colour = 'C2' if mean - sd > 0 else 'C3' if mean + sd < 0 else 'C7'
        ax.errorbar([mean], [y], xerr=[sd], marker='D', color=colour, capsize=3, linestyle='none')
        ax.scatter(diffs, [y] * len(diffs), s=12, color=colour, alpha=0.5, zorder=3)
    ax.axvline(0.0, color='black', linewidth=0.8)
    ax.set_yticks(range(len(rows)), [f'{experiment}: {arm} ({len(runs)} seeds)' for (experiment, arm), runs in rows])
    ax.invert_yaxis()
    ax.set_xlabel('no-URL fact recall, MeCo minus its baseline\n(paired: same rows, seed and steps)')
    ax.set_title('MeCo against its baseline (dots: seeds, bar: mean ± sd)')
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('results', help='JSON lines from bench/effect.py --results')
    parser.add_argument('--plot', default=None, help='write the prefix-length plot here (PNG)')
    parser.add_argument('--plot-experiment', default='length', help='experiment whose tag/const arms are plotted')
    parser.add_argument('--delta-plot', default=None, help="write every row's paired no-URL difference here (PNG)")
    args = parser.parse_args(argv)
    records = load(Path(args.results))
    print('\n'.join(table(records)))
    if args.plot:
        plot(records, args.plot_experiment, Path(args.plot))
        print(f'plot: {args.plot}')
    if args.delta_plot:
        delta_plot(records, Path(args.delta_plot))
        print(f'plot: {args.delta_plot}')


if __name__ == '__main__':
    main()
