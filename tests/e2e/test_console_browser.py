"""The console in a real headless Chromium (Debian's, driven by Playwright): log in, watch
a pause arrive on the task list without a reload, run a manual task and see a real
worker's execution appear, filter executions, and be refused as a viewer. Screenshots of
the main pages go to test-output/screenshots/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.conftest import REPO, Cli
from tests.e2e.test_api import Server, make_token, serving
from tests.e2e.test_worker import worker

CHROMIUM = "/usr/bin/chromium"  # Debian's package; Playwright downloads nothing
SHOTS = REPO / "test-output" / "screenshots"
TASKS = """
version: 1
tasks:
  - name: nightly-report
    description: Build the nightly report <for the team>
    task_type: notification.log
    schedule: {cron: "15 3 * * *", timezone: Europe/Berlin}
    parameters: {message: report}
  - name: ticker
    description: A heartbeat every minute
    task_type: diagnostics.noop
    schedule: {interval: 60}
  - name: rebuild-now
    description: Run by hand
    task_type: diagnostics.noop
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def console(cli: Cli) -> Iterator[tuple[Cli, Server]]:
    cli.write("tasks.yaml", TASKS)
    cli.run("sync", str(cli.taskdefs), check=True)
    with serving(cli) as server:
        yield cli, server


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def log_in(page: Page, server: Server, token: str) -> None:
    page.goto(server.base + "/tasks")
    expect(page).to_have_url(server.base + "/login?next=%2Ftasks")
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(server.base + "/tasks")


def status_cell(page: Page, name: str) -> object:
    return page.locator(f'tr[data-name="{name}"] [data-field="status"]')


def test_operator_watches_live_updates_and_runs_a_task(
    browser: Browser, console: tuple[Cli, Server], tmp_path: Path
) -> None:
    cli, server = console
    operator = make_token(cli, "alice", "operator")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(server.base + "/login")
    shot(page, "login")
    log_in(page, server, operator)
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator("tr[data-name]")).to_have_count(3)
    expect(page.get_by_text("Build the nightly report <for the team>")).to_be_visible()
    shot(page, "tasks")

    # Pause with the task page's button in a second tab: the list, open in the first,
    # follows through the event stream, without a reload. Then resume the same way.
    page.evaluate("window.__notReloaded = true")
    other = context.new_page()
    other.goto(server.base + "/tasks/ticker")
    other.get_by_role("button", name="Pause").click()
    expect(other.get_by_role("status").filter(has_text="Paused.")).to_be_visible()
    expect(status_cell(page, "ticker")).to_have_text("paused", timeout=10_000)
    other.get_by_role("button", name="Resume").click()
    expect(other.get_by_role("status").filter(has_text="Resumed.")).to_be_visible()
    expect(status_cell(page, "ticker")).to_have_text("active", timeout=10_000)
    other.close()
    # A pause made elsewhere (the API) reaches the list the same way.
    assert server.post("/api/v1/tasks/ticker/pause", operator).status == 200
    expect(status_cell(page, "ticker")).to_have_text("paused", timeout=10_000)
    assert server.post("/api/v1/tasks/ticker/resume", operator).status == 200
    expect(status_cell(page, "ticker")).to_have_text("active", timeout=10_000)
    assert page.evaluate("window.__notReloaded") is True

    # The task page: the operator's buttons; a real worker runs the manual task.
    with worker(cli, tmp_path / "worker.log"):
        page.get_by_role("link", name="rebuild-now").click()
        expect(page.get_by_role("heading", name="rebuild-now")).to_be_visible()
        page.get_by_role("button", name="Run now").click()
        expect(page.get_by_role("status").filter(has_text="Sent one run")).to_be_visible()
        runs = page.locator("#run-table tbody tr:not(.none)")
        expect(runs).to_have_count(1, timeout=30_000)  # pushed by the event stream
        expect(runs.first).to_contain_text("ok")
    page.reload()
    expect(page.locator(".chart svg rect")).to_have_count(1)
    expect(page.locator("table.audit tbody")).to_contain_text("token:alice")
    shot(page, "task")

    # A busier task page, with a chart of several runs and the cron's fire times.
    for _ in range(2):
        server.post("/api/v1/tasks/nightly-report/pause", operator)
        server.post("/api/v1/tasks/nightly-report/resume", operator)
    page.goto(server.base + "/tasks/nightly-report")
    expect(page.get_by_text("Europe/Berlin").first).to_be_visible()
    shot(page, "task-cron")

    # Executions, filtered with the form.
    page.get_by_role("link", name="Executions", exact=True).click()
    page.get_by_label("Task").fill("rebuild-now")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(f"{server.base}/executions?task=rebuild-now&since=&until=&limit=50")
    expect(page.locator("#execution-table tbody tr:not(.none)")).to_have_count(1)
    page.get_by_label("Failed only").check()
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#execution-table tbody tr.none")).to_have_count(1)
    page.goto(server.base + "/executions")
    shot(page, "executions")

    # The plan, with a change in git and drift made by hand.
    cli.write(
        "more.yaml", "version: 1\ntasks:\n  - {name: added-in-git, task_type: diagnostics.noop}\n"
    )
    cli.redis().delete("syncd:data:task_1")
    page.get_by_role("link", name="Plan", exact=True).click()
    expect(page.get_by_role("link", name="added-in-git")).to_be_visible()
    expect(page.get_by_text("schedule_missing")).to_be_visible()
    shot(page, "plan")

    # A phone-sized window: the list becomes cards.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    small = phone.new_page()
    log_in(small, server, operator)
    expect(small.locator("tr[data-name]")).to_have_count(4)
    shot(small, "tasks-phone")
    phone.close()

    # Keyboard: the skip link is the first stop and leads to the content.
    page.goto(server.base + "/tasks")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    context.close()


def test_viewer_sees_no_buttons_and_a_forged_post_is_refused(
    browser: Browser, console: tuple[Cli, Server]
) -> None:
    cli, server = console
    viewer = make_token(cli, "bob", "viewer")
    context = browser.new_context()
    page = context.new_page()
    log_in(page, server, viewer)
    page.goto(server.base + "/tasks/ticker")
    expect(page.get_by_role("heading", name="ticker")).to_be_visible()
    expect(page.locator("button[data-action]")).to_have_count(0)
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert csrf
    forged = page.request.post(
        server.base + "/tasks/ticker/pause", form={"csrf_token": csrf}, max_redirects=0
    )
    assert forged.status == 403
    api = page.request.post(server.base + "/api/v1/tasks/ticker/pause",
                            headers={"X-CSRF-Token": csrf})  # fmt: skip
    assert api.status == 403
    ticker = server.get("/api/v1/tasks?q=ticker", viewer).json()["tasks"][0]
    assert ticker["status"] == "active"
    context.close()
