"""`syncd serve` as a subprocess on real PostgreSQL and Redis: every route and filter,
keyset pages while rows arrive, 401/403, CSRF on cookie POSTs, audit rows of API and
console actions, the event stream and its bound, security headers, escaping."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from syncd.api.models import ExecutionPage, PlanReport, TaskDetail, TaskList
from tests.e2e.conftest import REPO, Cli
from tests.e2e.test_watch import free_port, wait_for

TOKEN = re.compile(r"syncd_[A-Za-z0-9_-]{43}")
TASKS = """
version: 1
tasks:
  - name: alpha
    description: First <b>task</b> & friends
    task_type: notification.log
    schedule: {cron: "30 2 * * *", timezone: Europe/Berlin}
    parameters: {message: alpha}
  - name: beta
    description: Second task
    task_type: diagnostics.noop
    schedule: {interval: 60}
  - name: gamma-manual
    description: Run by hand
    task_type: diagnostics.noop
"""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    cookies: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class Server:
    """A running `syncd serve`; its output goes to a file."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
        jar: http.cookiejar.CookieJar | None = None,
    ) -> Response:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        elif method == "POST":
            data = b""
        handlers: list[Any] = [_NoRedirect()]
        if jar is not None:
            handlers.append(urllib.request.HTTPCookieProcessor(jar))
        opener = urllib.request.build_opener(*handlers)
        req = urllib.request.Request(self.base + path, data, sent, method=method)
        try:
            with opener.open(req, timeout=30) as resp:
                return Response(resp.status, dict(resp.headers), resp.read(),
                                resp.headers.get_all("Set-Cookie") or [])  # fmt: skip
        except urllib.error.HTTPError as exc:
            with exc:
                return Response(exc.code, dict(exc.headers), exc.read(),
                                exc.headers.get_all("Set-Cookie") or [])  # fmt: skip
        except OSError:
            return Response(0, {}, b"")  # not listening (yet)

    def get(self, path: str, token: str | None = None, **kw: Any) -> Response:
        return self.request("GET", path, token=token, **kw)

    def post(self, path: str, token: str | None = None, **kw: Any) -> Response:
        return self.request("POST", path, token=token, **kw)

    def log(self) -> str:
        return self.log_path.read_text()


@contextmanager
def serving(cli: Cli, *extra: str) -> Iterator[Server]:
    port = free_port()
    log_path = cli.taskdefs.parent / f"serve-{port}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd.cli", "serve", str(cli.taskdefs), "--port", str(port),
             *extra],
            cwd=REPO, env=cli.env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = Server(proc, port, log_path)
    try:
        wait_for(lambda: server.get("/login").status == 200 or proc.poll() is not None, 30,
                 "syncd serve to answer")  # fmt: skip
        assert proc.poll() is None, server.log()
        yield server
    finally:
        proc.terminate()
        proc.wait(15)
    assert "Traceback" not in server.log(), server.log()


def make_token(cli: Cli, name: str, role: str) -> str:
    proc = cli.run("token", "create", name, "--role", role, check=True)
    return proc.stdout.strip()


def pg(cli: Cli) -> psycopg.Connection[Any]:
    url = cli.env["SYNCD_DATABASE_URL"].replace("postgresql+psycopg", "postgresql")
    return psycopg.connect(url, autocommit=True)


def insert_runs(cli: Cli, name: str, count: int, *, failed_every: int = 0, start: str = "1 day",
                task_id: str = "t") -> None:  # fmt: skip
    """`count` executions of task `name`, one per second from now - `start`, by one
    INSERT ... SELECT generate_series."""
    with pg(cli) as conn:
        conn.execute(
            "INSERT INTO task_executions (config_id, task_id, attempt, is_success, started_at,"
            " completed_at, duration_seconds, error_message, task_name)"
            " SELECT c.id, %(tid)s || '-' || g || '-' || gen_random_uuid(), 1,"
            "  CASE WHEN %(every)s > 0 AND g %% %(every)s = 0 THEN false ELSE true END,"
            "  now() - %(start)s::interval + g * interval '1 second' - interval '0.5 second',"
            "  now() - %(start)s::interval + g * interval '1 second', 0.5 + (g %% 7) / 10.0,"
            "  CASE WHEN %(every)s > 0 AND g %% %(every)s = 0 THEN 'boom ' || g END, c.name"
            " FROM generate_series(1, %(n)s) AS g, task_configs c WHERE c.name = %(name)s",
            {"tid": task_id, "every": failed_every, "start": start, "n": count, "name": name},
        )


def audit_rows(cli: Cli) -> list[tuple[str, str, str | None, str, str, str]]:
    with pg(cli) as conn:
        return conn.execute(
            "SELECT actor, origin, address, action, task_name, result FROM audit_log ORDER BY id"
        ).fetchall()


@pytest.fixture
def synced(cli: Cli) -> Cli:
    cli.write("tasks.yaml", TASKS)
    cli.run("sync", str(cli.taskdefs), check=True)
    return cli


# ------------------------------------------------------------------ reads


def test_tasks_lists_every_task_by_name_with_filters(synced: Cli) -> None:
    token = make_token(synced, "reader", "viewer")
    synced.run("pause", "beta", check=True)
    insert_runs(synced, "beta", 10, failed_every=5)
    with serving(synced) as server:
        body = server.get("/api/v1/tasks", token).json()
        TaskList.model_validate(body)
        assert [t["name"] for t in body["tasks"]] == ["alpha", "beta", "gamma-manual"]
        beta = body["tasks"][1]
        assert beta["status"] == "paused"
        assert beta["sync_state"] == "in sync"
        assert beta["schedule"] == {"kind": "interval", "enabled": True, "interval_seconds": 60}
        assert beta["recent_runs"] == {"window": 20, "runs": 10, "ok": 8, "success_rate": 0.8}
        assert beta["last_run"]["success"] is False  # g = 10 failed, and is the newest
        assert beta["config"]["task_type"] == "diagnostics.noop"
        assert body["tasks"][0]["next_fire"] is not None  # cron: exact

        def names(query: str) -> list[str]:
            return [t["name"] for t in server.get(f"/api/v1/tasks?{query}", token).json()["tasks"]]

        assert names("state=paused") == ["beta"]
        assert names("state=active") == ["alpha"]
        assert names("state=in_sync") == ["alpha", "beta", "gamma-manual"]
        assert names("state=paused&state=inactive") == ["beta", "gamma-manual"]
        assert names("task_type=diagnostics.noop") == ["beta", "gamma-manual"]
        assert names("queue=notifications") == ["alpha"]
        assert names("q=FRIENDS") == ["alpha"]  # description, any case
        assert names("q=noop") == ["beta", "gamma-manual"]  # task type
        assert names("q=nothing-like-it") == []

        # Drift made by hand shows up once the plan is refreshed (the version key moved).
        synced.redis().delete("syncd:data:task_1")
        synced.run("pause", "alpha", check=True)  # moves the version key
        wait_for(lambda: names("state=drift") == ["alpha"], 20, "drift to show")
        alpha = server.get("/api/v1/tasks?state=drift", token).json()["tasks"][0]
        assert alpha["drift"] == ["schedule_missing"]


def test_the_task_list_page_goes_a_page_at_a_time_keeping_its_filters(synced: Cli) -> None:
    token = make_token(synced, "reader", "viewer")
    with serving(synced) as server:
        jar, _ = log_in(server, token)

        def shown(query: str) -> tuple[list[str], str]:
            page = server.get(f"/tasks?{query}", jar=jar)
            assert page.status == 200, page.text
            return re.findall(r'<tr data-name="([^"]+)"', page.text), page.text

        assert shown("")[0] == ["alpha", "beta", "gamma-manual"]  # one page: no pager
        assert 'class="pager"' not in shown("")[1]
        first, text = shown("per_page=2")
        assert first == ["alpha", "beta"]
        assert "1–2 of 3 · page 1 of 2" in text
        assert 'rel="next" href="/tasks?per_page=2&amp;page=2"' in text
        second, text = shown("per_page=2&page=2")
        assert second == ["gamma-manual"]
        assert 'rel="prev" href="/tasks?per_page=2"' in text
        assert shown("q=noop&per_page=1&page=2")[0] == ["gamma-manual"]
        assert 'href="/tasks?q=noop&amp;per_page=1&amp;page=2"' in shown("q=noop&per_page=1")[1]
        beyond, text = shown("page=9")
        assert beyond == []
        assert "No task on this page" in text
        assert server.get("/tasks?per_page=0", jar=jar).status == 400


def test_task_detail_is_the_explain_view(synced: Cli) -> None:
    token = make_token(synced, "operator", "operator")
    insert_runs(synced, "alpha", 3)
    with serving(synced) as server:
        assert server.post("/api/v1/tasks/alpha/pause", token).status == 200
        body = server.get("/api/v1/tasks/alpha", token).json()
        TaskDetail.model_validate(body)
        assert body["taskdef"]["declared"].endswith("tasks.yaml:3")
        assert body["row"]["id"] == 1
        assert body["row"]["config"]["parameters"] == {"message": "alpha"}
        assert body["redis"]["status"] == "paused"
        assert body["redis"]["payload"]["cron"] == "30 2 * * *"
        assert body["redis"]["index_lists"] == ["syncd:cron"]
        assert body["plan"]["action"] == "noop"
        assert body["timezone"] == "Europe/Berlin"
        assert body["next_fires"] == []  # paused: nothing fires
        assert len(body["executions"]) == 3
        assert body["audit"][0]["action"] == "pause"
        assert body["audit"][0]["actor"] == "token:operator"
        server.post("/api/v1/tasks/alpha/resume", token)
        fires = server.get("/api/v1/tasks/alpha", token).json()["next_fires"]
        assert len(fires) == 5
        assert all(
            f["local"].startswith(f["local"][:4]) and "02:30 CE" in f["local"] for f in fires
        )
        missing = server.get("/api/v1/tasks/nope", token)
        assert missing.status == 404
        assert missing.json()["error"]["code"] == "not_found"


def test_plan_is_what_syncd_plan_prints(synced: Cli) -> None:
    token = make_token(synced, "reader", "viewer")
    synced.write(
        "more.yaml", "version: 1\ntasks:\n  - {name: delta, task_type: diagnostics.noop}\n"
    )
    synced.redis().set("schedule:status:2", "inactive")  # drift: status_wrong
    with serving(synced) as server:
        body = server.get("/api/v1/plan", token).json()
        PlanReport.model_validate(body)
        assert body == synced.plan_json()
        assert body["summary"]["create"] == 1
        assert body["summary"]["drift"] == 1


def test_executions_filters_and_keyset_pages(synced: Cli) -> None:
    token = make_token(synced, "reader", "viewer")
    insert_runs(synced, "alpha", 120, failed_every=4, start="2 hours")
    insert_runs(synced, "beta", 80, start="1 day", task_id="b")
    with serving(synced) as server:

        def page(query: str) -> dict[str, Any]:
            response = server.get(f"/api/v1/executions?{query}", token)
            assert response.status == 200, response.text
            body: dict[str, Any] = response.json()
            ExecutionPage.model_validate(body)
            return body

        first = page("limit=10")
        assert len(first["executions"]) == 10
        assert [e["name"] for e in first["executions"]] == ["alpha"] * 10  # newest first
        times = [e["completed_at"] for e in first["executions"]]
        assert times == sorted(times, reverse=True)
        assert {e["name"] for e in page("task=beta&limit=500")["executions"]} == {"beta"}
        assert len(page("task=beta&limit=500")["executions"]) == 80
        failed = page("failed=true&limit=500")["executions"]
        assert len(failed) == 30
        assert all(not e["success"] and e["outcome"] == "failed" for e in failed)
        assert len(page("since=3h&limit=500")["executions"]) == 120
        assert len(page("until=3h&limit=500")["executions"]) == 80
        assert page("task=nobody")["executions"] == []
        too_many = server.get("/api/v1/executions?limit=501", token)
        assert too_many.status == 400
        assert too_many.json()["error"]["code"] == "bad_request"
        assert "limit" in too_many.json()["error"]["message"]
        bad = server.get("/api/v1/executions?cursor=bm90LWEtY3Vyc29y", token)
        assert bad.status == 400
        assert bad.json()["error"]["code"] == "bad_request"
        assert server.get("/api/v1/executions?since=yesterday", token).status == 400

        seen = walk(server, token, "limit=33")
        assert len(seen) == 200
        assert len(set(seen)) == 200
        assert walk(server, token, "limit=7&task=alpha&failed=true") == [e["id"] for e in failed]


def walk(server: Server, token: str, query: str) -> list[int]:
    """Every id, page after page, following `next`."""
    ids: list[int] = []
    cursor = ""
    while True:
        suffix = f"&cursor={cursor}" if cursor else ""
        body = server.get(f"/api/v1/executions?{query}{suffix}", token).json()
        ids += [e["id"] for e in body["executions"]]
        if body["next"] is None:
            return ids
        cursor = body["next"]


def test_keyset_pages_neither_repeat_nor_skip_while_rows_arrive(synced: Cli) -> None:
    token = make_token(synced, "reader", "viewer")
    insert_runs(synced, "alpha", 400, start="1 hour")
    with pg(synced) as conn:
        before = {row[0] for row in conn.execute("SELECT id FROM task_executions")}
    stop = threading.Event()

    def keep_inserting() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            insert_runs(synced, "beta", 5, start="1 second", task_id=f"live{n}")
            time.sleep(0.01)

    writer = threading.Thread(target=keep_inserting)
    with serving(synced) as server:
        writer.start()
        try:
            ids = []
            cursor = ""
            while True:
                suffix = f"&cursor={cursor}" if cursor else ""
                body = server.get(f"/api/v1/executions?limit=25{suffix}", token).json()
                ids += [e["id"] for e in body["executions"]]
                time.sleep(0.02)  # let rows arrive between pages
                if body["next"] is None:
                    break
                cursor = body["next"]
        finally:
            stop.set()
            writer.join()
    assert len(ids) == len(set(ids)), "a row was listed twice"
    assert before <= set(ids), "a row that existed before paging was skipped"


# ------------------------------------------------------------------ auth and actions


def test_tokens_roles_and_401_403(synced: Cli) -> None:
    viewer = make_token(synced, "viewer", "viewer")
    with serving(synced) as server:
        anonymous = server.get("/api/v1/tasks")
        assert anonymous.status == 401
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        assert server.get("/api/v1/tasks", "syncd_" + "x" * 43).status == 401
        assert server.get("/api/v1/tasks", headers={"Authorization": "Basic eDp5"}).status == 401
        assert server.get("/api/v1/tasks", viewer).status == 200
        for action in ("pause", "resume", "run"):
            refused = server.post(f"/api/v1/tasks/beta/{action}", viewer)
            assert refused.status == 403, action
            assert refused.json()["error"]["code"] == "forbidden"
        synced.run("token", "revoke", "viewer", check=True)
        assert server.get("/api/v1/tasks", viewer).status == 401
    assert audit_rows(synced) == []  # refused before anything was attempted


def test_operator_actions_through_the_api_are_audited(synced: Cli) -> None:
    token = make_token(synced, "ops", "operator")
    with serving(synced) as server:
        paused = server.post("/api/v1/tasks/beta/pause", token)
        assert paused.json() == {"name": "beta", "action": "pause", "result": "ok",
                                 "previous": "active", "status": "paused"}  # fmt: skip
        assert synced.redis().get("schedule:status:2") == "paused"
        resumed = server.post("/api/v1/tasks/beta/resume", token).json()
        assert resumed["status"] == "active"
        ran = server.post("/api/v1/tasks/gamma-manual/run", token)
        assert ran.status == 200
        assert ran.json()["task_id"]
        assert synced.redis().xlen("syncd-queue:default") == 1
        refused = server.post("/api/v1/tasks/gamma-manual/pause", token)
        assert refused.status == 409
        assert refused.json()["error"]["code"] == "not_pausable"
        assert server.post("/api/v1/tasks/nope/run", token).status == 404
    actor = ("token:ops", "api", "127.0.0.1")
    assert audit_rows(synced) == [
        (*actor, "pause", "beta", "ok"),
        (*actor, "resume", "beta", "ok"),
        (*actor, "run", "gamma-manual", "ok"),
        (*actor, "pause", "gamma-manual", "refused"),
        (*actor, "run", "nope", "refused"),
    ]


def log_in(server: Server, token: str) -> tuple[http.cookiejar.CookieJar, str]:
    """A browser's login: the form, then its POST; returns the cookies and the CSRF token."""
    jar = http.cookiejar.CookieJar()
    form = server.get("/login", jar=jar)
    login_csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert login_csrf
    fields = {"token": token, "csrf_token": login_csrf[1], "next": "/tasks"}
    done = server.post("/login", jar=jar, form=fields)
    assert done.status == 303, done.text
    assert done.headers["location"] == "/tasks"
    session_cookie = next(c for c in done.cookies if c.startswith("syncd_session="))
    flags = {part.strip().lower() for part in session_cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= flags
    assert token not in session_cookie
    page = server.get("/tasks", jar=jar)
    assert page.status == 200
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text)
    assert csrf
    return jar, csrf[1]


def test_console_login_csrf_and_audit(synced: Cli) -> None:
    operator = make_token(synced, "op", "operator")
    viewer = make_token(synced, "view", "viewer")
    with serving(synced) as server:
        assert server.get("/tasks").status == 303  # to the login form
        jar = http.cookiejar.CookieJar()
        server.get("/login", jar=jar)
        forged_login = server.post("/login", jar=jar, form={"token": operator, "csrf_token": "x"})
        assert forged_login.status == 403
        wrong = log_in_fails(server, "syncd_" + "y" * 43)
        assert wrong.status == 401

        jar, csrf = log_in(server, operator)
        no_csrf = server.post("/tasks/beta/pause", jar=jar, form={})
        assert no_csrf.status == 403
        bad_csrf = server.post("/api/v1/tasks/beta/pause", jar=jar, headers={"X-CSRF-Token": "no"})
        assert bad_csrf.status == 403
        assert synced.redis().get("schedule:status:2") == "active"
        done = server.post("/tasks/beta/pause", jar=jar, form={"csrf_token": csrf})
        assert done.status == 303
        assert done.headers["location"] == "/tasks/beta?done=pause"
        api = server.post("/api/v1/tasks/beta/resume", jar=jar, headers={"X-CSRF-Token": csrf})
        assert api.status == 200
        page = server.get("/tasks/beta", jar=jar)
        assert 'data-action="pause"' in page.text

        viewer_jar, viewer_csrf = log_in(server, viewer)
        view_page = server.get("/tasks/beta", jar=viewer_jar)
        assert view_page.status == 200
        assert "data-action=" not in view_page.text  # no buttons for a viewer
        forged = server.post("/tasks/beta/pause", jar=viewer_jar, form={"csrf_token": viewer_csrf})
        assert forged.status == 403

        out = server.post("/logout", jar=jar, form={"csrf_token": csrf})
        assert out.status == 303
        assert server.get("/tasks", jar=jar).status == 303  # the session is gone
    assert audit_rows(synced) == [
        ("token:op", "console", "127.0.0.1", "pause", "beta", "ok"),
        ("token:op", "console", "127.0.0.1", "resume", "beta", "ok"),
    ]


def log_in_fails(server: Server, token: str) -> Response:
    jar = http.cookiejar.CookieJar()
    form = server.get("/login", jar=jar)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert csrf
    return server.post("/login", jar=jar, form={"token": token, "csrf_token": csrf[1]})


# ------------------------------------------------------------------ events


def read_events(server: Server, token: str, until: str, timeout: float) -> list[tuple[str, Any]]:
    """Events of one stream until one whose text contains `until` (or the timeout)."""
    req = urllib.request.Request(server.base + "/api/v1/events",
                                 headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    events: list[tuple[str, Any]] = []
    deadline = time.monotonic() + timeout
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        kind = ""
        for raw in resp:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
                if until in line:
                    return events
            if time.monotonic() > deadline:
                break
    return events


def test_events_announce_status_changes_and_executions(synced: Cli) -> None:
    token = make_token(synced, "ops", "operator")
    with serving(synced) as server:
        result: dict[str, list[tuple[str, Any]]] = {}

        def listen() -> None:
            result["events"] = read_events(server, token, '"execution"', 30)

        listener = threading.Thread(target=listen)
        listener.start()
        time.sleep(2.5)  # the stream is open and the poller has its baseline
        server.post("/api/v1/tasks/beta/pause", token)
        time.sleep(2.0)
        insert_runs(synced, "alpha", 1, start="1 second", task_id="sse")
        listener.join(35)
    events = result["events"]
    statuses = [data for kind, data in events if kind == "status"]
    assert {"name": "beta", "status": "paused"}.items() <= statuses[0].items()
    assert statuses[0]["row"]["status"] == "paused"
    runs = [data for kind, data in events if kind == "execution"]
    assert runs[0]["execution"]["name"] == "alpha"
    assert runs[0]["row"]["recent_runs"]["runs"] == 1


def test_event_streams_are_bounded_and_freed_on_disconnect(synced: Cli) -> None:
    token = make_token(synced, "reader", "viewer")
    with serving(synced, "--max-streams", "1") as server:
        req = urllib.request.Request(server.base + "/api/v1/events",
                                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        first = urllib.request.urlopen(req, timeout=10)
        try:
            first.readline()
            second = server.get("/api/v1/events", token)
            assert second.status == 503
            assert second.json()["error"]["code"] == "too_many_streams"
        finally:
            first.close()
        # The server notices the client left (at the latest at its next keepalive).
        wait_for(lambda: stream_opens(server, token), 25, "the slot to be freed")


def test_an_open_stream_ends_when_its_token_is_revoked(synced: Cli) -> None:
    token = make_token(synced, "leaving", "viewer")
    with serving(synced) as server:
        req = urllib.request.Request(server.base + "/api/v1/events",
                                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=40) as stream:
            assert stream.readline() == b"retry: 3000\n"
            synced.run("token", "revoke", "leaving", check=True)
            started = time.monotonic()
            rest = stream.read().decode()  # until the server ends the response
        assert "event: reload" in rest
        assert "signed out" in rest
        assert time.monotonic() - started < 35  # within two keepalives


def stream_opens(server: Server, token: str) -> bool:
    req = urllib.request.Request(server.base + "/api/v1/events",
                                 headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError as exc:
        exc.close()
        return False


# ------------------------------------------------------------------ pages and headers


def test_pages_escape_user_text_and_send_security_headers(synced: Cli) -> None:
    token = make_token(synced, "op", "operator")
    with serving(synced) as server:
        jar, _ = log_in(server, token)
        for path in ("/tasks", "/tasks/alpha", "/executions", "/plan"):
            page = server.get(path, jar=jar)
            assert page.status == 200, path
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp
            assert "'unsafe-inline'" not in csp
            assert page.headers["x-frame-options"] == "DENY"
            assert page.headers["x-content-type-options"] == "nosniff"
            assert page.headers["referrer-policy"] == "no-referrer"
            assert "<script>" not in page.text.replace(
                '<script src="/static/console.js" defer>', ""
            )
        listing = server.get("/tasks", jar=jar).text
        assert "First &lt;b&gt;task&lt;/b&gt; &amp; friends" in listing
        assert "<b>task</b>" not in listing
        assert server.get("/tasks/nope", jar=jar).status == 404
        spec = server.get("/api/v1/openapi.json").json()
        assert {"/api/v1/tasks", "/api/v1/tasks/{name}", "/api/v1/executions", "/api/v1/plan",
                "/api/v1/tasks/{name}/pause", "/api/v1/tasks/{name}/resume",
                "/api/v1/tasks/{name}/run", "/api/v1/events"} <= set(spec["paths"])  # fmt: skip
        assert server.get("/login?next=//evil.example/").status == 200
        redirect = log_in_next(server, token, "//evil.example/")
        assert redirect == "/tasks"


def has_row(server: Server, token: str, name: str) -> bool:
    answer = server.get(f"/api/v1/tasks/{name}", token)
    return answer.status == 200 and json.loads(answer.text)["row"] is not None


def log_in_next(server: Server, token: str, next_path: str) -> str:
    jar = http.cookiejar.CookieJar()
    form = server.get("/login", jar=jar)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert csrf
    done = server.post("/login", jar=jar,
                       form={"token": token, "csrf_token": csrf[1], "next": next_path})  # fmt: skip
    return done.headers["location"]


# ------------------------------------------------------------------ syncd up


def test_up_starts_the_console_and_prints_a_first_operator_token(cli: Cli) -> None:
    console = free_port()
    log = cli.taskdefs.parent / "up.log"
    env = dict(cli.env, SYNCD_SHUTDOWN_GRACE_SECONDS="2")
    args = ["up", "taskdefs", "--http-port", str(free_port()), "--console-port", str(console)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd.cli", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(proc, console, log)
    try:
        wait_for(lambda: TOKEN.search(log.read_text()) or proc.poll() is not None, 60, "a token")
        text = log.read_text()
        assert f"console: http://127.0.0.1:{console}/" in text, text
        assert "first operator token 'console-operator'" in text, text
        token = TOKEN.search(text)
        assert token, text
        wait_for(lambda: server.get("/api/v1/tasks", token[0]).status == 200, 60, "the console")
        # `up` starts the console and the daemon together: the first sync may still be running.
        wait_for(lambda: has_row(server, token[0], "heartbeat"), 60, "the first sync")
        paused = server.post("/api/v1/tasks/heartbeat/pause", token[0])
        assert paused.status == 200, paused.text
    finally:
        proc.send_signal(signal.SIGINT)  # as Ctrl-C
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert "  console | " in log.read_text(), log.read_text()
    second = cli.run("token", "list", "--format", "json", check=True)
    assert [t["name"] for t in json.loads(second.stdout)] == ["console-operator"]
