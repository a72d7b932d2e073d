"""Connecting to the database, and keeping its schema at Alembic's head. A process connects through
`r3.store.store.open_store`, which uses these; only the store's own tests call them directly."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

import r3.migrations as migrations  # the repository's migrations/, shipped inside the r3 package
from r3.store import fast_json
from r3.store.errors import install_translation
from r3.settings import ASYNC_DRIVERS, Settings


class NotMigratedError(RuntimeError):
    """The database's schema is behind the code's."""


def database_url(settings: Settings) -> str:
    """`R3_DATABASE_URL` (which `Settings` checked) with its database's async driver, or the embedded
    SQLite file in the data dir."""
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{settings.data_dir / 'r3.db'}"
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":  # an absolute path (`Settings` checked), its folder made as the data dir's
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    return url.set(drivername=ASYNC_DRIVERS[url.drivername.partition("+")[0]]).render_as_string(hide_password=False)


def is_embedded(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str) -> AsyncEngine:
    """The engine every part of R3 reaches the database through: a database that cannot serve raises
    `r3.store.errors.DatabaseUnavailable`, however the driver reported it."""
    # A stalled Postgres (not a refused connection) must fail a write, not hang it: the journal keeps it.
    connect_args = {"command_timeout": 30, "timeout": 10} if make_url(url).get_backend_name() == "postgresql" else {}
    engine = create_async_engine(url, pool_pre_ping=True, connect_args=connect_args, json_serializer=fast_json.dumps)
    install_translation(engine)
    return engine


def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """The session factory over `engine` that every part of the store takes."""
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the schema (blocking; call it from a thread when an event loop is running)."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


async def make_ready(engine: AsyncEngine, url: str) -> None:
    """Get the database ready for use: the embedded SQLite migrates itself wherever it is opened (the
    server, the trainer, `r3 keys`); any other database must have been migrated (`r3 migrate`), or
    this raises `NotMigratedError`."""
    if is_embedded(url):
        await asyncio.to_thread(migrate, url)
    else:
        await ensure_migrated(engine, url)


async def ensure_migrated(engine: AsyncEngine, url: str) -> None:
    """Raise `NotMigratedError` unless the database is at the newest revision."""
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()

    def current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        revision = await connection.run_sync(current)
    if revision != head:
        raise NotMigratedError(
            f"the database is at migration {revision or 'none'}, the code needs {head}: run `r3 migrate`"
        )
