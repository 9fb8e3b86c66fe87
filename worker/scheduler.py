"""The scheduler process: a tick each second fires what is due, in batches.

    python -m worker.scheduler [--update-interval 1] [--log-level INFO]

It replaces taskiq's scheduler loop (`taskiq scheduler worker.app:scheduler`), which
checked every schedule every second, fired each due one in an asyncio task of its own, and
fired a cron again only 60 s after its last fire in the process (so at the second the
process started, not at :00). Here:

- `ScheduleTable` keeps the schedules by when they fire: crons grouped by expression (and
  time zone), so each distinct expression is evaluated once per minute, at the first tick
  of the minute, and a group that matches fires whole; intervals in a heap by their next
  second; this minute's one-shots in a list. The rules are taskiq's: a cron fires when
  pycron matches the minute in its time zone (`cron_offset`), an interval at first sight
  and then every N s after its last fire, a one-shot once its time has come, once.
- `TickLoop` ticks at the turn of each second: it hands that tick's due fires to
  `DeliveringScheduler.deliver` (worker/delivery.py) as one batch, which claims and sends
  them in chunks and logs one summary line. A schedule whose previous fire is still being
  retried is not fired again meanwhile. Every `--update-interval` seconds the schedules are
  refreshed from `SyncdScheduleSource.refresh` in the background (one GET when nothing
  changed); a cron schedule that appears mid-minute fires at the next tick if its
  expression matches the minute.
- SIGINT and SIGTERM stop it cleanly: fires being sent get a few seconds to finish.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import heapq
import importlib
import logging
import signal
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from taskiq.cli.scheduler.run import CronValueError, is_cron_task_now, to_tz_aware

from syncd.core.logtext import make_handlers_safe
from worker.delivery import DeliveringScheduler, Fire
from worker.schedule_source import Schedule, interval_seconds

logger = logging.getLogger("syncd.scheduler")

UPDATE_INTERVAL_SECONDS = 1.0
SHUTDOWN_GRACE_SECONDS = 5.0  # for fires being sent when a stop comes
LOG_FORMAT = "[%(asctime)s][%(levelname)-7s][%(module)s:%(funcName)s:%(lineno)d] %(message)s"

CronKey = tuple[str, str | timedelta | None]  # expression, time zone or offset


class ScheduleTable:
    """The schedules by when they fire, and what fired already."""

    def __init__(self) -> None:
        self.schedules: dict[str, Schedule] = {}
        self._crons: dict[CronKey, list[Schedule]] = {}
        self._one_shots: list[Schedule] = []
        self._minute: datetime | None = None  # the minute whose crons were evaluated
        self._matches: dict[CronKey, bool] = {}  # of that minute
        self._new_crons: list[Schedule] = []  # appeared since that minute was evaluated
        self._interval_heap: list[tuple[int, str]] = []  # (next second, schedule id)
        self._interval_next: dict[str, int] = {}  # an entry of the heap is current iff here
        self._interval_last: dict[str, int] = {}  # epoch second of the last fire
        self._once_fired: set[tuple[str, datetime]] = set()

    def replace(self, schedules: dict[str, Schedule], now: datetime) -> None:
        """Take the refreshed schedules; an unchanged schedule is the same object."""
        old, self.schedules = self.schedules, schedules
        crons: defaultdict[CronKey, list[Schedule]] = defaultdict(list)
        intervals: dict[str, Schedule] = {}
        one_shots: list[Schedule] = []
        for schedule in schedules.values():
            if schedule.cron is not None:
                crons[schedule.cron, schedule.cron_offset].append(schedule)
                if self._minute is not None and old.get(schedule.schedule_id) is not schedule:
                    self._new_crons.append(schedule)
            elif schedule.interval is not None:
                intervals[schedule.schedule_id] = schedule
            elif schedule.time is not None:
                one_shots.append(schedule)
        self._crons, self._one_shots = dict(crons), one_shots
        self._replace_intervals(intervals, old, int(now.timestamp()))
        self._once_fired = {(i, t) for i, t in self._once_fired if i in schedules}

    def _replace_intervals(
        self, intervals: dict[str, Schedule], old: dict[str, Schedule], now: int
    ) -> None:
        for gone in self._interval_next.keys() - intervals.keys():
            del self._interval_next[gone]
            self._interval_last.pop(gone, None)
        for schedule_id, schedule in intervals.items():
            if old.get(schedule_id) is schedule and schedule_id in self._interval_next:
                continue
            last = self._interval_last.get(schedule_id)
            # First sight fires at once; a changed interval counts from the last fire.
            when = now if last is None else last + int(interval_seconds(schedule.interval or 0))
            self._interval_next[schedule_id] = when
            heapq.heappush(self._interval_heap, (when, schedule_id))

    def due(self, now: datetime) -> list[Schedule]:
        """What fires at the tick `now` (a whole second, UTC)."""
        return [*self._due_crons(now), *self._due_intervals(now), *self._due_one_shots(now)]

    def _due_crons(self, now: datetime) -> list[Schedule]:
        minute = now.replace(second=0, microsecond=0)
        if minute != self._minute:
            self._minute, self._matches, self._new_crons = minute, {}, []
            return [s for key, group in self._crons.items() if self._match(key, now) for s in group]
        fresh, self._new_crons = self._new_crons, []
        return [s for s in fresh if self._match((s.cron or "", s.cron_offset), now)]

    def _match(self, key: CronKey, now: datetime) -> bool:
        """Whether the expression matches this minute: evaluated once per minute."""
        found = self._matches.get(key)
        if found is None:
            cron, offset = key
            try:
                found = is_cron_task_now(cron, now, offset)
            except CronValueError as exc:
                logger.warning("cannot evaluate cron %r (offset %r): %s", cron, offset, exc)
                found = False
            self._matches[key] = found
        return found

    def _due_intervals(self, now: datetime) -> list[Schedule]:
        second = int(now.timestamp())
        due = []
        heap = self._interval_heap
        while heap and heap[0][0] <= second:
            when, schedule_id = heapq.heappop(heap)
            if self._interval_next.get(schedule_id) != when:
                continue  # replaced by a later entry, or removed
            schedule = self.schedules[schedule_id]
            due.append(schedule)
            self._interval_last[schedule_id] = second
            following = second + int(interval_seconds(schedule.interval or 0))
            self._interval_next[schedule_id] = following
            heapq.heappush(heap, (following, schedule_id))
        return due

    def _due_one_shots(self, now: datetime) -> list[Schedule]:
        due = []
        for schedule in self._one_shots:
            if schedule.time is None or to_tz_aware(schedule.time) > now:
                continue
            fire = (schedule.schedule_id, schedule.time)
            if fire not in self._once_fired:
                self._once_fired.add(fire)
                due.append(schedule)
        return due


class TickLoop:
    """Ticks at the turn of each second and sends what is due; refreshes in the background."""

    def __init__(
        self, scheduler: DeliveringScheduler, update_interval: float = UPDATE_INTERVAL_SECONDS
    ) -> None:
        self.scheduler = scheduler
        self.source = scheduler.source
        self.table = ScheduleTable()
        self._update_interval = update_interval
        self._refreshing: asyncio.Task[dict[str, Schedule]] | None = None
        self._refreshed_at = 0.0  # monotonic
        self._in_flight: set[str] = set()
        self._deliveries: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Tick until cancelled; then let the fires being sent finish (for a while)."""
        loop = asyncio.get_running_loop()
        self._replace(await self.source.refresh(), datetime.now(UTC))
        self._refreshed_at = loop.time()
        logger.info("scheduler started with %d schedules", len(self.table.schedules))
        last: datetime | None = None
        try:
            while True:
                await asyncio.sleep(1 - datetime.now(UTC).microsecond / 1e6)
                now = datetime.now(UTC).replace(microsecond=0)
                if last is not None and now <= last:
                    continue  # woke a little early: still the same second
                last = now
                self.tick(now)
                if loop.time() - self._refreshed_at >= self._update_interval:
                    self._refresh()
        finally:
            await self._finish()

    def tick(self, now: datetime) -> None:
        """Fire what is due at `now`, as one batch sent in the background."""
        self._apply_refresh(now)
        due = [s for s in self.table.due(now) if s.schedule_id not in self._in_flight]
        if not due:
            return
        fires = self.scheduler.fires(due, now)
        ids = {s.schedule_id for s in due}
        self._in_flight |= ids
        task = asyncio.create_task(self._deliver(fires, ids, f"tick {now:%H:%M:%S}"))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, fires: Sequence[Fire], ids: set[str], label: str) -> None:
        try:
            await self.scheduler.deliver(fires, label)
        finally:
            self._in_flight -= ids

    def _refresh(self) -> None:
        if self._refreshing is None:
            self._refreshed_at = asyncio.get_running_loop().time()
            self._refreshing = asyncio.create_task(self.source.refresh())

    def _apply_refresh(self, now: datetime) -> None:
        task = self._refreshing
        if task is None or not task.done():
            return
        self._refreshing = None
        try:
            schedules = task.result()
        except Exception:
            logger.exception(
                "cannot refresh schedules; keeping the last %d", len(self.table.schedules)
            )
            return
        if schedules is not self.table.schedules:
            self._replace(schedules, now)
            logger.debug("%d schedules", len(schedules))

    def _replace(self, schedules: dict[str, Schedule], now: datetime) -> None:
        self.table.replace(schedules, now)
        # The schedules live until the next change: kept out of the cyclic collector, whose
        # full passes over them (and over everything imported) would otherwise land in the
        # middle of sending a tick's fires.
        gc.collect()
        gc.freeze()

    async def _finish(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refreshing
        if self._deliveries:
            logger.info("waiting for %d batch(es) being sent", len(self._deliveries))
            _, pending = await asyncio.wait(self._deliveries, timeout=SHUTDOWN_GRACE_SECONDS)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


async def serve(scheduler: DeliveringScheduler, update_interval: float) -> None:
    """Start the scheduler, tick until SIGINT or SIGTERM, shut down cleanly."""
    scheduler.broker.is_scheduler_process = True
    await scheduler.source.startup()
    await scheduler.startup()
    ticking = asyncio.create_task(TickLoop(scheduler, update_interval).run())
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, ticking.cancel)
    try:
        await ticking
    except asyncio.CancelledError:
        logger.info("stopping the scheduler")
    finally:
        await scheduler.shutdown()
        await scheduler.source.shutdown()
    logger.info("scheduler stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m worker.scheduler", description="Fire syncd's schedules."
    )
    parser.add_argument(
        "--update-interval",
        type=float,
        default=UPDATE_INTERVAL_SECONDS,
        help="seconds between two refreshes of the schedules (default 1)",
    )
    parser.add_argument("--log-level", default="INFO", help="default INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    make_handlers_safe()
    # Imported once logging is configured: it builds the broker and the scheduler from
    # the settings, as the worker does.
    app = importlib.import_module("worker.app")
    asyncio.run(serve(app.scheduler, args.update_interval))


if __name__ == "__main__":
    main()
