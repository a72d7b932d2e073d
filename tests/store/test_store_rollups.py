"""The rollups (`r3.store.rollups`) stay equal to the episodes they count, on SQLite and Postgres alike:
after new episodes, retries appended, feedback that flips a verdict, journal replays of older
revisions, writers racing on the same episodes and retention's deletes; and what the dashboard and
`/admin/stats` read from them (`version_stats`, `timeline`) is what one pass over the episodes counts."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import astuple, replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from store_support import run_in_thread

from bench.dashboard import BEFORE_ROLLUPS
from r3.episodes import AttemptRecord, Episode, Feedback
from r3.store import database
from r3.store.live_stats import VersionStats, counted, covering, microseconds, stats_columns, version_stats
from r3.store.models import BASE_ADAPTER, ROLLUP_WIDTHS, EpisodeRollup, EpisodeRow
from r3.store.rollups import NUMBERS, minute_of, tally, tally_rows
from r3.store.sql import SqlEpisodeStore, attempt_row, episode_row
from r3.store.timeline import _counted, timeline

# Midnight, so that the episodes' three days cover whole days, hours and minutes, and their ends.
START = datetime(2026, 3, 1, tzinfo=UTC)
SCENARIOS = ("default", "support")
ADAPTERS = (None, "r3-v1", "r3-v2")
JUDGE = {"type": "score_model", "name": "helpfulness"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A migrated database of the test's own (the numbers over every scenario must be its episodes')."""
    if request.param == "postgres":
        url = request.getfixturevalue("fresh_pg_url")
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'r3.db'}"
    run_in_thread(database.migrate, url)
    yield url


@pytest.fixture
async def sessions(url: str):
    engine = database.create_engine(url)
    try:
        yield database.sessions(engine)
    finally:
        await engine.dispose()


def attempt(draw: random.Random, episode_id: str, number: int) -> AttemptRecord:
    """A random verdict: passed, failed or unjudged, graded or pass/fail."""
    success = draw.choice((True, False, False, None))
    score = None if success is None else draw.choice((float(success), 0.25, 0.75))
    return AttemptRecord(number=number, completion_id=f"chatcmpl-{episode_id}-{number}", finish_reason="stop",
                         prompt_tokens=10, completion_tokens=5, latency_s=draw.choice((0.25, 0.5, 1.5)),
                         success=success, score=score, detail="" if success is not None else None)


def made_up(draw: random.Random, count: int, prefix: str = "ep") -> list[Episode]:
    """`count` episodes over three days from START, of both scenarios and every adapter; one in five
    at the very start of a minute (the edge a bucket must not lose or count twice)."""
    episodes = []
    for i in range(count):
        offset = draw.randrange(3 * 86400) if i % 5 else draw.randrange(3 * 1440) * 60
        episode_id = f"{prefix}_{i:05d}"
        episodes.append(Episode(
            id=episode_id, tenant=None, model="m", adapter=draw.choice(ADAPTERS), task_kind="generic",
            verifier=draw.choice((JUDGE, None)), store_text=False, messages=None, tools=None, tool_choice=None,
            attempts=[attempt(draw, episode_id, n) for n in range(1, draw.choice((1, 1, 2, 3)) + 1)],
            created_at=START.timestamp() + offset + draw.choice((0, 0, 0.25)), revision=1,
            scenario=draw.choice(SCENARIOS)))
    return episodes


def revised(draw: random.Random, episode: Episode) -> Episode:
    """A later revision: a retry appended, or a client's feedback on the last attempt (which flips
    its verdict and moves its score)."""
    attempts = list(episode.attempts)
    if draw.random() < 0.5:
        attempts.append(attempt(draw, episode.id, len(attempts) + 1))
    else:
        last = attempts[-1]
        attempts[-1] = replace(last, feedback=Feedback(not last.passed, "the client says otherwise", 1.0,
                                                       score=draw.choice((0.0, 0.5, 1.0))))
    return replace(episode, attempts=attempts, revision=episode.revision + 1)


async def stored_rollups(sessions) -> dict[tuple, tuple]:
    async with sessions() as session:
        rows = await session.scalars(select(EpisodeRollup))
        return {(r.scenario, r.bucket_s, r.bucket_start, r.adapter): tuple(getattr(r, n) for n in NUMBERS)
                for r in rows}


async def recounted(sessions) -> dict[tuple, tuple]:
    """The rollups counted from scratch: every stored episode grouped per width, in one query each."""
    from r3.store.models import AttemptRow

    seconds = (select(AttemptRow.episode_id, func.sum(AttemptRow.latency_s).label("s"))
               .group_by(AttemptRow.episode_id).subquery())
    found = {}
    async with sessions() as session:
        for width in ROLLUP_WIDTHS:
            start = (minute_of(EpisodeRow.created_at) // width * width).label("start")
            query = (select(EpisodeRow.scenario, start, EpisodeRow.adapter, *stats_columns(), func.sum(seconds.c.s))
                     .select_from(EpisodeRow).outerjoin(seconds, seconds.c.episode_id == EpisodeRow.id)
                     .group_by(EpisodeRow.scenario, start, EpisodeRow.adapter))
            for scenario, bucket_start, adapter, *numbers in await session.execute(query):
                found[(scenario, width, bucket_start, adapter or BASE_ADAPTER)] = tuple(n or 0 for n in numbers)
    return found


def assert_same(rollups: dict[tuple, tuple], expected: dict[tuple, tuple]) -> None:
    """Counts exactly; sums of scores and seconds to float rounding (added in another order)."""
    counts = [i for i, name in enumerate(NUMBERS) if not name.endswith(("_total", "latency_s"))]
    assert rollups.keys() == expected.keys()
    for key, numbers in rollups.items():
        assert [numbers[i] for i in counts] == [expected[key][i] for i in counts], key
        assert numbers == pytest.approx(expected[key], rel=1e-9, abs=1e-9), key


def assert_same_stats(found: dict[str, VersionStats], expected: dict[str, VersionStats]) -> None:
    assert found.keys() == expected.keys()
    for version, stats in found.items():
        assert stats.version == version
        assert astuple(stats)[1:] == pytest.approx(astuple(expected[version])[1:], rel=1e-9, abs=1e-9), version


async def test_rollups_equal_a_recount_after_revisions_feedback_and_replays(sessions) -> None:
    draw = random.Random(7)
    store = SqlEpisodeStore(sessions)
    episodes = made_up(draw, 400)
    for i in range(0, len(episodes), 90):  # batches as the episode log writes them
        await store.write(episodes[i:i + 90])
    assert_same(await stored_rollups(sessions), await recounted(sessions))

    later = [revised(draw, e) for e in episodes[::3]]
    # One batch holds a new revision next to its older copy (the newer wins), and new episodes
    # beside revised ones.
    newcomers = made_up(random.Random(8), 20, prefix="new")
    await store.write(later[:50] + episodes[:10] + newcomers)
    await store.write(later[50:])
    rollups = await stored_rollups(sessions)
    assert_same(rollups, await recounted(sessions))
    # A journal replay of older revisions, or of the same ones, changes nothing.
    await store.write(episodes)
    await store.write(later)
    assert await stored_rollups(sessions) == rollups
    total = sum(numbers[0] for (_, width, _, _), numbers in rollups.items() if width == 86400)
    assert total == len(episodes) + len(newcomers)


async def test_new_episodes_counted_from_their_rows_as_read_back(sessions) -> None:
    """`tally_rows` (a batch's new episodes, counted in Python) gives what `tally` (SQL,
    `stats_columns`) reads back for the same episodes."""
    episodes = made_up(random.Random(13), 300)
    await SqlEpisodeStore(sessions).write(episodes)
    async with sessions() as session:
        read_back = await tally(await session.connection(), [e.id for e in episodes])
    counted = tally_rows([episode_row(e) for e in episodes],
                         [attempt_row(e.id, a) for e in episodes for a in e.attempts])
    assert_same({k: tuple(v) for k, v in counted.items()}, {k: tuple(v) for k, v in read_back.items()})


async def test_stats_and_timelines_read_from_rollups_equal_a_count_over_the_episodes(sessions) -> None:
    draw = random.Random(11)
    store = SqlEpisodeStore(sessions)
    episodes = made_up(draw, 300)
    await store.write(episodes)
    await store.write([revised(draw, e) for e in episodes[::4]])

    windows = [(None, None), (START, None), (None, START + timedelta(days=2)),
               (START + timedelta(hours=5), START + timedelta(days=1, hours=7)),  # whole hours and days
               # inside minutes at both ends, as /admin/stats' `now - window_s` is
               (START + timedelta(hours=3, minutes=7, seconds=12.5), START + timedelta(days=2, seconds=59.75)),
               (START + timedelta(minutes=30, seconds=1), START + timedelta(minutes=30, seconds=2)),
               (START + timedelta(days=3), None)]  # after the last episode: nothing
    for since, until in windows:
        span = (None if since is None else microseconds(since), None if until is None else microseconds(until))
        for scenario in (None, *SCENARIOS):
            async with sessions() as session:
                expected = await counted(session, [span], scenario)
            assert_same_stats(await version_stats(sessions, since, until, scenario), expected)

    # The dashboard's windows (whole minutes or hours, starting on one), and one that is not.
    for bucket_s, buckets, since in ((60, 60, START + timedelta(hours=13)), (900, 96, START + timedelta(days=1)),
                                     (7200, 84, START), (28800, 90, START - timedelta(days=20)),
                                     (90, 40, START + timedelta(hours=2, seconds=30))):
        for scenario in (None, "support"):
            rolled = await timeline(sessions, since, bucket_s, buckets, scenario)
            expected = sorted((p for p in await _counted(sessions, since, bucket_s, buckets, scenario)
                               if 0 <= p.bucket < buckets), key=lambda p: (p.bucket, p.stats.version))
            assert [(p.bucket, p.stats.version) for p in rolled] == [(p.bucket, p.stats.version) for p in expected]
            for point, reference in zip(rolled, expected):
                assert astuple(point.stats)[1:] == pytest.approx(astuple(reference.stats)[1:])
                assert point.seconds == pytest.approx(reference.seconds)


def test_a_window_is_covered_by_whole_buckets_and_its_partial_minutes() -> None:
    """Every moment in exactly one piece; the pieces as few as the widths allow."""
    us = 1_000_000
    start, end = 86400 * us - 90 * us - 1, 2 * 86400 * us + 3600 * us + 61 * us  # a day, an hour, a minute past
    wholes, spans = covering(start, end)
    assert sorted(wholes) == [(60, 86400 - 60, 86400), (60, 2 * 86400 + 3600, 2 * 86400 + 3660),
                              (3600, 2 * 86400, 2 * 86400 + 3600), (86400, 86400, 2 * 86400)]
    assert spans == [(start, 86400 * us - 60 * us), (2 * 86400 * us + 3660 * us, end)]
    assert covering(None, None) == ([(86400, None, None)], [])
    assert covering(5 * us, 6 * us) == ([], [(5 * us, 6 * us)])
    assert covering(6 * us, 6 * us) == ([], [])


@pytest.mark.services
async def test_writers_racing_on_the_same_episodes_count_each_once(fresh_pg_url: str) -> None:
    """Two servers' writers (engines of their own) write the same new episodes and their later
    revisions at the same moment, in opposite orders: each episode is counted once, at its newest."""
    run_in_thread(database.migrate, fresh_pg_url)
    engines = [database.create_engine(fresh_pg_url) for _ in range(2)]
    try:
        stores = [SqlEpisodeStore(database.sessions(engine)) for engine in engines]
        draw = random.Random(3)
        episodes = made_up(draw, 200)
        for _ in range(3):
            newer = [revised(draw, e) for e in episodes]
            await asyncio.gather(stores[0].write(episodes), stores[1].write(list(reversed(newer))))
            episodes = newer
        sessions = database.sessions(engines[0])
        rollups = await stored_rollups(sessions)
        assert_same(rollups, await recounted(sessions))
        assert sum(n[0] for (_, width, _, _), n in rollups.items() if width == 60) == 200
    finally:
        for engine in engines:
            await engine.dispose()


async def test_the_migration_counts_the_episodes_already_stored(url: str) -> None:
    """Upgrading a database whose episodes predate the rollups (here: the rollups dropped by going
    back to the migration before them) counts them, as the writes would have."""
    engine = database.create_engine(url)
    try:
        sessions = database.sessions(engine)
        draw = random.Random(5)
        episodes = made_up(draw, 150)
        await SqlEpisodeStore(sessions).write(episodes)
        await SqlEpisodeStore(sessions).write([revised(draw, e) for e in episodes[::2]])
        written = await stored_rollups(sessions)
        await engine.dispose()
        run_in_thread(database.downgrade, url, BEFORE_ROLLUPS)
        run_in_thread(database.migrate, url)
        assert_same(await stored_rollups(sessions), written)
        assert_same(written, await recounted(sessions))
    finally:
        await engine.dispose()
