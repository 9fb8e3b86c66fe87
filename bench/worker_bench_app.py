"""The worker's broker without the execution recorder, for `bench/worker_bench.py` only.

Same tasks, queues and middlewares as `worker.app:broker` minus `ExecutionRecorder`, so the
benchmark can measure what recording costs: `taskiq worker bench.worker_bench_app:broker`.
"""

from __future__ import annotations

from syncd.core.settings import Settings
from worker.broker import make_broker
from worker.tasks import registry

broker = make_broker(registry, Settings())
