"""The console: server-rendered pages over the same reads as the API, and its forms.

Pages: the task list (live through `/api/v1/events`), a task, executions, the plan, the
login form. Forms (log in, log out, pause, resume, run) are plain POSTs with a CSRF
token, answered with a redirect (post/redirect/get), so they work without JavaScript.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, Query
from fastapi.responses import RedirectResponse, Response
from starlette.requests import Request

from syncd.api.auth import (
    LOGIN_CSRF_COOKIE,
    Principal,
    authenticate,
    check_csrf,
    is_secure,
    operator,
    session_cookie_name,
)
from syncd.api.errors import Forbidden
from syncd.api.queries import MAX_PAGE, executions_page
from syncd.api.reads import TaskQuery, filtered, plan_json
from syncd.api.routes_api import execution_filter, executions_json, task_detail
from syncd.api.services import Services, services
from syncd.api.sessions import new_csrf_token, same_secret
from syncd.api.templating import render
from syncd.operate import pause, resume, trigger
from syncd.views.history import execution_json

router = APIRouter(include_in_schema=False)
Svc = Annotated[Services, Depends(services)]
CHART_RUNS = 50
TASKS_PER_PAGE = 100
MAX_TASKS_PER_PAGE = 1000
STATE_CHOICES = ("active", "paused", "inactive", "missing",
                 "in_sync", "changed_in_git", "drift", "frozen", "expired")  # fmt: skip


def page_viewer(request: Request) -> Principal:
    """Dependency of every page: the caller (not logged in: the login form, by app.py)."""
    principal = authenticate(request)
    request.state.principal = principal
    return principal


async def page_poster(
    request: Request, principal: Annotated[Principal, Depends(page_viewer)]
) -> Principal:
    """Dependency of a form that changes state but needs no role (log out)."""
    await check_csrf(request, principal)
    return principal


async def page_operator(
    request: Request, principal: Annotated[Principal, Depends(page_viewer)]
) -> Principal:
    return await operator(request, principal)


Viewer = Annotated[Principal, Depends(page_viewer)]
Operator = Annotated[Principal, Depends(page_operator)]
Poster = Annotated[Principal, Depends(page_poster)]


# -------------------------------------------------------------------- log in and out


@router.get("/")
def home() -> Response:
    return RedirectResponse("/tasks", status_code=303)


@router.get("/login")
def login_form(request: Request, next: str = "/tasks") -> Response:
    return _login_page(request, next, error=None)


@router.post("/login")
def login(
    request: Request,
    svc: Svc,
    token: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/tasks",
) -> Response:
    # Double submit: the form's token must equal the cookie set with the form, which
    # only a page of this origin can read back into a form (login CSRF).
    if not same_secret(csrf_token, request.cookies.get(LOGIN_CSRF_COOKIE)):
        raise Forbidden("the login form expired; load it again")
    found = svc.tokens.verify(token.strip()) if token.strip() else None
    if found is None:
        return _login_page(request, next, error="Unknown or revoked token.", status=401)
    session = svc.sessions.create(found)
    response = RedirectResponse(_local(next), status_code=303)
    _set_cookie(request, response, session_cookie_name(request), session.id, max_age=None)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    return response


@router.post("/logout")
def logout(request: Request, svc: Svc, who: Poster) -> Response:
    if who.session is not None:
        svc.sessions.drop(who.session.id)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(
        session_cookie_name(request),
        path="/",
        secure=is_secure(request),
        httponly=True,
        samesite="strict",
    )
    return response


def _login_page(request: Request, next_path: str, error: str | None, status: int = 200) -> Response:
    login_csrf = new_csrf_token()
    context = {"login_csrf": login_csrf, "next": _local(next_path), "error": error}
    response = render(request, "login.html", context, status=status)
    _set_cookie(request, response, LOGIN_CSRF_COOKIE, login_csrf, max_age=3600)
    return response


def _set_cookie(
    request: Request, response: Response, name: str, value: str, max_age: int | None
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=is_secure(request),
    )


def _local(path: str) -> str:
    """`path` if it is a path on this site, else the task list (no open redirect)."""
    if path.startswith("/") and not path.startswith(("//", "/\\")):
        return path
    return "/tasks"


# -------------------------------------------------------------------- pages


@router.get("/tasks")
def tasks_page(
    request: Request,
    svc: Svc,
    who: Viewer,
    *,
    state: str = "",
    queue: str = "",
    task_type: str = "",
    q: str = "",
    page: Annotated[int, Query(ge=1)] = 1,
    per_page: Annotated[int, Query(ge=1, le=MAX_TASKS_PER_PAGE)] = TASKS_PER_PAGE,
) -> Response:
    """The task list, a page at a time: a browser lays out ten thousand table rows in
    seconds, and nobody reads them; the filters find a task, the pages go through them."""
    every = svc.board.rows()
    rows = filtered(every, TaskQuery((state,) if state else (), queue, task_type, q))
    filters = {"state": state, "queue": queue, "task_type": task_type, "q": q}
    context = {
        "rows": rows[(page - 1) * per_page : page * per_page],
        "matched": len(rows),
        "total": len(every),
        "pages": task_pages(filters, page, per_page, len(rows)),
        "filters": filters,
        "states": STATE_CHOICES,
        "queues": sorted({row["queue"] for row in every}),
        "task_types": sorted({row["task_type"] for row in every}),
        "plan_age": svc.board.plan_age(),
        "window": svc.board.recent_runs,
    }
    return render(request, "tasks.html", context)


def task_pages(filters: dict[str, str], page: int, per_page: int, matched: int) -> dict[str, Any]:
    """Where this page starts and ends, and the links to the pages around it."""
    last_page = max(1, -(-matched // per_page))
    kept = {key: value for key, value in filters.items() if value}
    if per_page != TASKS_PER_PAGE:
        kept["per_page"] = str(per_page)

    def link(number: int) -> str:
        return "/tasks?" + urlencode({**kept, "page": str(number)} if number > 1 else kept)

    return {
        "first": min(matched, (page - 1) * per_page + 1),
        "last": min(matched, page * per_page),
        "page": page,
        "count": last_page,
        "previous": link(min(page - 1, last_page)) if page > 1 else None,
        "next": link(page + 1) if page < last_page else None,
    }


@router.get("/tasks/{name}")
def task_page(request: Request, name: str, svc: Svc, who: Viewer, done: str = "") -> Response:
    detail = task_detail(svc, name)
    where = execution_filter(name, False, None, None)
    runs = executions_page(svc.stores.db.engine, where, None, CHART_RUNS).executions
    context = {
        "task": detail,
        "runs": [execution_json(run) for run in runs],
        "done": done if done in ("pause", "resume", "run") else "",
    }
    return render(request, "task.html", context)


@router.post("/tasks/{name}/{action}")
def task_action(
    request: Request,
    name: str,
    action: Literal["pause", "resume", "run"],
    svc: Svc,
    who: Operator,
) -> Response:
    db, redis, actor = svc.stores.db, svc.stores.redis, who.actor
    if action == "pause":
        pause(db, redis, name, audit=svc.audit, actor=actor)
    elif action == "resume":
        resume(db, redis, name, datetime.now(UTC), audit=svc.audit, actor=actor)
    else:
        broker = svc.config.make_broker()
        trigger(db, broker, svc.config.catalog, name, audit=svc.audit, actor=actor)
    svc.board.mark_stale()
    return RedirectResponse(f"/tasks/{_quoted(name)}?done={action}", status_code=303)


@router.get("/executions")
def executions_page_view(
    request: Request,
    svc: Svc,
    who: Viewer,
    *,
    task: str = "",
    failed: bool = False,
    since: str = "",
    until: str = "",
    cursor: str = "",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> Response:
    where = execution_filter(task or None, failed, since or None, until or None)
    page = executions_json(svc, where, cursor or None, limit)
    filters = {"task": task, "failed": failed, "since": since, "until": until, "limit": limit}
    context = {"page": page, "filters": filters, "first_page": not cursor}
    return render(request, "executions.html", context)


@router.get("/plan")
def plan_page(request: Request, svc: Svc, who: Viewer) -> Response:
    outcome = svc.board.fresh_outcome()
    problems = [problem.to_json() for problem in outcome.loaded.problems]
    context: dict[str, Any] = {"plan": plan_json(outcome), "problems": problems}
    return render(request, "plan.html", context)


def _quoted(name: str) -> str:
    return quote(name, safe="")
