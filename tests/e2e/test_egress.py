"""Webhook egress end to end: a real `taskiq worker` applies the operator policy where it
connects, whatever the taskdef's URL looked like when it was synced.

`syncd validate` refuses a literal internal address, but a host name can resolve to
anything. The worker's processes here resolve `hooks.inside.test` to 127.0.0.1 (a
`sitecustomize` on their PYTHONPATH patches socket.getaddrinfo, as a DNS answer would),
so the name passes validation and only the worker's check can stop it.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

from tests.e2e.conftest import Cli
from tests.e2e.test_worker import executions, wait_for, worker
from tests.integration.test_egress import answer, listening

INSIDE = "hooks.inside.test"


def use_policy(cli: Cli, tmp_path: Path, *allow: str) -> None:
    """Write a policy allowing `allow` (nothing: the defaults) and have `cli` use it."""
    path = tmp_path / f"policy-{len(list(tmp_path.glob('policy-*')))}.yaml"
    path.write_text(f"version: 1\negress:\n  allow: {json.dumps(list(allow))}\n")
    cli.env["SYNCD_POLICY"] = str(path)


def resolve_inside(cli: Cli, tmp_path: Path) -> None:
    """Have every process `cli` starts resolve INSIDE to 127.0.0.1."""
    shim = tmp_path / "resolver"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        textwrap.dedent(f"""
        import socket

        _real = socket.getaddrinfo

        def _getaddrinfo(host, *args, **kwargs):
            return _real("127.0.0.1" if host == {INSIDE!r} else host, *args, **kwargs)

        socket.getaddrinfo = _getaddrinfo
        """)
    )
    paths = [str(shim), *filter(None, [cli.env.get("PYTHONPATH")])]
    cli.env["PYTHONPATH"] = os.pathsep.join(paths)


def webhook_taskdef(url: str) -> str:
    return (
        "version: 1\ntasks:\n"
        f"  - {{name: hook, task_type: notification.webhook, timeout_seconds: 10,"
        f" parameters: {{url: '{url}', payload: {{event: deployed}}, timeout_seconds: 5}}}}\n"
    )


def run_hook_once(cli: Cli, tmp_path: Path) -> tuple[str | None, int, bool, str | None]:
    with worker(cli, tmp_path / "worker.log"):
        cli.run("run", "hook", check=True)
        wait_for(lambda: len(executions(cli)) >= 1, 30, "the attempt's record")
    (row,) = executions(cli)
    return row


def test_a_name_resolving_inside_is_refused_when_the_worker_connects(
    cli: Cli, tmp_path: Path
) -> None:
    use_policy(cli, tmp_path)
    resolve_inside(cli, tmp_path)
    with listening(answer(200)) as hook:
        cli.write("a.yaml", webhook_taskdef(hook.url(INSIDE)))
        cli.run("sync", str(cli.taskdefs), check=True)  # a name: nothing to refuse yet
        row = run_hook_once(cli, tmp_path)
    assert row == ("hook", 1, False, f"EgressError: {INSIDE} is not allowed by the egress policy")
    assert hook.connections == 0


def test_the_same_webhook_goes_through_when_the_policy_lists_the_address(
    cli: Cli, tmp_path: Path
) -> None:
    use_policy(cli, tmp_path, "127.0.0.1")
    resolve_inside(cli, tmp_path)
    with listening(answer(200)) as hook:
        cli.write("a.yaml", webhook_taskdef(hook.url(INSIDE)))
        cli.run("sync", str(cli.taskdefs), check=True)
        row = run_hook_once(cli, tmp_path)
    assert row == ("hook", 1, True, None)
    (request,) = hook.requests
    assert request.startswith(b"POST /hook HTTP/1.1\r\n")
    assert f"Host: {INSIDE}:{hook.port}".encode() in request
    assert request.endswith(b'{"event": "deployed"}')


def test_a_literal_address_synced_under_another_policy_is_refused_by_the_worker(
    cli: Cli, tmp_path: Path
) -> None:
    with listening(answer(200)) as hook:
        # Synced and sent while 127.0.0.1 was allowed; the worker runs with the defaults.
        use_policy(cli, tmp_path, "127.0.0.1")
        cli.write("a.yaml", webhook_taskdef(hook.url()))
        cli.run("sync", str(cli.taskdefs), check=True)
        cli.run("run", "hook", check=True)
        use_policy(cli, tmp_path)
        with worker(cli, tmp_path / "worker.log"):
            wait_for(lambda: len(executions(cli)) >= 1, 30, "the attempt's record")
        assert hook.connections == 0
    ((name, attempt, ok, error),) = executions(cli)
    assert (name, attempt, ok) == ("hook", 1, False)
    assert "127.0.0.1 is not a public address" in (error or ""), error
