"""The edges: PostgreSQL (`task_configs`, the sync lock, `task_executions` reads,
migrations), Redis (schedules, statuses, the leader lease) and git. Every driver error
becomes a `SyncdError` here; nothing here decides what to write."""
