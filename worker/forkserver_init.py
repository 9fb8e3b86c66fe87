"""Imported by the runner's forkserver, and only there: the forkserver dies with the worker.

The runner's children die with their parent, the forkserver (PR_SET_PDEATHSIG). The
forkserver would outlive a SIGKILLed worker, because the resource tracker keeps its
"parent is alive" pipe open, so it is told the same thing here, on its first import.
"""

from __future__ import annotations

from worker.runner import die_with_parent

die_with_parent()
