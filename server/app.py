"""The FastAPI application: `create_app()` is what `r3 serve` runs."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

from r3.engines import create_engine
from r3.settings import Settings, get_settings
from server.errors import BodySizeLimit, install_error_handlers
from r3.store.memory import InMemoryEpisodeStore
from r3.reflect_retry import Reflector, webhook_policy
from server.routes import chat, feedback, health, models


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.engine = await create_engine(settings)
        app.state.reflector = Reflector(app.state.engine, webhook_policy(settings), settings.reflection_max_tokens)
        app.state.store = InMemoryEpisodeStore()
        app.state.started = int(time.time())
        try:
            yield
        finally:
            await app.state.engine.close()

    app = FastAPI(title="R3", summary="Reflect, Retry, Reward inference server", lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    for module in (health, models, chat, feedback):
        app.include_router(module.router)
    return app
