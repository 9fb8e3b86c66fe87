"""`syncd serve`: the HTTP API (`/api/v1`) and the web console, in one FastAPI process.

The API and the console read through the same paths as `syncd status`, `explain`,
`history` and `plan` (a dry-run `reconcile_once`, the views in `syncd.views`) and act
through `syncd.operate`, so neither has a second implementation of any view or action.
Nothing here writes configuration: git is the source of truth (docs/architecture.md,
"The HTTP API and console").

    app.py        create_app: the FastAPI app, its security headers and error mapping
    config.py     ServeConfig: what the CLI hands the app (settings, catalog, broker factory)
    errors.py     SyncdError -> HTTP status, in one place
    services.py   the stores, sessions, board, hub and poller of one process
    auth.py       who is asking: bearer token or console session; roles; CSRF checks
    sessions.py   console sessions: random ids kept in memory, never the token
    board.py      TaskBoard: the status rows of every task, kept current cheaply
    events.py     the 1 s poller (statuses, new executions) and the server-sent events hub
    queries.py    reads the views do not offer: keyset pages of executions, recent outcomes
    reads.py      the explain view and the plan as JSON; the task list's filters
    models.py     the responses' shapes, for the OpenAPI document
    routes_api.py, routes_console.py, presenters.py, templates/, static/
"""
