"""create_app: the FastAPI application of `syncd serve`, API and console together.

Here, and only here: the services' lifetime, the security headers every response gets,
and the mapping of errors to responses (`errors.http_status` decides the status; an API
caller gets JSON, a browser page an HTML page, or the login form when not logged in).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.requests import Request
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.text import visible
from syncd.api.config import ServeConfig
from syncd.api.errors import BadRequest, Unauthenticated, http_status
from syncd.api.routes_api import router as api_router
from syncd.api.routes_console import router as console_router
from syncd.api.services import Services
from syncd.api.templating import render
from syncd.core.errors import SyncdError

log = logging.getLogger("syncd.api")
STATIC = Path(__file__).parent / "static"
API_PREFIX = "/api/v1"

# No inline script or style anywhere: scripts and styles are files of this origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


def create_app(config: ServeConfig) -> FastAPI:
    """The app with its services open (SchemaMissing, StoreUnavailable surface here)."""
    services = Services.open(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        services.close()

    app = FastAPI(
        title="syncd",
        version="1",
        summary="Scheduled tasks, the GitOps way: read the live state, pause, resume, run.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=None,  # the interactive pages load scripts from elsewhere; the CSP says no
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.services = services
    app.add_exception_handler(SyncdError, _on_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _on_invalid_request)  # type: ignore[arg-type]
    app.include_router(api_router, prefix=API_PREFIX)
    app.include_router(console_router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(SecurityHeaders)
    return app


class SecurityHeaders:
    """Adds the security headers to every response, streams included (plain ASGI: a
    BaseHTTPMiddleware would buffer the event stream)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                if not scope["path"].startswith("/static/") and b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _on_error(request: Request, error: SyncdError) -> Response:
    status, code = http_status(error)
    message = visible(str(error))
    if status >= 500:
        log.warning("%s %s: %s", request.method, visible(request.url.path), message)
    if not request.url.path.startswith(API_PREFIX):
        return _page_error(request, error, status, message)
    headers = {"WWW-Authenticate": 'Bearer realm="syncd"'} if status == 401 else None
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers)


def _on_invalid_request(request: Request, error: RequestValidationError) -> Response:
    """A query parameter out of range is a bad request like any other: the same error
    shape (`bad_request`, 400) for the API, the error page for the console."""
    problems = [
        f"{'.'.join(str(part) for part in problem.get('loc', ())[1:])}: {problem.get('msg', '')}"
        for problem in error.errors()
    ]
    return _on_error(request, BadRequest("; ".join(problems) or "invalid request"))


def _page_error(request: Request, error: SyncdError, status: int, message: str) -> Response:
    if isinstance(error, Unauthenticated):
        wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(wanted, safe='')}", status_code=303)
    return render(request, "error.html", {"status": status, "message": message}, status=status)
