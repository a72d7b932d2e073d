"""The adapter registry on a real database, with promotion events on a real Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
import redis.asyncio as redis

from r3.settings import Settings
from r3.store.models import VersionStatus
from r3.store.registry import ADAPTER_CHANNEL, adapter_sha256
from r3.store.store import open_store

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def registry(tmp_path: Path):
    async with open_store(Settings(_env_file=None, data_dir=tmp_path, redis_url=REDIS_URL)) as store:
        yield store.registry


def adapter_files(folder: Path, content: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (folder / "adapter_model.safetensors").write_text(content)
    return folder


async def test_versions_get_new_names_and_their_files_hash(registry, tmp_path: Path) -> None:
    first = await registry.register(adapter_files(tmp_path / "a", "one"), None, {"loss": 1.0}, ["ep_1"])
    second = await registry.register(adapter_files(tmp_path / "b", "two"), first.name, {}, [])
    await registry.record_decision(second.name, {"gate": "lost"}, promote=False)
    third = await registry.register(adapter_files(tmp_path / "c", "three"), first.name, {}, [])
    assert [v.name for v in (first, second, third)] == ["r3-v1", "r3-v2", "r3-v3"]  # a rejected name stays taken
    assert first.status == VersionStatus.CANDIDATE and first.episodes_used == ["ep_1"] and first.parent is None
    assert first.sha256 == adapter_sha256(first.path) == adapter_sha256(tmp_path / "a")
    assert first.sha256 != second.sha256
    assert (await registry.get("r3-v2")).status == VersionStatus.REJECTED
    assert (await registry.get("r3-v2")).metrics == {"gate": "lost"}


async def test_concurrent_registrations_never_share_a_name(registry, tmp_path: Path) -> None:
    made = await asyncio.gather(*(registry.register(adapter_files(tmp_path / f"x{i}", str(i)), None, {}, [])
                                  for i in range(4)))
    assert sorted(v.number for v in made) == [1, 2, 3, 4]


async def test_one_version_is_active_and_each_activation_is_announced(registry, tmp_path: Path) -> None:
    subscriber = redis.from_url(REDIS_URL)
    pubsub = subscriber.pubsub()
    await pubsub.subscribe(ADAPTER_CHANNEL)
    await pubsub.get_message(timeout=1)  # the subscription confirmation
    try:
        first = await registry.register(adapter_files(tmp_path / "a", "one"), None, {}, [])
        second = await registry.register(adapter_files(tmp_path / "b", "two"), first.name, {}, [])
        await registry.record_decision(first.name, {"gate": "won"}, promote=True)
        await registry.activate(second.name, actor="admin")
        await registry.activate(first.name, actor="admin", reason="rollback")
        statuses = {v.name: v.status for v in await registry.versions()}
        assert statuses == {"r3-v1": VersionStatus.ACTIVE, "r3-v2": VersionStatus.RETIRED}
        assert (await registry.active()).name == "r3-v1"

        events = []
        while len(events) < 3:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            assert message is not None, f"only {events} were published"
            events.append(json.loads(message["data"])["active"])
        assert events == ["r3-v1", "r3-v2", "r3-v1"]
        assert await registry.activate(None, actor="admin", expected_active="r3-v2") is False  # not active: no-op
        assert (await registry.active()).name == "r3-v1"
        await registry.activate(None, actor="admin", expected_active="r3-v1")
        assert await registry.active() is None
        actions = [(a.actor, a.from_version, a.to_version) for a in reversed(await registry.actions())]
        assert actions == [("trainer", None, "r3-v1"), ("admin", "r3-v1", "r3-v2"), ("admin", "r3-v2", "r3-v1"),
                           ("admin", "r3-v1", None)]
    finally:
        await pubsub.aclose()
        await subscriber.aclose()


async def test_a_version_whose_files_never_landed_cannot_be_activated(registry) -> None:
    pending = await registry._reserve_name(None, {}, [])  # a trainer that died before copying files
    with pytest.raises(LookupError):
        await registry.activate(pending.name, actor="admin")
    with pytest.raises(LookupError):
        await registry.activate(f"r3-v{uuid.uuid4().int % 1000 + 100}", actor="admin")
    assert await registry.active() is None
