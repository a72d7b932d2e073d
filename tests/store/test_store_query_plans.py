"""The hot queries' plans on Postgres, at a size where scanning `episodes` would cost (50,000 made-up
episodes over 30 days, counted into the rollups by their migration, ANALYZEd): the dashboard's
overview and versions page, `/admin/stats`, the auto-rollback's windows, the episode log's writes
and retention read the rollups and indexes, never a whole scan of `episodes` or `attempts`. Each
statement is the one the code sends (caught as SQLAlchemy sends it), explained with its parameters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from store_support import fresh_database, query, run, run_in_thread, sync_url

from bench.dashboard import BEFORE_ROLLUPS, fill
from r3.store import database
from r3.store.live_stats import counted, version_stats
from r3.store.models import DEFAULT_SCENARIO
from r3.store.retention import Pools, kept, prune
from r3.store.sql import EpisodeFilter, SqlEpisodeStore
from r3.store.timeline import first_episode_at, timeline
from server.dashboard.charts import WINDOWS, fitting_window

pytestmark = pytest.mark.services

EPISODES = 50_000
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    for url in fresh_database(request):
        run_in_thread(database.migrate, url, BEFORE_ROLLUPS)
        run(lambda: fill(sync_url(url), EPISODES, (NOW - timedelta(days=30)).timestamp(), NOW.timestamp()))
        run_in_thread(database.migrate, url)
        query(url, "ANALYZE")
        yield url


@pytest.fixture
async def engine(url: str):
    engine = database.create_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


@contextmanager
def sent(engine: AsyncEngine) -> Iterator[list[tuple[str, tuple]]]:
    """The SELECTs `engine` sends meanwhile, with their parameters."""
    statements: list[tuple[str, tuple]] = []

    def record(connection, cursor, statement, parameters, context, executemany) -> None:
        if not executemany and statement.lstrip().upper().startswith("SELECT") and statement.strip() != "SELECT 1":
            statements.append((statement, tuple(parameters)))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


def scans(url: str, statement: str, parameters: tuple) -> list[tuple[str, str | None]]:
    """(node type, table) of every node of the statement's plan."""
    (row,) = query(url, f"EXPLAIN (FORMAT JSON) {statement}", *parameters)
    found = []

    def walk(node: dict) -> None:
        found.append((node["Node Type"], node.get("Relation Name")))
        for child in node.get("Plans", []):
            walk(child)

    walk(json.loads(row[0])[0]["Plan"])
    return found


def assert_no_full_scan(url: str, statements: list[tuple[str, tuple]]) -> list[list[tuple[str, str | None]]]:
    assert statements
    plans = [scans(url, statement, parameters) for statement, parameters in statements]
    for (statement, _), plan in zip(statements, plans):
        assert not [n for n in plan if n[0] == "Seq Scan" and n[1] in ("episodes", "attempts")], (statement, plan)
    return plans


async def test_the_overview_and_the_versions_page_read_rollups_and_indexes(url: str, engine: AsyncEngine) -> None:
    sessions = database.sessions(engine)
    for window in (WINDOWS["24h"], fitting_window(await first_episode_at(sessions, DEFAULT_SCENARIO), NOW)):
        since = window.start(NOW)
        with sent(engine) as statements:  # the overview's, in the order it sends them
            await first_episode_at(sessions, DEFAULT_SCENARIO)
            points = await timeline(sessions, since, window.bucket_s, window.buckets, DEFAULT_SCENARIO)
            await version_stats(sessions, since=since, scenario=DEFAULT_SCENARIO)
        first, plotted, totals = assert_no_full_scan(url, statements)
        read = {node for node, table in first if table == "episodes"}
        assert read and read <= {"Index Scan", "Index Only Scan"}
        for plan in (plotted, totals):  # from the rollups alone: the window is whole buckets
            assert {table for _, table in plan if table} == {"episode_rollups"}
            assert ("Seq Scan", "episode_rollups") not in plan
        assert sum(p.stats.requests for p in points) > 1000
    with sent(engine) as statements:  # the versions page and /admin/adapters: all time
        await version_stats(sessions, scenario=DEFAULT_SCENARIO)
    assert_no_full_scan(url, statements)


async def test_admin_stats_and_the_auto_rollback_read_their_partial_minutes_by_index(url: str,
                                                                                     engine: AsyncEngine) -> None:
    """A window from `now - window_s` starts inside a minute: that minute's episodes are counted by
    index, the rest read from the rollups; the numbers are those of a count over the episodes."""
    sessions = database.sessions(engine)
    since = NOW - timedelta(seconds=3600.5)
    with sent(engine) as statements:
        stats = await version_stats(sessions, since=since)
        promoted = NOW - timedelta(days=3, seconds=17.25)
        await version_stats(sessions, since=promoted - (NOW - promoted), until=promoted, scenario=DEFAULT_SCENARIO)
    assert_no_full_scan(url, statements)
    async with sessions() as session:
        expected = await counted(session, [((since - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1),
                                            None)], None)
    assert {v: s.requests for v, s in stats.items()} == {v: s.requests for v, s in expected.items()}


async def test_the_episode_log_writes_and_retention_find_their_rows_by_index(url: str, engine: AsyncEngine) -> None:
    sessions = database.sessions(engine)
    store = SqlEpisodeStore(sessions)
    (stored,) = await store.list(EpisodeFilter(), limit=1)
    with sent(engine) as statements:  # a later revision of a stored episode (its feedback), as the log writes it
        await store.write([replace(stored, revision=stored.revision + 1)])
    assert_no_full_scan(url, statements)

    with sent(engine) as statements:
        keep = await kept(sessions, {DEFAULT_SCENARIO: Pools(failures=2000, untrained=1024, passes=256)})
        # Nothing is older than 40 days: the prune looks and deletes nothing.
        assert await prune(sessions, NOW - timedelta(days=40), keep) == 0
    assert_no_full_scan(url, statements)
