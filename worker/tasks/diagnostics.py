"""Diagnostic tasks: predictable behaviour for smoke tests, benchmarks and end-to-end tests."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Sequence
from typing import Annotated

from pydantic import Field

from schemas.kinds import ConfinedPath
from worker.confine import ConfinementError, read_text, write_atomic
from worker.policy import active_policy
from worker.registry import task
from worker.tasks.params import Params


class NoopParams(Params):
    pass


@task("diagnostics.noop", params=NoopParams, queue="default")
async def noop(params: NoopParams) -> dict[str, bool]:
    """Do nothing: measures the cost of the machinery itself."""
    return {"ok": True}


class SleepParams(Params):
    seconds: Annotated[float, Field(ge=0, le=3600)]


@task("diagnostics.sleep", params=SleepParams, queue="default")
async def sleep(params: SleepParams) -> dict[str, float]:
    """Sleep, then succeed (timeouts are tested with it): on the event loop, so a timeout
    cancels it rather than leaving a thread asleep."""
    # Imported here: asyncio costs ~30 ms to import, and `syncd validate` imports every
    # task module (for the parameter models) but never runs a task.
    import asyncio  # noqa: PLC0415

    await asyncio.sleep(params.seconds)
    return {"slept": params.seconds}


class FailParams(Params):
    message: str = "failed on purpose"


class DiagnosticFailure(RuntimeError):
    pass


@task("diagnostics.fail", params=FailParams, queue="default")
async def fail(params: FailParams) -> None:
    """Always raise."""
    raise DiagnosticFailure(params.message)


class FlakyParams(Params):
    counter_file: Annotated[ConfinedPath, Field(description="file that counts attempts")]
    failures: Annotated[int, Field(ge=0, le=100)] = 1


COUNTER_LIMIT = 64  # bytes: a counter is a number, anything longer is not one


@task("diagnostics.flaky", params=FlakyParams, queue="default")
async def flaky(params: FlakyParams) -> dict[str, int]:
    """Fail the first `failures` calls (counted in `counter_file`), then succeed: retries."""
    roots = active_policy().paths.allow
    calls = _count(params.counter_file, roots) + 1
    write_atomic(params.counter_file, roots, str(calls).encode())
    if calls <= params.failures:
        raise DiagnosticFailure(f"call {calls} of {params.failures} planned failures")
    return {"calls": calls}


def _count(counter_file: str, roots: Sequence[str]) -> int:
    """The calls counted so far (0 without a file); never echoes what the file holds."""
    try:
        text = read_text(counter_file, roots, COUNTER_LIMIT)
    except ConfinementError as exc:
        if exc.errno != errno.ENOENT:
            raise
        return 0
    try:
        return int(text.strip() or 0)
    except ValueError:
        raise ValueError(f"counter_file does not hold a number ({counter_file})") from None


class BusyParams(Params):
    seconds: Annotated[float, Field(ge=0, le=3600)]
    ignore_soft_limit: bool = False


@task("diagnostics.busy", params=BusyParams, queue="default")
def busy(params: BusyParams) -> dict[str, float]:
    """Block (in the worker's child process) for `seconds`; with `ignore_soft_limit`, swallow
    the soft deadline and go on blocking, so only the hard deadline stops it."""
    end = time.monotonic() + params.seconds
    while (left := end - time.monotonic()) > 0:
        try:
            time.sleep(min(left, 0.05))
        except Exception:
            if not params.ignore_soft_limit:
                raise
    return {"busy": params.seconds}


class ExitParams(Params):
    code: Annotated[int, Field(ge=0, le=255)] = 3


@task("diagnostics.exit", params=ExitParams, queue="default")
def exit_process(params: ExitParams) -> None:
    """End the process running the attempt at once, as a crash would."""
    os._exit(params.code)
