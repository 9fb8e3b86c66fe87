"""The broker's configuration: queues served, streams, and the deliberate delivery settings."""

from __future__ import annotations

import pytest
from taskiq_redis import RedisStreamBroker

from syncd.core.settings import Settings
from worker.broker import make_broker, served_queues
from worker.tasks import registry


def test_serves_every_declared_queue_by_default() -> None:
    broker = make_broker(registry, Settings(worker_queues=""))
    assert isinstance(broker, RedisStreamBroker)
    streams = {broker.queue_name, *broker.additional_streams}
    assert streams == {f"syncd-queue:{q}" for q in registry.queues()}
    assert set(broker.get_all_tasks()) == {t.name for t in registry}


def test_delivery_settings_never_drop_work() -> None:
    broker = make_broker(registry, Settings(idle_timeout_seconds=900, xread_count=5))
    assert isinstance(broker, RedisStreamBroker)
    assert broker.maxlen is None  # length trimming would drop unconsumed messages
    assert broker.consumer_id == "0"  # a late consumer group still gets earlier messages
    assert broker.idle_timeout == 900_000
    assert broker.count == 5


def test_queue_subset_from_a_comma_separated_setting() -> None:
    broker = make_broker(registry, Settings(worker_queues="data, default"))
    assert isinstance(broker, RedisStreamBroker)
    assert {broker.queue_name, *broker.additional_streams} == {
        "syncd-queue:data",
        "syncd-queue:default",
    }


def test_unknown_queue_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown queue"):
        served_queues(registry, ["nope"])
