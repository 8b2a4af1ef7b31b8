"""A hung test fails on its own with every thread's stack, and the run goes on (``hang_guard.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_a_hung_test_fails_with_its_stack_and_the_next_test_still_runs(tmp_path):
    (tmp_path / 'test_inner.py').write_text(
        'import time\n\n'
        'def test_sleeps_past_the_limit():\n    time.sleep(30)\n\n'
        'def test_after_it():\n    assert True\n'
    )
    env = {**os.environ, 'MECO_TEST_TIMEOUT': '1', 'PYTHONPATH': str(TESTS)}
    done = subprocess.run(
        [sys.executable, '-m', 'pytest', '-p', 'hang_guard', '-q', '-p', 'no:cacheprovider', 'test_inner.py'],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1
    assert '1 failed, 1 passed' in done.stdout
    assert 'PhaseHung: this test phase ran past 1s (MECO_TEST_TIMEOUT)' in done.stdout
    stacks = done.stdout.split('Captured stderr call')[1]
    assert 'in test_sleeps_past_the_limit' in stacks  # every thread's stack, the hung line included
