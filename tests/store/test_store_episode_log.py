"""EpisodeLog, Journal, SqlEpisodeStore and RedisEpisodeStream against real SQLite, Postgres and Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError
from sqlalchemy import event
from store_support import STREAM_KEY, InProcessEpisodeStream, PrivatePostgres, PrivateRedis

from r3.episodes import (
    AttemptRecord,
    Episode,
    Feedback,
    episode_from_dict,
    episode_to_dict,
    new_episode_id,
)
from r3.store import database
from r3.store.episode_log import EpisodeLog, LogSettings
from r3.store.journal import Journal
from r3.store.sql import SqlEpisodeStore
from r3.store.stream import RedisEpisodeStream

FAST = LogSettings(tick_s=0.02, close_timeout_s=5)


def attempt(number: int, content: str = "an answer", **extra) -> AttemptRecord:
    return AttemptRecord(number=number, completion_id=f"chatcmpl-{uuid.uuid4().hex}", finish_reason="stop",
                         prompt_tokens=10, completion_tokens=3, latency_s=0.01, content=content,
                         token_ids=[1, 2, 3], logprobs=[-0.1, -0.2, -0.3], success=False, detail="wrong",
                         **extra)


def make_episode(content: str = "an answer", attempts: int = 1) -> Episode:
    return Episode(id=new_episode_id(), tenant=None, model="test-model", adapter=None, task_kind="generic",
                   verifier={"type": "regex", "pattern": "^never$"}, store_text=True,
                   messages=[{"role": "user", "content": "a question"}], tools=None, tool_choice=None,
                   attempts=[attempt(n, content) for n in range(1, attempts + 1)])


def snapshot(episode: Episode) -> Episode:
    """An independent copy, as the journal would give it back."""
    return episode_from_dict(json.loads(json.dumps(episode_to_dict(episode))))


@dataclass
class Backend:
    name: str
    url: str
    store: SqlEpisodeStore
    engine: object

    async def rows(self, sql: str, *args) -> list[tuple]:
        async with self.engine.connect() as connection:
            return [tuple(r) for r in (await connection.exec_driver_sql(sql, args if args else ())).fetchall()]

    async def execute(self, sql: str) -> None:
        async with self.engine.begin() as connection:
            await connection.exec_driver_sql(sql)

    async def ids(self) -> set[str]:
        return {r[0] for r in await self.rows("SELECT id FROM episodes")}

    async def dump(self, episode_id: str) -> str:
        placeholder = "$1" if self.name == "postgres" else "?"
        async with self.engine.connect() as connection:
            rows = (await connection.exec_driver_sql(f"SELECT * FROM episodes WHERE id = {placeholder}",
                                                     (episode_id,))).fetchall()
            rows += (await connection.exec_driver_sql(
                f"SELECT * FROM attempts WHERE episode_id = {placeholder} ORDER BY number", (episode_id,))).fetchall()
        return repr([tuple(r) for r in rows])


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
async def backend(request, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'r3.db'}"
    else:
        url = request.getfixturevalue("fresh_pg_url")
    await asyncio.to_thread(database.migrate, url)
    engine = database.create_engine(url)
    yield Backend(request.param, url, SqlEpisodeStore(database.sessions(engine)), engine)
    await engine.dispose()


def new_log(backend: Backend, journal_dir: Path, settings: LogSettings = FAST, stream=None) -> EpisodeLog:
    return EpisodeLog(backend.store, stream or InProcessEpisodeStream(), Journal(journal_dir), settings)


def orphan_segment(journal_dir: Path, records: list) -> Path:
    """A journal folder as a process that died would leave it (its lock file free)."""
    folder = journal_dir / f"process-{1:020d}-{os.getpid()}"
    folder.mkdir(parents=True)
    (folder / ".lock").touch()
    path = folder / "segment-000000001.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# ---------------------------------------------------------------------------------------------- never drops


async def test_a_full_buffer_spills_to_the_journal_and_nothing_is_lost(backend: Backend, tmp_path: Path) -> None:
    log = new_log(backend, tmp_path / "journal", replace(FAST, buffer_size=3, batch_size=2))
    await log.start()
    episodes = [make_episode() for _ in range(150)]
    for episode in episodes:
        log.record(episode)  # no await in between: the writer cannot drain the buffer
    assert log._buffer.full()
    assert any(s.needs_replay for s in log.journal.segments), "nothing spilled past the buffer"
    # Recorded but unwritten episodes are readable (what /feedback needs).
    assert (await log.get(episodes[-1].id, None)).id == episodes[-1].id

    await asyncio.wait_for(log.flush(), 60)
    assert await backend.ids() == {e.id for e in episodes}
    assert (await backend.rows("SELECT count(*) FROM attempts"))[0][0] == 150
    assert {r[0] for r in await backend.rows("SELECT revision FROM episodes")} == {1}
    assert sorted(log.stream._seen) == sorted(e.id for e in episodes)  # each announced
    assert log.stream.queue.qsize() == 150
    await log.close()
    assert not log.journal.directory.exists()  # everything written: the journal folder is gone


async def test_every_column_reads_back_as_written(backend: Backend) -> None:
    """What `write` stores (on Postgres one array per column, `unnest`; on SQLite an executemany of
    the rows) reads back as the episode written, every column filled, JSON's odd corners included:
    null inside JSON beside a NULL column, an integer beyond 64 bits, a key that is not a string, NUL
    and a lone surrogate inside JSON and text (replaced by U+FFFD where the database refuses them)."""
    odd = "nul \x00, a lone surrogate \ud800, and é"
    full = make_episode(content=odd, attempts=2)
    full.tenant, full.adapter, full.scenario, full.category, full.canary = "tenant-1", "r3-v2", "support", odd, True
    full.messages = [{"role": "user", "content": odd, odd: None}, {"role": "tool", "content": None}]
    full.tools = [{"type": "function", "function": {"name": "f", "parameters": {"big": 2**70, 3: [1.5, None]}}}]
    full.tool_choice, full.sampling = "auto", {"temperature": 0.7, "seed": 2**63}
    full.responses_api = {"instructions": odd, "usage": {"input_tokens": 3}}
    full.attempts[0].tool_calls = [{"id": "call_1", "function": {"name": "f", "arguments": odd}}]
    full.attempts[0].feedback = Feedback(success=True, detail=odd, received_at=1_700_000_000.25, score=0.5)
    full.attempts[1].reflection, full.attempts[1].score, full.attempts[1].success = odd, 0.25, None
    bare = make_episode()
    bare.verifier = bare.messages = bare.attempts[0].content = bare.attempts[0].token_ids = None
    bare.attempts[0].logprobs = bare.attempts[0].detail = None
    for episode in (full, bare):
        episode.revision, episode.created_at = 1, 1_700_000_000.5  # whole microseconds, as the database keeps them
    await backend.store.write([full, bare])

    def expected(value):
        """`value` as the database keeps it: JSON keys as text, the refused characters replaced."""
        if isinstance(value, str):
            value = value.replace("\ud800", "\ufffd")
            return value.replace("\x00", "\ufffd") if backend.name == "postgres" else value
        if isinstance(value, dict):
            return {expected(str(k)): expected(v) for k, v in value.items()}
        return [expected(v) for v in value] if isinstance(value, list) else value

    for episode in (full, bare):
        assert episode_to_dict(await backend.store.get_any(episode.id)) == expected(episode_to_dict(episode))


# ---------------------------------------------------------------------------------------------- revision guard


async def test_an_older_copy_changes_nothing(backend: Backend, tmp_path: Path) -> None:
    log = new_log(backend, tmp_path / "journal")
    await log.start()
    episode = make_episode()
    log.record(episode)
    first = snapshot(episode)  # revision 1: one attempt, no feedback
    await log.flush()

    newer = await log.get(episode.id, None)
    newer.attempts[0].feedback = Feedback(success=False, detail="the client says no")
    newer.attempts.append(attempt(2, "a second answer", reflection="think harder", reflection_tokens=2))
    log.record(newer)
    assert newer.revision == 2
    await log.flush()
    await log.close()
    stored = await backend.dump(episode.id)
    assert "the client says no" in stored and "a second answer" in stored

    # Written directly: the stored copy does not move back.
    await backend.store.write([first])
    assert await backend.dump(episode.id) == stored
    # Both in one batch, older last: the newer wins.
    await backend.store.write([snapshot(newer), first])
    assert await backend.dump(episode.id) == stored

    # Replayed from a dead process's journal after the newer one: nothing changes either.
    segment = orphan_segment(tmp_path / "journal", [episode_to_dict(first)])
    log = new_log(backend, tmp_path / "journal")
    await log.start()
    assert not segment.exists()  # adopted, replayed, deleted
    assert await backend.dump(episode.id) == stored
    fetched = await backend.store.get(episode.id, None)
    assert fetched.revision == 2 and len(fetched.attempts) == 2
    assert fetched.attempts[0].feedback.detail == "the client says no"
    await log.close()


# ---------------------------------------------------------------------------------------------- close


async def test_a_graceful_close_writes_and_announces_everything(backend: Backend, tmp_path: Path) -> None:
    log = new_log(backend, tmp_path / "journal", replace(FAST, tick_s=60))  # the loop never ticks
    await log.start()
    episodes = [make_episode() for _ in range(40)]
    for episode in episodes:
        log.record(episode)
    await log.close()
    assert await backend.ids() == {e.id for e in episodes}
    assert (await backend.rows("SELECT count(*) FROM episodes WHERE announced"))[0][0] == 40
    assert log.stream.queue.qsize() == 40
    assert list((tmp_path / "journal").glob("process-*")) == []


@pytest.fixture(scope="module")
def crashable_postgres(private_postgres: PrivatePostgres) -> PrivatePostgres:
    return private_postgres


async def test_a_close_with_the_database_down_leaves_the_journal_for_the_next_start(
        crashable_postgres: PrivatePostgres, tmp_path: Path) -> None:
    postgres = crashable_postgres
    engine = database.create_engine(postgres.url)
    backend = Backend("postgres", postgres.url, SqlEpisodeStore(database.sessions(engine)), engine)
    try:
        log = new_log(backend, tmp_path / "journal", replace(FAST, close_timeout_s=1))
        await log.start()
        await asyncio.to_thread(postgres.crash)
        episodes = [make_episode() for _ in range(10)]
        try:
            for episode in episodes:
                log.record(episode)
                await asyncio.sleep(0)
            await log.close()  # cannot write: gives up after close_timeout_s
            left = [json.loads(line)["id"] for path in (tmp_path / "journal").glob("process-*/*.jsonl")
                    for line in path.read_text().splitlines()]
            assert sorted(left) == sorted(e.id for e in episodes)
        finally:
            await asyncio.to_thread(postgres.start)
        log = new_log(backend, tmp_path / "journal")
        await log.start()  # adopts the journal and replays it
        assert {e.id for e in episodes} <= await backend.ids()
        await log.close()
        assert list((tmp_path / "journal").glob("process-*")) == []
    finally:
        await engine.dispose()


# ---------------------------------------------------------------------------------------------- refused rows


async def test_an_episode_the_database_refuses_is_set_aside_and_blocks_nothing(backend: Backend,
                                                                               tmp_path: Path) -> None:
    log = new_log(backend, tmp_path / "journal")
    await log.start()
    before = [make_episode() for _ in range(5)]
    clash = make_episode()
    clash.attempts[0].completion_id = before[0].attempts[0].completion_id  # UNIQUE(completion_id): refused
    odd = make_episode(content="nul \x00 and a lone surrogate \ud800 here")
    after = [make_episode() for _ in range(5)]
    for episode in [*before, clash, odd, *after]:
        log.record(episode)
    await asyncio.wait_for(log.flush(), 30)
    assert log._database_ok
    assert await backend.ids() == {e.id for e in [*before, odd, *after]}
    content = (await backend.store.get(odd.id, None)).attempts[0].content
    nul = "\ufffd" if backend.name == "postgres" else "\x00"  # Postgres cannot hold NUL; SQLite can
    assert content == f"nul {nul} and a lone surrogate \ufffd here"
    rejected = [json.loads(line) for line in (tmp_path / "journal" / "rejected.jsonl").read_text().splitlines()]
    assert [r["record"]["id"] for r in rejected] == [clash.id]
    assert "completion_id" in rejected[0]["reason"] or "unique" in rejected[0]["reason"].lower()

    # A journal line that is no longer an episode (say, from another version) is set aside too.
    good = make_episode()
    orphan_segment(tmp_path / "journal", [{"id": "ep_strange", "unknown_field": 1}, "{torn",
                                          episode_to_dict(good)])
    await log.close()
    log = new_log(backend, tmp_path / "journal")
    await log.start()
    assert good.id in await backend.ids()
    rejected = [json.loads(line) for line in (tmp_path / "journal" / "rejected.jsonl").read_text().splitlines()]
    # A complete line that is not JSON is corruption, not a torn tail: it is kept for an operator too.
    assert [r["record"] if isinstance(r["record"], str) else r["record"]["id"] for r in rejected] == [
        clash.id, "{torn", "ep_strange"]
    await log.close()
    assert list((tmp_path / "journal").glob("process-*")) == []


async def test_a_database_that_answers_but_cannot_write_is_not_blamed_on_the_episodes(backend: Backend,
                                                                                      tmp_path: Path) -> None:
    """A missing table (or a revoked permission) fails every write while `SELECT 1` still works:
    the episodes must wait in the journal, not be set aside as if they were bad."""
    log = new_log(backend, tmp_path / "journal")
    await log.start()
    await backend.execute("ALTER TABLE attempts RENAME TO attempts_away")
    try:
        episodes = [make_episode() for _ in range(3)]
        for episode in episodes:
            log.record(episode)
        deadline = asyncio.get_running_loop().time() + 20
        while log._database_ok:
            assert asyncio.get_running_loop().time() < deadline, "the write never failed"
            await asyncio.sleep(0.02)
        assert not (tmp_path / "journal" / "rejected.jsonl").exists()
    finally:
        await backend.execute("ALTER TABLE attempts_away RENAME TO attempts")
    await asyncio.wait_for(log.flush(), 30)
    assert await backend.ids() == {e.id for e in episodes}
    assert not (tmp_path / "journal" / "rejected.jsonl").exists()
    await log.close()


def poisoned_episode(depth: int = 900) -> Episode:
    """An episode whose tool parameters nest `depth` levels deep: writing it raises `RecursionError`
    (the request that carried it got a 200 before the server refused such nesting up front)."""
    parameters: dict = {}
    for _ in range(depth):
        parameters = {"a": parameters}
    episode = make_episode()
    episode.tools = [{"type": "function", "function": {"name": "f", "parameters": parameters}}]
    episode.tool_choice = "none"
    return episode


def rejected_records(journal_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (journal_dir / "rejected.jsonl").read_text().splitlines()]


async def test_a_poisoned_episode_is_set_aside_and_the_rest_reach_the_database_and_the_stream(
        backend: Backend, private_redis: PrivateRedis, tmp_path: Path) -> None:
    """Regression (issue 13): one episode that raised `RecursionError` on write stopped all recording,
    for good: it was taken for the database being down, and a restart replayed the same poison."""
    key = f"r3:test:{uuid.uuid4().hex[:8]}"
    journal = tmp_path / "journal"
    stream = RedisEpisodeStream(private_redis.url, key=key)
    log = new_log(backend, journal, stream=stream)
    await log.start()
    poison, ordinary = poisoned_episode(), [make_episode() for _ in range(20)]
    for episode in [poison, *ordinary]:
        log.record(episode)
    await asyncio.wait_for(log.flush(), 10)
    assert log._database_ok
    assert await backend.ids() == {e.id for e in ordinary}
    [rejected] = rejected_records(journal)
    assert rejected["record"]["id"] == poison.id
    assert "RecursionError" in rejected["reason"]
    assert log.rejected == 1 and log.backlog == 0
    with private_redis.client() as client:
        announced = [fields[b"episode_id"].decode() for _, fields in client.xrange(key, "-", "+")]
    assert sorted(announced) == sorted(e.id for e in ordinary)
    await log.close()
    await stream.close()

    # Restart: nothing is left to replay, and every ordinary episode is still there.
    log = new_log(backend, journal)
    await log.start()
    assert log.backlog == 0 and not log.journal.pending()
    assert await backend.ids() == {e.id for e in ordinary}
    await log.close()


async def test_a_poisoned_journal_is_replayed_around_the_poison_at_start(backend: Backend, tmp_path: Path) -> None:
    """A journal a stopped process left with the poison in it: the replay at start sets it aside and
    writes the rest (before, it raised on every start and the journal stayed stuck)."""
    journal = tmp_path / "journal"
    poison, ordinary = poisoned_episode(), [make_episode() for _ in range(20)]
    orphan_segment(journal, [episode_to_dict(e) for e in [ordinary[0], poison, *ordinary[1:]]])
    log = new_log(backend, journal)
    assert log.backlog == 21  # what the previous process left counts, before any replay
    await log.start()
    assert await backend.ids() == {e.id for e in ordinary}
    assert [r["record"]["id"] for r in rejected_records(journal)] == [poison.id]
    assert log.backlog == 0 and not log.journal.pending()
    await log.close()
    assert list(journal.glob("process-*")) == []


async def test_a_journal_line_too_deep_to_read_is_set_aside(backend: Backend, tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    good = make_episode()
    orphan_segment(journal, ["[" * 100_000 + "]" * 100_000, episode_to_dict(good)])
    log = new_log(backend, journal)
    await log.start()
    assert await backend.ids() == {good.id}
    [rejected] = rejected_records(journal)
    assert rejected["record"].startswith("[[[") and "not JSON" in rejected["reason"]
    await log.close()


# ---------------------------------------------------------------------------------------------- queries


async def test_the_catch_up_query_uses_the_partial_index(backend: Backend) -> None:
    """The announce catch-up runs every tick: it must read the small partial index, not scan every episode."""
    if backend.name == "postgres":
        await backend.execute(
            "INSERT INTO episodes (id, created_at, model, task_kind, replayable, store_text, sampling, revision, "
            "attempt_count, announced) SELECT 'ep_' || g, now(), 'm', 'generic', false, true, '{}', 1, 1, true "
            "FROM generate_series(1, 20000) g")
        await backend.execute("ANALYZE episodes")
    statements: list[tuple[str, object]] = []

    def capture(connection, cursor, statement, parameters, context, executemany) -> None:
        statements.append((statement, parameters))

    event.listen(backend.engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with backend.store.claim_unannounced(1000) as ids:
            assert ids == []
    finally:
        event.remove(backend.engine.sync_engine, "before_cursor_execute", capture)
    [(statement, parameters)] = [(s, p) for s, p in statements if "announced" in s]
    async with backend.engine.connect() as connection:
        if backend.name == "postgres":
            result = await connection.exec_driver_sql("EXPLAIN " + statement, tuple(parameters))
            plan = "\n".join(r[0] for r in result.fetchall())
        else:
            result = await connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, tuple(parameters))
            plan = repr(result.fetchall())
    assert "episodes_unannounced" in plan, f"{statement}\n{plan}"


@pytest.mark.services
async def test_servers_catching_up_at_once_share_the_unannounced_episodes(fresh_pg_url: str) -> None:
    """Two servers' catch-ups at the same moment claim disjoint episodes (`SKIP LOCKED`); a claim
    whose announcement fails leaves its episodes unannounced, for the next."""
    await asyncio.to_thread(database.migrate, fresh_pg_url)
    engines = [database.create_engine(fresh_pg_url) for _ in range(2)]
    try:
        first, second = (SqlEpisodeStore(database.sessions(engine)) for engine in engines)
        episodes = [make_episode() for _ in range(30)]
        for episode in episodes:
            episode.revision = 1
        await first.write(episodes)
        async with first.claim_unannounced(20) as held, second.claim_unannounced(20) as others:
            assert len(held) == 20 and len(others) == 10 and not set(held) & set(others)
        with pytest.raises(ConnectionError):
            async with first.claim_unannounced(20) as ids:
                raise ConnectionError("Redis is down")
        assert ids == []  # all 30 were marked above
        more = [make_episode() for _ in range(5)]
        for episode in more:
            episode.revision = 1
        await second.write(more)
        with pytest.raises(ConnectionError):
            async with first.claim_unannounced(20) as ids:
                raise ConnectionError("Redis is down")
        async with second.claim_unannounced(20) as again:
            assert sorted(again) == sorted(ids) == sorted(e.id for e in more)
    finally:
        for engine in engines:
            await engine.dispose()


# ---------------------------------------------------------------------------------------------- Redis


async def test_each_id_reaches_the_stream_once_however_often_it_is_announced(private_redis: PrivateRedis) -> None:
    key = f"r3:test:{uuid.uuid4().hex[:8]}"
    stream = RedisEpisodeStream(private_redis.url, key=key)
    try:
        await stream.announce(["ep_a", "ep_b"])
        await stream.announce(["ep_b", "ep_c", "ep_a"])  # a retry after a failure halfway
        await stream.announce([])
    finally:
        await stream.close()
    with private_redis.client() as client:
        ids = [fields[b"episode_id"].decode() for _, fields in client.xrange(key, "-", "+")]
        groups = [g["name"].decode() for g in client.xinfo_groups(key)]
    assert ids == ["ep_a", "ep_b", "ep_c"]
    assert groups == ["trainer"]


async def test_the_trainer_group_comes_back_with_a_redis_that_lost_everything(tmp_path: Path) -> None:
    volatile = PrivateRedis(tmp_path, persistent=False)
    volatile.start()
    stream = RedisEpisodeStream(volatile.url)
    try:
        await stream.announce(["ep_before"])
        await asyncio.to_thread(volatile.kill)
        await asyncio.to_thread(volatile.start)  # empty: no AOF, no snapshot
        for _ in range(3):  # the pooled connection died with the old server: the first try may fail
            try:
                await stream.announce(["ep_after"])
                break
            except ConnectionError:
                continue
        assert volatile.stream_ids() == ["ep_after"]
        with volatile.client() as client:
            assert [g["name"].decode() for g in client.xinfo_groups(STREAM_KEY)] == ["trainer"]
    finally:
        await stream.close()
        volatile.stop()


# ---------------------------------------------------------------------------------------------- journals of others

_HOLDER = """
import json, sys, time
from pathlib import Path
from r3.store.journal import Journal
journal = Journal(Path(sys.argv[1]))
journal.append(json.loads(sys.argv[2]))
print("ready", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_journal_left_by_a_process_that_dies_later_is_adopted_while_running(backend: Backend,
                                                                                   tmp_path: Path) -> None:
    """A rolling restart: the old process still holds its journal when the new one starts, then dies."""
    episode = make_episode()
    record = dict(episode_to_dict(episode), revision=1)
    holder = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited on
        [sys.executable, "-c", _HOLDER, str(tmp_path / "journal"), json.dumps(record)],
        stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout.readline() == b"ready\n"
        log = new_log(backend, tmp_path / "journal", replace(FAST, adopt_s=0.1))
        await log.start()
        assert episode.id not in await backend.ids()  # a live process's journal is left alone
        holder.kill()
        holder.wait(10)
        deadline = asyncio.get_running_loop().time() + 20
        while episode.id not in await backend.ids():
            assert asyncio.get_running_loop().time() < deadline, "the dead process's journal was never adopted"
            await asyncio.sleep(0.05)
        await log.close()
        assert list((tmp_path / "journal").glob("process-*")) == []
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)


async def test_feedback_during_a_database_outage_is_kept(crashable_postgres: PrivatePostgres,
                                                         tmp_path: Path) -> None:
    """Recorded while the database is down: still readable (by id and completion id), and a newer
    revision made from it (feedback) is what the database ends up with."""
    postgres = crashable_postgres
    engine = database.create_engine(postgres.url)
    backend = Backend("postgres", postgres.url, SqlEpisodeStore(database.sessions(engine)), engine)
    try:
        log = new_log(backend, tmp_path / "journal")
        await log.start()
        await asyncio.to_thread(postgres.crash)
        try:
            episode = make_episode()
            log.record(episode)
            found, number = await log.by_completion_id(episode.attempts[0].completion_id, None)
            assert (found.id, number) == (episode.id, 1)
            later = await log.get(episode.id, None)
            later.attempts[0].feedback = Feedback(success=True, detail="it worked after all")
            log.record(later)
            await asyncio.sleep(0)
            assert (await log.get(episode.id, None)).attempts[0].feedback.detail == "it worked after all"
            assert await log.get(episode.id, "another-tenant") is None
        finally:
            await asyncio.to_thread(postgres.start)
        await asyncio.wait_for(log.flush(), 30)
        stored = await backend.store.get(episode.id, None)
        assert stored.revision == 2 and stored.attempts[0].feedback.detail == "it worked after all"
        assert stored.outcome is True
        assert log._unwritten == {}
        await log.close()
    finally:
        await engine.dispose()


def test_an_episode_journaled_before_verdicts_had_scores_reads_back_with_its_verdicts_score() -> None:
    """A journal written by the release before scores: each judged attempt's score is its verdict's."""
    episode = make_episode(attempts=3)
    for record, success in zip(episode.attempts, (False, True, None)):
        record.success, record.score = success, None
    data = json.loads(json.dumps(episode_to_dict(episode)))
    for record in data["attempts"]:
        del record["score"]
    assert [a.score for a in episode_from_dict(data).attempts] == [0.0, 1.0, None]
