"""`/api/v1`: the tasks, one task's explain view, executions, the plan, operator actions
and the event stream. Every route needs a token (or a console session); the actions need
an operator (and, with a session, a CSRF token). Reads return the views' JSON unchanged.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from syncd.api.auth import Principal, authenticate, operator, viewer
from syncd.api.board import encode
from syncd.api.errors import BadRequest, Unauthenticated
from syncd.api.events import event_lines
from syncd.api.models import (
    ActionResult,
    ErrorBody,
    ExecutionPage,
    PlanReport,
    TaskDetail,
    TaskList,
)
from syncd.api.queries import MAX_PAGE, Cursor, ExecutionFilter, executions_page
from syncd.api.reads import TaskQuery, explain_json, plan_json
from syncd.api.services import Services, services
from syncd.core.errors import SyncdError
from syncd.inspection import explanation, planned_task
from syncd.operate import pause, resume, trigger
from syncd.views.history import execution_json, parse_since

Viewer = Annotated[Principal, Depends(viewer)]
Operator = Annotated[Principal, Depends(operator)]
Svc = Annotated[Services, Depends(services)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 503)
}
router = APIRouter(responses=_ERRORS)


def json_response(body: Any, status: int = 200) -> Response:
    """JSON without FastAPI's encoder pass: the views' output is JSON-ready already, and
    10,000 task rows would spend longer in the encoder than in the board."""
    return Response(encode(body), status, media_type="application/json")


@router.get("/tasks", summary="Every task", responses={200: {"model": TaskList}})
def list_tasks(
    svc: Svc,
    _: Viewer,
    state: Annotated[list[str] | None, Query(description="status or sync state")] = None,
    queue: str | None = None,
    task_type: str | None = None,
    q: Annotated[str | None, Query(description="text in name, description, task type")] = None,
) -> Response:
    """Each task's config, schedule, status, sync state, drift codes, next fire, last run
    and recent success rate, by name. `state` (repeatable) matches the Redis status
    (`active`, `paused`, `inactive`, `missing`) or the sync state (`in_sync`,
    `changed_in_git`, `drift`, `frozen`, `expired`)."""
    query = TaskQuery(tuple(state or ()), queue, task_type, q)
    rows = svc.board.encoded_rows(query.matches)
    head = encode({"count": len(rows), "plan_age_seconds": round(svc.board.plan_age(), 3)})
    body = b"".join((head[:-1], b',"tasks":[', b",".join(rows), b"]}"))
    return Response(body, media_type="application/json")


@router.get("/tasks/{name}", summary="One task, explained", responses={200: {"model": TaskDetail}})
def get_task(name: str, svc: Svc, _: Viewer) -> Response:
    """`syncd explain NAME` as JSON: taskdef file:line, row and revision, Redis payload and
    index lists, plan item, next fires, last executions and audit entries."""
    return json_response(task_detail(svc, name))


def task_detail(svc: Services, name: str) -> dict[str, Any]:
    outcome = svc.board.fresh_outcome()
    grace = svc.config.settings.late_grace_seconds
    task = planned_task(outcome, name, "the taskdefs")
    return explain_json(explanation(svc.stores, outcome, task, datetime.now(UTC), grace))


@router.get("/executions", summary="Finished attempts", responses={200: {"model": ExecutionPage}})
def list_executions(
    svc: Svc,
    _: Viewer,
    *,
    task: str | None = None,
    failed: bool = False,
    since: Annotated[str | None, Query(description="30m, 1h, 2d, 1w or ISO 8601")] = None,
    until: Annotated[str | None, Query(description="30m, 1h, 2d, 1w or ISO 8601")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(description="`next` of the previous page")] = None,
) -> Response:
    """Newest first, one page at a time: pass the `next` of a page as `cursor` for the
    following one (keyset: pages stay right while executions are recorded)."""
    return json_response(executions_json(svc, execution_filter(task, failed, since, until),
                                         cursor, limit))  # fmt: skip


def execution_filter(
    task: str | None, failed: bool, since: str | None, until: str | None
) -> ExecutionFilter:
    now = datetime.now(UTC)
    return ExecutionFilter(task or None, failed, _when("since", since, now),
                           _when("until", until, now))  # fmt: skip


def executions_json(
    svc: Services, where: ExecutionFilter, cursor: str | None, limit: int
) -> dict[str, Any]:
    after = Cursor.decode(cursor) if cursor else None
    page = executions_page(svc.stores.db.engine, where, after, limit)
    return {
        "executions": [execution_json(e) for e in page.executions],
        "next": page.next.encode() if page.next else None,
    }


def _when(name: str, text: str | None, now: datetime) -> datetime | None:
    if not text:
        return None
    try:
        return parse_since(text, now)
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from None


@router.get("/plan", summary="What a sync would do now", responses={200: {"model": PlanReport}})
def get_plan(svc: Svc, _: Viewer) -> Response:
    """Exactly what `syncd plan --format json` prints, drift included."""
    return json_response(plan_json(svc.board.fresh_outcome()))


@router.post("/tasks/{name}/pause", summary="Pause", responses={200: {"model": ActionResult}})
def pause_task(name: str, svc: Svc, who: Operator) -> Response:
    """As `syncd pause NAME`; writes an audit entry."""
    previous = pause(svc.stores.db, svc.stores.redis, name, audit=svc.audit, actor=who.actor)
    svc.board.mark_stale()
    return json_response(_done(name, "pause", previous=previous, status="paused"))


@router.post("/tasks/{name}/resume", summary="Resume", responses={200: {"model": ActionResult}})
def resume_task(name: str, svc: Svc, who: Operator) -> Response:
    """As `syncd resume NAME`; writes an audit entry."""
    status = resume(
        svc.stores.db, svc.stores.redis, name, datetime.now(UTC), audit=svc.audit, actor=who.actor
    )
    svc.board.mark_stale()
    return json_response(_done(name, "resume", status=status))


@router.post("/tasks/{name}/run", summary="Run now", responses={200: {"model": ActionResult}})
def run_task(name: str, svc: Svc, who: Operator) -> Response:
    """As `syncd run NAME`: one message with the task's parameters; writes an audit entry."""
    broker = svc.config.make_broker()
    task_id = trigger(
        svc.stores.db, broker, svc.config.catalog, name, audit=svc.audit, actor=who.actor
    )
    return json_response(_done(name, "run", task_id=task_id))


def _done(name: str, action: str, **facts: str) -> dict[str, str]:
    return {"name": name, "action": action, "result": "ok", **facts}


@router.get(
    "/events",
    summary="Server-sent events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(request: Request, _: Viewer) -> StreamingResponse:
    """`status` when a task's status changes, `execution` when an attempt is recorded,
    `row` when a task's next fire passed; each carries the task's new list row."""
    svc = services(request)
    await run_in_threadpool(svc.board.rows)  # the poller watches the board's tasks
    stream = svc.hub.open()
    headers = {"X-Accel-Buffering": "no"}  # a proxy must not hold events back
    return StreamingResponse(
        event_lines(stream, svc.hub, lambda: still_authenticated(request)),
        media_type="text/event-stream",
        headers=headers,
    )


async def still_authenticated(request: Request) -> bool:
    """Whether the caller that opened a stream may still read (asked at each keepalive);
    a store that cannot answer is no reason to end it."""
    try:
        await run_in_threadpool(authenticate, request)
    except Unauthenticated:
        return False
    except SyncdError:
        return True
    return True
