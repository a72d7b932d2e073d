"""`/metrics` shows scores beside verdicts: `r3_verdict_score`, a histogram of the verifier's scores per
version and attempt (first or retry), and `r3_verdicts` with `unjudged` beside pass and fail; on the
real app (a scripted engine, no model) judged by a webhook on loopback that grades, and on episodes as
the server records them."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import ScriptedEngine, ThreadedServer

from r3.episodes import ABANDONED, AttemptRecord, Episode, new_episode_id
from r3.settings import Settings
from server.app import create_app
from server.metrics import SCORE_BUCKETS, Metrics

ASK = [{"role": "user", "content": "Name a fruit we sell."}]
REFLECTION = "Mangoes are out of stock; I should name another fruit."


def samples(scraped: bytes, name: str) -> dict[tuple[str, ...], float]:
    """The samples named `name`: (label values, sorted by label name) -> value."""
    return {tuple(v for _, v in sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(scraped.decode()) for s in family.samples if s.name == name}


def score_buckets(scraped: bytes, version: str, attempt: str) -> dict[str, float]:
    """`r3_verdict_score` of one version and attempt: its cumulative bucket counts (by `le`), count and sum."""
    buckets = {le: value for (kind, le, v), value in samples(scraped, "r3_verdict_score_bucket").items()
               if (kind, v) == (attempt, version)}
    return {**buckets, **{suffix: samples(scraped, f"r3_verdict_score_{suffix}").get((attempt, version), 0.0)
                          for suffix in ("count", "sum")}}


def cumulative(*scores: float) -> dict[str, float]:
    """The buckets Prometheus shows for `scores`: how many are at most each bound."""
    return {**{str(bound): float(sum(s <= bound for s in scores)) for bound in SCORE_BUCKETS},
            "+Inf": float(len(scores)), "count": float(len(scores)), "sum": pytest.approx(sum(scores))}


def test_the_buckets_are_tenths() -> None:
    assert SCORE_BUCKETS == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class GradingWebhook:
    """Grades attempt 1 below the pass mark with a hint and every later attempt above it."""

    def __init__(self) -> None:
        self.app = FastAPI()

        @self.app.post("/judge")
        async def judge(request: Request) -> dict:
            if (await request.json())["attempt"] == 1:
                return {"success": False, "score": 0.35, "detail": "we have no mangoes"}
            return {"success": True, "score": 0.85}


async def test_a_served_request_shows_its_scores_per_attempt(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, models_dir=tmp_path, database_url=None, redis_url=None,
                        webhook_allow_loopback=True)
    engine = ScriptedEngine(["Mango", REFLECTION, "Apple"])
    app = create_app(settings, engine=engine)
    with ThreadedServer(GradingWebhook().app) as judge:
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r3") as http:
                answer = await http.post("/v1/chat/completions", json={
                    "model": engine.model_id, "messages": ASK, "verifier": {"type": "webhook", "url": f"{judge}/judge"}})
                assert answer.status_code == 200, answer.text
                assert [a["score"] for a in answer.json()["r3"]["attempts"]] == [0.35, 0.85]
                scraped = (await http.get("/metrics")).content
    assert score_buckets(scraped, "base", "first") == cumulative(0.35)
    assert score_buckets(scraped, "base", "retry") == cumulative(0.85)
    assert samples(scraped, "r3_verdicts_total") == {("fail", "base"): 1.0, ("pass", "base"): 1.0}


def attempt(number: int, success: bool | None, score: float | None, detail: str | None,
            finish_reason: str = "stop") -> AttemptRecord:
    return AttemptRecord(number=number, completion_id=f"chatcmpl-{new_episode_id()[3:]}", finish_reason=finish_reason,
                         prompt_tokens=10, completion_tokens=5, latency_s=0.5, success=success, score=score,
                         detail=detail)


def test_unjudged_attempts_are_a_verdict_of_their_own_and_have_no_score() -> None:
    """An unjudged attempt (the judge failed: a reason, no verdict) counts as `unjudged`, neither pass
    nor fail, and adds no score; an attempt cut off before it was judged, or with no verifier, is no
    verdict at all."""
    metrics = Metrics()
    for attempts in ([attempt(1, False, 0.0, "no match"), attempt(2, True, 1.0, "")],  # a pass/fail check
                     [attempt(1, False, 0.45, "too vague"), attempt(2, None, None, "the judge timed out")],
                     [attempt(1, None, None, "the judge answered no score")],
                     [attempt(1, None, None, None, finish_reason=ABANDONED)],
                     [attempt(1, None, None, None)]):
        metrics.observe(Episode(id=new_episode_id(), tenant=None, model="m", adapter="r3-v2", task_kind="generic",
                                verifier=None, store_text=False, messages=None, tools=None, tool_choice=None,
                                attempts=attempts), 1.0)
    scraped = generate_latest(metrics.registry)
    assert samples(scraped, "r3_verdicts_total") == {("fail", "r3-v2"): 2.0, ("pass", "r3-v2"): 1.0,
                                                     ("unjudged", "r3-v2"): 2.0}
    assert score_buckets(scraped, "r3-v2", "first") == cumulative(0.0, 0.45)
    assert score_buckets(scraped, "r3-v2", "retry") == cumulative(1.0)
