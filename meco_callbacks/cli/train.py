"""Train with llm-foundry's trainer; MeCo's components are found through llm-foundry's entry points.

Usage:  composer recipes/train.py YAML [key=value ...]
        (or, from the repository root, the same as: composer train.py YAML [key=value ...])

Overrides are OmegaConf dotted keys merged over the YAML, exactly as llm-foundry's scripts/train/train.py
takes them, e.g. ``max_duration=100ba train_loader.dataset.local=/data/packed variables.cooldown=0.2``.

With a local ``save_folder``, everything the run prints is also appended to ``<save_folder>/train.log`` (rank 0),
which ``recipes/plot.py`` reads. Ctrl-C stops the run with one line naming the last checkpoint and the command
that resumes from it (after the checkpoint being written, if one is).
"""

from __future__ import annotations

import _thread
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

TRAIN_LOG = 'train.log'


def main(argv: list[str] | None = None) -> None:
    """Parse ``YAML [overrides]`` and hand over to llm-foundry's ``train_from_yaml``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    from llmfoundry.command_utils import train_from_yaml

    # llm-foundry sets levels only for its own and Composer's loggers; MeCo's (phase switch, checks) are INFO.
    logging.getLogger('meco_callbacks').setLevel(logging.INFO)
    save_folder = local_save_folder(argv[0], argv[1:])
    log_file = save_folder / TRAIN_LOG if save_folder is not None and os.environ.get('RANK', '0') == '0' else None
    # Composer (imported above) turns SIGINT into sys.exit(130) wherever it lands; a KeyboardInterrupt instead
    # unwinds the trainer to the handler below.
    signal.signal(signal.SIGINT, CtrlC())
    with console_copied_to(log_file):
        try:
            train_from_yaml(argv[0], argv[1:])
        except KeyboardInterrupt:
            print(interrupted_message(save_folder, argv), file=sys.stderr, flush=True)
            raise SystemExit(130) from None  # 128 + SIGINT, as a shell reports a Ctrl-C


class CtrlC:
    """SIGINT handler: the first Ctrl-C stops training through KeyboardInterrupt; a second one ends the process.

    A Ctrl-C that lands while Composer writes a checkpoint waits for the write (looked at again every
    ``RECHECK_SECONDS``): an exception raised inside ``torch.save`` would leave a truncated file under a
    checkpoint's name and end the run in a traceback. The ``composer`` launcher answers the same Ctrl-C with a
    SIGTERM to this process; it is ignored from the first Ctrl-C on, so that it cannot cut the clean stop short.
    """

    RECHECK_SECONDS = 0.1

    def __init__(self) -> None:
        self.requested = False
        self.looks_due = 0  # SIGINTs this process sent itself to look again, not yet handled

    def __call__(self, signum: int, frame: Any) -> None:
        if self.looks_due:  # this process's own look, scheduled while a checkpoint was being written
            self.looks_due -= 1
        elif self.requested:  # a second Ctrl-C while the first waits for a checkpoint: end now
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
            return
        self.requested = True
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if writing_checkpoint(frame):
            look_again = threading.Timer(self.RECHECK_SECONDS, self._look_again)
            look_again.daemon = True
            look_again.start()
            return
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        raise KeyboardInterrupt

    def _look_again(self) -> None:
        """Send this process a SIGINT marked as its own (from a timer thread)."""
        self.looks_due += 1
        _thread.interrupt_main(signal.SIGINT)


def writing_checkpoint(frame: Any) -> bool:
    """Whether ``frame`` or a frame that called it is Composer's checkpoint saving (the file, the links, uploads)."""
    from composer.callbacks.checkpoint_saver import CheckpointSaver
    from composer.utils import checkpoint

    saving = {CheckpointSaver._save_checkpoint.__code__, checkpoint.save_checkpoint.__code__}
    while frame is not None:
        if frame.f_code in saving:
            return True
        frame = frame.f_back
    return False


def local_save_folder(yaml_path: str, overrides: list[str]) -> Path | None:
    """The run's ``save_folder`` (YAML and overrides resolved as llm-foundry does) when it is a local directory."""
    from omegaconf import OmegaConf as om

    config = om.merge(om.load(yaml_path), om.from_cli(list(overrides)))
    folder = config.get('save_folder')
    if not folder or '://' in str(folder):
        return None
    return Path(str(folder))


def last_checkpoint(save_folder: Path | None) -> Path | None:
    """The checkpoint Composer wrote last in ``save_folder`` (its ``latest-*rank0*`` link resolved), if any."""
    if save_folder is None or not save_folder.is_dir():
        return None
    for latest in sorted(save_folder.glob('latest-*rank0*')):
        if latest.exists():
            return latest.resolve()
    return None


def interrupted_message(save_folder: Path | None, argv: list[str]) -> str:
    """One line: training stopped, the last checkpoint, and the command that resumes from it."""
    checkpoint = last_checkpoint(save_folder)
    if checkpoint is None:
        where = f'in {save_folder}' if save_folder is not None else '(no local save_folder)'
        return f'Training interrupted; no checkpoint was saved {where}, so a rerun starts from the beginning.'
    command = shlex.join(['composer', sys.argv[0], *argv, f'load_path={checkpoint}'])
    return f'Training interrupted; last checkpoint {checkpoint}. Resume with: {command}'


class _Tee:
    """A text stream that writes to ``stream`` and to ``copy``; everything else is ``stream``'s."""

    def __init__(self, stream: TextIO, copy: TextIO) -> None:
        self._stream = stream
        self._copy = copy

    def write(self, text: str) -> int:
        """Write to both (to the console only once the copy is closed: a logging handler may outlive the run)."""
        if not self._copy.closed:
            self._copy.write(text)
        return self._stream.write(text)

    def flush(self) -> None:
        """Flush both."""
        if not self._copy.closed:
            self._copy.flush()
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def console_copied_to(path: Path | None) -> Iterator[None]:
    """Append what the process prints (stdout and stderr) to ``path`` too, while the block runs."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    stdout, stderr = sys.stdout, sys.stderr
    with path.open('a', encoding='utf-8', buffering=1) as copy:
        sys.stdout, sys.stderr = _Tee(stdout, copy), _Tee(stderr, copy)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = stdout, stderr
