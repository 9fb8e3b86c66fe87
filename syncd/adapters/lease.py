"""The leader lease: one Redis key that says which `syncd watch` daemon may reconcile.

Used by the daemon. `Lease` takes the key with SET NX PX and a random token, renews
it with a compare-and-set script and releases it with a compare-and-delete one;
`LeaseKeeper` renews (or, for a follower, retries) from a background thread. It does
not guard writes by itself: reconcile_once's PostgreSQL advisory lock does.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from syncd.adapters.redis import client_from_url, translate_errors
from syncd.core.errors import StoreUnavailable

# Both scripts act only if the key still holds our token: a lease that expired and
# was taken by another daemon is never extended or deleted by its former holder.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

log = logging.getLogger("syncd.lease")
Clock = Callable[[], float]


def new_token() -> str:
    """Unique per process and readable: `GET syncd-leader:...` tells an operator who leads."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"


@dataclass(frozen=True)
class LeaseView:
    """What this process last learned about the lease (monotonic clock times)."""

    valid_until: float = 0.0  # we hold it until then; 0 when we do not
    owned: bool = False  # we believe the key holds our token (renew it rather than SET NX)
    other_holder: str | None = None  # another daemon's token, seen at `seen_at`
    seen_at: float = 0.0
    error: str | None = None  # the last attempt's failure


class Lease:
    """The lease key and this process's token; each method is one Redis round trip or two."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        *,
        ttl: float = 10.0,
        token: str | None = None,
        clock: Clock = time.monotonic,
        url_for_messages: str = "Redis",
    ) -> None:
        self._client = client
        self.key = key
        self.ttl = ttl
        self.token = token or new_token()
        self._clock = clock
        self._url = url_for_messages
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        # Replaced whole, never mutated: the HTTP thread reads it without a lock.
        self.view = LeaseView()

    @classmethod
    def from_url(cls, url: str, key: str, *, ttl: float = 10.0) -> Lease:
        """Short timeouts and no retries: an attempt must finish well within the TTL."""
        timeout = max(0.5, ttl / 5)
        client, shown = client_from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, key, ttl=ttl, url_for_messages=shown)

    def is_held(self) -> bool:
        """True while our last acquire or renewal is younger than the TTL (minus a margin)."""
        return self._clock() < self.view.valid_until

    def is_held_elsewhere(self) -> bool:
        """Another daemon held the lease when we last looked, less than a TTL ago."""
        view = self.view
        return view.other_holder is not None and self._clock() - view.seen_at < self.ttl

    def refresh(self) -> None:
        """One attempt: renew the lease if we own it, otherwise try to take it.

        On a Redis error we stop counting ourselves leader at once (the key may expire
        meanwhile) but keep `owned`, so a short blip ends with a renewal, not a handover.
        """
        sent = self._clock()
        owned = self.view.owned
        try:
            with self._translated():
                if owned:
                    owned = bool(self._renew(keys=[self.key], args=[self.token, self._ttl_ms]))
                holder = None
                if not owned:
                    owned = bool(self._client.set(self.key, self.token, nx=True, px=self._ttl_ms))
                    holder = None if owned else self._holder()
        except StoreUnavailable as exc:
            self.view = LeaseView(owned=self.view.owned, error=str(exc))
            raise
        # Counted from before the request was sent, less a margin, so we stop acting as
        # leader before Redis could let the key expire.
        valid_until = sent + self.ttl * 0.9 if owned else 0.0
        self.view = LeaseView(valid_until, owned, holder, sent if holder else 0.0)

    def release(self) -> None:
        """Delete the key if it still holds our token, so a follower takes over at once."""
        self.view = LeaseView()
        with self._translated():
            self._release(keys=[self.key], args=[self.token])

    def close(self) -> None:
        self._client.close()

    @property
    def _ttl_ms(self) -> int:
        return int(self.ttl * 1000)

    def _holder(self) -> str | None:
        value = self._client.get(self.key)
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else None

    def _translated(self) -> AbstractContextManager[None]:
        return translate_errors(f"leader lease at {self._url}")


class LeaseKeeper(threading.Thread):
    """Renews the lease every `renew_every` seconds while held, retries every `retry_every`.

    A thread rather than the daemon's loop, so a long reconcile (a first sync of 10,000
    tasks) cannot let the lease lapse. `is_alive_loop` guards the other side: if the main
    loop stops making progress, the keeper stops renewing and another daemon takes over.
    """

    def __init__(
        self,
        lease: Lease,
        stop: threading.Event,
        *,
        renew_every: float = 2.0,
        retry_every: float = 1.0,
        is_alive_loop: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__(name="syncd-lease", daemon=True)
        self._lease = lease
        self._halt = stop
        self._renew_every = renew_every
        self._retry_every = retry_every
        self._is_alive_loop = is_alive_loop
        self._last_error: str | None = None

    def run(self) -> None:
        while not self._halt.is_set():
            self.attempt()
            held = self._lease.is_held()
            self._halt.wait(self._renew_every if held else self._retry_every)

    def attempt(self) -> None:
        """One refresh; failures are logged once per distinct message, never raised."""
        if not self._is_alive_loop():
            self._note_error("reconcile loop stalled; not renewing the leader lease")
            return
        try:
            self._lease.refresh()
        except StoreUnavailable as exc:
            self._note_error(f"cannot reach Redis for the leader lease: {exc}")
            return
        except Exception:
            log.exception("unexpected error while refreshing the leader lease")
            return
        if self._last_error is not None:
            log.info("leader lease: refreshed again")
        self._last_error = None

    def _note_error(self, message: str) -> None:
        # Once per distinct message: a Redis outage retried every second is one log line.
        if message != self._last_error:
            log.warning("%s", message)
        self._last_error = message
