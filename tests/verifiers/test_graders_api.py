"""OpenAI graders through the chat API, on the real app with a scripted engine (no model; the embedded
SQLite in a temporary folder): a grader object is judged as written, and a bad one is an OpenAI-style
400 naming the grader's field, nested ones included."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from support import ScriptedEngine

from r3.settings import Settings
from server.app import create_app

ASK = [{"role": "user", "content": "What is the capital of France? One word."}]
REFLECTION = "I named the wrong city: France's capital is Paris."
CAPITAL = {"type": "string_check", "name": "capital", "input": "{{ sample.output_text }}",
           "reference": "{{ item.answer }}", "operation": "ilike", "item": {"answer": "paris"}}


@pytest.fixture
async def served(tmp_path: Path):
    """The app's HTTP client and its engine, whose script answers wrongly, reflects, then answers right."""
    engine = ScriptedEngine(["Lyon", REFLECTION, "Paris."])
    settings = Settings(data_dir=tmp_path, models_dir=tmp_path, database_url=None, redis_url=None)
    app = create_app(settings, engine=engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r3") as http:
            yield http, engine


async def chat(http: httpx.AsyncClient, engine: ScriptedEngine, verifier: dict) -> httpx.Response:
    return await http.post("/v1/chat/completions", json={"model": engine.model_id, "messages": ASK,
                                                          "verifier": verifier})


async def test_a_grader_judges_the_answer_and_a_failure_is_retried(served) -> None:
    http, engine = served
    response = await chat(http, engine, CAPITAL)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "Paris."
    attempts = body["r3"]["attempts"]
    assert [(a["attempt"], a["success"]) for a in attempts] == [(1, False), (2, True)]
    assert attempts[0]["detail"] == "capital: the input does not contain the reference (ignoring case)"
    assert attempts[1]["reflection"] == REFLECTION


async def test_a_multigrader_judges_through_the_api(served) -> None:
    http, engine = served
    similar = {"type": "text_similarity", "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}",
               "evaluation_metric": "fuzzy_match"}
    verifier = {"type": "multi", "name": "both", "item": {"answer": "paris"},
                "graders": {"capital": {**CAPITAL, "item": {"answer": "paris"}}, "similar": similar},
                "calculate_output": "0.8 * capital + 0.2 * similar", "pass_threshold": 0.8}
    response = await chat(http, engine, verifier)
    assert response.status_code == 200, response.text
    attempts = response.json()["r3"]["attempts"]
    assert [a["success"] for a in attempts] == [False, True]
    assert attempts[0]["detail"].startswith("both: capital 0.000, similar ")


@pytest.mark.parametrize(
    ("verifier", "param", "message"),
    [
        ({**CAPITAL, "reference": "{{ item.expected }}"}, "verifier.reference",
         "reads item.expected, which the spec's `item` does not have"),
        ({**CAPITAL, "operation": "contains"}, "verifier.operation", "Input should be"),
        ({**CAPITAL, "input": "{% for c in sample.output_text %}{{ c }}{% endfor %}"}, "verifier.input",
         "not {% for %}"),
        ({key: value for key, value in CAPITAL.items() if key != "reference"}, "verifier.reference", "Field required"),
        ({"type": "text_similarity", "input": "a", "reference": "b", "evaluation_metric": "cosine"},
         "verifier.evaluation_metric", "embeddings"),
        ({"type": "multi", "graders": {"capital": CAPITAL}, "calculate_output": "capital + os.getpid()",
          "item": CAPITAL["item"]},
         "verifier.calculate_output", "may call min, max, abs, floor, ceil, exp, sqrt, log only"),
        ({"type": "multi", "graders": {"capital": {**CAPITAL, "input": "{{ item.nope }}"}},
          "calculate_output": "capital", "item": {"answer": "paris"}},
         "verifier.graders.capital.input", "reads item.nope"),
        ({"type": "multi", "graders": {"capital": {"type": "label_modell"}}, "calculate_output": "capital"},
         "verifier.graders.capital", "does not match any of the expected tags"),
        ({"type": "grader", "input": "a"}, "verifier.type", "does not match any of the expected tags"),
    ],
)
async def test_a_bad_grader_is_a_400_naming_its_field(served, verifier, param, message) -> None:
    http, engine = served
    response = await chat(http, engine, verifier)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert message in error["message"]
    assert engine.calls == []  # refused before any generation


@pytest.mark.parametrize(
    ("verifier", "param"),
    [
        ({"type": "python", "name": "py", "source": "def grade(sample, item):\n    return 1.0"}, "verifier.source"),
        ({"type": "multi", "graders": {"code": {"type": "python", "source": "def grade(s, i): return 1"}},
          "calculate_output": "code"}, "verifier.graders.code.source"),
    ],
)
async def test_a_python_grader_is_a_400_pointing_to_webhooks(served, verifier, param) -> None:
    http, engine = served
    response = await chat(http, engine, verifier)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == "python_grader_not_supported"
    assert "webhook" in error["message"]
