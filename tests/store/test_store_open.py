"""`r3.store.store.open_store`: the one way a process reaches the database and Redis, with its named
parts working over one connection; real SQLite, Postgres and Redis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from store_support import PrivateRedis
from test_store_episode_log import make_episode

from r3.settings import Settings
from r3.store.database import NotMigratedError
from r3.store.models import VersionStatus
from r3.store.rounds import RoundStatus
from r3.store.store import open_store
from r3.store.stream import RedisEpisodeStream


def adapter_files(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    return folder


async def test_the_embedded_store_migrates_itself_and_each_part_works(tmp_path: Path) -> None:
    async with open_store(Settings(_env_file=None, data_dir=tmp_path)) as store:
        assert store.stream is None  # no Redis: no stream; the trainer's reader only waits
        assert store.database.url == f"sqlite+aiosqlite:///{tmp_path / 'r3.db'}"

        tenant, key = await store.keys.create("alice")
        assert await store.keys.any_created() and await store.keys.tenant_of(key) == tenant

        episode = make_episode()
        await store.episodes.write([episode])
        assert (await store.episodes.get(episode.id, None)).id == episode.id

        asked, new = await store.rounds.request("admin")
        assert new and asked.status == RoundStatus.REQUESTED

        first = await store.registry.register(adapter_files(tmp_path / "a"), None, {}, [])
        assert first.status == VersionStatus.CANDIDATE
        await store.registry.activate(first.name, actor="test")
        second = await store.registry.register(adapter_files(tmp_path / "b"), first.name, {}, [])
        await store.registry.activate(second.name, actor="test")
        # The statuses are stored as the same strings as before the enum, so old rows still read.
        async with store.database.engine.connect() as connection:
            stored = dict((await connection.exec_driver_sql("SELECT name, status FROM adapter_versions")).all())
        assert stored == {first.name: "retired", second.name: "active"}
        assert [v.status for v in await store.registry.versions()] == [VersionStatus.RETIRED, VersionStatus.ACTIVE]

    # Opened again (another process, or a restart): the same database, already at its migration.
    async with open_store(Settings(_env_file=None, data_dir=tmp_path)) as store:
        assert (await store.registry.active()).name == second.name


async def test_with_redis_the_store_announces_on_the_stream_its_consumer_reads(
        tmp_path: Path, private_redis: PrivateRedis) -> None:
    async with open_store(Settings(_env_file=None, data_dir=tmp_path, redis_url=private_redis.url)) as store:
        assert isinstance(store.stream, RedisEpisodeStream)
        consumer = store.consumer()
        try:
            await store.stream.announce(["ep_1", "ep_2"])
            assert await consumer.read(1.0) == 2
        finally:
            await consumer.close()


async def test_a_postgres_database_behind_the_code_is_refused_naming_the_fix(tmp_path: Path,
                                                                               fresh_pg_url: str) -> None:
    with pytest.raises(NotMigratedError, match="r3 migrate"):
        async with open_store(Settings(_env_file=None, data_dir=tmp_path, database_url=fresh_pg_url)):
            pass
