"""`make demo` shortened: the whole pipeline runs through `python -m demo`, and its report tells the truth."""

import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import REPO_ROOT

STEPS = 10
SHORT_DEMO = [
    '--effect',
    'off',
    '--max-docs',
    '120',
    '--steps',
    str(STEPS),
    '--vocab-size',
    '1024',
    '--seq-len',
    '64',
    '--batch-size',
    '4',
    '--eval-batches',
    '2',
    '--override',
    'model.d_model=64',
    '--override',
    'model.n_heads=2',
    '--override',
    'model.n_layers=2',
    '--override',
    'model.attn_config.kv_n_heads=1',
]


def run_demo(out: Path) -> subprocess.CompletedProcess:
    """Run the shortened demo into ``out`` the way `make demo` does."""
    done = subprocess.run(
        [sys.executable, '-m', 'demo', '--output', str(out), *SHORT_DEMO],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done


@pytest.fixture(scope='module')
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """One shortened demo run shared by the tests below."""
    out = tmp_path_factory.mktemp('demo-output')
    return out, run_demo(out)


def last_logged_loss(log: Path) -> str:
    """The last ``loss/train/total`` value Composer's console logger printed in a run's log."""
    return re.findall(r'Train loss/train/total: (\S+)', log.read_text())[-1]


@pytest.mark.slow
def test_the_demo_writes_the_report_and_the_plot_and_says_where(demo):
    out, done = demo
    assert (out / 'report.md').is_file()
    assert (out / 'loss.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert f'report: {out / "report.md"}' in done.stdout
    assert f'plot:   {out / "loss.png"}' in done.stdout


@pytest.mark.slow
def test_the_corpus_is_json_lines_with_real_urls_from_several_sites(demo):
    out, _ = demo
    docs = [json.loads(line) for name in ('train', 'heldout') for line in open(out / 'corpus' / f'{name}.jsonl')]
    assert len(docs) == 120
    assert all(set(doc) == {'text', 'url'} and doc['text'] and doc['url'].startswith('https://') for doc in docs)
    hosts = {urlsplit(doc['url']).hostname for doc in docs}
    assert 'docs.python.org' in hosts and len(hosts) >= 3
    assert 'https://docs.python.org/3/library/abc.html' in {doc['url'] for doc in docs}


@pytest.mark.slow
def test_the_report_final_losses_are_the_last_losses_in_the_runs_logs(demo):
    out, _ = demo
    report = (out / 'report.md').read_text()
    for run in ('meco', 'baseline'):
        loss = last_logged_loss(out / 'runs' / run / 'train.log')
        assert f'| {run} | {STEPS} | {STEPS * 4 * 64:,} | {loss} |' in report


@pytest.mark.slow
def test_meco_cooled_down_for_the_last_tenth_and_the_baseline_never_conditioned(demo):
    out, _ = demo
    meco_log = (out / 'runs' / 'meco' / 'train.log').read_text()
    baseline_log = (out / 'runs' / 'baseline' / 'train.log').read_text()
    assert re.findall(r'Train meco/cooldown_start_batch: (\d+)', meco_log) == ['9']
    assert 'MeCo cooldown began at batch 9 (2,304 tokens).' in (out / 'report.md').read_text()
    assert 'meco/cooldown_start_batch' not in baseline_log
    assert 'kind: none' in (out / 'baseline.yaml').read_text()


@pytest.mark.slow
def test_the_report_evaluation_table_holds_the_held_out_losses_of_both_models(demo):
    out, _ = demo
    results = json.loads((out / 'evaluation.json').read_text())
    report = (out / 'report.md').read_text()
    assert list(results) == ['meco', 'baseline']
    for run, conditions in results.items():
        assert list(conditions) == ['no URL', 'true URL', 'wrong URL (pypi.org)']
        assert len({c['tokens'] for c in conditions.values()}) == 1  # every condition scores the same tokens
        row = ' | '.join(f'{c["loss"]:.4f}' for c in conditions.values())
        assert f'| {run} | {row} |' in report


@pytest.mark.slow
def test_a_second_run_reuses_everything_it_built(demo):
    out, _ = demo
    logs = {run: (out / 'runs' / run / 'train.log').stat().st_mtime_ns for run in ('meco', 'baseline')}
    done = run_demo(out)
    assert 'already trained' in done.stderr
    assert logs == {run: (out / 'runs' / run / 'train.log').stat().st_mtime_ns for run in ('meco', 'baseline')}


@pytest.mark.slow
def test_the_report_spells_out_the_papers_comparisons_from_the_held_out_losses(demo):
    out, _ = demo
    loss = {
        run: {cond: r['loss'] for cond, r in conds.items()}
        for run, conds in json.loads((out / 'evaluation.json').read_text()).items()
    }
    report = (out / 'report.md').read_text()
    true_vs_baseline = loss['meco']['true URL'] - loss['baseline']['no URL']
    assert f'- MeCo with the true URL vs the baseline with none: {true_vs_baseline:+.4f} nats/token' in report
    right_vs_wrong = loss['meco']['true URL'] - loss['meco']['wrong URL (pypi.org)']
    assert f'- MeCo with the true URL vs MeCo with pypi.org: {right_vs_wrong:+.4f} nats/token' in report
    assert f'Each model here saw {STEPS * 4 * 64:,} training tokens' in report


def test_the_plotted_moving_average_is_the_mean_of_each_loss_and_those_just_before_it():
    from meco_callbacks.cli.plot import moving_average

    assert moving_average([4.0, 2.0, 6.0, 0.0], 2) == [4.0, 3.0, 4.0, 3.0]
    assert moving_average([4.0, 2.0, 6.0], 1) == [4.0, 2.0, 6.0]


@pytest.mark.slow
def test_the_effect_benchmarks_table_and_ratio_reach_the_report(tmp_path):
    from demo.__main__ import effect_comparison
    from demo.report import write_report

    effect = effect_comparison(tmp_path / 'effect', 'smoke')
    assert effect[0].startswith('MeCo against its baseline')
    assert any(line.startswith('| MeCo compact |') for line in effect)
    assert any(line.startswith('| baseline (rows of compact) |') for line in effect)
    assert float(effect[-1].rsplit(':', 1)[1]) >= 0
    report = write_report(
        tmp_path / 'report.md', [], 1, None, {}, {'documents': {}, 'held_out': 0, 'chars': 0}, {}, effect=effect
    )
    text = report.read_text()
    assert '## What MeCo buys: the effect benchmark' in text and effect[-1] in text
