"""Secrets by reference, end to end: the worker resolves `{secret: NAME}` and uses the
value, and the value appears nowhere else: not in PostgreSQL, Redis, plans (text, markdown,
json), `explain`, the worker's log or `task_executions`."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import psycopg

from tests.e2e.conftest import Cli
from tests.e2e.test_worker import executions, wait_for, worker


class Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Recorder.seen.append((self.path, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def listener() -> Iterator[ThreadingHTTPServer]:
    Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def database_dump(cli: Cli) -> str:
    url = cli.env["SYNCD_DATABASE_URL"].replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT row_to_json(c)::text FROM task_configs c UNION ALL "
            "SELECT row_to_json(e)::text FROM task_executions e"
        ).fetchall()
    return "\n".join(row[0] for row in rows)


def redis_dump(cli: Cli) -> str:
    client = cli.redis()
    parts = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "string":
            parts.append(str(client.get(key)))
        elif kind == "list":
            parts.append(str(client.lrange(key, 0, -1)))
        elif kind == "zset":
            parts.append(str(client.zrange(key, 0, -1)))
        elif kind == "stream":
            parts.append(str(client.xrange(key)))
        elif kind == "hash":
            parts.append(str(client.hgetall(key)))
    return "\n".join(parts)


def test_a_secret_is_used_by_the_worker_and_appears_nowhere_else(cli: Cli, tmp_path: Path) -> None:
    token, note = f"tok-{uuid.uuid4().hex}", f"note-{uuid.uuid4().hex}"
    with listener() as server:
        hook = f"http://127.0.0.1:{server.server_address[1]}/hook/{token}"
        cli.env["SYNCD_SECRET_HOOK_URL"] = hook
        cli.env["SYNCD_SECRET_NOTE"] = note
        cli.write(
            "a.yaml",
            """
            version: 1
            tasks:
              - name: hook
                task_type: notification.webhook
                parameters: {url: {secret: HOOK_URL}, payload: {note: {secret: NOTE}}}
              - name: echo
                task_type: notification.log
                parameters: {message: {secret: NOTE}}
              - name: missing
                task_type: notification.webhook
                parameters: {url: {secret: NOT_SET}}
            """,
        )
        plans = [
            cli.run("plan", str(cli.taskdefs), "--format", fmt).stdout
            for fmt in ("text", "markdown", "json")
        ]
        cli.run("sync", str(cli.taskdefs), check=True)
        log = tmp_path / "worker.log"
        with worker(cli, log):
            for name in ("hook", "echo", "missing"):
                cli.run("run", name, check=True)
            wait_for(lambda: len(executions(cli)) >= 3, 30, "three attempts", lambda: ())
            time.sleep(0.5)
        explain = cli.run("explain", "hook").stdout
        changed = (cli.taskdefs / "a.yaml").read_text().replace("HOOK_URL", "OTHER_URL", 1)
        (cli.taskdefs / "a.yaml").write_text(changed)
        plans.append(cli.run("plan", str(cli.taskdefs)).stdout)

    assert [(path, json.loads(body)) for path, body in Recorder.seen] == [
        (f"/hook/{token}", {"note": note})
    ]
    outcomes = {name: (ok, error) for name, _, ok, error in executions(cli)}
    assert outcomes["hook"] == (True, None)
    assert outcomes["echo"] == (True, None)
    assert outcomes["missing"][0] is False
    assert "secret NOT_SET is not set" in (outcomes["missing"][1] or "")
    assert "secret HOOK_URL" in plans[3]
    assert "secret OTHER_URL" in plans[3]
    everywhere = {
        "PostgreSQL": database_dump(cli),
        "Redis": redis_dump(cli),
        "plan text": plans[0],
        "plan markdown": plans[1],
        "plan json": plans[2],
        "explain": explain,
        "worker log": log.read_text(errors="replace"),
    }
    for where, text in everywhere.items():
        assert token not in text, f"the token leaked into {where}"
        assert note not in text, f"the note leaked into {where}"
    assert "***" in everywhere["worker log"]  # the echo task's line, redacted
