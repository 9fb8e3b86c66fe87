"""syncd: scheduled background tasks, the GitOps way (YAML in git -> PostgreSQL + Redis -> TaskIQ).

The layout is the architecture (docs/architecture.md); each package may import only the
ones below it, which import-linter enforces:

    cli         parses argv, prints, exits; the only importer of `worker`
    daemon      the `syncd watch` loop, its lease, logs, metrics, HTTP
    reconcile   load -> desired -> lock -> read -> plan -> guards -> apply
    operate     pause, resume, run now
    adapters    PostgreSQL, Redis, git
    views       plans, status, explain, history as text, markdown, JSON
    load        taskdefs: safe YAML, one-pass validation, file:line problems
    core        pure values and rules: model, plan, guards, payloads, keys, fire times, settings
"""
