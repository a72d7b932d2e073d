"""`r3 canary status | promote | abort`: a scenario's live canary, as `/admin/canary` shows and acts on it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from r3.cli.console import HELP, console, fail
from r3.cli.store import on_store
from r3.settings import get_settings

if TYPE_CHECKING:
    from r3.canary import Verdict
    from r3.store.canaries import CanaryInfo
    from r3.store.store import Store

app = typer.Typer(help="Live canaries: a candidate serving a share of traffic until a sequential test decides.",
                  no_args_is_help=True, **HELP)
SCENARIO = typer.Option("default", help="The scenario whose canary this is.")


@app.command("status")
def canary_status(scenario: str = SCENARIO) -> None:
    """The scenario's running canary (else its last one): each outcome's means with their always-valid
    interval, the test's statistics against the boundary, the decision."""
    settings = get_settings()

    async def read(store: Store) -> tuple[CanaryInfo, Verdict | None]:
        found = await store.canaries.latest(scenario)
        if found is None:
            raise LookupError(f"scenario {scenario!r} has had no live canary")
        return found, await store.canaries.verdict(found, settings) if found.state == "running" else None

    try:
        canary, verdict = on_store(read)
    except LookupError as error:
        raise fail(error) from error
    numbers = verdict.numbers() if verdict is not None else canary.numbers
    console.print(f"scenario {scenario}: canary {canary.version} vs {canary.baseline or 'base'}, "
                  f"{canary.fraction:g} of unpinned requests, {canary.state}"
                  + (f" ({canary.decided_by}: {canary.reason})" if canary.decided_at else ""))
    table = Table("outcome", "canary", "current", "difference [interval]", "log Λ(0) / log Λ(−margin) / boundary",
                  title_justify="left")
    for c in numbers.get("comparisons", []):
        table.add_row(c["measure"], f"{c['canary_mean']:.3f} (n={c['canary_n']})",
                      f"{c['current_mean']:.3f} (n={c['current_n']})",
                      f"{c['difference']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]",
                      f"{c['worse_statistic']:.2f} / {c['not_worse_statistic']:.2f} / {c['boundary']:.2f}")
    Console().print(table)
    console.print(f"decision: {numbers.get('decision', '-')}: {numbers.get('reason', '')}")


def _end(scenario: str, promote: bool) -> None:
    from r3.store.models import CanaryState

    settings = get_settings()

    async def end(store: Store) -> bool:
        running = next((c for c in await store.canaries.running() if c.scenario == scenario), None)
        if running is None:
            raise LookupError(f"no canary runs in scenario {scenario!r}")
        numbers = (await store.canaries.verdict(running, settings)).numbers()
        if promote:
            return await store.canaries.promote(running.id, "cli", "promoted from the command line", numbers)
        return await store.canaries.end(running.id, CanaryState.ABORTED, "cli", "aborted from the command line",
                                        numbers)

    try:
        done = on_store(end)
    except LookupError as error:
        raise fail(error) from error
    if not done:
        raise fail("the canary ended meanwhile (its test decided, or the current version changed)")
    console.print(f"scenario {scenario}: the canary was {'promoted' if promote else 'aborted'}")


@app.command("promote")
def canary_promote(scenario: str = SCENARIO) -> None:
    """Promote the scenario's running canary now, whatever its test says (recorded in the audit log)."""
    _end(scenario, promote=True)


@app.command("abort")
def canary_abort(scenario: str = SCENARIO) -> None:
    """Abort the scenario's running canary now: its version is rejected, the current one kept."""
    _end(scenario, promote=False)
