"""Auto-rollback on live traffic: a scripted regression rolls back, noise does not."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import pytest

from r3.episodes import AttemptRecord, Episode, new_episode_id
from r3.settings import Settings
from r3.store.store import open_store
from server.auto_rollback import AutoRollback, one_sided_p


@pytest.fixture
async def world(tmp_path: Path):
    async with open_store(Settings(_env_file=None, data_dir=tmp_path)) as store:  # the embedded SQLite
        names = []
        for number in range(2):
            files = tmp_path / f"files{number}"
            files.mkdir()
            (files / "adapter_config.json").write_text(json.dumps({"n": number}))
            names.append((await store.registry.register(files, names[-1] if names else None, {}, [])).name)
        await store.registry.activate(names[0], actor="test")
        yield store, names


def episodes(adapter: str, count: int, pass_rate: float, start: float, span: float, seed: int) -> list[Episode]:
    """`count` judged episodes served by `adapter`, passing with probability `pass_rate` (seeded)."""
    rng = random.Random(seed)
    made = []
    for i in range(count):
        attempt = AttemptRecord(number=1, completion_id=f"chatcmpl-{adapter}-{seed}-{i}", finish_reason="stop",
                                prompt_tokens=10, completion_tokens=5, latency_s=0.1, success=rng.random() < pass_rate)
        made.append(Episode(id=new_episode_id(), tenant=None, model="m", adapter=adapter, task_kind="generic",
                            verifier={"type": "regex", "pattern": "x"}, store_text=False, messages=None, tools=None,
                            tool_choice=None, attempts=[attempt], created_at=start + span * i / count))
    return made


async def promote_with_traffic(store, names, child_rate: float, seed: int) -> float:
    """The parent serves 100 episodes at 70%, then the child is promoted and serves 100 at `child_rate`."""
    now = time.time()
    await store.episodes.write(episodes(names[0], 100, 0.7, now - 2.0, 1.5, seed))
    await store.registry.activate(names[1], actor="trainer")
    promoted = (await store.registry.active()).promoted_at.timestamp()
    await store.episodes.write(episodes(names[1], 100, child_rate, promoted, 0.5, seed + 1))
    while time.time() < promoted + 2.5:  # let the "after" window span the child's traffic
        await asyncio.sleep(0.05)
    return promoted


async def test_a_real_regression_rolls_back_to_the_parent(world) -> None:
    store, names = world
    registry = store.registry
    await promote_with_traffic(store, names, child_rate=0.3, seed=1)
    reason = await AutoRollback(store, min_episodes=50, alpha=0.01).check()
    assert reason is not None and "one-sided p" in reason
    assert (await registry.active()).name == names[0]
    last = (await registry.actions())[0]
    assert (last.actor, last.from_version, last.to_version) == ("auto-rollback", names[1], names[0])
    assert await AutoRollback(store, min_episodes=50, alpha=0.01).check() is None  # the parent stays


async def test_noise_does_not_roll_back(world) -> None:
    store, names = world
    registry = store.registry
    await promote_with_traffic(store, names, child_rate=0.65, seed=2)
    assert await AutoRollback(store, min_episodes=50, alpha=0.01).check() is None
    assert (await registry.active()).name == names[1]


async def test_too_few_episodes_never_roll_back(world) -> None:
    store, names = world
    registry = store.registry
    await promote_with_traffic(store, names, child_rate=0.0, seed=3)
    assert await AutoRollback(store, min_episodes=500, alpha=0.01).check() is None


def test_the_one_sided_test() -> None:
    assert one_sided_p(30, 100, 70, 100) < 1e-6
    assert one_sided_p(70, 100, 30, 100) > 0.999999  # better is never "significantly worse"
    assert 0.1 < one_sided_p(65, 100, 70, 100) < 0.5
    assert one_sided_p(10, 10, 10, 10) == 1.0
