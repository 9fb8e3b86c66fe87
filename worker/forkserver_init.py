"""Imported by the runner's forkserver, and only there: the forkserver dies with the worker.

The runner's children die with their parent, the forkserver (PR_SET_PDEATHSIG). The
forkserver would outlive a SIGKILLed worker, because the resource tracker keeps its
"parent is alive" pipe open, so it is told the same thing here, on its first import.

It also ignores SIGTERM and SIGHUP, as do the children it forks: a stop signal sent to the
whole process group (systemd, `kill -TERM -PGID`) is the worker's to handle, and the
attempts running in the children get the worker's shutdown grace.
"""

from __future__ import annotations

import signal

from worker.runner import die_with_parent

die_with_parent()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
