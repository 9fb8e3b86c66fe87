"""Recording every finished attempt in `task_executions`: records, spool, sink, middleware."""

from worker.recording.middleware import ExecutionRecorder, RecorderStats, recorder_from_settings
from worker.recording.sink import ExecutionSink, PostgresSink

__all__ = [
    "ExecutionRecorder",
    "ExecutionSink",
    "PostgresSink",
    "RecorderStats",
    "recorder_from_settings",
]
