"""Run the reliability suite and print its numbers: kills survived, outages survived, records
written vs expected, fuzz cases run, and the known bugs (strict xfails) it documents.

Usage: .venv/bin/python bench/reliability_report.py [--slow] [pytest args...]
(--slow runs `pytest -m slow tests/reliability`, the long versions, as `make reliability`).
Sizes come from SYNCD_RELIABILITY_* (tests/reliability/support.py); every scenario appends
one JSON line to $SYNCD_RELIABILITY_REPORT, which this script sets to a temporary file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"^=* ?\d+ (passed|failed|error|xfailed|skipped).* in [\d.]+s")
XFAIL = re.compile(r"^XFAIL (.+?) - (.*)$")


def run(slow: bool, extra: list[str]) -> tuple[int, str, list[dict[str, Any]], float]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.jsonl"
        env = {**os.environ, "SYNCD_RELIABILITY_REPORT": str(report)}
        args = [sys.executable, "-m", "pytest", "tests/reliability", "-q", "-rxXfE"]
        args += ["-m", "slow"] if slow else []
        start = time.monotonic()
        proc = subprocess.run(
            [*args, *extra], cwd=REPO, env=env, capture_output=True, text=True, check=False
        )
        took = time.monotonic() - start
        lines = report.read_text().splitlines() if report.exists() else []
    return proc.returncode, proc.stdout, [json.loads(line) for line in lines], took


def show(entries: list[dict[str, Any]], output: str, code: int, took: float) -> None:
    print(f"pytest exit code {code}, {took:.0f} s")
    for line in output.splitlines():
        if SUMMARY.match(line) or line.startswith(("FAILED", "ERROR", "XPASS")):
            print(" ", line)
    print("\nscenarios:")
    for entry in entries:
        scenario = entry.pop("scenario")
        print(f"  {scenario}: " + ", ".join(f"{k}={v}" for k, v in entry.items()))
    bugs: dict[str, list[str]] = {}
    for match in filter(None, map(XFAIL.match, output.splitlines())):
        test, reason = match.groups()
        bugs.setdefault(reason, []).append(test.split("::", 1)[1])
    if bugs:
        print("\nknown bugs (strict xfails; each turns red once fixed):")
        for reason, tests in bugs.items():
            shown = tests[0] if len(tests) == 1 else f"{tests[0]} (+{len(tests) - 1} more)"
            print(f"  {shown}\n      {reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", action="store_true", help="the long versions (-m slow)")
    args, extra = parser.parse_known_args()
    code, output, entries, took = run(args.slow, extra)
    show(entries, output, code, took)
    sys.exit(code)


if __name__ == "__main__":
    main()
