"""Every benchmark under bench/ runs at its smallest size (``--smoke``) and ends with a ratio on its last line.

A benchmark is only run by hand, so one that broke (as bench/train_step.py did, two runs saving into one folder)
went unnoticed; this runs each script with a ``__main__`` block as a subprocess, as a user would.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHES = sorted(  # a script with a __main__ block that takes --smoke; helpers (inputs, effect_report) do not
    p
    for p in (REPO / 'bench').glob('*.py')
    if "if __name__ == '__main__':" in p.read_text() and "'--smoke'" in p.read_text()
)
FLOAT = re.compile(r'\d+\.\d+')


def test_every_benchmark_with_a_main_block_is_collected():
    names = {p.name for p in BENCHES}
    assert {'train_step.py', 'loader.py', 'pack.py', 'attention.py', 'convert.py', 'effect.py'} <= names
    assert not {'inputs.py', 'effect_report.py', 'effect_corpus.py'} & names  # helpers, not benchmarks


@pytest.mark.slow
@pytest.mark.parametrize('script', BENCHES, ids=lambda p: p.name)
def test_benchmark_smoke_run_ends_with_a_ratio(script, tmp_path):
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')]))}
    env.setdefault('OMP_NUM_THREADS', '1')
    env['TMPDIR'] = str(tmp_path)
    # its own session, so that a benchmark that hangs is killed with every process it started (a forked worker
    # left behind would keep the output pipes open)
    process = subprocess.Popen(
        [sys.executable, str(script), '--smoke'],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f'{script.name} --smoke ran past 600s:\n{stdout[-3000:]}\n{stderr[-3000:]}')
    assert process.returncode == 0, f'{script.name} --smoke failed:\n{stdout[-3000:]}\n{stderr[-3000:]}'
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, f'{script.name} printed nothing'
    assert 'ratio' in lines[-1] or '/' in lines[-1], lines[-1]
    assert FLOAT.search(lines[-1]), f'{script.name} does not end with a ratio: {lines[-1]!r}'
