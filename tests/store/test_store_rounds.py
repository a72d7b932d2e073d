"""`r3.store.rounds` (training rounds, the trainer's queries) on SQLite and Postgres, and the stream's
consumer (`r3.store.stream`) on a real Redis."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from store_support import PrivateRedis, run_in_thread
from support import free_port

from r3.episodes import AttemptRecord, Episode
from r3.settings import Settings
from r3.store import database
from r3.store.models import EpisodeRow
from r3.store.registry import AdapterRegistry
from r3.store.rounds import HELD_OUT, RoundStatus, TrainingRounds
from r3.store.sql import SqlEpisodeStore
from r3.store.store import open_store
from r3.store.stream import NoEpisodeStream, RedisEpisodeConsumer, RedisEpisodeStream

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()
OWNER, LIVE = "host-a pid 2 test", 3600.0  # a trainer that heartbeats well within its hour


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
async def rounds(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[TrainingRounds]:
    url = request.getfixturevalue("fresh_pg_url") if request.param == "postgres" \
        else f"sqlite+aiosqlite:///{tmp_path / 'r3.db'}"
    run_in_thread(database.migrate, url)
    async with open_store(Settings(_env_file=None, data_dir=tmp_path, database_url=url)) as store:
        yield store.rounds


def episode(name: str, age_s: float, first: bool, verifier: bool = True, store_text: bool = True) -> Episode:
    """An episode `age_s` seconds older than the newest, whose first attempt passed or failed."""
    attempt = AttemptRecord(number=1, completion_id=f"{name}-1", finish_reason="stop", prompt_tokens=1,
                            completion_tokens=1, latency_s=0.1, content="an answer" if store_text else None,
                            success=first)
    return Episode(id=name, tenant=None, model="m", adapter=None, task_kind="generic",
                   verifier={"type": "exact", "expected": "x"} if verifier else None, store_text=store_text,
                   messages=[{"role": "user", "content": name}] if store_text else None, tools=None,
                   tool_choice=None, attempts=[attempt], created_at=START - age_s, revision=1)


# ---------------------------------------------------------------------------------------------- rounds


async def test_asking_twice_answers_the_pending_round_until_it_is_decided(rounds: TrainingRounds) -> None:
    asked, new = await rounds.request("admin")
    assert new and (asked.status, asked.requested_by, asked.started_at) == (RoundStatus.REQUESTED, "admin", None)
    again, new = await rounds.request("admin")
    assert not new and again.id == asked.id
    assert await rounds.requested()

    # The trainer starts the requested round, whatever made it look (here: enough failures).
    assert await rounds.start("failures", OWNER, LIVE) == asked.id
    assert not await rounds.requested()
    running, new = await rounds.request("admin")
    assert not new and (running.id, running.status, running.requested_by) == (asked.id, RoundStatus.RUNNING, "admin")
    assert running.started_at is not None

    report = {"train": 3, "heldout": 2, "gate": {"p_value": 0.5}}
    await rounds.finish(asked.id, report, candidate="r3-v1", promoted=False)
    (finished,) = await rounds.recent(5)
    assert (finished.status, finished.candidate, finished.promoted, finished.report, finished.error) == (
        RoundStatus.FINISHED, "r3-v1", False, report, None)
    assert finished.finished_at >= finished.started_at >= finished.requested_at

    later, new = await rounds.request("admin")
    assert new and later.id != asked.id


async def test_a_round_nobody_asked_for_starts_running_and_a_failure_keeps_its_error(rounds: TrainingRounds) -> None:
    round_id = await rounds.start("interval", OWNER, LIVE)
    (running,) = await rounds.recent(5)
    assert (running.id, running.status, running.requested_by) == (round_id, RoundStatus.RUNNING, "interval")

    await rounds.fail(round_id, "out of memory")
    (failed,) = await rounds.recent(5)
    assert (failed.status, failed.error, failed.report, failed.candidate, failed.promoted) == (
        RoundStatus.FAILED, "out of memory", {}, None, None)
    with pytest.raises(LookupError):
        await rounds.finish(round_id + 1, {})


async def test_a_round_whose_trainer_went_silent_is_failed_by_whoever_asks_next(rounds: TrainingRounds) -> None:
    finished = await rounds.start("cli", OWNER, LIVE)
    await rounds.finish(finished, {"skipped": "too few failures"})
    alive = await rounds.start("failures", OWNER, LIVE)
    assert await rounds.heartbeat(alive, OWNER)
    asked, new = await rounds.request("admin")
    assert (asked.id, new) == (alive, False)  # running, its trainer alive: no other round is queued
    assert await rounds.fail_abandoned() == []
    await rounds.fail(alive, "stopped by a test")

    # A trainer that allows itself no silence at all: by the next question it has been silent too long.
    silent = await rounds.start("failures", "host-b pid 7 dead", 0.0)
    waiting, new = await rounds.request("admin")  # the admin's POST /admin/train
    assert new and waiting.id != silent
    failed = next(r for r in await rounds.recent(10) if r.id == silent)
    assert failed.status == RoundStatus.FAILED and failed.owner == "host-b pid 7 dead"
    assert "its trainer (host-b pid 7 dead) stopped: no heartbeat since" in failed.error
    assert not await rounds.heartbeat(silent, "host-b pid 7 dead")  # its trainer, if alive after all, learns it
    with pytest.raises(LookupError):
        await rounds.finish(silent, {})  # and cannot finish it
    assert await rounds.count_by_status() == {RoundStatus.REQUESTED: 1, RoundStatus.RUNNING: 0,
                                              RoundStatus.FINISHED: 1, RoundStatus.FAILED: 2}


async def test_the_next_start_fails_a_silent_round_and_the_version_it_left_undecided(rounds: TrainingRounds) -> None:
    registry = AdapterRegistry(rounds.sessions, Path(tempfile.mkdtemp()))
    files = Path(tempfile.mkdtemp()) / "adapter"
    files.mkdir()
    (files / "adapter_model.safetensors").write_bytes(b"weights")
    dead = await rounds.start("cli", "host-a pid 1 gone", 0.0)  # `r3 train --once`, killed mid-round
    version = await registry.register(files, None, {}, [])
    await rounds.registered(dead, version.name)

    following = await rounds.start("cli", OWNER, LIVE)  # the next `r3 train --once`
    recent = {r.id: r for r in await rounds.recent(5)}
    assert recent[dead].status == RoundStatus.FAILED and "stopped" in recent[dead].error
    assert recent[following].status == RoundStatus.RUNNING
    assert (await registry.get(version.name)).status == "failed"  # no half-made version left as a candidate
    assert not (await registry.get(version.name)).servable


async def test_an_episode_set_aside_is_listed_with_its_reason_and_never_picked_again(rounds: TrainingRounds) -> None:
    await SqlEpisodeStore(rounds.sessions).write([episode("bad", 0, first=False), episode("good", 5, first=False),
                                                  episode("pass", 0, first=True)])
    round_id = await rounds.start("cli", OWNER, LIVE)
    await rounds.set_aside(round_id, {"bad": "its stored request cannot be run again: math.tolerance", "nope": "x"})
    await rounds.set_aside(round_id, {"bad": "a second reason"})  # the first one stays
    assert [e.id for e in await rounds.untrained_failures(10)] == ["good"]
    assert [e.id for e in await rounds.failures(10)] == ["good"]
    assert await rounds.count_untrained_failures() == 1
    (aside,) = await rounds.set_aside_episodes(10)
    assert (aside.episode_id, aside.round_id, aside.reason) == ("bad", round_id, "its stored request cannot be "
                                                                                  "run again: math.tolerance")


# ---------------------------------------------------------------------------------------------- episodes


async def test_the_trainers_queries_and_marking_what_a_round_used(rounds: TrainingRounds) -> None:
    await SqlEpisodeStore(rounds.sessions).write([
        episode("f-new", 0, first=False), episode("f-mid", 10, first=False), episode("f-old", 20, first=False),
        episode("f-no-verifier", 5, first=False, verifier=False),
        episode("f-no-text", 5, first=False, store_text=False),
        episode("p-new", 1, first=True), episode("p-old", 30, first=True),
        episode("unjudged", 2, first=None),
    ])
    assert await rounds.count_untrained_failures() == 3
    assert [e.id for e in await rounds.untrained_failures(10)] == ["f-new", "f-mid", "f-old"]  # newest first
    assert [e.id for e in await rounds.untrained_failures(2)] == ["f-new", "f-mid"]
    assert [e.id for e in await rounds.first_attempt_passes(10)] == ["p-new", "p-old"]
    assert [e.id for e in await rounds.first_attempt_passes(1)] == ["p-new"]
    (full,) = await rounds.untrained_failures(1)
    assert full.messages == [{"role": "user", "content": "f-new"}] and full.attempts[0].success is False

    await rounds.mark_used("r3-v1", trained=["f-new"], held_out=["f-old", "no-such-episode"])
    assert [e.id for e in await rounds.untrained_failures(10)] == ["f-mid"]
    assert await rounds.count_untrained_failures() == 1
    # The gate's held-out set is drawn from every failure, used or not.
    assert [e.id for e in await rounds.failures(10)] == ["f-new", "f-mid", "f-old"]
    async with rounds.sessions() as session:
        used = dict((await session.execute(select(EpisodeRow.id, EpisodeRow.trained_in))).all())
    assert {k: v for k, v in used.items() if v} == {"f-new": "r3-v1", "f-old": HELD_OUT}

    await rounds.mark_used("r3-v2", trained=[], held_out=[])  # a round that used nothing changes nothing
    assert await rounds.count_untrained_failures() == 1


# ---------------------------------------------------------------------------------------------- the stream


@pytest.fixture(scope="module")
def redis_server(private_redis: PrivateRedis) -> PrivateRedis:
    return private_redis


async def test_the_consumer_reads_acknowledges_and_claims_what_the_producer_announced(
        redis_server: PrivateRedis) -> None:
    key = f"r3:test-rounds:{uuid.uuid4().hex}"
    producer = RedisEpisodeStream(redis_server.url, key=key)
    first = RedisEpisodeConsumer(redis_server.url, "first", key=key)
    second = RedisEpisodeConsumer(redis_server.url, "second", key=key)
    try:
        assert await first.read(0) == 0  # before anything was announced: the group is made, nothing read
        ids = [uuid.uuid4().hex for _ in range(3)]
        await producer.announce(ids)
        await producer.announce(ids[:1])  # announced again: still once on the stream
        assert await first.read(0.05) == 3 and len(first.received) == 3
        assert await first.read(0) == 0

        await first.acknowledge(first.received[:2])
        assert len(first.received) == 1
        with redis_server.client() as client:
            assert client.xpending(key, "trainer")["pending"] == 1

        # `first` died holding one entry: `second` takes it over.
        await second.claim_abandoned(0)
        assert second.received == first.received
        await second.acknowledge(second.received)
        assert second.received == []
        with redis_server.client() as client:
            assert client.xpending(key, "trainer")["pending"] == 0
            client.delete(key)  # Redis came back empty: the consumer makes the group again
        assert await second.read(0) == 0
        await producer.announce([uuid.uuid4().hex])
        assert await second.read(0) == 1
    finally:
        for side in (producer, first, second):
            await side.close()


async def test_the_consumer_survives_a_redis_that_is_down() -> None:
    consumer = RedisEpisodeConsumer(f"redis://127.0.0.1:{free_port()}/0", "lonely")
    try:
        assert await consumer.read(0.01) == 0  # logged; the caller polls the database
        await consumer.claim_abandoned(0)
        consumer.received.append(b"1-0")
        await consumer.acknowledge([b"1-0"])  # not acknowledged: kept, to be claimed again
        assert consumer.received == [b"1-0"]
    finally:
        await consumer.close()


async def test_without_redis_there_is_no_stream_to_read() -> None:
    stream = NoEpisodeStream()
    await stream.announce(["an-episode"])
    assert await stream.read(0.01) == 0 and stream.received == []
    await stream.claim_abandoned(0)
    await stream.acknowledge([])
    await stream.close()
