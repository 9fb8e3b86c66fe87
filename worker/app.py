"""Entry points of the worker processes. Both read the same settings as `syncd`
(SYNCD_REDIS_URL, SYNCD_DATABASE_URL, SYNCD_SCHEDULE_PREFIX), so one environment
configures every process:

    taskiq worker worker.app:broker  # run tasks, record outcomes
    python -m worker.scheduler       # fire schedules (worker/scheduler.py)

`scheduler` is what `python -m worker.scheduler` runs: syncd's tick loop
(`worker/scheduler.py`) with syncd's batched sending step (`worker/delivery.py`: claimed
and sent in chunks, retried, counted on `SYNCD_SCHEDULER_METRICS_PORT`). It refreshes the
schedules every second; an unchanged refresh is one Redis GET (see
worker/schedule_source.py), so a sync takes effect within about a second.

Both command lines configure logging before they import this module; its handlers get
a SafeFormatter here (and again at worker start-up, for logging configured later), so a
message or an exception a task controls reaches the log as one visible line.
"""

from __future__ import annotations

from taskiq import TaskiqEvents, TaskiqState

from syncd.core.logtext import make_handlers_safe
from syncd.core.settings import Settings
from worker.broker import make_broker
from worker.delivery import DeliveringScheduler
from worker.metrics import metrics_from_settings
from worker.recording import recorder_from_settings
from worker.schedule_source import SyncdScheduleSource
from worker.tasks import registry

make_handlers_safe()
settings = Settings()
broker = make_broker(registry, settings).with_middlewares(
    metrics_from_settings(settings), recorder_from_settings(settings)
)


async def _safe_logs(state: TaskiqState) -> None:
    make_handlers_safe()


broker.add_event_handler(TaskiqEvents.WORKER_STARTUP, _safe_logs)
scheduler = DeliveringScheduler(
    broker,
    SyncdScheduleSource(settings.redis_url, settings.layout),
    metrics_port=settings.scheduler_metrics_port,
    metrics_host=settings.worker_metrics_host,
)
