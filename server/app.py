"""The FastAPI application: `create_app()` is what `r3 serve` runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline

from r3 import telemetry
from r3.engines import create_engine
from r3.engines.base import Engine
from r3.reflect_retry import Reflector, verifier_runtime
from r3.settings import Settings, get_settings
from r3.store.episode_log import EpisodeLog
from r3.store.journal import Journal
from r3.store.retention import EpisodeRetention
from r3.store.store import open_store
from r3.store.stream import NoEpisodeStream
from server import dashboard
from server.adapters import AdapterManager
from server.admin_protocol import CHAT_RESPONSES, COMPLETION_RESPONSES, TrainerStatus
from server.admin_service import no_trainer_here
from server.auth import Authenticator, tenant
from server.deps import recordable
from server.auto_rollback import AutoRollback
from server.canary import CanaryWatch
from server.errors import BodySizeLimit, IgnoredFieldsHeader, install_error_handlers
from server.metrics import Metrics
from server.request_id import RequestId
from server.chat import router as chat
from server.completions import router as completions
from server.responses import router as responses
from server.routes import admin, episodes, feedback, health, metrics, models


def create_app(settings: Settings | None = None, engine: Engine | None = None,
               trainer_status: Callable[[], TrainerStatus] = no_trainer_here) -> FastAPI:
    """The server; `engine`: one already started (and owned) by the caller, instead of `R3_ENGINE`'s;
    `trainer_status`: the trainer's status now, for the admin API and the dashboard (`r3 serve`
    passes its supervisor's).

    Passing an engine lets a program that embeds R3 (or a test session) start vLLM once and serve
    it from the same event loop."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        """Builds each service once and keeps it in `app.state`, where routes get it through the typed
        dependencies of `server.deps` (and the dashboard reads it)."""
        telemetry.configure_tracing(settings, "r3-server")  # off unless the settings ask for it
        async with open_store(settings) as store:
            # The log puts a journal and the stream in front of the database: what the API records through.
            log = EpisodeLog(store.episodes, store.stream or NoEpisodeStream(),
                             Journal(settings.data_dir / "journal", settings.journal_reserve_bytes))
            await log.start()
            auth = Authenticator([k.get_secret_value() for k in settings.api_keys],
                                 settings.admin_key.get_secret_value() if settings.admin_key else None, store.keys)
            await auth.warm_up()
            served = engine or await create_engine(settings)
            adapters = AdapterManager(served, store.registry, settings.redis_url, poll_s=settings.adapter_poll_s,
                                      grace_s=settings.adapter_grace_s,
                                      static_adapters=frozenset(settings.lora_modules))
            adapters.on_swap = app_metrics.swaps.inc
            await adapters.start()
            watchdog = AutoRollback(store, settings.auto_rollback_min_episodes, settings.auto_rollback_alpha,
                                    settings.auto_rollback_check_s)
            rollbacks = asyncio.create_task(watchdog.run_forever(app_metrics.rollbacks.inc))
            canary_watch = CanaryWatch(store, settings, on_decision=adapters.sync)
            canaries = asyncio.create_task(canary_watch.run_forever())
            retention = (asyncio.create_task(EpisodeRetention(store, settings).run_forever())
                         if settings.episode_retention_days else None)
            reflector = Reflector(served, verifier_runtime(settings, served), settings.reflection_max_tokens)
            state = app.state
            state.store, state.episode_log, state.auth, state.engine = store, log, auth, served
            state.adapters, state.reflector, state.canary_watch = adapters, reflector, canary_watch
            state.started = int(time.time())
            try:
                yield
            finally:
                rollbacks.cancel()
                canaries.cancel()
                if retention is not None:
                    retention.cancel()
                await adapters.close()
                if engine is None:
                    await served.close()
                await log.close()

    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from files this server serves (from
    # the fastapi-offline package), not from a CDN, so they work offline.
    app = FastAPIOffline(title="R3", summary="Reflect, Retry, Reward inference server", lifespan=lifespan)
    app.state.trainer_status = trainer_status
    app_metrics = Metrics()
    app.state.settings, app.state.metrics = settings, app_metrics
    install_error_handlers(app)
    telemetry.instrument_app(app, settings)  # a server span per request, when tracing is on
    app.add_middleware(IgnoredFieldsHeader)  # names what the unknown-field policy ignored, on any response
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestId)  # outermost: every response, errors and 413s included, carries x-request-id
    app.include_router(health.router)
    app.include_router(metrics.router)  # text/plain, declared as such in the OpenAPI document
    app.include_router(admin.router)
    app.include_router(episodes.router)  # its routes carry their own tenant or admin checks
    dashboard.install(app)  # /dashboard: its login session and CSRF checks are its own
    app.include_router(models.router, dependencies=[Depends(tenant)])
    # Routes that record episodes refuse a request up front (503) while its episode could not be recorded.
    recording = [Depends(tenant), Depends(recordable)]
    app.include_router(chat.router, dependencies=recording, responses=CHAT_RESPONSES)
    app.include_router(feedback.router, dependencies=recording)
    app.include_router(completions.router, dependencies=recording,  # the legacy POST /v1/completions
                       responses=COMPLETION_RESPONSES)
    app.include_router(responses.router)  # POST records (tenant, recordable); GET reads the caller's own
    return app
