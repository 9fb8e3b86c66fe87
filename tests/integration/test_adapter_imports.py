"""What the commands import: a sync's schema check loads no alembic, `syncd validate` no
driver, and the head revision read from the revision files is alembic's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.script import ScriptDirectory

from syncd.adapters.migrate import alembic_config, head_revision
from tests.conftest import WriteTaskdef
from tests.services import store_env

REPO = Path(__file__).resolve().parents[2]
DRIVERS = ("sqlalchemy", "psycopg", "redis", "alembic")


def test_the_head_revision_is_alembics() -> None:
    assert head_revision() == ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_a_schema_check_imports_no_alembic_and_no_history_reader(migrated_url: str) -> None:
    probe = (
        "import sys\n"
        "from syncd.reconcile import Stores\n"
        "from syncd.adapters.postgres import DbStore\n"
        f"store = DbStore.from_url({migrated_url!r})\n"
        "store.check_schema()\n"
        "store.close()\n"
        "print(sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] == 'alembic' or m == 'syncd.adapters.executions'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert out.strip() == "[]"


def test_validate_imports_no_driver(
    write: WriteTaskdef, taskdefs: Path, migrated_url: str, redis_url: str
) -> None:
    write(
        "a.yaml",
        """
        version: 1
        tasks:
          - name: nightly
            task_type: cleanup.temp_files
            schedule: {cron: "0 3 * * *"}
            parameters: {path: /tmp/x}
        """,
    )
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "syncd.cli", "validate", str(taskdefs)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=store_env(migrated_url, redis_url),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert {name.split(".")[0] for name in imported} & set(DRIVERS) == set()
