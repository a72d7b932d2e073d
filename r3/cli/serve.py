"""`r3 serve`: the API server, and by default the trainer beside it (R3_TRAINER=off: the server only)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import typer
from fastapi import FastAPI

from r3.cli import startup
from r3.cli.console import console, log_quietly
from r3.cli.store import url_without_password
from r3.settings import Settings, load_settings


def serve(
    host: str = typer.Option(None, help="The address to listen on  [default: R3_HOST, else 127.0.0.1]"),
    port: int = typer.Option(None, help="The port  [default: R3_PORT, else 8000; 0: any free one]"),
    verbose: bool = typer.Option(False, "--verbose", help="Log the libraries' messages too, and show a startup "
                                 "error's traceback."),
) -> None:
    """Start the server and, unless R3_TRAINER=off, the trainer beside it (restarted if it dies, stopped
    with the server). Checks the port, folders, database, Redis and model first, and pulls the bundled
    model if it is the one configured and missing."""
    import uvicorn

    settings = load_settings(host=host, port=port)  # the options checked as R3_HOST and R3_PORT are
    log_quietly(verbose)  # (`cli.main.main` reads --verbose for a startup error's traceback)
    # Every mistake a check can find is said before the model loads (seconds), not after.
    listener = startup.bind(settings.host, settings.port)
    startup.check_folders(settings)
    startup.check_redis(settings)  # first: opening the store (the database check) connects to Redis too
    startup.check_database(settings)
    model = startup.check_model(settings)  # pulls the bundled model, with a progress bar, when it is missing

    # Here, not at the top: the server loads torch and the engines.
    from r3.cli.supervisor import TrainerSupervisor
    from server.admin_service import no_trainer_here
    from server.app import create_app

    trainer = TrainerSupervisor(settings.data_dir / "trainer.log") if settings.trainer else None
    app = create_app(settings, trainer_status=trainer.status if trainer else no_trainer_here)
    bound_host, bound_port = listener.getsockname()[:2]
    url = f"http://{'127.0.0.1' if bound_host in ('0.0.0.0', '::') else bound_host}:{bound_port}"
    app.router.lifespan_context = _with_trainer(app.router.lifespan_context, trainer, settings, url, model)
    uvicorn.Server(uvicorn.Config(app)).run(sockets=[listener])


def _with_trainer(serving: Callable[[FastAPI], AbstractAsyncContextManager[Any]], trainer, settings: Settings,
                  url: str, model: str) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The server's lifespan, with the trainer started once the server is ready (so the two do not load
    their models at once) and stopped before the server's services close; the banner in between."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with serving(app):
            if trainer is not None:
                await trainer.start()
            try:
                console.print(await banner(app, settings, url, model), highlight=False, soft_wrap=True)
                yield
            finally:
                if trainer is not None:
                    await trainer.stop()

    return lifespan


async def banner(app: FastAPI, settings: Settings, url: str, model: str) -> str:
    """What a person starting the server needs to know, one fact a line (`model`: what was loaded)."""
    state = app.state
    engine, active = state.engine, state.adapters.active
    device = getattr(engine, "device", None) or "its build's device"
    created = await state.store.keys.any_created()
    if state.auth.configured or created:
        auth = (f"API keys required ({len(state.auth.configured)} from R3_API_KEYS"
                f"{', and keys from `r3 keys create`' if created else ''})")
    else:
        auth = "open to loopback clients only: no API key yet (`r3 keys create --name you` closes it)"
    dashboard = (f"{url}/dashboard (log in with R3_ADMIN_KEY)" if settings.admin_key
                 else "off: set R3_ADMIN_KEY to turn on /dashboard and /admin")
    statics = "".join(f", {name}" for name in sorted(state.adapters.static_adapters))
    trainer = state.trainer_status()
    lines = [
        f"R3 is serving on {url}",
        f"  model       {engine.model_id} ({model})",
        f"  names       {engine.model_id}, r3 (active version), base{statics}, r3@vN (a recorded version)",
        f"  engine      {settings.engine} on {device}",
        f"  active      {active or 'base (no adapter version yet)'}",
        f"  auth        {auth}",
        f"  dashboard   {dashboard}",
        f"  API docs    {url}/docs",
        f"  trainer     {'off (R3_TRAINER=off): run `r3 train` to train' if trainer.running is None else trainer.detail}",
        f"  data        {settings.data_dir} (database {url_without_password(state.store.database.url)})",
    ]
    return "\n".join(lines)
