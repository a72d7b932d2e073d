"""`r3.store.timeline`: episodes counted per version and time bucket, in SQL, on SQLite and Postgres alike."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from store_support import run_in_thread

from r3.episodes import AttemptRecord, Episode
from r3.store import database
from r3.store.sql import SqlEpisodeStore
from r3.store.timeline import timeline

SINCE = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BUCKET_S, BUCKETS = 60.0, 5


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "postgres":
        return request.getfixturevalue("module_pg_url")
    url = f"sqlite+aiosqlite:///{tmp_path / 'r3.db'}"
    run_in_thread(database.migrate, url)
    return url


def episode(name: str, offset_s: float, adapter: str | None, verdicts: list[bool | None]) -> Episode:
    attempts = [AttemptRecord(number=n, completion_id=f"{name}-{n}", finish_reason="stop", prompt_tokens=1,
                              completion_tokens=1, latency_s=0.25 * n, success=success)
                for n, success in enumerate(verdicts, 1)]
    return Episode(id=name, tenant=None, model="m", adapter=adapter, task_kind="generic", verifier=None,
                   store_text=False, messages=None, tools=None, tool_choice=None, attempts=attempts,
                   created_at=SINCE.timestamp() + offset_s, revision=1)


async def test_buckets_count_each_version_and_add_up_latency(url: str) -> None:
    engine = database.create_engine(url)
    try:
        sessions = database.sessions(engine)
        await SqlEpisodeStore(sessions).write([
            episode("early", -0.5, None, [True]),  # before the window
            episode("a", 0.0, "r3-v1", [True]),  # bucket 0, at its very start
            episode("b", 59.999, "r3-v1", [False, True]),  # bucket 0, at its very end: rescued
            episode("c", 61.0, None, [False, False]),  # bucket 1
            episode("d", 62.0, None, [None]),  # bucket 1, not judged
            episode("e", 4 * 60 + 30, "r3-v1", [False]),  # the last bucket
            episode("late", 5 * 60, "r3-v1", [True]),  # after the window
        ])
        points = await timeline(sessions, SINCE, BUCKET_S, BUCKETS)
    finally:
        await engine.dispose()

    assert [(p.bucket, p.stats.version) for p in points] == [(0, "r3-v1"), (1, "base"), (4, "r3-v1")]
    first, base, last = points
    assert (first.stats.requests, first.stats.judged, first.stats.first_successes, first.stats.reflected,
            first.stats.rescued) == (2, 2, 1, 1, 1)
    assert first.seconds == pytest.approx(0.25 + 0.25 + 0.5) and first.mean_latency_s == pytest.approx(0.5)
    assert (base.stats.requests, base.stats.judged, base.stats.reflected, base.stats.rescued) == (2, 1, 1, 0)
    assert (last.stats.requests, last.stats.first_successes) == (1, 0)
