"""The operator policy as the worker applies it: read once per process from SYNCD_POLICY.

A worker checks every attempt against the policy again (it may have changed since the
sync; Redis may have been written by someone else): parameter models are validated with
it in their context (schemas.kinds) by `prepare`, which first resolves secret references
(worker/secrets.py); the file and network code confines what the strings could not prove
(worker/confine.py, worker/egress.py).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel, ValidationError

from schemas.kinds import validation_context
from schemas.policy import Policy
from syncd.core.settings import Settings
from syncd.load.policy import load_policy
from worker.secrets import redact, resolve


@cache
def active_policy() -> Policy:
    """The policy of this process (a bad file raises PolicyError: the worker must not start)."""
    return load_policy(Settings().policy)


def context_for(task_type: str) -> dict[str, Any]:
    return validation_context(active_policy(), task_type)


class ParameterError(ValueError):
    """The parameters of an attempt are invalid here (policy, model, a missing secret)."""


def prepare(task_type: str, model: type[BaseModel], raw: Any) -> tuple[BaseModel, list[str]]:
    """The attempt's parameters: secrets resolved, validated against the model with this
    worker's policy; and the secret values, for `worker.secrets.redact`.

    The message of a ParameterError names fields and rules, never the values (one may be
    a secret): pydantic's own text is rebuilt without `input_value`.
    """
    resolved, secrets = resolve(raw)
    try:
        return model.model_validate(resolved, context=context_for(task_type)), secrets
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'parameters'}: "
            + error["msg"].removeprefix("Value error, ")
            for error in exc.errors()
        )
        raise ParameterError(redact(f"invalid parameters: {reasons}", secrets)) from None
