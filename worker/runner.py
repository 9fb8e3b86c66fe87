"""Where blocking task code runs: child processes that can be stopped, in bounded slots.

A thread cannot be stopped: a blocking task that passes its deadline would keep its
thread (and, with a pool of six, soon every thread) for as long as it likes. So every
blocking attempt runs in a child process:

- **Deadlines.** At the soft deadline the child gets SIGALRM and `SoftTimeLimitExceeded`
  is raised inside the task, which may catch it to clean up; at the hard deadline (the
  attempt's `timeout`, or `SYNCD_DEFAULT_TIMEOUT_SECONDS`) the child is SIGKILLed and
  replaced, and the attempt fails with a TimeoutError. The slot is free at once.
- **Memory.** Each child runs under RLIMIT_AS = `SYNCD_TASK_MEMORY_MB`: an attempt that
  allocates more fails with `MemoryLimitExceeded` and its child is replaced; the worker
  lives on.
- **Fair slots.** At most `SYNCD_WORKER_CONCURRENCY` blocking attempts run at once, and
  at most `SYNCD_TASK_TYPE_CONCURRENCY` of one task type, so a flood of slow tasks of one
  type cannot take every slot from the others.
- **No orphans.** Children are forked from a forkserver that has the task modules loaded
  (a fork costs milliseconds, and no event loop or socket of the worker is inherited),
  and die with SIGKILL when the process that forked them dies (PR_SET_PDEATHSIG).

Coroutine tasks stay on the event loop: cancellation stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import resource
import signal
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from syncd.core.logtext import exception_text, make_handlers_safe
from worker.policy import prepare
from worker.secrets import redact, redacted_logs

logger = logging.getLogger("worker.runner")

# The soft deadline comes this long before the hard one (at most a tenth of the timeout),
# so a task that catches it has time to clean up before it is killed.
SOFT_MARGIN_SECONDS = 2.0
_PR_SET_PDEATHSIG = 1
_MIB = 1024 * 1024


class SoftTimeLimitExceeded(Exception):
    """Raised inside a task at its soft deadline: clean up and return (or re-raise)."""


class MemoryLimitExceeded(MemoryError):
    """The attempt allocated more than the per-attempt memory limit."""


class ChildDied(RuntimeError):
    """The process running the attempt died (killed, crashed, `os._exit`)."""


class RemoteError(Exception):
    """An exception raised by the task in its child, carried back as text.

    Subclassed per name (`remote_error_type`) so records show the task's own exception
    name; `remote_traceback` is the child's traceback, also attached as a note so every
    formatted traceback of the error includes it.
    """

    remote_traceback: str = ""


_REMOTE_TYPES: dict[str, type[RemoteError]] = {}


def remote_error_type(name: str) -> type[RemoteError]:
    if name not in _REMOTE_TYPES:
        _REMOTE_TYPES[name] = type(name, (RemoteError,), {"__module__": "worker.tasks"})
    return _REMOTE_TYPES[name]


@dataclass(frozen=True)
class Limits:
    concurrency: int
    per_type: int
    memory_mb: int
    default_timeout: float


# -- the child ------------------------------------------------------------------------


def _child_main(conn: Connection, memory_mb: int, logs: LogSetup) -> None:
    """A child's life: run one attempt after another until the pipe closes."""
    die_with_parent()
    _log_like_parent(logs)
    limit = memory_mb * _MIB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, _soft_deadline)
    # Stop signals are the worker's to handle (a group-wide SIGTERM or Ctrl-C reaches the
    # children too); the runner stops a child with SIGKILL, or the child dies with it.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    from worker.tasks import registry  # noqa: PLC0415 - preloaded by the forkserver

    while True:
        try:
            task_name, params, soft_seconds = conn.recv()
        except (EOFError, OSError):
            return
        reply = _run_one(registry, task_name, params, soft_seconds)
        conn.send(reply)
        if reply[0] == "memory":
            return  # after a MemoryError the heap may be in any state: start afresh


def _run_one(registry: Any, task_name: str, params: Any, soft_seconds: float) -> tuple[Any, ...]:
    task_type = registry[task_name]
    secrets: list[str] = []
    signal.setitimer(signal.ITIMER_REAL, max(soft_seconds, 0.001))
    try:
        # Secrets resolved and parameters validated here, with the worker's policy: checked
        # again at run time, whoever wrote the message; the values stay in this process.
        checked, secrets = prepare(task_name, task_type.params, params)
        with redacted_logs(secrets):
            result = task_type.func(checked)
        return ("ok", redact(result, secrets))
    except MemoryError:
        return ("memory",)
    except BaseException as exc:
        # The traceback travels as a note of the worker's error and is logged line by line
        # there: the task's own words are escaped here, where they can be told apart.
        text = exception_text(exc, lambda words: redact(words, secrets))
        return ("error", type(exc).__name__, redact(str(exc), secrets), redact(text, secrets))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


LogSetup = tuple[int, str | None]  # the root logger's level and its first handler's format


def parent_log_setup() -> LogSetup:
    """How this process logs, for a child to log the same way (a task's log lines, e.g.
    `notification.log`, must show in the worker's output as they did in its threads)."""
    root = logging.getLogger()
    formatter = root.handlers[0].formatter if root.handlers else None
    return root.level, getattr(formatter, "_fmt", None)


def _log_like_parent(logs: LogSetup) -> None:
    level, fmt = logs
    # The child writes to the stderr it inherited, which is the worker's, and as safely.
    logging.basicConfig(level=level, format=fmt or logging.BASIC_FORMAT, force=True)
    make_handlers_safe()


def _soft_deadline(signum: int, frame: FrameType | None) -> None:
    raise SoftTimeLimitExceeded("soft time limit reached")


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the thread that forked it ends."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


# -- the parent -----------------------------------------------------------------------


@dataclass(eq=False)  # identity: each child is one process
class _Child:
    process: BaseProcess
    conn: Connection
    reusable: bool = True  # False once it said it is leaving (after a MemoryError)


class Runner:
    """Runs blocking task functions in killable children, within the slot limits."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._context = multiprocessing.get_context("forkserver")
        # worker.forkserver_init makes the forkserver itself die with the worker.
        self._context.set_forkserver_preload(["worker.forkserver_init", "worker.tasks"])
        self._idle: list[_Child] = []
        self._slots = asyncio.Semaphore(limits.concurrency)
        self._per_type: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(limits.per_type)
        )
        self._busy: set[_Child] = set()
        self.replaced = 0  # children stopped and replaced (deadline, memory, death)

    async def run(self, task_name: str, params: dict[str, Any], timeout: float | None) -> Any:
        """Run one attempt; raises what the task raised, TimeoutError, or MemoryLimitExceeded."""
        loop = asyncio.get_running_loop()
        hard = float(timeout) if timeout else self.limits.default_timeout
        deadline = loop.time() + hard
        async with self._per_type[task_name], self._slots:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {hard:g} s")
            soft = remaining - min(SOFT_MARGIN_SECONDS, hard / 10)
            with self._child() as child:
                child.conn.send((task_name, params, soft))
                try:
                    reply = await asyncio.wait_for(self._reply(child), remaining)
                except TimeoutError:
                    raise TimeoutError(f"timed out after {hard:g} s") from None
                child.reusable = reply[0] != "memory"
        return self._result(reply, hard)

    def _result(self, reply: tuple[Any, ...], hard: float) -> Any:
        kind = reply[0]
        if kind == "ok":
            return reply[1]
        if kind == "memory":
            raise MemoryLimitExceeded(f"exceeded its memory limit of {self.limits.memory_mb} MiB")
        name, message, text = reply[1:]
        if name == "SoftTimeLimitExceeded":  # the task let it out: the attempt timed out
            raise TimeoutError(f"timed out after {hard:g} s")
        error = remote_error_type(name)(message)
        error.remote_traceback = text
        error.add_note(f"raised in the worker's child process:\n{text.rstrip()}")
        raise error

    @contextlib.contextmanager
    def _child(self) -> Iterator[_Child]:
        """An idle child (or a new one); returned to the pool only if it finished cleanly."""
        child = self._idle.pop() if self._idle else self._spawn()
        self._busy.add(child)
        clean = False
        try:
            yield child
            clean = True
        finally:
            self._busy.discard(child)
            if clean and child.reusable and child.process.is_alive():
                self._idle.append(child)
            else:
                self.replaced += 1
                self._kill(child)

    async def _reply(self, child: _Child) -> tuple[Any, ...]:
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        fd = child.conn.fileno()
        loop.add_reader(fd, readable.set)
        try:
            await readable.wait()
        finally:
            loop.remove_reader(fd)
        try:
            reply: tuple[Any, ...] = child.conn.recv()
        except (EOFError, OSError):
            child.process.join(1)
            code = child.process.exitcode
            raise ChildDied(f"worker process died running the task (exit code {code})") from None
        return reply

    def _spawn(self) -> _Child:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_child_main,
            args=(child_end, self.limits.memory_mb, parent_log_setup()),
            daemon=True,
        )
        try:
            process.start()
        except (EOFError, OSError) as exc:  # the forkserver died (killed while starting?)
            parent_end.close()
            raise ChildDied(f"could not start a process for the attempt ({exc!r})") from None
        finally:
            child_end.close()
        return _Child(process, parent_end)

    def warm(self) -> None:
        """Start the forkserver and one child now, at worker start-up: the first attempt
        does not wait for them, and a stop signal sent to the whole process group later
        finds the forkserver already ignoring it (it would kill one still starting)."""
        if not self._idle:
            self._idle.append(self._spawn())

    def _kill(self, child: _Child) -> None:
        if child.process.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid or 0, signal.SIGKILL)
        child.process.join(5)
        child.conn.close()

    def close(self) -> None:
        """Stop every child (running attempts are lost: their messages are redelivered)."""
        for child in [*self._idle, *self._busy]:
            self._kill(child)
        self._idle.clear()
        self._busy.clear()
