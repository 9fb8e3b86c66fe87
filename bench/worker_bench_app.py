"""The worker's broker without the execution recorder, for `bench/worker_bench.py` only.

Same tasks, queues and middlewares as `worker.app:broker` (metrics included) minus
`ExecutionRecorder`, so the benchmark can measure what recording costs:
`taskiq worker bench.worker_bench_app:broker`.
"""

from __future__ import annotations

from syncd.core.settings import Settings
from worker.broker import make_broker
from worker.metrics import metrics_from_settings
from worker.tasks import registry

settings = Settings()
broker = make_broker(registry, settings).with_middlewares(metrics_from_settings(settings))
