"""Live numbers per version (`r3.store.live_stats`, `GET /admin/stats`, the timeline's buckets): pass
rates and, beside them, mean scores and unjudged episodes, counted in SQL over episodes written
through the real store, on SQLite and Postgres alike: graded verdicts, client feedback overriding the
verifier's score, unjudged first attempts and retries, abandoned episodes and episodes with no verifier."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from store_support import run_in_thread
from support import ScriptedEngine

from r3.episodes import ABANDONED, AttemptRecord, Episode, Feedback, new_episode_id
from r3.settings import Settings
from r3.store import database
from r3.store.live_stats import VersionStats, version_stats
from r3.store.sql import SqlEpisodeStore
from r3.store.timeline import timeline
from server.app import create_app

ADMIN = "live-stats-admin-key"
JUDGE = {"type": "score_model", "name": "helpfulness"}  # what the episodes say judged them; never run here
TIMED_OUT = "the judge model timed out after 2 tries"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated database (the Postgres one shared by the module: each test has versions of its own)."""
    if request.param == "postgres":
        return request.getfixturevalue("module_pg_url")
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('live-stats') / 'r3.db'}"
    run_in_thread(database.migrate, url)
    return url


def attempt(number: int, success: bool | None, score: float | None = None, detail: str | None = "",
            feedback: Feedback | None = None, finish_reason: str = "stop", judge_calls: int = 0) -> AttemptRecord:
    """An attempt as `r3.reflect_retry` records it: a verdict writes its success, score and detail
    (`detail=None`: no verdict, as with no verifier or a client that hung up first)."""
    return AttemptRecord(number=number, completion_id=f"chatcmpl-{new_episode_id()[3:]}", finish_reason=finish_reason,
                         prompt_tokens=10, completion_tokens=5, latency_s=0.5, success=success, score=score,
                         detail=detail, feedback=feedback, judge_calls=judge_calls,
                         judge_prompt_tokens=120 * judge_calls, judge_completion_tokens=8 * judge_calls)


def episode(adapter: str | None, *attempts: AttemptRecord, verifier: dict | None = JUDGE,
            created_at: float | None = None) -> Episode:
    return Episode(id=new_episode_id(), tenant=None, model="m", adapter=adapter, task_kind="generic",
                   verifier=verifier, store_text=False, messages=None, tools=None, tool_choice=None,
                   attempts=list(attempts), created_at=time.time() if created_at is None else created_at,
                   revision=1)


def graded_episodes(adapter: str, created_at: float | None = None) -> list[Episode]:
    """Nine episodes of a graded verifier (a model judge, pass threshold 0.5), each a case the numbers
    must count right (an unjudged verdict writes its reason as the detail, and no score); `EXPECTED`
    is what they add up to."""
    return [episode(adapter, *attempts, verifier=verifier, created_at=created_at) for verifier, attempts in [
        (JUDGE, [attempt(1, True, 0.9, judge_calls=1)]),
        (JUDGE, [attempt(1, False, 0.2, "too vague"), attempt(2, True, 0.8)]),  # rescued
        (JUDGE, [attempt(1, False, 0.4, "too vague"), attempt(2, False, 0.3, "still vague")]),
        (JUDGE, [attempt(1, None, None, TIMED_OUT, judge_calls=2)]),  # unjudged: not retried
        # The client's graded feedback overrides the verifier's verdict and score.
        (JUDGE, [attempt(1, False, 0.1, "too vague", feedback=Feedback(True, "good enough", score=0.6))]),
        # Retried, the retry unjudged: left out of the retries' and the final mean score (not a 0).
        (JUDGE, [attempt(1, False, 0.3, "too vague"), attempt(2, None, None, TIMED_OUT)]),
        # Hung up before it was judged: the episode's row cannot tell this from the judge failing.
        (JUDGE, [attempt(1, None, None, None, finish_reason=ABANDONED)]),
        (None, [attempt(1, None, None, None)]),  # no verifier
        # Unjudged, but the client judged it (success only: it scores 0.0).
        (JUDGE, [attempt(1, None, None, TIMED_OUT, feedback=Feedback(False, "wrong"))]),
    ]]


EXPECTED = {
    "requests": 9, "judged": 6, "first_successes": 2, "reflected": 3, "rescued": 1, "successes": 3, "unjudged": 2,
    "first_scored": 6, "first_score_total": pytest.approx(0.9 + 0.2 + 0.4 + 0.6 + 0.3 + 0.0),
    "retries_scored": 2, "retry_score_total": pytest.approx(0.8 + 0.3),
    "scored": 5, "score_total": pytest.approx(0.9 + 0.8 + 0.3 + 0.6 + 0.0),
    "first_attempt_success": pytest.approx(2 / 6), "second_attempt_success": pytest.approx(1 / 3),
    "success": pytest.approx(3 / 6), "first_attempt_score": pytest.approx(2.4 / 6),
    "second_attempt_score": pytest.approx(1.1 / 2), "score": pytest.approx(2.6 / 5),
}


def pass_fail_episodes(adapter: str | None, created_at: float | None = None) -> list[Episode]:
    """A pass/fail check's episodes: a pass, a failure rescued, a failure not rescued."""
    check = {"type": "regex", "pattern": "yes"}
    return [episode(adapter, *attempts, verifier=check, created_at=created_at) for attempts in [
        [attempt(1, True, 1.0)],
        [attempt(1, False, 0.0, "no match"), attempt(2, True, 1.0)],
        [attempt(1, False, 0.0, "no match"), attempt(2, False, 0.0, "no match")],
    ]]


async def write(url: str, episodes: list[Episode]) -> None:
    engine = database.create_engine(url)
    try:
        await SqlEpisodeStore(database.sessions(engine)).write(episodes)
    finally:
        await engine.dispose()


async def stats_of(url: str, since: datetime | None = None) -> dict[str, VersionStats]:
    engine = database.create_engine(url)
    try:
        return await version_stats(database.sessions(engine), since=since)
    finally:
        await engine.dispose()


def numbers(stats: VersionStats) -> dict[str, object]:
    return {name: getattr(stats, name) for name in EXPECTED}


async def test_rates_and_mean_scores_per_version(url: str) -> None:
    await write(url, graded_episodes("r3-graded") + pass_fail_episodes("r3-checked"))
    stats = await stats_of(url)
    assert numbers(stats["r3-graded"]) == EXPECTED
    checked = stats["r3-checked"]  # a pass/fail check: each mean score is its pass rate
    rates = (pytest.approx(1 / 3), 0.5, pytest.approx(2 / 3))
    assert (checked.first_attempt_success, checked.second_attempt_success, checked.success) == rates
    assert (checked.first_attempt_score, checked.second_attempt_score, checked.score) == rates
    assert checked.unjudged == 0


async def test_a_version_with_nothing_scored_has_no_means(url: str) -> None:
    await write(url, [episode("r3-unscored", attempt(1, None, None, TIMED_OUT)),
                      episode("r3-unscored", attempt(1, None, None, None), verifier=None)])
    stats = (await stats_of(url))["r3-unscored"]
    assert (stats.requests, stats.judged, stats.unjudged, stats.first_scored, stats.scored) == (2, 0, 1, 0, 0)
    assert (stats.first_attempt_score, stats.second_attempt_score, stats.score) == (None, None, None)


async def test_feedback_arriving_later_moves_the_scores(url: str) -> None:
    """Feedback is saved as a new revision of the episode: its score replaces the verifier's."""
    first = episode("r3-feedback", attempt(1, False, 0.25, "too vague"))
    await write(url, [first])
    assert (await stats_of(url))["r3-feedback"].first_attempt_score == 0.25
    first.attempts[0].feedback, first.revision = Feedback(True, "fine by me", score=0.75), 2
    await write(url, [first])
    stats = (await stats_of(url))["r3-feedback"]
    assert (stats.first_successes, stats.first_attempt_score, stats.score) == (1, 0.75, 0.75)


async def test_the_timeline_buckets_carry_the_same_numbers(url: str) -> None:
    since = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    await write(url, graded_episodes("r3-timeline", created_at=since.timestamp() + 90)
                + pass_fail_episodes("r3-timeline", created_at=since.timestamp() + 10))
    engine = database.create_engine(url)
    try:
        points = [p for p in await timeline(database.sessions(engine), since, 60.0, 3) if p.stats.version == "r3-timeline"]
    finally:
        await engine.dispose()
    assert [p.bucket for p in points] == [0, 1]
    checked, graded = points
    assert numbers(graded.stats) == EXPECTED
    assert (checked.stats.first_attempt_score, checked.stats.second_attempt_score) == (pytest.approx(1 / 3), 0.5)


async def test_admin_stats_reports_the_mean_scores_beside_the_rates(url: str, tmp_path: Path) -> None:
    """`GET /admin/stats` of a server over that database: the counts, the rates, the means."""
    await write(url, graded_episodes("r3-admin"))
    await write(url, graded_episodes("r3-admin", created_at=time.time() - 7200))  # outside the window
    settings = Settings(_env_file=None, data_dir=tmp_path, models_dir=tmp_path, database_url=url, redis_url=None,
                        admin_key=ADMIN)
    engine = ScriptedEngine([])
    app = create_app(settings, engine=engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r3") as http:
            answer = await http.get("/admin/stats", params={"window_s": 3600},
                                    headers={"Authorization": f"Bearer {ADMIN}"})
            adapters = (await http.get("/admin/adapters", headers={"Authorization": f"Bearer {ADMIN}"})).json()
    assert answer.status_code == 200, answer.text
    assert answer.json()["versions"]["r3-admin"] == {"version": "r3-admin", **EXPECTED}
    # A version that served nothing: no counts, and null rates and means.
    assert adapters["base"] == {"requests": 0, **dict.fromkeys(
        ("first_attempt_success", "second_attempt_success", "success", "first_attempt_score",
         "second_attempt_score", "score"))}


async def test_a_window_counts_only_its_episodes(url: str) -> None:
    now = time.time()
    await write(url, pass_fail_episodes("r3-window", created_at=now - 7200) + [
        episode("r3-window", attempt(1, True, 0.7), created_at=now)])
    stats = (await stats_of(url, since=datetime.now(UTC) - timedelta(hours=1)))["r3-window"]
    assert (stats.requests, stats.first_attempt_score, stats.score) == (1, 0.7, 0.7)
