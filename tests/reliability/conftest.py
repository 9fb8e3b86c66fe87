"""Fixtures of the reliability tests, and the rule that `slow` tests run only when asked.

`pytest tests/reliability` runs the short CI versions; `pytest -m slow tests/reliability`
(`make reliability`) runs the long ones. Sizes come from SYNCD_RELIABILITY_* variables
(tests/reliability/support.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.adapters.migrate import migrate
from tests.reliability.support import Stores

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (not skip) this directory's `slow` tests unless -m names `slow`: CI runs the
    short versions and reports nothing as skipped; `make reliability` runs the long ones."""
    if "slow" in (config.getoption("markexpr", "") or ""):
        return
    slow = [i for i in items if i.get_closest_marker("slow") and HERE in Path(str(i.path)).parents]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [i for i in items if i not in slow]


@pytest.fixture
def stores(fresh_database_url: str, redis_url: str) -> Stores:
    migrate(fresh_database_url)
    return Stores(fresh_database_url, redis_url)
