"""The long-running side of syncd: the `syncd watch` loop, its leader lease, logs, metrics
and HTTP endpoint. It reconciles through `syncd.reconcile` and decides nothing itself."""
