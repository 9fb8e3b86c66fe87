"""Entry points of the worker processes. Both read the same settings as `syncd`
(SYNCD_REDIS_URL, SYNCD_DATABASE_URL, SYNCD_SCHEDULE_PREFIX), so one environment
configures every process:

    taskiq worker worker.app:broker                            # run tasks, record outcomes
    taskiq scheduler worker.app:scheduler --update-interval 1  # fire schedules

`--update-interval 1` is cheap: an unchanged refresh is one Redis GET (see
worker/schedule_source.py), and it makes a sync take effect within about a second.
"""

from __future__ import annotations

from taskiq import TaskiqScheduler

from syncd.core.settings import Settings
from worker.broker import make_broker
from worker.metrics import metrics_from_settings
from worker.recording import recorder_from_settings
from worker.schedule_source import SyncdScheduleSource
from worker.tasks import registry

settings = Settings()
broker = make_broker(registry, settings).with_middlewares(
    metrics_from_settings(settings), recorder_from_settings(settings)
)
scheduler = TaskiqScheduler(broker, [SyncdScheduleSource(settings.redis_url, settings.layout)])
