"""The FastAPI application: `create_app()` is what `r3 serve` runs."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from r3.engines import create_engine
from r3.engines.base import Engine
from r3.reflect_retry import Reflector, webhook_policy
from r3.settings import Settings, get_settings
from r3.store import database
from r3.store.episode_log import EpisodeLog
from r3.store.journal import Journal
from r3.store.registry import AdapterRegistry
from r3.store.sql import SqlEpisodeStore
from r3.store.stream import InProcessEpisodeStream, RedisEpisodeStream
from server import dashboard, metrics
from server.adapters import AdapterManager
from server.auth import Authenticator, tenant
from server.auto_rollback import AutoRollback
from server.errors import BodySizeLimit, install_error_handlers
from server.metrics import Metrics
from server.request_id import RequestId
from server.routes import admin, chat, completions, episodes, feedback, health, models


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """The server; `engine`: one already started (and owned) by the caller, instead of `R3_ENGINE`'s.

    Passing an engine lets a program that embeds R3 (or a test session) start vLLM once and serve
    it from the same event loop."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        url = database.database_url(settings)
        db = database.create_engine(url)
        await database.make_ready(db, url)
        sessions = database.sessions(db)
        stream = RedisEpisodeStream(settings.redis_url) if settings.redis_url else InProcessEpisodeStream()
        app.state.episodes = SqlEpisodeStore(sessions)
        app.state.store = EpisodeLog(app.state.episodes, stream, Journal(settings.data_dir / "journal"))
        await app.state.store.start()
        app.state.auth = Authenticator([k.get_secret_value() for k in settings.api_keys],
                                       settings.admin_key.get_secret_value() if settings.admin_key else None,
                                       sessions)
        await app.state.auth.warm_up()
        app.state.engine = engine or await create_engine(settings)
        app.state.registry = AdapterRegistry(sessions, settings.adapters_path, settings.redis_url)
        app.state.adapters = AdapterManager(app.state.engine, app.state.registry, settings.redis_url,
                                            poll_s=settings.adapter_poll_s, grace_s=settings.adapter_grace_s,
                                            static_adapters=frozenset(settings.lora_modules))
        app.state.adapters.on_swap = app.state.metrics.swaps.inc
        await app.state.adapters.start()
        watchdog = AutoRollback(app.state.registry, settings.auto_rollback_min_episodes,
                                settings.auto_rollback_alpha, settings.auto_rollback_check_s)
        rollbacks = asyncio.create_task(watchdog.run_forever(app.state.metrics.rollbacks.inc))
        app.state.reflector = Reflector(app.state.engine, webhook_policy(settings), settings.reflection_max_tokens)
        app.state.started = int(time.time())
        try:
            yield
        finally:
            rollbacks.cancel()
            await app.state.adapters.close()
            await app.state.registry.close()
            if engine is None:
                await app.state.engine.close()
            await app.state.store.close()
            await db.dispose()

    app = FastAPI(title="R3", summary="Reflect, Retry, Reward inference server", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = Metrics()
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestId)  # outermost: every response, errors and 413s included, carries x-request-id
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(admin.router)
    app.include_router(episodes.router)  # its routes carry their own tenant or admin checks
    dashboard.install(app)  # /dashboard: its login session and CSRF checks are its own
    for module in (models, chat, feedback):
        app.include_router(module.router, dependencies=[Depends(tenant)])
    app.include_router(completions.router, dependencies=[Depends(tenant)])  # the legacy POST /v1/completions
    return app
