"""Services: what every request uses, opened once when the app starts and closed at stop.

One pooled engine is shared by the task configs, executions, tokens and audit stores;
one Redis client serves the reads and pause/resume. Routes reach them with `services()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from starlette.requests import Request

from syncd.adapters.audit import AuditStore
from syncd.adapters.tokens import TokenStore
from syncd.api.board import TaskBoard
from syncd.api.config import ServeConfig
from syncd.api.events import EventHub, Poller
from syncd.api.sessions import SessionStore, TokenCheck
from syncd.reconcile import Stores


@dataclass
class Services:
    config: ServeConfig
    stores: Stores
    tokens: TokenStore
    audit: AuditStore
    sessions: SessionStore
    board: TaskBoard
    hub: EventHub
    poller: Poller

    @classmethod
    def open(cls, config: ServeConfig) -> Services:
        """Open the stores (SchemaMissing unless `syncd migrate` ran, StoreUnavailable when
        one does not answer) and start the poller."""
        settings = config.settings
        stores = Stores.open(settings)
        try:
            stores.db.check_schema()
            stores.redis.ping()
        except BaseException:
            stores.close()
            raise
        tokens = TokenStore(stores.db.engine)
        board = TaskBoard(
            stores,
            config.taskdefs,
            config.catalog,
            plan_max_age=config.plan_max_age_seconds,
            recent_runs=config.recent_runs,
            grace_seconds=settings.late_grace_seconds,
        )
        hub = EventHub(config.max_streams)
        poller = Poller(
            board=board,
            hub=hub,
            engine=stores.db.engine,
            redis_url=settings.redis_url,
            layout=settings.layout,
            interval=config.poll_seconds,
        )
        sessions = SessionStore(
            _token_check(tokens),
            idle_seconds=config.session_idle_seconds,
            max_seconds=config.session_max_seconds,
        )
        services = cls(
            config, stores, tokens, AuditStore(stores.db.engine), sessions, board, hub, poller
        )
        poller.start()
        return services

    def close(self) -> None:
        self.poller.stop()
        self.stores.close()  # the tokens and audit stores share its engine


def _token_check(tokens: TokenStore) -> TokenCheck:
    def is_active(name: str, created_at: datetime) -> bool:
        return any(
            t.name == name and t.created_at == created_at and t.revoked_at is None
            for t in tokens.list()
        )

    return is_active


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found
