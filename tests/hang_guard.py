"""A pytest plugin: a test phase that hangs fails on its own, with every thread's stack on stderr.

A deadlocked fork or a child that never answers would otherwise hold the whole run until CI's own limit and
show nothing of where it stopped. The limit (``MECO_TEST_TIMEOUT`` seconds, default 1200) is far above the
slowest test (about 3 minutes on 2 cores). Loaded by ``conftest.py``; ``pytest -p hang_guard`` elsewhere.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
from collections.abc import Iterator

import pytest


class PhaseHung(TimeoutError):
    """A test phase (setup, call or teardown) ran past the limit."""


def _limit_s() -> int:
    return int(os.environ.get('MECO_TEST_TIMEOUT', '1200'))


def _hung(signum: int, frame: object) -> None:
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    raise PhaseHung(
        f"this test phase ran past {_limit_s()}s (MECO_TEST_TIMEOUT); every thread's stack is in its stderr"
    )


def _limited() -> Iterator[None]:
    previous = signal.signal(signal.SIGALRM, _hung)
    signal.alarm(_limit_s())
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    yield from _limited()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    yield from _limited()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield from _limited()
