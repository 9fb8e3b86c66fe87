"""`syncd watch [DIR]`: the reconcile daemon, a thin loop around `reconcile_once`.

The CLI adds the command through `add_watch_command`. File events and a resync timer
only mark the state dirty (level-triggered, DESIGN §2); only the holder of the Redis
leader lease reconciles; failures back off and are retried. It decides nothing about
what to write (the plan does) and never passes --allow-empty on its own.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
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

from syncd.errors import StoreUnavailable, SyncdError
from syncd.lease import Lease, LeaseKeeper, lease_key
from syncd.load import YAML_SUFFIXES, LoadCache
from syncd.observe import (
    HealthInputs,
    HttpEndpoint,
    Metrics,
    ReconcileLog,
    Result,
    Route,
    decide_health,
    fields,
    health_max_age,
    json_response,
    metrics_response,
    setup_logging,
)
from syncd.reconcile import Outcome, Stores, SyncOptions, open_stores, reconcile_once
from syncd.state import TaskCatalog

log = logging.getLogger("syncd.watch")

FileChange = tuple[Change, str]

# watchfiles yields a batch once no new event came for one step, or after the debounce.
# The default 50 ms step splits a burst (a checkout rewriting 100 files) into many
# batches (DESIGN §8); with 200 ms, bench/watch_bench.py sees 100 rewritten files make
# one reconcile, while a single edit waits at most two steps (~0.4 s) for its reconcile.
WATCH_STEP_MS = 200
WATCH_DEBOUNCE_MS = 1500
# The longest the loop sleeps without events: how late a resync, a change of leader or
# a stop request can be noticed.
WAKE_MS = 500
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 30.0
LEASE_TTL_SECONDS = 10.0
LEASE_RENEW_SECONDS = 2.0
LEASE_RETRY_SECONDS = 1.0
# A sync lock held elsewhere (a manual `syncd sync`) becomes a ConflictError retried with
# backoff, rather than a 30 s wait that would also hold up a SIGTERM.
LOCK_WAIT_SECONDS = 5.0
# A reconcile running this long is stuck (e.g. on a row lock): let another daemon lead.
STALL_SECONDS = 300.0
DEFAULT_HTTP_PORT = 9464


class Abandon(BaseException):
    """A second SIGTERM/SIGINT during a reconcile: leave it (PostgreSQL rolls back)."""


# -- pure decisions ------------------------------------------------------------------


def backoff_delay(
    failures: int, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_CAP_SECONDS
) -> float:
    """Seconds to wait after `failures` consecutive failures: 0.5, 1, 2, 4 ... capped."""
    if failures < 1:
        return 0.0
    return min(cap, base * 2.0 ** min(failures - 1, 64))


def is_relevant(
    change: Change, path: str, root: Path, is_dir: Callable[[str], bool] = os.path.isdir
) -> bool:
    """Could this event change what `load_taskdefs(root)` reads?

    YAML files count, hidden paths do not (the loader skips them, and `.git` churns on
    every commit). A directory moved in or out yields one event for the directory and
    none for the YAML inside, so directories, and deleted names without a suffix, count.
    """
    target = Path(path)
    if target == root:
        return True
    try:
        parts = target.relative_to(root).parts
    except ValueError:
        return False
    if any(part.startswith(".") for part in parts):
        return False
    if target.suffix in YAML_SUFFIXES:
        return True
    return is_dir(path) or (change == Change.deleted and not target.suffix)


def has_relevant(
    changes: Iterable[FileChange], root: Path, is_dir: Callable[[str], bool] = os.path.isdir
) -> bool:
    return any(is_relevant(change, path, root, is_dir) for change, path in changes)


@dataclass
class Timing:
    """When the next reconcile is due, on a monotonic clock; no I/O, no clock of its own."""

    resync_interval: float
    dirty: bool = True
    cause: str = "start"
    failures: int = 0
    retry_at: float = 0.0
    next_resync: float = 0.0

    def mark_dirty(self, cause: str) -> None:
        if not self.dirty:
            self.cause = cause
        self.dirty = True

    def is_due(self, now: float) -> bool:
        if now < self.retry_at:
            return False
        return self.dirty or now >= self.next_resync

    @property
    def trigger(self) -> str:
        if self.failures:
            return "retry"
        return self.cause if self.dirty else "resync"

    def became_leader(self) -> None:
        """A new leader reconciles at once: it knows nothing of the previous one's backoff."""
        self.dirty, self.cause = True, "leader"
        self.failures = 0
        self.retry_at = 0.0

    def finished(self, now: float) -> None:
        """Applied, nothing to do, or refused: not a failure to retry, wait for a change."""
        self.dirty = False
        self.failures = 0
        self.retry_at = 0.0
        self.next_resync = now + self.resync_interval

    def failed(self, now: float) -> float:
        """Record a failure; return the delay before the retry."""
        self.dirty = True
        self.failures += 1
        delay = backoff_delay(self.failures)
        self.retry_at = now + delay
        return delay


def error_kind(exc: BaseException) -> str:
    """Metric label: StoreUnavailable -> store_unavailable, ConflictError -> conflict."""
    if not isinstance(exc, SyncdError):
        return "internal"
    name = type(exc).__name__.removesuffix("Error") or "syncd"
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def dir_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the directory path points to; None if it is not a directory."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None


# -- the daemon ----------------------------------------------------------------------


@dataclass(frozen=True)
class WatchConfig:
    root: Path
    resync_interval: float = 60.0
    options: SyncOptions = field(
        default_factory=lambda: SyncOptions(lock_wait_seconds=LOCK_WAIT_SECONDS)
    )


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
        if has_relevant(changes, self.root):
            self._timing.mark_dirty("change")
        self._follow_lease()
        if self._is_leader and self._timing.is_due(now) and not self.stop.is_set():
            self.reconcile()

    def is_alive(self) -> bool:
        """False once the loop has been stuck for STALL_SECONDS (the lease keeper asks)."""
        return self._clock() - self._heartbeat < STALL_SECONDS

    def reconcile(self) -> None:
        """One reconcile_once; every exception is logged and retried, none escapes."""
        started = self._clock()
        trigger = self._timing.trigger
        self.reconciling = True
        try:
            outcome = reconcile_once(
                self.config.root,
                self._open_stores(),
                self._catalog,
                self._wall(),
                options=self.config.options,
                cache=self._cache,
            )
        except Exception as exc:  # the daemon must outlive any one reconcile
            self._failed(started, exc, trigger)
        else:
            self._finished(started, outcome, trigger)
        finally:
            self.reconciling = False

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

    def _finished(self, started: float, outcome: Outcome, trigger: str) -> None:
        seconds = self._clock() - started
        result = self.metrics.record_outcome(outcome, seconds, self._wall().timestamp())
        if self._timing.failures:
            log.info("reconciling again after %d failed attempt(s)", self._timing.failures)
        self._timing.finished(self._clock())
        self._last_result = result
        if result == "ok":
            self._last_success, self._last_error = self._clock(), None
        else:
            self._last_error = "; ".join(outcome.refusals)
        self._log.outcome(outcome, seconds, trigger)
        self._forget_stale_cache(outcome)

    def _forget_stale_cache(self, outcome: Outcome) -> None:
        # LoadCache never evicts: without this, every edit would stay in memory forever.
        live = {(f.source, f.digest) for f in outcome.loaded.files}
        for key in [k for k in self._cache.entries if k not in live]:
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


def cmd_watch(args: argparse.Namespace) -> int:
    # syncd.cli imports this module from build_parser; importing it at the top would be a cycle.
    from syncd.cli import catalog, settings_from

    setup_logging(args.log_format, getattr(logging, args.log_level.upper()))
    settings = settings_from(args)
    max_deletes = settings.max_deletes if args.max_deletes is None else args.max_deletes
    options = SyncOptions(
        allow_empty=args.allow_empty, max_deletes=max_deletes, lock_wait_seconds=LOCK_WAIT_SECONDS
    )
    lease = Lease.from_url(
        settings.redis_url, lease_key(settings.schedule_prefix), ttl=LEASE_TTL_SECONDS
    )
    daemon = Daemon(
        WatchConfig(Path(args.dir), args.resync_interval, options),
        stores=lambda: open_stores(settings),
        catalog=catalog(),
        lease=lease,
    )
    return serve(daemon, args.http_host, args.http_port)


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def add_watch_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `syncd watch` on the CLI's subcommands."""
    from syncd.cli import add_guard_flags  # the CLI imports this module lazily: no cycle

    watch = commands.add_parser("watch", help="the daemon: reconcile on every change and resync")
    watch.add_argument("dir", nargs="?", default="taskdefs")
    watch.add_argument(
        "--resync-interval",
        type=_positive_seconds,
        default=60.0,
        metavar="SECONDS",
        help="reconcile at least this often, to repair drift (default 60)",
    )
    watch.add_argument("--http-host", default="127.0.0.1", help="address for /healthz, /metrics")
    watch.add_argument(
        "--http-port",
        type=int,
        default=DEFAULT_HTTP_PORT,
        help=f"port for /healthz and /metrics (default {DEFAULT_HTTP_PORT}; 0 disables)",
    )
    watch.add_argument("--log-format", choices=("text", "json"), default="text")
    watch.add_argument("--log-level", choices=("debug", "info", "warning"), default="info")
    add_guard_flags(watch)
    watch.add_argument("--database-url", help="SQLAlchemy URL (default: $SYNCD_DATABASE_URL)")
    watch.add_argument("--redis-url", help="redis:// URL (default: $SYNCD_REDIS_URL)")
    watch.set_defaults(func=cmd_watch)
