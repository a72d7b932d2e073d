"""`r3 export OUT --format sft|preference|prompts|episodes`: the store's episodes as a dataset that
`datasets` loads and TRL's trainers take (`r3.export`; docs/guides/export.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from r3.cli.console import console, fail
from r3.cli.store import on_store

if TYPE_CHECKING:
    from r3.export import ExportProgress
    from r3.store.store import Store


class Format(str, Enum):
    """`r3.export.ExportFormat`, named again here: importing r3.export (the verifiers with it) takes
    seconds, which `r3 --help` must not."""

    sft = "sft"
    preference = "preference"
    prompts = "prompts"
    episodes = "episodes"


class Outcome(str, Enum):
    passed = "pass"
    failed = "fail"


def _moment(text: str | None, option: str) -> datetime | None:
    """An ISO 8601 time from the command line; one without an offset is UTC."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a time (YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM])",
                                 param_hint=option) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def export(
    out: Path = typer.Argument(..., dir_okay=False, help="The file to write: JSON Lines, or Parquet with --parquet."),
    format: Format = typer.Option(..., "--format", help="sft: answers that passed, as chat messages; preference: "
                                  "rescued episodes as (prompt, chosen retry, rejected first attempt); prompts: "
                                  "requests whose first attempt failed, with their verifier; episodes: everything."),
    parquet: bool = typer.Option(False, "--parquet", help="Write Parquet (a row group per page) instead of JSON "
                                 "Lines."),
    scenario: str | None = typer.Option(None, help="Only this scenario's episodes."),
    version: str | None = typer.Option(None, help="Only those served by this adapter version (r3-v3 or r3@v3; "
                                       "base: the base model)."),
    since: str | None = typer.Option(None, help="Only those recorded at or after this time "
                                     "(ISO 8601; UTC unless it gives an offset)."),
    until: str | None = typer.Option(None, help="Only those recorded before this time."),
    outcome: Outcome | None = typer.Option(None, help="Only those whose last attempt passed, or failed."),
    task_kind: str | None = typer.Option(None, help="Only this task kind's (function_calling, math, countdown, "
                                         "generic)."),
    tenant: str | None = typer.Option(None, help="Only this tenant's (a key's tenant id, as `r3 keys list` shows)."),
    resume: bool = typer.Option(False, "--resume", help="Go on with an unfinished JSON Lines export to OUT of the "
                                "same format and filters (none: start)."),
    page_size: int = typer.Option(500, min=1, help="Episodes read from the store at a time."),
) -> None:
    """Write the store's episodes as a dataset: JSON Lines (or Parquet) that `datasets.load_dataset`
    reads and TRL's SFTTrainer, DPOTrainer and GRPOTrainer take as they are.

    Written as OUT.partial and renamed to OUT once complete; a JSON Lines export that was stopped
    goes on with --resume. Episodes recorded with `store: false` kept no text: only the episodes
    format holds them (without it)."""
    from r3.export import ExportError, ExportFormat, partial_path
    from r3.export import export as write
    from r3.store.registry import version_of
    from r3.store.sql import EpisodeFilter

    where = EpisodeFilter(since=_moment(since, "--since"), until=_moment(until, "--until"),
                          outcome=None if outcome is None else outcome is Outcome.passed,
                          adapter=version and (version_of(version) or version), task_kind=task_kind, tenant=tenant,
                          scenario=scenario)
    if partial_path(out).exists() and not resume:
        console.print(f"an unfinished export to {out} is started over (--resume goes on with it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("episodes, {task.fields[records]} records"), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task(f"exporting {format.value}", total=None, records=0)

        def show(progress: ExportProgress) -> None:
            bar.update(task, total=progress.total, completed=progress.episodes, records=progress.records)

        async def run(store: Store) -> ExportProgress:
            if scenario is not None and await store.scenarios.get(scenario) is None:
                raise LookupError(f"no scenario named {scenario!r} (`r3 scenarios list` lists them)")
            return await write(store.episodes, out, ExportFormat(format.value), where, parquet=parquet,
                               resume=resume, page_size=page_size, progress=show)

        try:
            done = on_store(run)
        except (ExportError, LookupError) as error:
            raise fail(error) from error
    said = f"wrote {done.records} {format.value} records from {done.episodes} episodes to {out}"
    if done.resumed:
        said += " (going on with an unfinished export)"
    if done.without_text and format is Format.episodes:
        said += f"; {done.without_text} of them recorded with store: false, without text"
    elif done.without_text:
        said += (f"; {done.without_text} episodes recorded with store: false kept no text and are not in it "
                 "(the episodes format holds them, without text)")
    console.print(said)
