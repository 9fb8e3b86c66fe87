"""The tasks this worker runs. Importing this package registers them.

The `diagnostics.*` task types (failing, sleeping, crashing on purpose) are registered only
when SYNCD_DIAGNOSTICS=1 (tests, the demo stack): elsewhere they are unknown task types,
to `syncd validate` and to the worker alike.
"""

from syncd.core.settings import Settings
from worker.registry import registry
from worker.tasks import cleanup, data, notification

if Settings().diagnostics:
    from worker.tasks import diagnostics  # noqa: F401 - importing registers its task types

__all__ = ["cleanup", "data", "notification", "registry"]
