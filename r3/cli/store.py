"""The store's commands: `r3 migrate` and `r3 keys create | list | revoke | scenario`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from r3.cli.console import HELP, console, fail
from r3.cli.startup import database_errors
from r3.settings import get_settings

if TYPE_CHECKING:
    from r3.store.store import Store

keys_app = typer.Typer(help="API keys: once one exists, every request needs a key.", no_args_is_help=True, **HELP)
T = TypeVar("T")


def migrate() -> None:
    """Bring the database (R3_DATABASE_URL, or the embedded SQLite) to the newest schema."""
    from r3.store import database

    url = database.database_url(get_settings())
    with database_errors(url):
        database.migrate(url)
    console.print(f"migrated: {url_without_password(url)}")


def on_store(work: Callable[[Store], Awaitable[T]]) -> T:
    """`work(store)` on the configured store, made ready first (the embedded SQLite migrates itself);
    errors reaching it become `ConfigurationError`s naming the variable."""
    from r3.store import database
    from r3.store.store import open_store

    settings = get_settings()

    async def run() -> T:
        async with open_store(settings) as store:
            return await work(store)

    with database_errors(database.database_url(settings)):
        return asyncio.run(run())


@keys_app.command("create")
def keys_create(name: str = typer.Option(..., help="Who the key is for (one live key per name)."),
                scenario: str | None = typer.Option(None, help="The scenario `model: \"r3\"` means for this key's "
                                                              "requests (default: the scenario `default`).")) -> None:
    """Create an API key. It is printed once; only its hash is stored."""
    from r3.store import keys

    async def create(store: Store) -> tuple[bool, str, str]:
        first = not await store.keys.any_created()
        if scenario is not None and await store.scenarios.get(scenario) is None:
            raise LookupError(f"no scenario named {scenario!r}: create it first (`r3 scenarios create`)")
        tenant, key = await store.keys.create(name)
        if scenario is not None:
            await store.keys.set_default_scenario(tenant, scenario)
        return first, tenant, key

    try:
        first, tenant, key = on_store(create)
    except (keys.KeyNameTaken, LookupError) as error:
        raise fail(error) from error
    console.print(f"created key for {name!r} (tenant {tenant}); it is shown only now:")
    if first:
        console.print("This is the first key: from now on every request needs a key (`Authorization: Bearer "
                      "<key>`), loopback ones too. Episodes recorded before it belong to no key: every key gets a "
                      "404 for them; the admin key reads them (GET /admin/episodes, the dashboard).")
    print(key)


@keys_app.command("list")
def keys_list() -> None:
    """Every key created with `r3 keys create`: name, tenant, created, revoked (the keys themselves are
    never stored). Keys given in R3_API_KEYS are counted, not listed."""
    listed = on_store(lambda store: store.keys.list_all())
    # The scenario column only where some key names one: a narrow terminal keeps the tenant ids whole.
    scenarios = any(key.default_scenario for key in listed)
    table = Table("name", "tenant", *(("scenario",) if scenarios else ()), "created (UTC)", "revoked (UTC)",
                  title_justify="left")
    for key in listed:
        table.add_row(key.name, key.tenant, *((key.default_scenario or "default",) if scenarios else ()),
                      f"{key.created_at:%Y-%m-%d %H:%M}", f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "-")
    Console().print(table)
    from_settings = len(get_settings().api_keys)
    console.print(f"{sum(k.revoked_at is None for k in listed)} live, {sum(k.revoked_at is not None for k in listed)} "
                  f"revoked; {from_settings} more in R3_API_KEYS")


@keys_app.command("revoke")
def keys_revoke(name: str = typer.Argument(..., help="The key's name (or its tenant id), as `r3 keys list` shows.")) -> None:
    """Revoke a key: every server refuses it from its next request on. Its episodes stay (the admin key
    reads them). A server that had keys never reopens to keyless clients, even with none left."""
    try:
        revoked = on_store(lambda store: store.keys.revoke(name))
    except LookupError as error:
        raise fail(error) from error
    console.print(f"revoked the key {revoked.name!r} (tenant {revoked.tenant})")


@keys_app.command("scenario")
def keys_scenario(name: str = typer.Argument(..., help="The key's name (or its tenant id)."),
                  scenario: str = typer.Argument(..., help="The scenario `model: \"r3\"` means for its requests.")
                  ) -> None:
    """Set the scenario a key's requests are served by when their `model` names none (`r3`)."""
    async def set_scenario(store: Store):
        if await store.scenarios.get(scenario) is None:
            raise LookupError(f"no scenario named {scenario!r}: create it first (`r3 scenarios create`)")
        return await store.keys.set_default_scenario(name, scenario)

    try:
        changed = on_store(set_scenario)
    except LookupError as error:
        raise fail(error) from error
    console.print(f"the key {changed.name!r} (tenant {changed.tenant}) is served by scenario {scenario!r}")


def url_without_password(url: str) -> str:
    """The database URL with its password masked (`***`), to print."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
