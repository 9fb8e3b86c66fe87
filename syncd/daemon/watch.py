"""The reconcile daemon behind `syncd watch`: a thin loop around the reconcile.

File events and a resync timer only mark the state dirty (level-triggered: a missed
event costs latency, never correctness); only the holder of the Redis leader lease
reconciles; failures back off and are retried. A file change is reconciled
incrementally (`daemon.incremental`: only the changed files' tasks re-planned, against
the view of the stores the last reconcile left) unless anything is unusual; the resync,
a retry, a new leader and the start run `reconcile_once`, which reads and plans
everything and is the authority. It decides nothing about what to write (the plan
does) and never passes --allow-empty on its own. After a reconcile the leader also
refreshes the per-task metrics (last success, missed fires) with one query.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import watchfiles
from watchfiles import Change

from syncd.adapters.lease import Lease, LeaseKeeper
from syncd.core.errors import StoreUnavailable, SyncdError
from syncd.core.guards import SyncOptions
from syncd.core.model import TaskCatalog
from syncd.daemon.http import HttpEndpoint, Route, json_response, metrics_response
from syncd.daemon.incremental import Fallback, Marks, StoreView, reconcile_changed, view_after_full
from syncd.daemon.observe import (
    HealthInputs,
    Metrics,
    ReconcileLog,
    ReconcilePath,
    Result,
    decide_health,
    fields,
    health_max_age,
)
from syncd.daemon.refresh import TaskRefresher
from syncd.daemon.triggers import FileChange, Timing, dir_identity, error_kind, relevant_files
from syncd.load.loader import LoadCache
from syncd.reconcile import Outcome, Stores, reconcile_once

log = logging.getLogger("syncd.watch")

# watchfiles yields a batch once no new event came for one step, or after the debounce:
# a single edit waits one to two steps. A batch naming more than one file may be the start
# of a burst (a checkout rewriting 100 files), so the loop holds it until no relevant
# event came for BURST_QUIET_SECONDS (at most WATCH_DEBOUNCE_MS): the burst is one
# reconcile, and a lone edit is not held at all.
WATCH_STEP_MS = 50
WATCH_DEBOUNCE_MS = 1500
BURST_QUIET_SECONDS = 0.2
# The longest the loop sleeps without events: how late a resync, a change of leader, a
# stop request or the end of a held burst can be noticed.
WAKE_MS = 100
LEASE_TTL_SECONDS = 10.0
LEASE_RENEW_SECONDS = 2.0
LEASE_RETRY_SECONDS = 1.0
# A sync lock held elsewhere (a manual `syncd sync`) becomes a ConflictError retried with
# backoff, rather than a 30 s wait that would also hold up a SIGTERM.
LOCK_WAIT_SECONDS = 5.0
# A reconcile running this long is stuck (e.g. on a row lock): let another daemon lead.
STALL_SECONDS = 300.0
DEFAULT_RESYNC_SECONDS = 60.0
# The per-task metrics are refreshed after a reconcile, but not more often than this: a
# burst of edits must not recompute every task's lateness each time.
TASK_METRICS_SECONDS = 5.0
# Rows written by one reconcile from which the view is copied afresh (`StoreView.compact`).
COMPACT_AFTER = 1000


def _wrote_many(outcome: Outcome) -> bool:
    """Whether a reconcile replaced enough of the view to be worth compacting."""
    applied = outcome.applied
    return applied is not None and applied.rows_written + applied.rows_deleted >= COMPACT_AFTER


def release_free_memory() -> None:
    """Give the C allocator's free pages back to the system after a full reconcile, whose
    read of every row and payload is the daemon's high-water mark (glibc keeps them)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)  # glibc only: elsewhere there is nothing to call


class Abandon(BaseException):
    """A second SIGTERM/SIGINT during a reconcile: leave it (PostgreSQL rolls back)."""


# -- the daemon ----------------------------------------------------------------------


@dataclass(frozen=True)
class WatchConfig:
    root: Path
    resync_interval: float = DEFAULT_RESYNC_SECONDS
    options: SyncOptions = field(
        default_factory=lambda: SyncOptions(lock_wait_seconds=LOCK_WAIT_SECONDS)
    )
    # SYNCD_LATE_GRACE_SECONDS (the CLI passes it): the same grace `syncd status` uses;
    # None is lateness' own default.
    late_grace_seconds: float | None = None


StoresFactory = Callable[[], AbstractContextManager[Stores]]


class Daemon:
    """The loop: watch, decide, reconcile, report. Dependencies are passed in."""

    def __init__(
        self,
        config: WatchConfig,
        *,
        stores: StoresFactory,
        catalog: TaskCatalog,
        lease: Lease,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.root = config.root.absolute()
        self.stop = threading.Event()
        self.lease = lease
        self.metrics = metrics or Metrics(is_leader=lease.is_held)
        self.reconciling = False
        self._stores_factory = stores
        self._catalog = catalog
        self._clock = clock
        self._wall = wall
        self._timing = Timing(config.resync_interval)
        self._cache = LoadCache()  # one cache for the daemon's life: only edits re-parse
        self._exit = ExitStack()
        self._stores: Stores | None = None
        self._is_leader = False
        self._heartbeat = clock()
        self._last_result: Result | None = None
        self._last_error: str | None = None
        self._last_success: float | None = None
        self._log = ReconcileLog(log)
        self._watch_problem: str | None = None
        self._tasks_refreshed: float | None = None
        self._refresher = TaskRefresher(self.metrics, wall, config.late_grace_seconds)
        # The stores as the last reconcile left them; None until a clean full reconcile.
        self._view: StoreView | None = None
        self._burst_until: float | None = None  # a held multi-file batch is due then
        self._burst_deadline = 0.0

    def run(self) -> None:
        """Until `stop` is set; a reconcile in progress is finished first."""
        # No reconcile before the first batch: by then the watcher is running, so an edit
        # made during the first (possibly long) reconcile is not missed.
        with closing(self._batches()) as batches:
            for changes in batches:
                try:
                    self.tick(changes)
                except Exception:  # a bug in the loop itself must not end the daemon either
                    delay = self._timing.failed(self._clock())
                    log.exception("daemon loop error; retrying in %.1f s", delay)

    def tick(self, changes: Iterable[FileChange]) -> None:
        """One wake-up: note changes and the lease, reconcile if due."""
        now = self._clock()
        self._heartbeat = now
        relevant = relevant_files(changes, self.root)
        if relevant:
            self._timing.mark_dirty("change")
            self._hold_burst(now, relevant)
        self._follow_lease()
        if self._burst_until is not None and now < self._burst_until:
            return
        self._burst_until = None
        if self._is_leader and self._timing.is_due(now) and not self.stop.is_set():
            self.reconcile()

    def _hold_burst(self, now: float, relevant: int) -> None:
        """Hold a batch of several files (or one following a held batch) until quiet."""
        if self._burst_until is None and relevant < 2:
            return
        if self._burst_until is None:
            self._burst_deadline = now + WATCH_DEBOUNCE_MS / 1000
        self._burst_until = min(now + BURST_QUIET_SECONDS, self._burst_deadline)

    def is_alive(self) -> bool:
        """False once the loop has been stuck for STALL_SECONDS (the lease keeper asks)."""
        return self._clock() - self._heartbeat < STALL_SECONDS

    def reconcile(self) -> None:
        """One reconcile; every exception is logged and retried, none escapes."""
        started = self._clock()
        trigger = self._timing.trigger
        self.reconciling = True
        self._refresher.quiet.clear()
        path: ReconcilePath = "full"
        try:
            outcome, path, fallback = self._reconcile()
        except Exception as exc:  # the daemon must outlive any one reconcile
            self._view = None  # what was written is unknown: read everything next time
            self._failed(started, exc, trigger)
        else:
            self._finished(started, outcome, trigger, path, fallback)
            compact = _wrote_many(outcome)
            del outcome  # first: what the reconcile read and built goes with it
            if compact and self._view is not None:
                self._view.compact()
        finally:
            self.reconciling = False
            self._refresher.quiet.set()
        if path == "full":
            release_free_memory()

    def _reconcile(self) -> tuple[Outcome, ReconcilePath, str | None]:
        """Incremental when a file changed and the view is sound, else (or on a fallback) full."""
        view, fallback = self._view, None
        if view is not None and not self._timing.wants_full(self._clock()):
            result = reconcile_changed(
                self.root,
                self._open_stores(),
                self._catalog,
                self._wall(),
                view,
                options=self.config.options,
                cache=self._cache,
            )
            if not isinstance(result, Fallback):
                if not view.sound:
                    self._view = None
                return result, "incremental", None
            fallback = result.reason
        elif view is None and self._timing.cause == "change":
            fallback = "no view of the stores yet"
        return self._reconcile_full(), "full", fallback

    def _reconcile_full(self) -> Outcome:
        # Not trusted from here on; only lends its equal objects to the next view.
        previous, self._view = self._view, None
        stores = self._open_stores()
        marks = Marks()
        outcome = reconcile_once(
            self.config.root,
            stores,
            self._catalog,
            self._wall(),
            options=self.config.options,
            cache=self._cache,
            hooks=marks.hooks(stores),
        )
        self._view = view_after_full(outcome, marks, stores.layout, previous)
        return outcome

    def health(self) -> tuple[int, dict[str, Any]]:
        success = self._last_success
        return decide_health(
            HealthInputs(
                is_leader=self.lease.is_held(),
                leader_elsewhere=self.lease.is_held_elsewhere(),
                last_result=self._last_result,
                last_success_age=None if success is None else self._clock() - success,
                max_age=health_max_age(self.config.resync_interval),
                last_error=self._last_error,
                lease_error=self.lease.view.error,
            )
        )

    def routes(self) -> dict[str, Route]:
        return {
            "/healthz": lambda: json_response(*self.health()),
            "/metrics": lambda: metrics_response(self.metrics),
        }

    def close(self) -> None:
        self._refresher.join(5.0)  # it may be reading the stores about to be closed
        try:
            self._exit.close()
        except SyncdError as exc:
            log.warning("closing the store connections: %s", exc)

    # -- steps -----------------------------------------------------------------------

    def _open_stores(self) -> Stores:
        # Opened on first use and kept: both drivers reconnect by themselves after an outage.
        if self._stores is None:
            self._stores = self._exit.enter_context(self._stores_factory())
        return self._stores

    def _follow_lease(self) -> None:
        held = self.lease.is_held()
        if held and not self._is_leader:
            log.info("holding the leader lease: reconciling", extra=fields(lease=self.lease.key))
            self._timing.became_leader()
        elif self._is_leader and not held:
            log.warning("leader lease lost: not reconciling until it is held again")
            self._refresher.clear()  # the new leader exports them
            self._view = None  # another daemon writes now; a new lead reads everything
            self._tasks_refreshed = None
        self._is_leader = held

    def _failed(self, started: float, exc: Exception, trigger: str) -> None:
        seconds = self._clock() - started
        kind = error_kind(exc)
        self.metrics.record_failure(kind, seconds)
        delay = self._timing.failed(self._clock())
        self._last_result, self._last_error = "error", f"{kind}: {exc}"
        self._log.failure(
            exc,
            kind=kind,
            seconds=seconds,
            trigger=trigger,
            attempt=self._timing.failures,
            retry_in=delay,
            expected=isinstance(exc, SyncdError),
        )

    def _finished(
        self,
        started: float,
        outcome: Outcome,
        trigger: str,
        path: ReconcilePath,
        fallback: str | None,
    ) -> None:
        seconds = self._clock() - started
        result = self.metrics.record_outcome(outcome, seconds, self._wall().timestamp(), path)
        if self._timing.failures:
            log.info("reconciling again after %d failed attempt(s)", self._timing.failures)
        self._timing.finished(self._clock(), full=path == "full")
        self._last_result = result
        if result == "ok":
            self._last_success, self._last_error = self._clock(), None
        else:
            self._last_error = "; ".join(outcome.refusals)
        self._log.outcome(outcome, seconds, trigger, path, fallback)
        self._forget_stale_cache(outcome)
        self._refresh_tasks(outcome)

    def _refresh_tasks(self, outcome: Outcome) -> None:
        """The per-task series, from the plan just made and the statuses the reconcile read,
        computed in the background (`TaskRefresher`), at most every TASK_METRICS_SECONDS."""
        now = self._clock()
        if self._tasks_refreshed is not None and now - self._tasks_refreshed < TASK_METRICS_SECONDS:
            return
        if self._refresher.start(outcome, self._open_stores()):
            self._tasks_refreshed = now

    def _forget_stale_cache(self, outcome: Outcome) -> None:
        # LoadCache never evicts: without this, every edit would stay in memory forever.
        live = {(f.source, f.digest) for f in outcome.loaded.files}
        for key in [k for k in self._cache.entries if k[:2] not in live]:
            del self._cache.entries[key]

    # -- watching --------------------------------------------------------------------

    def _batches(self) -> Generator[set[FileChange], None, None]:
        """Batches of file events, and an empty one at least every WAKE_MS, until stop.

        One watcher on the main thread (not a thread feeding a queue): reconcile_once is
        synchronous, events arriving during a reconcile pile up in watchfiles and come
        out as the next batch (that is the coalescing we want), signals reach the main
        thread, and `stop_event` ends the watch within one step.
        """
        restarted = False
        while not self.stop.is_set():
            identity = dir_identity(self.root)
            if identity is None:
                self._note_watch_problem(f"{self.root} is not a directory; waiting for it")
            else:
                try:
                    yield from self._watch(identity, restarted)
                    restarted = True
                    continue
                except (OSError, RuntimeError) as exc:  # watchfiles: FileNotFoundError, internal
                    self._note_watch_problem(f"cannot watch {self.root}: {exc}")
            restarted = True
            self.stop.wait(1.0)
            yield set()  # keep ticking (lease, resync) while there is nothing to watch

    def _watch(self, identity: tuple[int, int], restarted: bool) -> Iterator[set[FileChange]]:
        """Watch the directory (never single files: an atomic save replaces the inode)."""
        batches = watchfiles.watch(
            self.root,
            watch_filter=None,  # filtered by is_relevant: watchfiles' own filter yields
            # nothing for ignored events, which would starve the timers during churn
            debounce=WATCH_DEBOUNCE_MS,
            step=WATCH_STEP_MS,
            stop_event=self.stop,
            rust_timeout=WAKE_MS,
            yield_on_timeout=True,
            raise_interrupt=False,
        )
        for changes in batches:
            # After a restart, whatever changed while nobody watched: reload all.
            missed = {(Change.added, str(self.root))} if restarted else set()
            restarted = False
            self._note_watch_problem(None)
            yield changes | missed
            if dir_identity(self.root) != identity:
                # Deleted, or replaced (git-sync swaps a symlink): the old watch sees nothing.
                log.info("taskdefs directory replaced; watching it again")
                return

    def _note_watch_problem(self, message: str | None) -> None:
        """Log a watch problem once, and its end once (this runs at every wake-up)."""
        if message is not None and message != self._watch_problem:
            log.error("%s", message)
        elif message is None and self._watch_problem is not None:
            log.info("watching %s again", self.root)
        self._watch_problem = message


# -- running it ----------------------------------------------------------------------


def serve(daemon: Daemon, http_host: str, http_port: int) -> int:
    """Run the daemon with its lease keeper and HTTP endpoint; 0 after a clean stop."""
    with ExitStack() as stack:
        stack.callback(_install_signal_handlers(daemon))
        stack.callback(daemon.lease.close)
        stack.callback(daemon.close)
        if http_port:
            endpoint = HttpEndpoint(http_host, http_port, daemon.routes())
            endpoint.start()
            stack.callback(endpoint.close)
        keeper = LeaseKeeper(
            daemon.lease,
            daemon.stop,
            renew_every=LEASE_RENEW_SECONDS,
            retry_every=LEASE_RETRY_SECONDS,
            is_alive_loop=daemon.is_alive,
        )
        keeper.attempt()  # know our role before the first tick
        keeper.start()
        # Run in reverse: stop the keeper before releasing, so it cannot take the lease back.
        stack.callback(_release, daemon.lease)
        stack.callback(keeper.join, 5.0)
        stack.callback(daemon.stop.set)
        role = "leader" if daemon.lease.is_held() else "follower"
        log.info("watching %s as %s", daemon.root, role, extra=fields(role=role))
        try:
            daemon.run()
        except Abandon:
            log.warning("reconcile abandoned; PostgreSQL rolled back its part if unfinished")
    log.info("stopped")
    return 0


def _release(lease: Lease) -> None:
    try:
        lease.release()
    except StoreUnavailable as exc:
        log.warning("leader lease not released (it expires by itself): %s", exc)


def _install_signal_handlers(daemon: Daemon) -> Callable[[], None]:
    """SIGTERM/SIGINT: stop after the current reconcile; a second one abandons it."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not daemon.stop.is_set():
            log.info("%s received: stopping", signal.Signals(signum).name)
            daemon.stop.set()
        elif daemon.reconciling:
            raise Abandon

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
