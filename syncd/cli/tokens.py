"""`syncd token create NAME --role ROLE`, `syncd token list`, `syncd token revoke NAME`.

Bearer tokens of the HTTP API and console, kept in PostgreSQL only (no Redis needed).
`create` prints the token alone on stdout, so a script can capture it, and everything
else on stderr: it is shown this once, since only its hash is stored.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from schemas.text import visible
from syncd.adapters.pg import one_off_engine, parse_url
from syncd.adapters.tokens import ApiToken, TokenStore
from syncd.cli.common import print_json
from syncd.cli.options import settings_from
from syncd.core.logtext import visible_json
from syncd.views.text import format_time, iso_utc, table


def cmd_create(args: argparse.Namespace) -> int:
    with _tokens(args) as store:
        token = store.create(args.name, args.role)
    print(token)
    print(
        f"created {args.role} token {visible(args.name)}; store it now: it is not shown again",
        file=sys.stderr,
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _tokens(args) as store:
        tokens = store.list()
    if args.format == "json":
        print_json([_token_json(token) for token in tokens])
    else:
        print(_tokens_text(tokens), end="")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with _tokens(args) as store:
        store.revoke(args.name)
    print(f"revoked token {visible(args.name)}")
    return 0


@contextmanager
def _tokens(args: argparse.Namespace) -> Iterator[TokenStore]:
    # A one-off engine: a command makes one or two queries and should keep no pool open.
    store = TokenStore(one_off_engine(parse_url(settings_from(args).database_url)))
    try:
        yield store
    finally:
        store.close()


def _tokens_text(tokens: list[ApiToken]) -> str:
    if not tokens:
        return "No tokens.\n"
    headers = ("NAME", "ROLE", "CREATED (UTC)", "LAST USED (UTC)", "REVOKED (UTC)")
    rows = [
        [
            t.name,
            t.role,
            *(format_time(when) for when in (t.created_at, t.last_used_at, t.revoked_at)),
        ]
        for t in tokens
    ]
    return table(headers, rows) + "\n"


def _token_json(token: ApiToken) -> dict[str, Any]:
    shown: dict[str, Any] = visible_json(
        {
            "name": token.name,
            "role": token.role,
            "created_at": iso_utc(token.created_at),
            "last_used_at": iso_utc(token.last_used_at),
            "revoked_at": iso_utc(token.revoked_at),
        }
    )
    return shown
