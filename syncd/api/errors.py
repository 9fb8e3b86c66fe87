"""SyncdError -> HTTP status: the one place where an error of syncd becomes a response code.

The errors the API adds (no credentials, a role that may not act, a bad cursor, too many
event streams) are SyncdErrors too, so routes raise and never build error responses.
"""

from __future__ import annotations

from syncd.core.errors import (
    ConflictError,
    NotFound,
    SchemaMissing,
    StoreRefused,
    StoreUnavailable,
    SyncdError,
    SyncRefused,
    TaskdefError,
    UsageError,
)
from syncd.operate import NotPausable


class Unauthenticated(SyncdError):
    """No credentials, or credentials that are unknown, revoked or expired."""


class Forbidden(SyncdError):
    """Known credentials whose role may not do this, or a missing CSRF token."""


class BadRequest(UsageError):
    """A query value the route could not read (a cursor, a time)."""


class TooManyStreams(SyncdError):
    """Every event stream slot is taken."""


# Most specific first: the first class an error is an instance of decides.
_STATUS: tuple[tuple[type[SyncdError], int, str], ...] = (
    (Unauthenticated, 401, "unauthenticated"),
    (Forbidden, 403, "forbidden"),
    (NotFound, 404, "not_found"),
    (NotPausable, 409, "not_pausable"),
    (ConflictError, 409, "conflict"),
    (SyncRefused, 409, "refused"),
    (UsageError, 400, "bad_request"),
    (TaskdefError, 422, "invalid_taskdefs"),
    (StoreRefused, 422, "store_refused"),
    (TooManyStreams, 503, "too_many_streams"),
    (SchemaMissing, 503, "schema_missing"),
    (StoreUnavailable, 503, "store_unavailable"),
)


def http_status(error: SyncdError) -> tuple[int, str]:
    """The HTTP status and the stable error code of `error` (500, "error" when unlisted)."""
    for kind, status, code in _STATUS:
        if isinstance(error, kind):
            return status, code
    return 500, "error"
