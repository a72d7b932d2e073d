"""`r3 scenarios list | create | configure`: the workloads this server serves, each with its own lineage."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from r3.cli.console import HELP, console, fail
from r3.cli.store import on_store
from r3.settings import get_settings

if TYPE_CHECKING:
    from r3.store.store import Store

app = typer.Typer(help="Scenarios: one adapter lineage per workload, chosen by a request's `model`.",
                  no_args_is_help=True, **HELP)

SET_HELP = ('A training override, SETTING=VALUE by the setting\'s field name, VALUE as JSON: '
            '--set train_num_generations=8 --set gate_alpha=0.01. Repeat for several.')


def _overrides(pairs: list[str]) -> dict[str, Any]:
    """`--set` pairs as a dict; a value that is not JSON is taken as text."""
    overrides = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise fail(f"--set {pair!r}: write SETTING=VALUE, e.g. train_num_generations=8")
        try:
            overrides[key] = json.loads(value)
        except ValueError:
            overrides[key] = value
    return overrides


@app.command("list")
def scenarios_list() -> None:
    """Every scenario: the `model` clients name it by, its active version, its training overrides."""
    async def read(store: Store) -> list[tuple[Any, Any]]:
        actives = await store.registry.actives()
        return [(s, actives.get(s.name)) for s in await store.scenarios.list_all()]

    from r3.store.registry import lineage

    table = Table("scenario", "model", "active", "training overrides", "description", title_justify="left")
    for scenario, active in on_store(read):
        table.add_row(scenario.name, lineage(scenario.name), active.name if active else "base",
                      json.dumps(scenario.training) if scenario.training else "-", scenario.description or "-")
    Console().print(table)


@app.command("create")
def scenarios_create(name: str = typer.Argument(..., help="Lowercase letters, digits, '_' and inner '-'."),
                     description: str = typer.Option("", help="What the workload is."),
                     set_: list[str] = typer.Option([], "--set", help=SET_HELP)) -> None:
    """Create a scenario: its own lineage (NAME-v1, …), served as `model: "NAME"` (on the base model
    until its first version is promoted); its rounds train on its episodes alone."""
    from r3.store.scenarios import ScenarioError

    overrides, settings = _overrides(set_), get_settings()
    try:
        created = on_store(lambda store: store.scenarios.create(name, description, overrides, settings))
    except ScenarioError as error:
        raise fail(error) from error
    console.print(f"created scenario {created.name!r}: clients name it as model {created.name!r}")


@app.command("configure")
def scenarios_configure(name: str = typer.Argument(...),
                        set_: list[str] = typer.Option([], "--set", help=SET_HELP + " Replaces the overrides."),
                        description: str | None = typer.Option(None, help="A new description.")) -> None:
    """Replace a scenario's training overrides (none: its rounds use the global settings)."""
    from r3.store.scenarios import ScenarioError

    overrides, settings = _overrides(set_), get_settings()
    try:
        on_store(lambda store: store.scenarios.configure(name, overrides, description, settings))
    except (ScenarioError, LookupError) as error:
        raise fail(error) from error
    console.print(f"scenario {name!r}: training overrides {json.dumps(overrides) if overrides else 'none'}")
