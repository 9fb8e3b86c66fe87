// syncd console: live updates over server-sent events. No framework, no inline script
// (the Content-Security-Policy forbids it); every value is put in place with textContent.
"use strict";

(function () {
  const page = document.body.dataset.page;
  if (!["tasks", "task", "executions"].includes(page)) return;

  const live = document.getElementById("live");
  const statusClass = (s) => ({ active: "ok", paused: "warn", inactive: "muted" })[s] || "bad";
  const syncClass = (s) =>
    ({ "in sync": "ok", "changed in git": "info", drift: "warn", frozen: "bad" })[s] || "muted";
  const rateClass = (r) => (r === null ? "none" : r >= 0.95 ? "good" : r >= 0.7 ? "fair" : "poor");
  const percent = (r) => (r === null ? "—" : Math.round(r * 100) + " %");
  const utc = (iso) => (iso ? iso.slice(0, 19).replace("T", " ") + " UTC" : "—");

  // As syncd.views.text.format_duration.
  function durationText(seconds) {
    if (seconds === null) return "—";
    if (seconds < 60) return seconds < 10 ? seconds.toFixed(3) + "s" : seconds.toFixed(1) + "s";
    let minutes = Math.floor(Math.round(seconds) / 60);
    const secs = Math.round(seconds) % 60;
    if (minutes < 60) return minutes + "m " + String(secs).padStart(2, "0") + "s";
    const hours = Math.floor(minutes / 60);
    minutes %= 60;
    return hours + "h " + String(minutes).padStart(2, "0") + "m";
  }

  function setLive(state, text) {
    if (!live) return;
    live.hidden = false;
    live.dataset.state = state;
    live.textContent = text;
  }

  function field(scope, name) {
    return scope.querySelector('[data-field="' + name + '"]');
  }

  function setText(scope, name, text, className) {
    const el = field(scope, name);
    if (!el) return;
    el.textContent = text;
    if (className !== undefined) el.className = className;
  }

  function flash(el) {
    el.classList.remove("flash");
    void el.offsetWidth; // restart the animation
    el.classList.add("flash");
  }

  // ---------------------------------------------------------------- the task list
  const rowsByName = new Map();
  document.querySelectorAll("#task-table tbody tr[data-name]").forEach((tr) => {
    rowsByName.set(tr.dataset.name, tr);
  });

  function updateListRow(row) {
    const tr = rowsByName.get(row.name);
    if (!tr) return;
    const status = row.status || "missing";
    setText(tr, "status", status, "badge " + statusClass(row.status));
    setText(tr, "sync", row.sync_state, "badge " + syncClass(row.sync_state));
    const late = field(tr, "late");
    if (late) late.hidden = !row.late;
    setText(tr, "next_fire", row.display.next_fire);
    const last = row.last_run;
    setText(tr, "last_run", row.display.last_run, last ? (last.success ? "ok-text" : "bad-text") : "");
    setText(tr, "last_run_duration", row.display.last_run_duration);
    const rate = row.recent_runs.success_rate;
    setText(tr, "rate", percent(rate), "rate " + rateClass(rate));
    const runs = row.recent_runs.runs;
    setText(tr, "runs", runs + (runs === 1 ? " run" : " runs"));
    flash(tr);
  }

  function updateListStatus(name, status) {
    const tr = rowsByName.get(name);
    if (!tr) return;
    setText(tr, "status", status || "missing", "badge " + statusClass(status));
    flash(tr);
  }

  // ---------------------------------------------------------------- one task
  const head = document.getElementById("task-head");
  const runTable = document.getElementById("run-table");

  function updateTaskHead(data) {
    if (!head || head.dataset.name !== data.name) return;
    const status = data.status || "missing";
    setText(head, "status", status, "badge " + statusClass(data.status));
    flash(field(head, "status"));
  }

  function cell(text, label, className) {
    const td = document.createElement("td");
    td.textContent = text;
    td.dataset.label = label;
    if (className) td.className = className;
    return td;
  }

  function prependRun(run) {
    if (!runTable || runTable.dataset.name !== run.name) return;
    const body = runTable.tBodies[0];
    const empty = body.querySelector("tr.none");
    if (empty) empty.remove();
    const tr = document.createElement("tr");
    const badge = document.createElement("span");
    badge.className = "badge " + (run.success ? "ok" : "bad");
    badge.textContent = run.outcome;
    const result = cell("", "Result");
    result.appendChild(badge);
    const duration = durationText(run.duration_seconds);
    tr.append(
      cell(utc(run.completed_at), "Completed", "mono"),
      cell(String(run.attempt), "Attempt"),
      result,
      cell(duration, "Duration", "mono"),
      cell(run.error_message || "", "Error", "error"),
    );
    body.insertBefore(tr, body.firstChild);
    flash(tr);
  }

  // ---------------------------------------------------------------- executions
  const banner = document.getElementById("new-runs");
  const executionTable = document.getElementById("execution-table");
  let newRuns = 0;

  function countNewRun() {
    if (!banner || !executionTable) return;
    newRuns += 1;
    setText(banner, "count", String(newRuns));
    banner.hidden = false;
    const link = document.getElementById("newest-link");
    if (link) {
      const url = new URL(window.location.href);
      url.searchParams.delete("cursor");
      link.href = url.pathname + url.search;
    }
  }

  // ---------------------------------------------------------------- the stream
  function connect() {
    const source = new EventSource("/api/v1/events");
    source.addEventListener("open", () => setLive("on", "live"));
    source.addEventListener("error", () => setLive("off", "reconnecting…"));
    source.addEventListener("status", (event) => {
      const data = JSON.parse(event.data);
      if (data.row) updateListRow(data.row);
      else updateListStatus(data.name, data.status);
      updateTaskHead(data);
    });
    source.addEventListener("execution", (event) => {
      const data = JSON.parse(event.data);
      if (data.row) updateListRow(data.row);
      prependRun(data.execution);
      countNewRun();
    });
    source.addEventListener("row", (event) => {
      const data = JSON.parse(event.data);
      if (data.row) updateListRow(data.row);
    });
    source.addEventListener("reload", () => {
      source.close();
      setLive("off", "reload the page");
    });
  }

  connect();
})();
