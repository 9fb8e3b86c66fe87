"""Who is asking, and may they: bearer tokens, console sessions, roles and CSRF.

- `/api/v1/*` takes `Authorization: Bearer <token>` (a token of `syncd token create`);
  the console's own scripts call the same routes with the session cookie instead.
- No credentials, or a token that is unknown or revoked: 401 with `WWW-Authenticate:
  Bearer`. A viewer asking for an operator action: 403.
- A state-changing request authenticated by the cookie must carry the session's CSRF
  token (`X-CSRF-Token` header, or the `csrf_token` form field): a browser sends the
  cookie with any request, even one another site makes it send; the token is only in
  pages of this origin. A bearer token is never sent by a browser on its own, so a
  bearer-authenticated call needs no CSRF token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends
from starlette.requests import Request

from syncd.adapters.audit import Actor
from syncd.adapters.tokens import Role
from syncd.api.errors import Forbidden, Unauthenticated
from syncd.api.services import services
from syncd.api.sessions import Session

SESSION_COOKIE = "syncd_session"
SECURE_SESSION_COOKIE = "__Host-syncd_session"  # the prefix makes browsers insist on Secure
LOGIN_CSRF_COOKIE = "syncd_login_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a token, directly (api) or through a session (console)."""

    token_name: str
    role: Role
    origin: Literal["api", "console"]
    address: str | None
    session: Session | None = None

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"

    @property
    def actor(self) -> Actor:
        """How the audit log names this caller."""
        return Actor(name=f"token:{self.token_name}", origin=self.origin, address=self.address)


def session_cookie_name(request: Request) -> str:
    return SECURE_SESSION_COOKIE if is_secure(request) else SESSION_COOKIE


def is_secure(request: Request) -> bool:
    """Served over HTTPS, or told so (`--secure-cookies`: TLS ends at a proxy)."""
    return request.url.scheme == "https" or services(request).config.secure_cookies


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def authenticate(request: Request) -> Principal:
    """The caller, from the bearer token or else the session cookie; Unauthenticated."""
    header = request.headers.get("authorization")
    if header is not None:
        return _bearer(request, header)
    session = services(request).sessions.get(request.cookies.get(session_cookie_name(request)))
    if session is None:
        raise Unauthenticated("log in, or send Authorization: Bearer <token>")
    return Principal(session.token_name, session.role, "console", client_address(request), session)


def _bearer(request: Request, header: str) -> Principal:
    scheme, _, token = header.partition(" ")
    if scheme.casefold() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be `Bearer <token>`")
    found = services(request).tokens.verify(token.strip())
    if found is None:
        raise Unauthenticated("unknown or revoked token")
    return Principal(found.name, found.role, "api", client_address(request))


def viewer(request: Request) -> Principal:
    """Dependency: any authenticated caller (a sync function: the token check is a query)."""
    return authenticate(request)


async def operator(request: Request, principal: Annotated[Principal, Depends(viewer)]) -> Principal:
    """Dependency of every action: an operator, and a CSRF token with a session cookie."""
    await check_csrf(request, principal)
    if not principal.is_operator:
        raise Forbidden(f"token {principal.token_name!r} is a viewer: operators only")
    return principal


async def check_csrf(request: Request, principal: Principal) -> None:
    """A cookie-authenticated request that changes state must carry the session's token."""
    if principal.session is None:
        return
    offered = request.headers.get(CSRF_HEADER) or await _form_field(request, CSRF_FIELD)
    if not principal.session.csrf_matches(offered):
        raise Forbidden("missing or wrong CSRF token; reload the page and try again")


async def _form_field(request: Request, name: str) -> str | None:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        return None
    value = (await request.form()).get(name)
    return value if isinstance(value, str) else None
