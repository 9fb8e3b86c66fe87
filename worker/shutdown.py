"""A worker's clean shutdown: finish what runs within a grace period, hand back the rest.

On SIGTERM, SIGINT or SIGHUP taskiq stops fetching messages and waits for running tasks
with no limit of its own. `GracefulShutdown` adds the limit: running attempts get
`SYNCD_SHUTDOWN_GRACE_SECONDS` to finish (those that do are recorded and acknowledged as
usual). Then the worker

1. stops recording: what finishes from now on is not acknowledged either;
2. hands back every message it fetched and did not finish (sent again and acknowledged in
   one MULTI, so another worker takes it at once; a hand-back is not a death);
3. flushes the recorder (what it cannot write in time goes to its spool file);
4. stops the children running blocking attempts and exits with status 0.

A process that finishes within the grace shuts down the usual way, and hands back the
messages it read ahead and never started. The worker also dies with taskiq's main process
(PR_SET_PDEATHSIG), so a SIGKILLed `taskiq worker` leaves no worker behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from taskiq import TaskiqEvents, TaskiqState

from worker.consumer import StreamConsumer
from worker.recording import ExecutionRecorder
from worker.runner import Runner, die_with_parent

logger = logging.getLogger("syncd.worker")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# After the grace: at most this long to write buffered records before they are spooled.
FINAL_FLUSH_SECONDS = 1.0
Handler = Callable[[int, FrameType | None], Any] | int | None


class GracefulShutdown:
    """Bounds a worker's shutdown by the grace period; see the module docstring."""

    def __init__(self, consumer: StreamConsumer, runner: Runner, grace: float) -> None:
        self.consumer, self.runner, self.grace = consumer, runner, grace
        self.stopping = False  # a stop signal came
        self._closing = False  # taskiq's own shutdown started: every attempt has finished
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._abandon_task: asyncio.Task[None] | None = None

    def attach(self) -> None:
        self.consumer.add_event_handler(TaskiqEvents.WORKER_STARTUP, self._on_startup)
        self.consumer.add_event_handler(TaskiqEvents.WORKER_SHUTDOWN, self._on_shutdown)

    async def _on_startup(self, state: TaskiqState) -> None:
        die_with_parent()
        self.runner.warm()
        self._loop = asyncio.get_running_loop()
        # taskiq installed its handlers before startup: wrap them, they stop the fetching.
        for signum in SIGNALS:
            signal.signal(signum, self._handler(signal.getsignal(signum)))

    def _handler(self, previous: Handler) -> Callable[[int, FrameType | None], None]:
        def handle(signum: int, frame: FrameType | None) -> None:
            if not self.stopping and self._loop is not None:
                self.stopping = True
                self._loop.call_soon_threadsafe(self._start_grace, signal.Signals(signum).name)
            if callable(previous):
                previous(signum, frame)

        return handle

    def _start_grace(self, name: str) -> None:
        running = len(self.consumer.outstanding)
        logger.warning(
            "%s: taking no new messages; %d unfinished message(s) get %g s to finish",
            name,
            running,
            self.grace,
        )
        assert self._loop is not None  # noqa: S101 - set at startup, before any signal
        self._timer = self._loop.call_later(self.grace, self._grace_over)

    def _grace_over(self) -> None:
        if not self._closing:
            self._abandon_task = asyncio.ensure_future(self._abandon())

    async def _abandon(self) -> None:
        logger.warning(
            "the %g s grace is over with %d unfinished message(s): stopping them, "
            "handing their messages back",
            self.grace,
            len(self.consumer.outstanding),
        )
        recorders = [m for m in self.consumer.middlewares if isinstance(m, ExecutionRecorder)]
        for recorder in recorders:
            recorder.seal()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.consumer.hand_back(), FINAL_FLUSH_SECONDS)
        for recorder in recorders:
            with contextlib.suppress(Exception):
                await recorder.stop(FINAL_FLUSH_SECONDS)
        self.runner.close()
        logging.shutdown()
        os._exit(0)  # the loop still holds the stopped attempts: do not run their callbacks

    async def _on_shutdown(self, state: TaskiqState) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        await self.consumer.hand_back()
        self.runner.close()
