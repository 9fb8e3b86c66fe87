"""Secret references: found anywhere in parameters, accepted by validation in place of any
value, resolved only in the worker, and redacted from whatever leaves an attempt."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.secrets import credential_hints, secret_name, secret_refs
from syncd.load.loader import load_taskdefs
from syncd.load.policy import load_policy
from tests.conftest import WriteTaskdef
from tests.services import TEST_POLICY
from worker.secrets import SecretMissing, redact, resolve
from worker.tasks import registry

POLICY = load_policy(TEST_POLICY)


def test_a_reference_is_a_one_key_mapping_with_an_upper_case_name() -> None:
    assert secret_name({"secret": "HOOK_URL"}) == "HOOK_URL"
    assert secret_name({"secret": "hook"}) is None
    assert secret_name({"secret": "A", "other": 1}) is None
    assert secret_name("HOOK_URL") is None
    refs = list(secret_refs({"a": {"secret": "X"}, "b": [1, {"secret": "Y"}]}))
    assert refs == [(("a",), "X"), (("b", 1), "Y")]


def test_resolve_reads_the_environment_then_the_secrets_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SYNCD_SECRET_TOKEN", "t0ken")
    (tmp_path / "FILED").write_text("from-a-file\n")
    monkeypatch.setenv("SYNCD_SECRETS_DIR", str(tmp_path))
    value, found = resolve({"a": {"secret": "TOKEN"}, "b": [{"secret": "FILED"}], "c": 3})
    assert value == {"a": "t0ken", "b": ["from-a-file"], "c": 3}
    assert found == ["t0ken", "from-a-file"]
    with pytest.raises(SecretMissing, match="secret NOPE is not set"):
        resolve({"secret": "NOPE"})


def test_redact_replaces_every_occurrence_at_any_depth() -> None:
    secrets = ["hunter2", "hunter2-long"]
    value = {"msg": "pw=hunter2-long and hunter2", "list": ["hunter2"], 3: 4}
    assert redact(value, secrets) == {"msg": "pw=*** and ***", "list": ["***"], 3: 4}
    assert redact("nothing", []) == "nothing"


def test_validation_accepts_a_reference_for_any_parameter(
    taskdefs: Path, write: WriteTaskdef
) -> None:
    write(
        "a.yaml",
        """
        version: 1
        tasks:
          - name: hook
            task_type: notification.webhook
            parameters: {url: {secret: HOOK_URL}, payload: {token: {secret: API_TOKEN}}}
        """,
    )
    result = load_taskdefs(taskdefs, registry.params_models(), policy=POLICY)
    assert result.errors == ()
    (task,) = result.tasks
    assert task.config.parameters["url"] == {"secret": "HOOK_URL"}


def test_literal_credentials_get_a_warning_pointing_to_references(
    taskdefs: Path, write: WriteTaskdef
) -> None:
    path = write(
        "a.yaml",
        """
        version: 1
        tasks:
          - name: hook
            task_type: notification.webhook
            parameters:
              url: https://hooks.slack.com/services/T000/B000/XXXXSECRET
              payload: {password: hunter2}
        """,
    )
    result = load_taskdefs(taskdefs, registry.params_models(), policy=POLICY)
    assert result.errors == ()
    warnings = [str(w) for w in result.warnings]
    assert any(w.startswith(f"{path}:6:") and "embeds a webhook token" in w for w in warnings)
    assert any(w.startswith(f"{path}:7:") and "{secret: NAME}" in w for w in warnings)


@pytest.mark.parametrize(
    ("params", "hinted"),
    [
        ({"url": "https://user:pw@example.com/x"}, True),
        ({"url": "https://example.com/x?token=abc"}, True),
        ({"api_key": "abc"}, True),
        ({"url": "https://example.com/hook"}, False),
        ({"message": "hello"}, False),
        ({"password": {"secret": "PW"}}, False),
    ],
)
def test_credential_hints(params: dict[str, object], hinted: bool) -> None:
    assert bool(list(credential_hints(params))) is hinted
