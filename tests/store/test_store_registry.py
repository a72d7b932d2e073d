"""`r3.store.registry` beyond the versions: the adapter events (publisher and subscriber, on a real
Redis that one test kills and restarts) and the admin audit log's actions that change no version."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from store_support import PrivateRedis

from r3.settings import Settings
from r3.store.registry import ADAPTER_CHANNEL, AdapterEvent, AdapterRegistry, adapter_events
from r3.store.store import open_store

RETRY_S = 0.1


@pytest.fixture
async def registry(tmp_path: Path, private_redis: PrivateRedis) -> AsyncIterator[AdapterRegistry]:
    async with open_store(Settings(_env_file=None, data_dir=tmp_path, redis_url=private_redis.url)) as store:
        yield store.registry


def adapter_folder(root: Path, content: str) -> Path:
    folder = root / content
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_text(content)
    return folder


async def subscribed(redis: PrivateRedis) -> None:
    """Wait until someone listens on the channel (pub/sub keeps nothing for a late subscriber)."""
    for _ in range(200):
        with redis.client() as client:
            if dict(client.pubsub_numsub(ADAPTER_CHANNEL)).get(ADAPTER_CHANNEL.encode()):
                return
        await asyncio.sleep(0.05)
    raise AssertionError("nobody subscribed to the adapter channel")


async def test_an_activation_reaches_a_subscriber_as_an_event(registry: AdapterRegistry, private_redis: PrivateRedis,
                                                              tmp_path: Path) -> None:
    version = await registry.register(adapter_folder(tmp_path, "one"), None, {}, [])
    async with aclosing(adapter_events(private_redis.url, RETRY_S)) as events:
        first = asyncio.ensure_future(anext(events))
        await subscribed(private_redis)
        assert await registry.activate(version.name, actor="test")
        assert await asyncio.wait_for(first, 10) == AdapterEvent(version.name, version.sha256)

        # A message that is not an event is skipped; the next event still arrives.
        with private_redis.client() as client:
            client.publish(ADAPTER_CHANNEL, b"not an event")
        assert await registry.activate(None, actor="test")  # back to the base model
        assert await asyncio.wait_for(anext(events), 10) == AdapterEvent(None, None)


async def test_redis_going_away_is_logged_once_and_the_subscription_comes_back(
        registry: AdapterRegistry, private_redis: PrivateRedis, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    version = await registry.register(adapter_folder(tmp_path, "two"), None, {}, [])
    caplog.set_level(logging.INFO, logger="r3.store.registry")
    async with aclosing(adapter_events(private_redis.url, RETRY_S)) as events:
        waiting = asyncio.ensure_future(anext(events))
        await subscribed(private_redis)
        private_redis.kill()
        await asyncio.sleep(10 * RETRY_S)  # several attempts to subscribe again, all refused
        assert not waiting.done()  # Redis being down ends nothing
        # A promotion meanwhile is committed; only its event is lost (servers poll the database too).
        assert await registry.activate(version.name, actor="test")
        private_redis.start()
        await subscribed(private_redis)
        await registry.publish(version)
        assert await asyncio.wait_for(waiting, 10) == AdapterEvent(version.name, version.sha256)
    messages = [record.getMessage() for record in caplog.records if record.name == "r3.store.registry"]
    assert sum("adapter events unavailable" in message for message in messages) == 1, messages
    assert "adapter events available again" in messages


async def test_an_action_that_changes_no_version_is_recorded_with_its_time(registry: AdapterRegistry) -> None:
    assert await registry.last_action_at("logout") is None
    before = datetime.now(UTC)
    await registry.record_action("dashboard", "logout", reason="logged out")
    first = await registry.last_action_at("logout")
    assert first.tzinfo is not None and before - timedelta(seconds=1) <= first <= datetime.now(UTC)
    await registry.record_action("dashboard", "logout")
    assert await registry.last_action_at("logout") >= first
    assert await registry.last_action_at("something else") is None
    (latest, earlier, *_) = await registry.actions()
    assert (latest.actor, latest.action, earlier.reason) == ("dashboard", "logout", "logged out")
