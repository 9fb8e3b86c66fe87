"""Console sessions: random ids, idle and absolute expiry, revocation, CSRF comparison."""

from __future__ import annotations

from datetime import UTC, datetime

from syncd.adapters.tokens import ApiToken
from syncd.api.sessions import REVALIDATE_SECONDS, SessionStore, same_secret

TOKEN = ApiToken("alice", "operator", datetime(2026, 1, 1, tzinfo=UTC), None, None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store(clock: Clock, active: set[str] | None = None) -> SessionStore:
    names = {"alice"} if active is None else active
    return SessionStore(lambda name, created: name in names, idle_seconds=60,
                        max_seconds=600, clock=clock)  # fmt: skip


def test_a_session_is_found_by_its_random_id_and_holds_no_token() -> None:
    sessions = store(Clock())
    first, second = sessions.create(TOKEN), sessions.create(TOKEN)
    assert first.id != second.id
    assert len(first.id) >= 40
    assert first.csrf_token != second.csrf_token
    assert sessions.get(first.id) is first
    assert sessions.get("made-up") is None
    assert sessions.get(None) is None
    assert "syncd_" not in repr(first)


def test_sessions_expire_when_idle_and_after_their_lifetime() -> None:
    clock = Clock()
    sessions = store(clock)
    idle = sessions.create(TOKEN)
    clock.now += 61
    assert sessions.get(idle.id) is None
    busy = sessions.create(TOKEN)
    for _ in range(11):  # seen every 59 s: never idle, but 649 s old at the end
        clock.now += 59
        found = sessions.get(busy.id)
    assert found is None


def test_a_revoked_token_ends_its_sessions_at_the_next_check() -> None:
    clock = Clock()
    active = {"alice"}
    sessions = store(clock, active)
    session = sessions.create(TOKEN)
    active.clear()
    assert sessions.get(session.id) is session  # checked at creation, not yet due
    clock.now += REVALIDATE_SECONDS
    assert sessions.get(session.id) is None
    assert sessions.get(session.id) is None  # and it is gone for good


def test_logout_drops_the_session() -> None:
    sessions = store(Clock())
    session = sessions.create(TOKEN)
    sessions.drop(session.id)
    assert sessions.get(session.id) is None


def test_csrf_tokens_are_compared_whole() -> None:
    session = store(Clock()).create(TOKEN)
    assert session.csrf_matches(session.csrf_token)
    assert not session.csrf_matches(session.csrf_token[:-1])
    assert not session.csrf_matches(None)
    assert not session.csrf_matches("")
    assert same_secret("abc", "abc")
    assert not same_secret("abc", None)
    assert not same_secret(None, None)
    assert not same_secret("", "")
