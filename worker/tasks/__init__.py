"""The tasks this worker runs. Importing this package registers all of them."""

from worker.registry import registry
from worker.tasks import cleanup, data, diagnostics, notification

__all__ = ["cleanup", "data", "diagnostics", "notification", "registry"]
