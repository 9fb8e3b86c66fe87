"""The worker side of syncd: task registry, tasks, broker, schedule source and recorder."""
