"""The console's Jinja2 environment (autoescape always on) and `render`.

Every page gets the caller (`principal`, or None on the login and error pages) and its
CSRF token. Templates never mark user data safe; JSON for scripts goes through `tojson`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from fastapi.responses import HTMLResponse
from starlette.requests import Request

from syncd.api import presenters
from syncd.views.text import format_duration

TEMPLATES = Path(__file__).parent / "templates"

environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,  # every template, whatever its name
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
environment.filters.update(
    pretty=presenters.pretty,
    utc=presenters.utc,
    duration=format_duration,
    percent=presenters.percent,
    rate_class=presenters.rate_class,
    status_class=presenters.status_class,
    sync_class=presenters.sync_class,
)
environment.globals["duration_chart"] = presenters.duration_chart


def render(
    request: Request, template: str, context: dict[str, Any], *, status: int = 200
) -> HTMLResponse:
    principal = getattr(request.state, "principal", None)
    page = {
        "request_path": request.url.path,
        "principal": principal,
        "csrf_token": principal.session.csrf_token if principal and principal.session else "",
        **context,
    }
    html = environment.get_template(template).render(page)
    return HTMLResponse(html, status_code=status)
