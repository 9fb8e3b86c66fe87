"""Secret references in task parameters: `{secret: NAME}` in place of any value.

Git, PostgreSQL, Redis, plans and `explain` only ever hold the reference; the worker
resolves it right before the attempt (worker/secrets.py), from the environment variable
`SYNCD_SECRET_<NAME>` or the file `$SYNCD_SECRETS_DIR/<NAME>`. Pure: finding references and
recognising values that look like credentials someone pasted instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from schemas.text import quoted

REFERENCE_NAME_PATTERN = r"^[A-Z0-9_]{1,128}$"
_NAME = re.compile(REFERENCE_NAME_PATTERN)
Loc = tuple[int | str, ...]


def secret_name(value: Any) -> str | None:
    """NAME when `value` is a reference `{"secret": NAME}`, else None."""
    if isinstance(value, dict) and len(value) == 1:
        name = value.get("secret")
        if isinstance(name, str) and _NAME.match(name):
            return name
    return None


def secret_refs(value: Any, loc: Loc = ()) -> Iterator[tuple[Loc, str]]:
    """Every reference in a parameter tree, with where it is."""
    name = secret_name(value)
    if name is not None:
        yield loc, name
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from secret_refs(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from secret_refs(item, (*loc, index))


_SECRET_KEY = re.compile(r"(pass(word|wd)?|secret|token|api[_-]?key|auth|credential)", re.I)
_TOKEN_QUERY = re.compile(r"(^|&)(token|key|secret|sig|signature|api[_-]?key|auth)=", re.I)
_TOKEN_PATHS = ("hooks.slack.com/services/", "discord.com/api/webhooks/", "/webhookb2/")


def looks_like_credential(key: Any, value: Any) -> str | None:
    """Why a literal string looks like a credential (a hint, not a proof), or None."""
    if not isinstance(value, str) or not value:
        return None
    if isinstance(key, str) and _SECRET_KEY.search(key):
        return f"the key {quoted(key)} suggests a credential"
    if "://" in value:
        parts = urlsplit(value)
        if parts.password:
            return "the URL carries a password"
        if _TOKEN_QUERY.search(parts.query):
            return "the URL carries a token in its query"
        if any(marker in value for marker in _TOKEN_PATHS):
            return "the URL embeds a webhook token"
    return None


def credential_hints(value: Any, loc: Loc = ()) -> Iterator[tuple[Loc, str]]:
    """Literal strings in a parameter tree that look like credentials."""
    if isinstance(value, dict) and secret_name(value) is None:
        for key, item in value.items():
            why = looks_like_credential(key, item)
            if why is not None:
                yield (*loc, key), why
            else:
                yield from credential_hints(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            why = looks_like_credential(None, item)
            if why is not None:
                yield (*loc, index), why
            else:
                yield from credential_hints(item, (*loc, index))
