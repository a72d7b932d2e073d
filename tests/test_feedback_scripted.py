"""`POST /feedback` on the real app with a scripted engine (no model; the embedded SQLite in a
temporary folder): a client's failing verdict with `retry` gets the scripted reflection and retry;
the same feedback again is answered the same way without retrying; different feedback is a 409."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from support import ScriptedEngine, last_user_message

from r3.reflection import reflection_request
from r3.settings import Settings
from server.app import create_app

ASK = [{"role": "user", "content": "Name a fruit we sell."}]
REFLECTION = "Mangoes are out of stock; I should name another fruit."
OUT_OF_STOCK = "that fruit is out of stock"


@pytest.fixture
async def served(tmp_path: Path):
    """The app's HTTP client and its engine, whose script answers the request, a reflection and a retry."""
    engine = ScriptedEngine(["Mango", REFLECTION, "Apple"])
    settings = Settings(data_dir=tmp_path, models_dir=tmp_path, database_url=None, redis_url=None)
    app = create_app(settings, engine=engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r3") as http:
            yield http, engine


async def test_failing_feedback_with_retry_answers_with_the_scripted_retry(served) -> None:
    http, engine = served
    first = await http.post("/v1/chat/completions", json={"model": engine.model_id, "messages": ASK})
    assert first.status_code == 200, first.text
    assert first.json()["choices"][0]["message"]["content"] == "Mango"

    feedback = {"completion_id": first.json()["id"], "success": False, "detail": OUT_OF_STOCK, "retry": True}
    retried = await http.post("/feedback", json=feedback)
    assert retried.status_code == 200, retried.text
    completion = retried.json()
    assert completion["object"] == "chat.completion" and completion["id"] != first.json()["id"]
    assert completion["choices"][0]["message"]["content"] == "Apple"
    attempts = completion["r3"]["attempts"]
    assert [(a["attempt"], a["success"]) for a in attempts] == [(1, False), (2, None)]
    assert attempts[0]["detail"] == OUT_OF_STOCK and attempts[1]["reflection"] == REFLECTION
    # the reflection was asked about the client's reason
    assert last_user_message(engine.calls[1].prompt) == reflection_request("generic", OUT_OF_STOCK)["content"]

    again = await http.post("/feedback", json=feedback)
    assert again.status_code == 200 and again.json()["id"] == completion["id"]
    assert len(engine.calls) == 3  # answered from the record: no second retry

    contradiction = await http.post("/feedback", json={"completion_id": first.json()["id"], "success": True})
    assert contradiction.status_code == 409
    error = contradiction.json()["error"]
    assert error["param"] == "success" and error["type"] == "conflict_error"
    episode = await http.get(f"/v1/episodes/{completion['r3']['episode_id']}")
    assert [a["feedback"] and a["feedback"]["success"] for a in episode.json()["attempts"]] == [False, None]


async def test_feedback_may_grade_the_answer(served) -> None:
    """A score alone decides the verdict by the default threshold (no verifier named one); it overrides
    the recorded score in the episode and in the response's `r3`; a passing score cannot ask for a retry."""
    http, engine = served
    first = await http.post("/v1/chat/completions", json={"model": engine.model_id, "messages": ASK})
    completion_id = first.json()["id"]

    passing_retry = await http.post("/feedback", json={"completion_id": completion_id, "score": 0.75, "retry": True})
    assert passing_retry.status_code == 400 and passing_retry.json()["error"]["param"] == "retry"

    receipt = await http.post("/feedback", json={"completion_id": completion_id, "score": 0.25, "detail": "a guess"})
    assert receipt.status_code == 200, receipt.text
    assert receipt.json() | {"episode_id": None} == {"episode_id": None, "attempt": 1, "success": False,
                                                     "score": 0.25, "detail": "a guess"}
    episode = (await http.get(f"/v1/episodes/{receipt.json()['episode_id']}")).json()
    assert episode["score"] == 0.25 and episode["outcome"] is False
    assert episode["attempts"][0]["feedback"]["score"] == 0.25
    assert episode["attempts"][0]["score"] is None  # no verifier judged it: only the client did

    same = await http.post("/feedback", json={"completion_id": completion_id, "success": False, "score": 0.25,
                                              "detail": "a guess"})
    assert same.status_code == 200  # the same verdict, spelled in full
    other = await http.post("/feedback", json={"completion_id": completion_id, "score": 0.3, "detail": "a guess"})
    assert other.status_code == 409


@pytest.mark.parametrize(("body", "param"), [
    ({"score": 1.5}, "score"), ({"score": -0.1}, "score"), ({"score": "0.5"}, "score"), ({"score": True}, "score"),
    ({}, None),
])
async def test_bad_feedback_scores_are_refused(served, body: dict, param: str | None) -> None:
    http, engine = served
    first = await http.post("/v1/chat/completions", json={"model": engine.model_id, "messages": ASK})
    refused = await http.post("/feedback", json={"completion_id": first.json()["id"], **body})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == param


async def test_a_feedback_score_is_read_against_the_graders_pass_threshold(served) -> None:
    """An episode judged by a grader with a pass_threshold: the client's score passes from that
    threshold (0.8 here), not the default 0.5."""
    http, engine = served
    grader = {"type": "text_similarity", "name": "close", "input": "{{ sample.output_text }}",
              "reference": "Mango", "evaluation_metric": "fuzzy_match", "pass_threshold": 0.8}
    first = await http.post("/v1/chat/completions", json={"model": engine.model_id, "messages": ASK,
                                                          "verifier": grader, "reflect": {"max_retries": 0}})
    assert first.status_code == 200, first.text
    assert first.json()["r3"]["attempts"][0] | {"detail": None} == {
        "attempt": 1, "success": True, "score": 1.0, "detail": None, "reflection": None, "finish_reason": "stop"}
    receipt = await http.post("/feedback", json={"completion_id": first.json()["id"], "score": 0.7})
    assert (receipt.json()["success"], receipt.json()["score"]) == (False, 0.7)
