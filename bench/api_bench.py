"""Benchmark `syncd serve`: GET /api/v1/tasks at many tasks, the executions page at 1,000,000
executions.

On private stores (tests/services.py: a fresh PostgreSQL database, a claimed Redis db;
dropped and flushed afterwards): generate N tasks in 100 files (bench/taskdefs_gen.py),
sync them with the real `reconcile_once`, add M execution rows with one
`INSERT ... SELECT ... generate_series`, make a viewer token, start a real `syncd serve`
and time requests on loopback (the time from sending a request to its last byte: the
server's time plus a loopback round trip).

- `/api/v1/tasks`: the first request (it plans and renders every row), then `--requests`
  more (the board serves them), then as many again right after the plan turned 10 s old
  (the first starts a background re-plan, which the others share the CPU with).
- the executions page (`/api/v1/executions?limit=50`): the newest page, the page 100 pages
  deep (keyset: as cheap as the first), one task's page and the failures page.
- the console's task list page in Debian's Chromium (Playwright, logged in once): from
  navigation start to the document being interactive (`domInteractive`: every row parsed)
  and to the page being live (its script ran and its event stream is open: `#live` reads
  "live"), over a few loads.

Goals: /api/v1/tasks <= 300 ms (median) at 10,000 tasks, the task list page interactive
<= 1 s, an executions page <= 100 ms at 1,000,000 rows. `make bench` runs 1,000 tasks;
`--full` runs 10,000.
Usage: .venv/bin/python bench/api_bench.py [--tasks N | --full] [--executions M] [--requests R]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from playwright.sync_api import Page, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.taskdefs_gen import write_tree
from syncd.adapters.migrate import migrate
from syncd.adapters.tokens import TokenStore
from syncd.cli.common import catalog
from syncd.core.settings import Settings
from syncd.reconcile import Stores, reconcile_once
from tests.services import private_database, private_redis_db

REPO = Path(__file__).resolve().parent.parent
TASKS_GOAL_MS = 300.0
PAGE_GOAL_MS = 1000.0
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package, as the browser tests use
PAGE_LOADS = 5
EXECUTIONS_GOAL_MS = 100.0
PLAN_MAX_AGE_SECONDS = 10  # ServeConfig.plan_max_age_seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def timed_get(url: str, token: str) -> tuple[float, bytes]:
    """Milliseconds from sending the request to its last byte, and the body."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 - loopback
        body = response.read()
    return (time.perf_counter() - start) * 1000, body


def insert_executions(database_url: str, rows: int, tasks: int) -> float:
    """`rows` executions spread over the tasks, a minute apart per task, ~10 % failed;
    one statement. Returns the seconds it took (with ANALYZE)."""
    start = time.perf_counter()
    with psycopg.connect(database_url.replace("postgresql+psycopg", "postgresql")) as conn:
        conn.execute(
            "INSERT INTO task_executions (config_id, task_id, attempt, is_success, started_at,"
            " completed_at, duration_seconds, error_message, task_name)"
            " SELECT c.id, 'bench-' || g, 1, g %% 10 <> 0,"
            "  now() - (%(rows)s - g) * interval '100 milliseconds' - interval '1 second',"
            "  now() - (%(rows)s - g) * interval '100 milliseconds', 0.2 + (g %% 50) / 10.0,"
            "  CASE WHEN g %% 10 = 0 THEN 'RuntimeError: bench failure ' || g END, c.name"
            " FROM generate_series(1, %(rows)s) AS g"
            " JOIN task_configs c ON c.id = 1 + g %% %(tasks)s",
            {"rows": rows, "tasks": tasks},
        )
        conn.commit()
        conn.execute("ANALYZE task_executions")
    return time.perf_counter() - start


def wait_until(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit("syncd serve did not answer")
        time.sleep(0.2)


def answers(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/login", timeout=2):  # noqa: S310 - loopback
            return True
    except OSError:
        return False


def describe(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"median {statistics.median(ordered):7.1f} ms   p95 {p95:7.1f} ms   (n={len(ordered)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", "--tasks", type=int, default=1000)
    parser.add_argument("--full", action="store_true", help="10,000 tasks (the goal's size)")
    parser.add_argument("-m", "--executions", type=int, default=1_000_000)
    parser.add_argument("-r", "--requests", type=int, default=30)
    args = parser.parse_args()
    tasks = 10_000 if args.full else args.tasks
    print(f"goals: GET /api/v1/tasks <= {TASKS_GOAL_MS:.0f} ms at 10,000 tasks; "
          f"executions page <= {EXECUTIONS_GOAL_MS:.0f} ms at 1,000,000 rows")  # fmt: skip
    print(f"this run: {tasks:,} tasks, {args.executions:,} executions")
    with private_database() as db_url, private_redis_db() as redis_url, \
            tempfile.TemporaryDirectory() as tmp:  # fmt: skip
        run(db_url, redis_url, Path(tmp), tasks=tasks, executions=args.executions,
            count=args.requests)  # fmt: skip


def run(db_url: str, redis_url: str, tmp: Path, *, tasks: int, executions: int, count: int) -> None:
    migrate(db_url)
    root = tmp / "taskdefs"
    write_tree(root, tasks, 100)
    stores = Stores.open(Settings(database_url=db_url, redis_url=redis_url))
    try:
        reconcile_once(root, stores, catalog(), datetime.now(UTC))
        token = TokenStore(stores.db.engine).create("bench", "viewer")
    finally:
        stores.close()
    took = insert_executions(db_url, executions, tasks)
    print(f"inserted {executions:,} executions in {took:.1f} s")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCD_")}
    policy = os.environ.get("SYNCD_POLICY", str(REPO / "bench" / "policy.yaml"))
    env.update(SYNCD_DATABASE_URL=db_url, SYNCD_REDIS_URL=redis_url, SYNCD_POLICY=policy)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "syncd.cli", "serve", str(root), "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: answers(base), 60)
        measure(base, token, tasks, count)
        measure_page(base, token, tasks)
    finally:
        server.terminate()
        server.wait(30)


def measure(base: str, token: str, tasks: int, count: int) -> None:
    cold, body = timed_get(base + "/api/v1/tasks", token)
    if json.loads(body)["count"] != tasks:
        raise SystemExit(f"expected {tasks} tasks in the list")
    warm = [timed_get(base + "/api/v1/tasks", token)[0] for _ in range(count)]
    tasks_median = statistics.median(warm)
    print(f"GET /api/v1/tasks ({tasks:,} tasks, {len(body) / 1e6:.1f} MB)")
    print(f"  first request (plans, renders every row): {cold:7.1f} ms")
    print(f"  then:                                     {describe(warm)}")
    time.sleep(PLAN_MAX_AGE_SECONDS + 1)  # the next request starts a background re-plan
    during = [timed_get(base + "/api/v1/tasks", token)[0] for _ in range(count)]
    print(f"  while the plan is refreshed meanwhile:    {describe(during)}")

    page = base + "/api/v1/executions?limit=50"
    pages = {
        "newest page": page,
        "one task's page": page + "&task=task-00007",
        "failures page": page + "&failed=true",
    }
    cursor = ""
    for _ in range(100):
        cursor = json.loads(timed_get(page + (f"&cursor={cursor}" if cursor else ""), token)[1])[
            "next"
        ]
    pages["page 101 (keyset)"] = page + f"&cursor={cursor}"
    print("GET /api/v1/executions?limit=50")
    medians = []
    for name, url in pages.items():
        samples = [timed_get(url, token)[0] for _ in range(count)]
        medians.append(statistics.median(samples))
        print(f"  {name:<18} {describe(samples)}")
    verdict = "met" if max(medians) <= EXECUTIONS_GOAL_MS else "MISSED"
    print(f"executions page goal ({EXECUTIONS_GOAL_MS:.0f} ms): {verdict}")
    if tasks >= 10_000:
        verdict = "met" if tasks_median <= TASKS_GOAL_MS else "MISSED"
        print(f"/api/v1/tasks goal at 10,000 tasks ({TASKS_GOAL_MS:.0f} ms): {verdict}")
    else:
        print(f"/api/v1/tasks goal is for 10,000 tasks: run with --full ({tasks:,} here)")


def measure_page(base: str, token: str, tasks: int) -> None:
    """The task list page in a real browser, a page of the default size and the largest:
    interactive, then live."""
    if not CHROMIUM.exists():
        print(f"task list page: not measured ({CHROMIUM} is not installed)")
        return
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(base + "/login")
        page.get_by_label("Token").fill(token)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(base + "/tasks")
        counted = page.locator("h1 .count").inner_text()
        if counted.replace(",", "") != str(tasks):
            raise SystemExit(f"expected {tasks} tasks on the task list page, it says {counted}")
        default = page_loads(page, base + "/tasks")
        largest = page_loads(page, base + "/tasks?per_page=1000")
        browser.close()
    for (rows, interactive, live), shown in ((default, "default page"), (largest, "1,000 a page")):
        print(f"task list page in Chromium, {shown} ({rows:,} of {tasks:,} rows)")
        print(f"  interactive (domInteractive):             {describe(interactive)}")
        print(f"  live (script ran, event stream open):     {describe(live)}")
    if tasks >= 10_000:
        met = statistics.median(default[1]) <= PAGE_GOAL_MS
        verdict = "met" if met else "MISSED"
        print(f"task list page goal at 10,000 tasks ({PAGE_GOAL_MS:.0f} ms interactive): {verdict}")


def page_loads(page: Page, url: str) -> tuple[int, list[float], list[float]]:
    """Rows shown, then the ms to interactive and to live of PAGE_LOADS loads of `url`."""
    interactive, live = [], []
    for _ in range(PAGE_LOADS):
        started = time.perf_counter()
        page.goto(url, wait_until="commit")
        page.locator("#live", has_text="live").wait_for()
        live.append((time.perf_counter() - started) * 1000)
        timing = "performance.getEntriesByType('navigation')[0].domInteractive"
        interactive.append(float(page.evaluate(timing)))
    return page.locator("tr[data-name]").count(), interactive, live


if __name__ == "__main__":
    main()
