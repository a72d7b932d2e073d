"""The store's commands: `r3 migrate`, `r3 keys …`, and the schema check `r3 serve` makes first."""

from __future__ import annotations

import asyncio

import typer

from cli.console import console, fail
from r3.settings import get_settings

keys_app = typer.Typer(help="API keys.", no_args_is_help=True)


def migrate() -> None:
    """Bring the database (R3_DATABASE_URL, or the embedded SQLite) to the newest schema."""
    from r3.store import database

    url = database.database_url(get_settings())
    database.migrate(url)
    console.print(f"migrated: {url_without_password(url)}")


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
        raise fail(error) from error
    console.print(f"created key for {name!r} (tenant {tenant}); it is shown only now:")
    print(key)


def check_database() -> None:
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
        raise fail(error) from error


def url_without_password(url: str) -> str:
    """The database URL with its password masked (`***`), to print."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
