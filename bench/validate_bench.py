"""Benchmark `syncd validate` on 10,000 tasks in 100 files: wall time and peak memory.

Runs the real CLI in a subprocess (so peak RSS is the command's own) several times and
prints the median. Usage: .venv/bin/python bench/validate_bench.py [--tasks N --files M]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.taskdefs_gen import write_tree


def run_once(root: Path) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "syncd.cli", "validate", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"validate failed:\n{proc.stdout}{proc.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, max(peak, before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "taskdefs"
        write_tree(root, args.tasks, args.files)
        size = sum(p.stat().st_size for p in root.iterdir())
        results = [run_once(root) for _ in range(args.runs)]
    times = [t for t, _ in results]
    print(f"validate: {args.tasks} tasks in {args.files} files ({size / 1e6:.1f} MB)")
    print(
        f"  wall time: median {statistics.median(times):.2f} s, "
        f"min {min(times):.2f} s, max {max(times):.2f} s over {args.runs} runs"
    )
    print(f"  peak RSS (max over runs): {max(m for _, m in results):.0f} MiB")


if __name__ == "__main__":
    main()
