"""One store per process: `open_store(settings)` is the only place that connects to the database and
to Redis. The server, the trainer, the CLI and the benchmarks each open it once, at their start, and
hand its named parts on.

    async with open_store(settings) as store:
        await store.registry.active()
        await store.keys.any_created()
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from r3.settings import Settings
from r3.store import database
from r3.store.keys import ApiKeys
from r3.store.registry import AdapterRegistry
from r3.store.canaries import Canaries
from r3.store.rounds import TrainingRounds
from r3.store.scenarios import Scenarios
from r3.store.sql import SqlEpisodeStore
from r3.store.stream import EpisodeConsumer, NoEpisodeStream, RedisEpisodeConsumer, RedisEpisodeStream


@dataclass(frozen=True)
class Database:
    """The process's connection to the database: for the queries that take a session factory
    (`r3.store.live_stats`, `r3.store.timeline`)."""

    url: str  # with its async driver (`sqlite+aiosqlite:///…`, `postgresql+asyncpg://…`)
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]


@dataclass(frozen=True)
class Store:
    """Where R3's state lives, as one process sees it.

    `episodes`: the episodes in the database (the server puts its `EpisodeLog` in front);
    `registry`: adapter versions, their events and the admin audit log; `rounds`: training rounds
    and the trainer's queries; `scenarios`: the workloads, each with its lineage; `canaries`: live canaries; `keys`: API keys; `stream`: the Redis episode stream's producer, None
    without Redis (the embedded default)."""

    database: Database
    episodes: SqlEpisodeStore
    registry: AdapterRegistry
    rounds: TrainingRounds
    scenarios: Scenarios
    canaries: Canaries
    keys: ApiKeys
    stream: RedisEpisodeStream | None
    redis_url: str | None

    def consumer(self) -> EpisodeConsumer:
        """A reader of the episode stream for the trainer (the caller closes it). Without Redis, one
        that only waits: the trainer then polls the database."""
        return RedisEpisodeConsumer(self.redis_url) if self.redis_url else NoEpisodeStream()


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    """The store of `R3_DATABASE_URL` (default: the embedded SQLite in `R3_DATA_DIR`), `R3_REDIS_URL`
    and `R3_ADAPTERS_DIR`, made ready for use: the embedded SQLite migrates itself; any other database
    must be at the newest migration (`r3 migrate`). Closed, with its connections, on leaving.

    Raises `r3.store.database.NotMigratedError`, `r3.store.errors.DatabaseUnavailable` (or the driver's
    error, for a URL it cannot use) when the database is not ready."""
    url = database.database_url(settings)
    engine = database.create_engine(url)
    sessions = database.sessions(engine)
    registry = AdapterRegistry(sessions, settings.adapters_path, settings.redis_url)
    stream = RedisEpisodeStream(settings.redis_url) if settings.redis_url else None
    try:
        await database.make_ready(engine, url)
        yield Store(database=Database(url, engine, sessions), episodes=SqlEpisodeStore(sessions), registry=registry,
                    rounds=TrainingRounds(sessions), scenarios=Scenarios(sessions),
                    canaries=Canaries(sessions, registry, Scenarios(sessions)), keys=ApiKeys(sessions),
                    stream=stream,
                    redis_url=settings.redis_url)
    finally:
        await registry.close()
        if stream is not None:
            await stream.close()
        await engine.dispose()
