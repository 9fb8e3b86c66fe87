"""Console sessions: a random id in a cookie, everything else in this process's memory.

Why not a signed cookie: a signed session stays valid until it expires, whatever
happens on the server; logging out or revoking the token would need a deny-list, which
is server state again. A random id (256 bits, `secrets`) kept here makes logout and
revocation take effect at once, puts nothing about the user in the browser, and costs
only what a single-process console can afford: sessions end when `syncd serve` restarts
(people log in again with their token) and are not shared between replicas.

The token itself is never kept, not even here: a session remembers the token's name and
creation time, and every `REVALIDATE_SECONDS` asks the token store whether that token is
still active, so `syncd token revoke` ends its sessions within a minute. Each session
has its own CSRF token (synchronizer pattern), compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from syncd.adapters.tokens import ApiToken, Role

REVALIDATE_SECONDS = 60.0
MAX_SESSIONS = 10_000  # a login needs a valid token, but memory is bounded all the same
# Is the token named so, created then, still active? (TokenStore.list, by name.)
TokenCheck = Callable[[str, datetime], bool]


@dataclass
class Session:
    id: str
    token_name: str
    role: Role
    token_created_at: datetime
    csrf_token: str
    created: float  # monotonic
    seen: float
    checked: float = field(default=0.0)

    def csrf_matches(self, offered: str | None) -> bool:
        return offered is not None and hmac.compare_digest(offered, self.csrf_token)


class SessionStore:
    """Sessions by id, with an idle timeout, an absolute lifetime and a size bound."""

    def __init__(
        self,
        token_is_active: TokenCheck,
        *,
        idle_seconds: float,
        max_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token_is_active = token_is_active
        self._idle = idle_seconds
        self._max = max_seconds
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, token: ApiToken) -> Session:
        now = self._clock()
        session = Session(
            id=secrets.token_urlsafe(32),
            token_name=token.name,
            role=token.role,
            token_created_at=token.created_at,
            csrf_token=secrets.token_urlsafe(32),
            created=now,
            seen=now,
            checked=now,
        )
        with self._lock:
            self._expire(now)
            if len(self._sessions) >= MAX_SESSIONS:  # drop the least recently seen
                oldest = min(self._sessions.values(), key=lambda s: s.seen)
                del self._sessions[oldest.id]
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of this id, or None (unknown, expired, or its token revoked)."""
        if not session_id:
            return None
        now = self._clock()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if self._is_expired(session, now):
                del self._sessions[session_id]
                return None
            session.seen = now
            due = now - session.checked >= REVALIDATE_SECONDS
        if due and not self._revalidate(session, now):
            return None
        return session

    def drop(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def _revalidate(self, session: Session, now: float) -> bool:
        if self._token_is_active(session.token_name, session.token_created_at):
            session.checked = now
            return True
        self.drop(session.id)
        return False

    def _is_expired(self, session: Session, now: float) -> bool:
        return now - session.seen > self._idle or now - session.created > self._max

    def _expire(self, now: float) -> None:
        for session_id in [i for i, s in self._sessions.items() if self._is_expired(s, now)]:
            del self._sessions[session_id]


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def same_secret(offered: str | None, expected: str | None) -> bool:
    """Constant-time equality of two secrets; False when either is missing."""
    return bool(offered and expected) and hmac.compare_digest(str(offered), str(expected))
