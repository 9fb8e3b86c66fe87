"""Bearer tokens of the HTTP API and console: `api_tokens`, created by `syncd token create`.

A token is shown once, when it is created; the table keeps only its SHA-256, so a copy
of the database (a backup, a replica) lets nobody call the API. `verify` looks a token up
by that hash: no stored secret is ever compared with what a client sent, so response
times say nothing about the token. A revoked token stays in the table (its name too), so
the audit log's `token:NAME` keeps meaning one token.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal, cast

from sqlalchemy import Engine, Interval, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import RowMapping

from schemas.tables import API_ROLES, api_tokens
from schemas.text import quoted
from syncd.adapters.pg import pooled_engine, translate_errors
from syncd.core.errors import ConflictError, NotFound, UsageError

Role = Literal["viewer", "operator"]

PREFIX = "syncd_"
# token_urlsafe(32): 32 random bytes as 43 base64url characters.
TOKEN_BYTES = 32
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")
# The shape of every token `create` makes: anything else is refused before any query.
_TOKEN = re.compile(rf"{PREFIX}[A-Za-z0-9_-]{{43}}")
# last_used_at is a hint for people ("is this token still in use?"), not a log: writing it
# on every request would turn each read of the API into a write.
_TOUCH_EVERY = literal(timedelta(minutes=1), Interval())

_k = api_tokens
_SHOWN = (_k.c.name, _k.c.role, _k.c.created_at, _k.c.last_used_at, _k.c.revoked_at)


@dataclass(frozen=True)
class ApiToken:
    """A token as the API and `syncd token list` see it: never the token, nor its hash."""

    name: str
    role: Role
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenStore:
    """`api_tokens`: create, verify, list and revoke bearer tokens."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @classmethod
    def from_url(cls, url: str) -> TokenStore:
        return cls(pooled_engine(url))

    def create(self, name: str, role: Role) -> str:
        """Store a new token; return it (the only time it is ever available)."""
        _check(name, role)
        token = PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        values = {"name": name, "role": role, "token_hash": _digest(token)}
        # ON CONFLICT (name): a taken name is an answer, not a driver error to translate.
        stmt = (
            insert(_k)
            .values(values)
            .on_conflict_do_nothing(index_elements=[_k.c.name])
            .returning(_k.c.id)
        )
        with translate_errors(self._engine.url), self._engine.begin() as conn:
            if conn.execute(stmt).first() is None:
                holder = select(_k.c.revoked_at).where(_k.c.name == name)
                revoked_at = conn.execute(holder).scalar_one_or_none()
                raise ConflictError(_taken(name, revoked=revoked_at is not None))
        return token

    def verify(self, token: str) -> ApiToken | None:
        """What `token` grants, or None if it is unknown, revoked or malformed."""
        if not _TOKEN.fullmatch(token):
            return None
        stale = (_k.c.last_used_at.is_(None)) | (_k.c.last_used_at < func.now() - _TOUCH_EVERY)
        query = select(_k.c.id, *_SHOWN, stale.label("stale")).where(
            _k.c.token_hash == _digest(token), _k.c.revoked_at.is_(None)
        )
        with translate_errors(self._engine.url), self._engine.begin() as conn:
            found = conn.execute(query).mappings().first()
            if found is None:
                return None
            token_found = _token_from(found)
            if not found["stale"]:
                return token_found
            # The same guard again in the UPDATE: of concurrent requests, only one writes.
            touch = (
                update(_k)
                .where(_k.c.id == found["id"], stale)
                .values(last_used_at=func.now())
                .returning(_k.c.last_used_at)
            )
            touched = conn.execute(touch).scalar_one_or_none()
        return replace(token_found, last_used_at=touched or token_found.last_used_at)

    def list(self) -> list[ApiToken]:
        """Every token, revoked ones too, by name."""
        with translate_errors(self._engine.url), self._engine.connect() as conn:
            found = conn.execute(select(*_SHOWN).order_by(_k.c.name)).mappings().all()
        return [_token_from(record) for record in found]

    def revoke(self, name: str) -> None:
        """Revoke the active token `name` for good; NotFound if there is none."""
        stmt = (
            update(_k)
            .where(_k.c.name == name, _k.c.revoked_at.is_(None))
            .values(revoked_at=func.now())
        )
        with translate_errors(self._engine.url), self._engine.begin() as conn:
            revoked = conn.execute(stmt).rowcount
        if not revoked:
            raise NotFound(f"no active token named {quoted(name)} (`syncd token list`)")

    def close(self) -> None:
        self._engine.dispose()


def _check(name: str, role: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise UsageError(
            f"invalid token name {quoted(name)}: 1-100 of A-Z a-z 0-9 . _ @ -, "
            "starting with a letter or digit"
        )
    if role not in API_ROLES:
        raise UsageError(f"invalid role {quoted(role)}: one of {', '.join(API_ROLES)}")


def _taken(name: str, *, revoked: bool) -> str:
    if revoked:
        # The audit log names tokens: a new token under an old name would take on its past.
        return (
            f"token name {quoted(name)} belongs to a revoked token, and revoked names stay "
            "taken; choose another name"
        )
    return f"a token named {quoted(name)} already exists; revoke it first or choose another name"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _token_from(record: RowMapping) -> ApiToken:
    return ApiToken(
        name=record["name"],
        role=cast(Role, record["role"]),  # the table's CHECK admits API_ROLES only
        created_at=record["created_at"],
        last_used_at=record["last_used_at"],
        revoked_at=record["revoked_at"],
    )
