"""`r3 replay`: a file of tasks through a running R3 (or one it starts), scored per category."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from r3.cli.console import console, fail
from r3.settings import get_settings


class ReplaySource(str, Enum):
    r3 = "r3"
    bfcl = "bfcl"
    xlam = "xlam"


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
    api_key: str | None = typer.Option(None, envvar="R3_API_KEY", help="Bearer key, when the server needs one "
                                       "(with --serve: a key of its own unless given)."),
    timeout_s: float = typer.Option(600.0, help="Limit per request (a request includes its retries)."),
) -> None:
    """Send every task of a file through R3; report first- and second-attempt success per category.

    Resumable: tasks already in the results log are not sent again. Failures are recorded as
    episodes like live traffic, so `r3 train` learns from them."""
    from contextlib import nullcontext

    from r3.replay import bfcl, xlam
    from r3.cli.local_server import ServerStartError, local_server
    from r3.replay.report import table
    from r3.replay.runner import Replay, ReplayRefused
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
        raise fail(error) from error
    tasks = tasks[:limit] if limit else tasks
    if save_tasks is not None:
        write_tasks(tasks, save_tasks)
    out_dir = out or Path("replay") / file.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = get_settings()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    server = (local_server(out_dir / "server.log", api_key) if serve
              else nullcontext((url or f"http://{host}:{settings.port}", api_key)))
    try:
        with server as (base_url, key):
            replayer = Replay(base_url, out_dir, model=model, concurrency=concurrency, api_key=key,
                              timeout_s=timeout_s)
            report = replayer.run(tasks, console)
    except (ServerStartError, ReplayRefused) as error:
        raise fail(error) from error
    if report["answered"]:
        Console().print(table(report["categories"]))
    _say_errors(report["errors"])
    console.print(f"{report['answered']}/{report['tasks']} answered ({report['resumed']} from an earlier run), "
                  f"{len(report['errors'])} errors, {report['wall_s']} s; report: {out_dir / 'report.json'}")
    if report["errors"]:
        raise typer.Exit(1)


def _say_errors(errors: list[dict]) -> None:
    """Every task not answered, grouped by what happened, each group with what to do."""
    groups: dict[tuple[str, str], list[str]] = {}
    for failure in errors:
        groups.setdefault((failure["error"], failure["remedy"]), []).append(failure["id"])
    for (error, remedy), ids in groups.items():
        console.print(f"[red]not answered:[/red] {', '.join(ids)}: {escape(error)}", highlight=False)
        console.print(f"  what to do: {escape(remedy)}", highlight=False)
