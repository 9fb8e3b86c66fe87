"""The task registry: which task types exist, their parameter models and queues.

Tasks register with `@task("cleanup.temp_files", params=CleanupParams, queue="default")`.
syncd reads the registry as plain data (`params_models()`) to validate taskdefs; the
broker module turns each entry into a TaskIQ task. Importing it connects to nothing.

A task is a plain function of its validated parameters; the broker decides where it runs
(blocking functions in a worker thread, coroutine functions on the event loop), so task
modules need no asyncio and `syncd validate`, which imports them all, stays fast.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from schemas.taskdef import TASK_TYPE_PATTERN

P = TypeVar("P", bound=BaseModel)
TaskFunc = Callable[[P], Any]  # returns the result, or an awaitable of it


@dataclass(frozen=True)
class TaskType:
    """One registered task type."""

    name: str
    params: type[BaseModel]
    queue: str
    func: Callable[[Any], Any]

    @property
    def is_async(self) -> bool:
        """A coroutine function runs on the event loop; anything else blocks, in a thread."""
        return inspect.iscoroutinefunction(self.func)


class DuplicateTaskType(ValueError):
    pass


class TaskRegistry:
    """Task types by name; a name may be registered once."""

    def __init__(self) -> None:
        self._types: dict[str, TaskType] = {}

    def task(
        self, name: str, *, params: type[P], queue: str = "default"
    ) -> Callable[[TaskFunc[P]], TaskFunc[P]]:
        """Decorator registering a function that takes its validated parameters."""
        if not re.fullmatch(TASK_TYPE_PATTERN, name):
            raise ValueError(f"task type name {name!r} does not match {TASK_TYPE_PATTERN}")

        def register(func: TaskFunc[P]) -> TaskFunc[P]:
            if name in self._types:
                raise DuplicateTaskType(f"task type {name!r} is registered twice")
            self._types[name] = TaskType(name, params, queue, func)
            return func

        return register

    def __getitem__(self, name: str) -> TaskType:
        return self._types[name]

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[TaskType]:
        return iter(sorted(self._types.values(), key=lambda t: t.name))

    def __len__(self) -> int:
        return len(self._types)

    def params_models(self) -> dict[str, type[BaseModel]]:
        """task_type -> parameter model: what `syncd validate` needs, as data."""
        return {name: t.params for name, t in self._types.items()}

    def queues(self) -> list[str]:
        return sorted({t.queue for t in self._types.values()})


registry = TaskRegistry()
task = registry.task
