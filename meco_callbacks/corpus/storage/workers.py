"""The one process pool of corpus conversion: an order-preserving map of a function over tasks, in worker processes.

Both stages use it: stage 1 maps the conversion of a unit over the units, stage 2 its two passes over document
ranges and parts. It is written here rather than taken from ``concurrent.futures.ProcessPoolExecutor`` for what
the stages need and the executor does not give:

- the workers are forked when the map is made, so ``function`` and ``tasks`` (with whatever large read-only
  state they hold: a tokenizer, a plan) are inherited, never pickled, and the fork happens before the caller
  starts progress-bar or writer threads;
- a task reports progress while it runs (``on_progress``), not only when it ends;
- a worker that dies (a signal, the out-of-memory killer) is named with the task it was running, instead of a
  ``BrokenProcessPool`` naming nothing;
- a worker whose parent was killed stops at its next task or progress report, instead of writing on as an orphan;
- on an error or an early close, running tasks are abandoned and pending ones never start.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import traceback
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, Generic, TypeVar

T = TypeVar('T')
R = TypeVar('R')


class WorkerDied(RuntimeError):
    """A worker process ended without finishing its task; ``completed`` tasks had finished by then."""

    def __init__(self, message: str, pid: int, exitcode: int, completed: int) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.completed = completed


class WorkerTraceback(Exception):
    """The traceback of an exception raised in a worker process, attached to it here as its ``__cause__``."""


class ProcessMap(Generic[T, R]):
    """``function`` over ``tasks``: results in task order, each as soon as it and those before it are done.

    With ``num_workers`` == 1 each task runs in this process when its result is asked for. Otherwise
    ``min(num_workers, len(tasks))`` worker processes start at once (forked where the platform can, else spawned,
    pickling ``function`` and ``tasks`` once per worker) and each takes the next task in order as it finishes one.
    With ``on_progress``, ``function`` is called as ``function(task, progress)``, and ``progress(*values)`` calls
    ``on_progress(*values)`` in this process while the task runs. A task's exception is raised here with the
    worker's traceback as its cause; a dying worker raises WorkerDied, whose message uses ``describe(task)``
    (e.g. ``'converting unit 3'``). With ``ahead``, no task starts more than ``ahead`` tasks beyond the next result
    to be taken (what bounds the document shards a packing from object storage holds at once). Use it as a context manager or exhaust it, so that the workers are stopped.
    """

    def __init__(
        self,
        function: Callable[..., R],
        tasks: Sequence[T],
        num_workers: int,
        *,
        on_progress: Callable[..., None] | None = None,
        describe: Callable[[T], str] | None = None,
        ahead: int | None = None,
    ) -> None:
        if num_workers < 1:
            raise ValueError(f'num_workers must be at least 1, got {num_workers}')
        self._function = function
        self._tasks = list(tasks)
        self._on_progress = on_progress
        self._describe = describe
        self._next = 0
        self._results: dict[int, R] = {}
        self._running: dict[Any, int] = {}  # worker process -> index of the task it is running
        self._completed = 0
        self._workers: dict[Any, Connection] = {}  # worker process -> the end of its pipe this process reads
        self._ahead = len(self._tasks) if ahead is None else max(1, ahead)
        self._fed = 0  # tasks handed to the workers' queue so far
        workers = min(num_workers, len(self._tasks))
        self._in_process = workers <= 1
        if not self._in_process:
            self._start(workers)

    def _start(self, workers: int) -> None:
        method = 'fork' if 'fork' in multiprocessing.get_all_start_methods() else 'spawn'
        context = multiprocessing.get_context(method)
        self._todo = context.Queue()
        self._worker_count = workers
        self._feed()
        for _ in range(workers):
            receiver, sender = context.Pipe(duplex=False)
            args = (self._function, self._tasks, self._todo, sender, os.getpid(), self._on_progress is not None)
            process = context.Process(target=_work, args=args, daemon=True)
            process.start()
            sender.close()  # the worker holds the only writing end: its end of file is the worker's end
            self._workers[process] = receiver

    def __iter__(self) -> Iterator[R]:
        return self

    def __next__(self) -> R:
        """The next task's result, raising what its task raised or WorkerDied."""
        if self._next == len(self._tasks):
            self.close()
            raise StopIteration
        if not self._in_process:
            while self._next not in self._results:
                self._receive()
            result = self._results.pop(self._next)
            self._feed(1)
        elif self._on_progress is not None:
            result = self._function(self._tasks[self._next], self._on_progress)
        else:
            result = self._function(self._tasks[self._next])
        self._next += 1
        return result

    def _feed(self, done: int = 0) -> None:
        """Queue the tasks up to ``ahead`` beyond the next result (``done`` results were just taken), then the ends."""
        stop = min(len(self._tasks), self._next + done + self._ahead)
        while self._fed < stop:
            self._todo.put(self._fed)
            self._fed += 1
            if self._fed == len(self._tasks):
                for _ in range(self._worker_count):
                    self._todo.put(None)

    def close(self) -> None:
        """Stop the workers: running tasks are abandoned, pending ones never start."""
        for process, receiver in self._workers.items():
            if process.is_alive():
                process.terminate()
            process.join()
            receiver.close()
        if self._workers:
            self._todo.cancel_join_thread()  # task indices nobody will read must not hold up this process's exit
            self._workers = {}

    def __enter__(self) -> ProcessMap[T, R]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _receive(self) -> None:
        """Wait until a worker reports or ends, and handle that: every report it sent before, then its end."""
        if not self._workers:
            raise RuntimeError(f'internal error: every worker ended with task {self._next} not done')
        wait([*self._workers.values(), *(process.sentinel for process in self._workers)])
        for process, receiver in list(self._workers.items()):
            ended = process.exitcode is not None  # before reading, so that nothing it sent is left unread
            while receiver.poll():
                try:
                    event = receiver.recv()
                except EOFError:  # the worker ended, possibly in the middle of a report
                    break
                self._handle(process, event)
            if ended:
                self._ended(process)

    def _handle(self, process: Any, event: tuple[Any, ...]) -> None:
        """Act on one report of a worker: progress, a task started, a result, or a task's exception."""
        kind = event[0]
        if kind == 'progress':
            self._on_progress(*event[1])
        elif kind == 'start':
            self._running[process] = event[1]
        elif kind == 'done':
            _, index, result = event
            self._results[index] = result
            self._running.pop(process, None)
            self._completed += 1
        else:
            _, index, error, text = event
            self.close()
            error.add_note(f'raised while {self._doing(index)} in worker process {process.pid}')
            raise error from WorkerTraceback(text)

    def _ended(self, process: Any) -> None:
        """A worker's end: expected after its last task, else WorkerDied naming the task it was running."""
        process.join()
        self._workers.pop(process).close()
        if process.exitcode == 0:
            return
        index = self._running.get(process)
        doing = f' while {self._doing(index)}' if index is not None else ''
        code = process.exitcode
        how = f'signal {-code}' if code < 0 else f'exit code {code}'
        self.close()
        raise WorkerDied(f'worker process {process.pid} died ({how}){doing}', process.pid, code, self._completed)

    def _doing(self, index: int) -> str:
        """What the task at ``index`` does, for messages."""
        return self._describe(self._tasks[index]) if self._describe is not None else f'running task #{index}'


def _work(
    function: Callable[..., Any],
    tasks: Sequence[Any],
    todo: Any,
    reports: Connection,
    parent: int,
    with_progress: bool,
) -> None:
    """A worker process: run tasks by index until the None sentinel, reporting each start, progress and result.

    Reports are written straight into this worker's pipe (no feeder thread), so that the parent has every report
    a worker sent before it ended, even when it was killed.
    """

    def stop_if_orphaned() -> None:
        if os.getppid() != parent:  # the parent was killed: stop instead of working on for nobody
            os._exit(3)

    def progress(*values: Any) -> None:
        stop_if_orphaned()
        reports.send(('progress', values))

    os.environ['TOKENIZERS_PARALLELISM'] = 'false'  # the tokenizers library's threads would deadlock after a fork
    while (index := todo.get()) is not None:
        stop_if_orphaned()
        reports.send(('start', index))
        try:
            result = function(tasks[index], progress) if with_progress else function(tasks[index])
            reports.send(('done', index, result))
        except BaseException as error:  # every failure goes back to the parent, then this worker ends
            reports.send(('error', index, _sendable(error), traceback.format_exc()))
            return


def _sendable(error: BaseException) -> BaseException:
    """``error`` itself when it survives pickling, else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # any exception type may refuse to be rebuilt
        return RuntimeError(f'{type(error).__name__}: {error}')
    return error
