"""TokenStore and AuditStore on a real PostgreSQL, and the audit rows of syncd.operate.

Tokens: only a SHA-256 is stored, unknown, revoked and malformed tokens verify to None,
last_used_at is written at most once a minute, names stay taken. Audit: newest first,
keyset pages, long values cut rather than refused, and one row per operator action
whatever its outcome, without the audit ever undoing an action that happened.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import re
import socket
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, text

from syncd.adapters.audit import DETAIL_LIMIT, Actor, AuditStore
from syncd.adapters.pg import pooled_engine
from syncd.adapters.postgres import DbStore
from syncd.adapters.redis import RedisStore
from syncd.adapters.tokens import TokenStore
from syncd.core.errors import (
    ConflictError,
    NotFound,
    SchemaMissing,
    StoreRefused,
    StoreUnavailable,
    UsageError,
)
from syncd.core.keys import KeyLayout
from syncd.core.model import AuditEntry, DesiredTask, TaskConfig
from syncd.operate import NotPausable, pause, resume

UNREACHABLE_PG = "postgresql+psycopg://postgres@127.0.0.1:1/x"
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
TOKEN_SHAPE = re.compile(r"syncd_[A-Za-z0-9_-]{43}")
ALICE = Actor("token:alice", "api", "192.0.2.7")
LAYOUT = KeyLayout(prefix="synctest")


@pytest.fixture
def db(migrated_url: str, sql: Engine) -> Iterator[DbStore]:
    """An empty database (the stores below share this DbStore's engine)."""
    with sql.begin() as conn:
        conn.execute(
            text("TRUNCATE api_tokens, audit_log, task_executions, task_configs RESTART IDENTITY")
        )
    store = DbStore.from_url(migrated_url)
    yield store
    store.close()


@pytest.fixture
def tokens(db: DbStore) -> TokenStore:
    return TokenStore(db.engine)


@pytest.fixture
def audit(db: DbStore) -> AuditStore:
    return AuditStore(db.engine)


def stored_tokens(sql: Engine) -> list[dict[str, object]]:
    with sql.connect() as conn:
        return [dict(r) for r in conn.execute(text("SELECT * FROM api_tokens")).mappings()]


def backdate_last_use(sql: Engine, name: str, seconds: int) -> datetime:
    with sql.begin() as conn:
        return conn.execute(
            text(
                "UPDATE api_tokens SET last_used_at = now() - make_interval(secs => :s) "
                "WHERE name = :n RETURNING last_used_at"
            ),
            {"s": seconds, "n": name},
        ).scalar_one()


# -- tokens --------------------------------------------------------------------------


def test_a_created_token_verifies_and_only_its_sha256_is_stored(
    tokens: TokenStore, sql: Engine
) -> None:
    token = tokens.create("ci-bot", "operator")
    assert TOKEN_SHAPE.fullmatch(token)
    found = tokens.verify(token)
    assert found is not None
    assert (found.name, found.role, found.revoked_at) == ("ci-bot", "operator", None)
    assert found.last_used_at is not None
    (row,) = stored_tokens(sql)
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    secret = token.removeprefix("syncd_")
    assert all(secret not in str(value) for value in row.values())


def test_each_token_is_new(tokens: TokenStore) -> None:
    first, second = tokens.create("a", "viewer"), tokens.create("b", "viewer")
    assert first != second
    assert tokens.verify(first).name == "a"  # type: ignore[union-attr]
    assert tokens.verify(second).name == "b"  # type: ignore[union-attr]


def test_unknown_malformed_and_revoked_tokens_verify_to_none(tokens: TokenStore) -> None:
    token = tokens.create("dash", "viewer")
    wrong = ["", "syncd_", token + "x", token[:-1], token.upper(), "Bearer " + token]
    wrong += [token.replace("syncd_", "sync_d"), "syncd_" + "A" * 43, token + "\n"]
    for guess in wrong:
        assert tokens.verify(guess) is None, guess
    assert tokens.verify(token) is not None
    tokens.revoke("dash")
    assert tokens.verify(token) is None


def test_last_used_at_is_written_at_most_once_a_minute(tokens: TokenStore, sql: Engine) -> None:
    token = tokens.create("poller", "viewer")
    assert tokens.list()[0].last_used_at is None
    first = tokens.verify(token)
    assert first is not None
    assert first.last_used_at is not None
    # now() differs from one transaction to the next: a write would move the stamp.
    for _ in range(3):
        assert tokens.verify(token).last_used_at == first.last_used_at  # type: ignore[union-attr]
    assert tokens.list()[0].last_used_at == first.last_used_at
    recent = backdate_last_use(sql, "poller", 50)
    assert tokens.verify(token).last_used_at == recent  # type: ignore[union-attr]
    old = backdate_last_use(sql, "poller", 61)
    touched = tokens.verify(token)
    assert touched is not None
    assert touched.last_used_at is not None
    assert touched.last_used_at > old
    assert tokens.list()[0].last_used_at == touched.last_used_at


def test_list_is_by_name_with_revoked_tokens(tokens: TokenStore) -> None:
    for name in ("zed", "amy", "mid"):
        tokens.create(name, "viewer" if name != "mid" else "operator")
    tokens.revoke("zed")
    listed = tokens.list()
    assert [(t.name, t.role) for t in listed] == [
        ("amy", "viewer"),
        ("mid", "operator"),
        ("zed", "viewer"),
    ]
    assert [t.revoked_at is not None for t in listed] == [False, False, True]
    assert all(t.created_at.tzinfo is not None for t in listed)


def test_revoke_needs_an_active_token(tokens: TokenStore) -> None:
    with pytest.raises(NotFound, match="no active token named 'ghost'"):
        tokens.revoke("ghost")
    tokens.create("once", "viewer")
    tokens.revoke("once")
    with pytest.raises(NotFound, match="no active token named 'once'"):
        tokens.revoke("once")


def test_names_stay_taken_even_after_a_revoke(tokens: TokenStore, sql: Engine) -> None:
    first = tokens.create("deploy", "viewer")
    with pytest.raises(ConflictError, match="already exists"):
        tokens.create("deploy", "operator")
    tokens.revoke("deploy")
    with pytest.raises(ConflictError, match="revoked names stay taken"):
        tokens.create("deploy", "viewer")
    (row,) = stored_tokens(sql)
    assert row["token_hash"] == hashlib.sha256(first.encode()).hexdigest()
    assert row["role"] == "viewer"


@pytest.mark.parametrize(
    "name", ["", "-lead", ".lead", "has space", "new\nline", "é", "x" * 101, "a/b", "a:b"]
)
def test_invalid_names_are_refused_before_anything_is_stored(
    tokens: TokenStore, sql: Engine, name: str
) -> None:
    with pytest.raises(UsageError, match="invalid token name"):
        tokens.create(name, "viewer")
    assert stored_tokens(sql) == []


def test_the_longest_name_and_every_allowed_character_are_accepted(tokens: TokenStore) -> None:
    for name in ("x" * 100, "ci.bot_1@team-a", "0"):
        tokens.verify(tokens.create(name, "viewer"))
    assert len(tokens.list()) == 3


def test_an_unknown_role_is_refused(tokens: TokenStore) -> None:
    with pytest.raises(UsageError, match="invalid role 'admin'"):
        tokens.create("root", "admin")  # type: ignore[arg-type]


def test_store_errors_are_syncd_errors(fresh_database_url: str) -> None:
    unreachable = TokenStore.from_url(UNREACHABLE_PG)
    with pytest.raises(StoreUnavailable):
        unreachable.verify("syncd_" + "A" * 43)
    unreachable.close()
    empty = TokenStore.from_url(fresh_database_url)  # no schema yet
    with pytest.raises(SchemaMissing, match="syncd migrate"):
        empty.list()
    empty.close()


# -- audit ---------------------------------------------------------------------------


def test_entries_come_back_newest_first_per_task(audit: AuditStore) -> None:
    audit.record(ALICE, "pause", "nightly", "ok", "was active")
    audit.record(Actor("cli:bob@box", "cli"), "run", "other", "refused", "no task named 'other'")
    audit.record(ALICE, "resume", "nightly", "ok", "now active")
    newest, oldest = audit.for_task("nightly")
    assert (newest.action, newest.detail, oldest.action) == ("resume", "now active", "pause")
    assert newest.id > oldest.id
    assert (newest.actor, newest.origin, newest.address) == ("token:alice", "api", "192.0.2.7")
    assert newest.at.tzinfo is not None
    (other,) = audit.for_task("other")
    assert (other.actor, other.address, other.result) == ("cli:bob@box", None, "refused")
    assert len(audit.for_task("nightly", limit=1)) == 1
    assert audit.for_task("nobody") == []


def test_recent_pages_by_id(audit: AuditStore) -> None:
    for number in range(5):
        audit.record(ALICE, "run", f"task-{number}", "ok")
    page = audit.recent(limit=2)
    assert [e.task_name for e in page] == ["task-4", "task-3"]
    audit.record(ALICE, "run", "late", "ok")  # a new entry does not shift the next page
    page = audit.recent(limit=2, before_id=page[-1].id)
    assert [e.task_name for e in page] == ["task-2", "task-1"]
    page = audit.recent(limit=2, before_id=page[-1].id)
    assert [e.task_name for e in page] == ["task-0"]
    assert audit.recent(limit=2, before_id=page[-1].id) == []
    assert [e.task_name for e in audit.recent()][:2] == ["late", "task-4"]


def test_long_values_are_cut_to_their_columns(audit: AuditStore) -> None:
    name = "t" * 300
    actor = Actor("token:" + "a" * 300, "console", "b" * 300)
    audit.record(actor, "pause", name, "error", "d" * 10_000)
    (entry,) = audit.for_task(name)  # found by the name it was given
    assert [len(v) for v in (entry.actor, entry.address, entry.task_name)] == [200, 200, 200]
    assert len(entry.detail) == DETAIL_LIMIT
    assert entry.actor.endswith("a…")
    assert entry.detail.endswith("d…")
    assert entry.task_name == "t" * 199 + "…"


def test_text_postgresql_cannot_hold_is_escaped(audit: AuditStore) -> None:
    # NUL, and a lone surrogate as an undecodable command-line byte becomes.
    audit.record(ALICE, "pause", "a\x00b\udcff", "refused", "no task named 'a\x00b'")
    (entry,) = audit.recent(limit=1)
    assert entry.task_name == "a\\x00b\\udcff"
    assert entry.detail == "no task named 'a\\x00b'"


def test_values_outside_the_checks_are_refused(audit: AuditStore) -> None:
    with pytest.raises(StoreRefused):
        audit.record(ALICE, "delete", "x", "ok")
    with pytest.raises(StoreRefused):
        audit.record(ALICE, "pause", "x", "maybe")
    assert audit.recent() == []


def test_the_cli_actor_is_user_at_host() -> None:
    actor = Actor.from_cli()
    assert actor == Actor(f"cli:{getpass.getuser()}@{socket.gethostname()}", "cli", None)


# -- operate: one audit row per action -------------------------------------------------


def scheduled(name: str, *, enabled: bool = True) -> DesiredTask:
    config = TaskConfig(
        name=name,
        task_type="diagnostics.noop",
        scheduler_type="interval",
        schedule_config={"interval": 60},
        enabled=enabled,
    )
    return DesiredTask(config, f"{name}.yaml", 1, f"taskdefs/{name}.yaml")


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[RedisStore]:
    with RedisStore.from_url(redis_url, LAYOUT) as store:
        yield store


def only_entry(audit: AuditStore) -> AuditEntry:
    (entry,) = audit.recent()
    return entry


def test_pause_and_resume_write_ok_rows(
    db: DbStore, redis_store: RedisStore, audit: AuditStore
) -> None:
    db.apply([scheduled("tick")], [], [], None)
    redis_store.set_status(db.get_row("tick").id, "active")  # type: ignore[union-attr]
    assert pause(db, redis_store, "tick", audit=audit, actor=ALICE) == "active"
    now = datetime.now(UTC)
    assert resume(db, redis_store, "tick", now, audit=audit, actor=ALICE) == "active"
    resumed, paused = audit.for_task("tick")
    assert (paused.action, paused.result, paused.detail) == ("pause", "ok", "was active")
    assert (resumed.action, resumed.result, resumed.detail) == ("resume", "ok", "now active")
    assert (paused.actor, paused.origin, paused.address) == ("token:alice", "api", "192.0.2.7")


def test_refusals_are_audited_and_raised(
    db: DbStore, redis_store: RedisStore, audit: AuditStore
) -> None:
    db.apply([scheduled("off", enabled=False)], [], [], None)
    with pytest.raises(NotPausable) as refused:
        pause(db, redis_store, "off", audit=audit, actor=ALICE)
    entry = only_entry(audit)
    assert (entry.result, entry.detail) == ("refused", str(refused.value))
    with pytest.raises(NotFound):
        resume(db, redis_store, "ghost", datetime.now(UTC), audit=audit, actor=ALICE)
    (entry,) = audit.for_task("ghost")
    assert (entry.action, entry.result, entry.detail) == (
        "resume",
        "refused",
        "no task named 'ghost'",
    )


def test_a_store_failure_is_audited_as_error_and_raised(db: DbStore, audit: AuditStore) -> None:
    db.apply([scheduled("tick")], [], [], None)
    with (
        RedisStore.from_url(UNREACHABLE_REDIS, LAYOUT) as down,
        pytest.raises(StoreUnavailable) as failed,
    ):
        pause(db, down, "tick", audit=audit, actor=ALICE)
    entry = only_entry(audit)
    assert (entry.action, entry.result, entry.detail) == ("pause", "error", str(failed.value))


def test_an_audit_that_cannot_be_written_undoes_nothing(
    db: DbStore, redis_store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    db.apply([scheduled("tick")], [], [], None)
    row_id = db.get_row("tick").id  # type: ignore[union-attr]
    redis_store.set_status(row_id, "active")
    engine = pooled_engine(UNREACHABLE_PG)
    lost = AuditStore(engine)
    with caplog.at_level(logging.WARNING, logger="syncd.audit"):
        assert pause(db, redis_store, "tick", audit=lost, actor=ALICE) == "active"
        with pytest.raises(NotFound):  # the action's own error, not the audit's
            pause(db, redis_store, "ghost", audit=lost, actor=ALICE)
    engine.dispose()
    assert redis_store.get_status(row_id) == "paused"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert warnings[0].startswith("audit entry not written (pause 'tick' by token:alice, ok)")
    assert "(pause 'ghost' by token:alice, refused)" in warnings[1]
