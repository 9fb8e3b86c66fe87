"""Load taskdef files the way syncd does and report cost and result, one JSON line each.

Run by tests/reliability/test_fuzz.py as `python -m tests.reliability.fuzz_probe FILE...` in
a subprocess, so the parent can measure the child's peak RSS (os.wait4) and bound its CPU and
address space: a file that blows up memory kills only that process. Each file sits alone in
its directory. Reports the problems of both entry points (`load_taskdefs` on the directory,
`parse_file` on the bytes, the latter for files under 1 MB), the time, the tracemalloc peak,
the process's RSS high-water mark so far (VmHWM: unlike ru_maxrss it does not carry over
the parent's size from before exec), and any exception that escaped (a failure itself).
With SYNCD_PROBE_LIMITS=1 the process caps its own address space (2 GB) and CPU (120 s).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
import tracemalloc
from pathlib import Path
from typing import Any

from syncd.cli.common import catalog
from syncd.core.problems import Problem
from syncd.load.loader import load_taskdefs, parse_file

PARSE_AGAIN_BELOW = 1_000_000  # parse_file again (on top of load_taskdefs) only below this


def _problems(problems: tuple[Problem, ...]) -> list[dict[str, Any]]:
    return [
        {"path": p.path, "line": p.line, "col": p.col, "message": p.message[:200]}
        for p in problems[:20]
    ]


def _load(path: Path, report: dict[str, Any]) -> None:
    tasks = catalog()
    params = tasks.params
    start = time.monotonic()
    loaded = load_taskdefs(path.parent, params, policy=tasks.policy)
    report["load_seconds"] = round(time.monotonic() - start, 3)
    report["load_problems"] = _problems(loaded.problems)
    report["load_problem_count"] = len(loaded.problems)
    report["tasks"] = len(loaded.tasks)
    raw = path.read_bytes()
    if len(raw) < PARSE_AGAIN_BELOW:
        start = time.monotonic()
        parsed = parse_file(raw, path.name, str(path), params, policy=tasks.policy)
        report["parse_seconds"] = round(time.monotonic() - start, 3)
        report["parse_problems"] = _problems(parsed.problems)
        report["parse_problem_count"] = len(parsed.problems)


def probe(path: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"file": str(path)}
    tracemalloc.start()
    try:
        _load(path, report)
    except BaseException:  # reported, never raised: an escaping exception is the finding
        report["exception"] = traceback.format_exc()[-3000:]
    report["tracemalloc_peak"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    report["peak_rss_bytes"] = peak_rss()
    return report


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == "__main__":
    if os.environ.get("SYNCD_PROBE_LIMITS") == "1":
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        resource.setrlimit(resource.RLIMIT_CPU, (120, 120))
    for name in sys.argv[1:]:
        print(json.dumps(probe(Path(name))), flush=True)
