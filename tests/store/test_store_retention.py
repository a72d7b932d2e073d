"""Episode retention (`r3.store.retention`, R3_EPISODE_RETENTION_DAYS): old episodes are deleted with
their attempts and taken off the rollups, except those training, the gate, a running canary or an
admin still need; a prune does not hold up the writers; a server with the setting prunes at its start."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from store_support import query, run_in_thread
from support import ScriptedEngine

from r3.episodes import AttemptRecord, Episode
from r3.settings import Settings
from r3.store import database
from r3.store.live_stats import counted, version_stats
from r3.store.models import AdapterVersion, AttemptRow, Canary, CanaryState, EpisodeRow
from r3.store.retention import Pools, kept, prune
from r3.store.rounds import TrainingRounds
from r3.store.scenarios import Scenarios
from r3.store.sql import SqlEpisodeStore
from server.app import create_app

NOW = datetime.now(UTC)
DAY = 86400.0
CHECK = {"type": "regex", "pattern": "yes"}  # replayable: the trainer can judge it again


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        url = request.getfixturevalue("fresh_pg_url")
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'r3.db'}"
    run_in_thread(database.migrate, url)
    return url


@pytest.fixture
async def sessions(url: str):
    engine = database.create_engine(url)
    try:
        yield database.sessions(engine)
    finally:
        await engine.dispose()


def episode(episode_id: str, days_ago: float, first: bool | None = False, scenario: str = "default",
            verifier: dict | None = CHECK) -> Episode:
    return Episode(
        id=episode_id, tenant=None, model="m", adapter="r3-v1", task_kind="generic", verifier=verifier,
        store_text=True, messages=[{"role": "user", "content": "yes?"}], tools=None, tool_choice=None,
        attempts=[AttemptRecord(number=1, completion_id=f"c-{episode_id}", finish_reason="stop", prompt_tokens=1,
                                completion_tokens=1, latency_s=0.5, success=first)],
        created_at=NOW.timestamp() - days_ago * DAY, revision=1, scenario=scenario)


async def stored_ids(sessions) -> set[str]:
    async with sessions() as session:
        return set(await session.scalars(select(EpisodeRow.id)))


async def test_a_prune_keeps_what_training_the_gate_a_canary_and_an_admin_need(sessions) -> None:
    store, rounds = SqlEpisodeStore(sessions), TrainingRounds(sessions)
    await Scenarios(sessions).create("support")
    await store.write([
        episode("plain", 10, verifier=None), episode("plain-support", 7.5, scenario="support"),
        episode("trained", 10), episode("held-out", 10), episode("set-aside", 10),
        # the default scenario's replayable failures, oldest first, and passes
        episode("fail-1", 9.4), episode("fail-2", 9.3), episode("fail-3", 9.2), episode("fail-4", 9.1),
        episode("pass-1", 9.0, first=True), episode("pass-2", 8.9, first=True),
        # the canary started 8 days ago
        episode("canary-old", 8.5, verifier=None), episode("canary-counted", 7.5, verifier=None),
        episode("recent", 1, verifier=None),
    ])
    await rounds.mark_used("r3-v1", trained=["trained", "fail-4"], held_out=["held-out"])
    await rounds.set_aside(None, {"set-aside": "its verifier no longer validates"})
    async with sessions.begin() as session:
        session.add(AdapterVersion(name="r3-v2", number=2, status="canary", path="/a/r3-v2", sha256="x",
                                   created_at=NOW))
        await session.flush()
        session.add(Canary(scenario="default", version="r3-v2", baseline="r3-v1", fraction=0.1,
                           state=CanaryState.RUNNING, started_at=NOW - timedelta(days=8)))
    # The next round of `default` draws on its 2 newest failures (held-out pool: fail-4, fail-3),
    # its 2 newest untrained ones (fail-3, fail-2) and its newest pass.
    keep = await kept(sessions, {"default": Pools(failures=2, untrained=2, passes=1),
                                 "support": Pools(failures=0, untrained=0, passes=0)})
    deleted = await prune(sessions, NOW - timedelta(days=5), keep, batch=2)  # several batches

    assert await stored_ids(sessions) == {"trained", "held-out", "set-aside", "fail-2", "fail-3", "fail-4",
                                          "pass-2", "canary-counted", "recent"}
    assert deleted == 5  # plain, plain-support, fail-1, pass-1, canary-old
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(AttemptRow)) == 9
        expected = await counted(session, [(None, None)], None)
    # The rollups count what is left, as a count over the episodes does.
    assert await version_stats(sessions) == expected
    assert expected["r3-v1"].requests == 9
    assert await prune(sessions, NOW - timedelta(days=5), keep) == 0  # nothing more to do


@pytest.mark.services
async def test_writers_go_on_while_a_prune_runs(fresh_pg_url: str) -> None:
    """A prune held in the middle of a batch (it waits on a rollup row another transaction locks)
    holds no lock that stops a writer: new episodes and revisions are written meanwhile."""
    run_in_thread(database.migrate, fresh_pg_url)
    engine = database.create_engine(fresh_pg_url)
    try:
        sessions = database.sessions(engine)
        store = SqlEpisodeStore(sessions)
        await store.write([episode(f"old-{i}", 30, verifier=None) for i in range(50)] + [episode("young", 0.5)])
        keep = await kept(sessions, {})
        async with engine.connect() as holder:
            # Lock the old episodes' day of rollups, as a writer of a late revision of one would.
            await holder.exec_driver_sql("SELECT 1 FROM episode_rollups WHERE bucket_s = 86400 AND bucket_start < "
                                         f"{int(time.time() - 20 * DAY)} FOR UPDATE")
            pruning = asyncio.create_task(prune(sessions, NOW - timedelta(days=5), keep, batch=20))
            await _until_waiting(fresh_pg_url)
            started = time.monotonic()
            young = episode("young", 0.5)
            young.attempts.append(AttemptRecord(number=2, completion_id="c-young-2", finish_reason="stop",
                                                prompt_tokens=1, completion_tokens=1, latency_s=0.5, success=True))
            young.revision = 2
            await asyncio.wait_for(store.write([young] + [episode(f"new-{i}", 0) for i in range(200)]), 30)
            written_s = time.monotonic() - started
            locks = query(fresh_pg_url, "SELECT DISTINCT mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                                        "WHERE c.relname = 'episodes' AND l.pid <> pg_backend_pid()")
            assert not pruning.done()  # the prune's batch is still open: the writes went past it
            await holder.rollback()
        assert await asyncio.wait_for(pruning, 30) == 50
    finally:
        await engine.dispose()
    assert {row["mode"] for row in locks} <= {"RowExclusiveLock", "RowShareLock", "AccessShareLock"}
    assert written_s < 30
    remaining = query(fresh_pg_url, "SELECT count(*) AS n, sum(attempt_count) AS a FROM episodes")[0]
    assert (remaining["n"], remaining["a"]) == (201, 202)


async def _until_waiting(url: str) -> None:
    """Until a backend waits for a lock (the prune, on the locked rollup row)."""
    for _ in range(200):
        if query(url, "SELECT 1 FROM pg_locks WHERE NOT granted"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the prune never reached the locked rollup row")


async def test_a_server_with_retention_prunes_at_its_start(tmp_path: Path) -> None:
    """R3_EPISODE_RETENTION_DAYS: the server prunes as it starts (then hourly); unset, it keeps all."""
    assert Settings(_env_file=None).episode_retention_days is None
    url = f"sqlite+aiosqlite:///{tmp_path / 'r3.db'}"
    run_in_thread(database.migrate, url)
    engine = database.create_engine(url)
    try:
        await SqlEpisodeStore(database.sessions(engine)).write([episode("old", 40, verifier=None),
                                                                episode("new", 2, verifier=None)])
    finally:
        await engine.dispose()
    settings = Settings(_env_file=None, data_dir=tmp_path, models_dir=tmp_path, database_url=url, redis_url=None,
                        episode_retention_days=30)
    app = create_app(settings, engine=ScriptedEngine([]))
    async with app.router.lifespan_context(app):
        sessions = app.state.store.database.sessions
        for _ in range(100):
            if await stored_ids(sessions) == {"new"}:
                break
            await asyncio.sleep(0.05)
        assert await stored_ids(sessions) == {"new"}
        assert (await version_stats(sessions))["r3-v1"].requests == 1
