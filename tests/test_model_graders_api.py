"""A model grader through the HTTP API: the real app with a scripted engine (no model; the embedded
SQLite in a temporary folder), judged by an OpenAI-compatible judge served on loopback
(`judge_server`, which scores 9 of 10 an answer naming Paris and 2 any other). A low score is
reflected on, with the judge's conclusion, and retried; the episode keeps each attempt's score and
judge cost, and /metrics counts the judge's calls and tokens. A judge that is down leaves the answer
unjudged: not retried. A judge model the in-process judge does not have is a 400."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from judge_server import COMPLETION_TOKENS, PROMPT_TOKENS_PER_MESSAGE, OpenAICompatibleJudge
from prometheus_client.parser import text_string_to_metric_families
from support import ScriptedEngine, ThreadedServer, last_user_message

from r3.reflection import reflection_request
from r3.settings import Settings
from server.app import create_app

ASK = [{"role": "user", "content": "What is the capital of France?"}]
REFLECTION = "Lyon is not the capital; the capital is Paris."
GRADER = {
    "type": "score_model", "name": "capital", "model": "judge", "range": [0, 10], "pass_threshold": 7,
    "item": {"reference_answer": "Paris"},
    "input": [{"role": "system", "content": "Score the answer from 0 to 10 against the reference."},
              {"role": "user", "content": "Reference: {{ item.reference_answer }}. Answer: {{ sample.output_text }}"}],
}
LOW = "scored 2 in [0, 10]: the answer does not name Paris"
JUDGED_ONCE = {"calls": 1, "prompt_tokens": 2 * PROMPT_TOKENS_PER_MESSAGE, "completion_tokens": COMPLETION_TOKENS}


@pytest.fixture(scope="module")
def judge_url():
    judge = OpenAICompatibleJudge()
    with ThreadedServer(judge.app) as url:
        yield f"{url}/v1"


def closed_port_url() -> str:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{closed.getsockname()[1]}/v1"


async def serve(tmp_path: Path, engine: ScriptedEngine, **settings):
    app = create_app(Settings(data_dir=tmp_path, models_dir=tmp_path, database_url=None, redis_url=None,
                              webhook_allow_loopback=True, judge_max_attempts=2, **settings), engine=engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r3") as http:
            yield http


@pytest.fixture
async def served(tmp_path: Path, judge_url: str):
    engine = ScriptedEngine(["Lyon", REFLECTION, "Paris"])
    async for http in serve(tmp_path, engine, judge_base_url=judge_url):
        yield http, engine


async def test_a_low_judge_score_is_reflected_on_and_retried(served) -> None:
    http, engine = served
    answered = await http.post("/v1/chat/completions", json={"model": engine.model_id, "messages": ASK,
                                                             "verifier": GRADER})
    assert answered.status_code == 200, answered.text
    completion = answered.json()
    assert completion["choices"][0]["message"]["content"] == "Paris"
    assert [(a["attempt"], a["success"], a["score"], a["detail"]) for a in completion["r3"]["attempts"]] == [
        (1, False, 0.2, LOW), (2, True, 0.9, "scored 9 in [0, 10]: the answer names Paris")]
    # the reflection was asked about the judge's conclusion
    assert last_user_message(engine.calls[1].prompt) == reflection_request("generic", LOW)["content"]

    episode = (await http.get(f"/v1/episodes/{completion['r3']['episode_id']}")).json()
    assert episode["score"] == 0.9
    assert [(a["score"], a["judge_usage"]) for a in episode["attempts"]] == [(0.2, JUDGED_ONCE), (0.9, JUDGED_ONCE)]
    assert episode["verifier"]["type"] == "score_model" and episode["verifier"]["range"] == [0.0, 10.0]

    judged = {(sample.name, sample.labels.get("kind")): sample.value
              for family in text_string_to_metric_families((await http.get("/metrics")).text)
              for sample in family.samples if sample.name.startswith("r3_judge") and sample.name.endswith("_total")}
    assert judged == {("r3_judge_calls_total", None): 2,
                      ("r3_judge_tokens_total", "prompt"): 2 * 2 * PROMPT_TOKENS_PER_MESSAGE,
                      ("r3_judge_tokens_total", "completion"): 2 * COMPLETION_TOKENS}


async def test_an_answer_the_judge_cannot_judge_is_not_retried(tmp_path: Path) -> None:
    engine = ScriptedEngine(["Lyon"])
    async for http in serve(tmp_path, engine, judge_base_url=closed_port_url()):
        answered = await http.post("/v1/chat/completions", json={"model": engine.model_id, "messages": ASK,
                                                                 "verifier": GRADER})
        assert answered.status_code == 200, answered.text
        [attempt] = answered.json()["r3"]["attempts"]
        assert (attempt["success"], attempt["score"]) == (None, None)
        assert attempt["detail"] == "judge error: connection failed (ConnectError) after 2 attempts"
        assert len(engine.calls) == 1  # no reflection, no retry
        episode = (await http.get(f"/v1/episodes/{answered.json()['r3']['episode_id']}")).json()
        assert episode["attempts"][0]["judge_usage"] == {"calls": 2, "prompt_tokens": 0, "completion_tokens": 0}


async def test_a_judge_model_this_server_does_not_have_is_a_400(tmp_path: Path) -> None:
    engine = ScriptedEngine([])
    async for http in serve(tmp_path, engine):  # no R3_JUDGE_BASE_URL: this server judges, as `base`
        refused = await http.post("/v1/chat/completions", json={"model": engine.model_id, "messages": ASK,
                                                                "verifier": {**GRADER, "model": "gpt-4o"}})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert (error["param"], error["code"]) == ("verifier.model", "model_not_found")
        assert "without R3_JUDGE_BASE_URL the judge is this server's own model" in error["message"]
        assert engine.calls == []


async def test_this_server_judges_as_base_when_no_judge_is_set(tmp_path: Path) -> None:
    """In process: the engine answers the request, then the grader's conversation as `base`."""
    verdict = '{"steps": [{"description": "compare", "conclusion": "it is Paris"}], "result": 10}'
    engine = ScriptedEngine(["Paris", verdict])
    async for http in serve(tmp_path, engine):
        answered = await http.post("/v1/chat/completions", json={"model": engine.model_id, "messages": ASK,
                                                                 "verifier": {**GRADER, "model": "base"}})
        assert answered.status_code == 200, answered.text
        [attempt] = answered.json()["r3"]["attempts"]
        assert (attempt["success"], attempt["score"], attempt["detail"]) == (True, 1.0,
                                                                             "scored 10 in [0, 10]: it is Paris")
        judged = engine.calls[1]
        assert judged.adapter is None and last_user_message(judged.prompt) == "Reference: Paris. Answer: Paris"
