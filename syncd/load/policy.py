"""Reading the operator policy file (SYNCD_POLICY) as strictly as a taskdef.

`load_policy(path)` parses with the same safe YAML loader, validates against
schemas.policy.Policy and raises PolicyError with a `path:line:col: message` per problem.
No file configured: the safe defaults (schemas.policy.DEFAULT_POLICY).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from schemas.policy import DEFAULT_POLICY, Policy
from syncd.core.errors import PolicyError
from syncd.core.problems import Problem
from syncd.load.validate import locate
from syncd.load.yamlsafe import YamlProblem, parse_document

MAX_POLICY_BYTES = 1024 * 1024


def load_policy(path: Path | str | None) -> Policy:
    """The policy in `path`, or the defaults when `path` is None."""
    if path is None:
        return DEFAULT_POLICY
    shown = str(path)

    def refuse(message: str, line: int = 0, col: int = 0) -> PolicyError:
        return PolicyError([Problem(shown, line, col, message)])

    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise refuse(f"cannot read the policy file: {exc.strerror}") from None
    if len(raw) > MAX_POLICY_BYTES:
        raise refuse(f"the policy file is over {MAX_POLICY_BYTES} bytes")
    try:
        data, marks = parse_document(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise refuse("the policy file is not UTF-8") from None
    except YamlProblem as exc:
        raise refuse(exc.message, exc.line + 1, exc.col + 1) from None
    if not isinstance(data, dict):
        raise refuse("a policy file is a mapping with 'version: 1'", 1, 1)
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = [Problem(shown, *locate(data, marks, (), error)) for error in exc.errors()]
        raise PolicyError(sorted(problems)) from None
