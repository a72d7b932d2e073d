"""Work on what a client sends is bounded and never holds up anyone else (a real app on the embedded engine):

- a catastrophic pattern in a verifier's schema is judged in a judging thread, within a time limit:
  `/health` answers while the judge is still running, and the verdict says the pattern ran out;
- JSON Schemas over `R3_MAX_SCHEMA_BYTES` are a 400 naming the schema, before any work on them;
- a grammar that takes longer than `GRAMMAR_TIMEOUT_S` to compile is a 400, not a wait;
- (issue 24.3) every grammar ends: a forced call of a function without `parameters` (or with empty
  `properties`) is a whole call, `finish_reason: "tool_calls"`, and an empty-object answer is `{}`,
  not `{` and newlines until `max_tokens`.

The load case (abandoned huge-schema requests beside another tenant's) is measured by
`bench/bounded_work.py`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx
import pytest

from r3 import structured_output
from r3.engines.base import Engine
from r3.settings import Settings
from server.app import create_app
from verifiers import schema as verifier_schema

MODEL = "smol"  # the id the session engines were started with
ASK = [{"role": "user", "content": "What time is it?"}]
CATASTROPHIC = "^(a|a)+$"
MAX_SCHEMA_BYTES = 16 * 1024


@pytest.fixture(scope="module")
async def client(transformers_engine: Engine, model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(default_max_tokens=32, reflection_max_tokens=16, models_dir=model_path.parent,
                        data_dir=tmp_path_factory.mktemp("bounded"), max_schema_bytes=MAX_SCHEMA_BYTES)
    app = create_app(settings, engine=transformers_engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r3", timeout=300) as http:
            yield http


def judging_a_pattern() -> bool:
    """Whether some thread is matching a schema's pattern right now (in `verifiers.schema._search`)."""
    for frame in sys._current_frames().values():
        while frame is not None:
            if frame.f_code is verifier_schema._search.__code__:
                return True
            frame = frame.f_back
    return False


async def test_health_answers_while_a_catastrophic_pattern_is_judged(client: httpx.AsyncClient) -> None:
    # The answer is forced (response_format) to be the string the verifier's pattern backtracks on
    # exponentially: with `re` on the event loop this held /health for ~30 s.
    slow = "a" * 28 + "b"
    body = {"model": MODEL, "messages": ASK, "max_tokens": 24, "reflect": {"max_retries": 0},
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {
                "type": "string", "pattern": f"^{slow}$"}}},
            "verifier": {"type": "json_schema", "schema": {"type": "string", "pattern": CATASTROPHIC}}}
    request = asyncio.ensure_future(client.post("/v1/chat/completions", json=body))
    while not judging_a_pattern():
        assert not request.done(), request.result().text
        await asyncio.sleep(0.01)
    health = await client.get("/health")
    assert health.status_code == 200
    assert judging_a_pattern()  # /health was answered while the judge was still running
    response = await request
    assert response.status_code == 200, response.text
    choice, attempts = response.json()["choices"][0], response.json()["r3"]["attempts"]
    assert json.loads(choice["message"]["content"]) == slow
    assert attempts[0]["success"] is False
    assert "took longer than" in attempts[0]["detail"] and "not checked" in attempts[0]["detail"]


def big_schema(properties: int) -> dict:
    return {"type": "object", "properties": {f"field_{i}": {"type": "string", "description": "a field"}
                                             for i in range(properties)}}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "big", "schema": big_schema(8000)}}},
         "response_format.json_schema.schema"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": big_schema(8000)}}]},
         "tools.0.function.parameters"),
        # Together over the limit: the schema that crosses it is named.
        ({"tools": [{"type": "function", "function": {"name": f"f{i}", "parameters": big_schema(150)}}
                    for i in range(4)]}, "tools.2.function.parameters"),
        ({"functions": [{"name": "f", "parameters": big_schema(8000)}]}, "functions.0.parameters"),
        ({"verifier": {"type": "json_schema", "schema": big_schema(8000)}}, "verifier.schema"),
    ],
)
async def test_schemas_over_the_limit_are_refused_naming_the_param(client: httpx.AsyncClient, extra, param) -> None:
    response = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, **extra})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == "schema_too_large"
    assert "R3_MAX_SCHEMA_BYTES" in error["message"] and str(MAX_SCHEMA_BYTES) in error["message"]


async def test_schemas_within_the_limit_are_served(client: httpx.AsyncClient) -> None:
    tools = [{"type": "function", "function": {"name": f"f{i}", "parameters": big_schema(100)}} for i in range(2)]
    response = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, "tools": tools,
                                                                "max_tokens": 4})
    assert response.status_code == 200, response.text


async def test_a_grammar_that_compiles_too_long_is_a_400(client: httpx.AsyncClient,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # A few bytes of schema that take xgrammar seconds to compile (a 100,000-character string).
    monkeypatch.setattr(structured_output, "GRAMMAR_TIMEOUT_S", 0.05)
    schema = {"type": "string", "maxLength": 40_000}
    response = await client.post("/v1/chat/completions", json={
        "model": MODEL, "messages": ASK, "response_format": {"type": "json_schema", "json_schema": {
            "name": "long", "schema": schema}}})
    assert response.status_code == 400, response.text
    assert "took longer than 0.05 s" in response.json()["error"]["message"]


def streamed_calls(response: httpx.Response) -> tuple[list[dict], list[dict]]:
    """A streamed answer's chunks and the tool-call pieces in them; asserts it streamed no content."""
    chunks = [json.loads(line.removeprefix("data: ")) for line in response.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    assert not any(delta.get("content") for delta in deltas)
    return chunks, [call for delta in deltas for call in delta.get("tool_calls") or []]


NO_PARAMETERS = {"type": "function", "function": {"name": "get_time", "description": "The current time."}}
EMPTY_PROPERTIES = {"type": "function", "function": {"name": "get_time", "description": "The current time.",
                                                     "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize("tool", [NO_PARAMETERS, EMPTY_PROPERTIES])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_forced_call_without_parameters_comes_back_whole(client: httpx.AsyncClient, tool, stream) -> None:
    body = {"model": MODEL, "messages": ASK, "tools": [tool], "max_tokens": 32, "temperature": 0,
            "tool_choice": {"type": "function", "function": {"name": "get_time"}}, "stream": stream}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    if stream:
        chunks, calls = streamed_calls(response)
        assert calls[0]["function"]["name"] == "get_time"
        assert json.loads("".join(call["function"].get("arguments") or "" for call in calls)) == {}
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    else:
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
        [call] = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "get_time" and json.loads(call["function"]["arguments"]) == {}


async def test_an_empty_object_answer_ends(client: httpx.AsyncClient) -> None:
    schema = {"type": "object", "properties": {}}
    response = await client.post("/v1/chat/completions", json={
        "model": MODEL, "messages": ASK, "max_tokens": 32, "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "empty", "schema": schema}}})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and json.loads(choice["message"]["content"]) == {}


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
WEATHER_ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
CUT_IN_SECOND_CALL = 36  # tokens: the bundled model's whole call, then a second one cut short


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_forced_call_cut_inside_a_further_call_returns_the_complete_calls(
        client: httpx.AsyncClient, tool_choice, stream) -> None:
    """The model writes a whole call, then starts another that max_tokens cuts: the answer is the
    whole call alone, content null, finish_reason "tool_calls" (never the cut `<tool_call>` fragment)."""
    body = {"model": MODEL, "messages": WEATHER_ASK, "tools": [WEATHER], "tool_choice": tool_choice,
            "max_tokens": CUT_IN_SECOND_CALL, "temperature": 0, "stream": stream}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    if stream:
        chunks, calls = streamed_calls(response)
        assert {call["index"] for call in calls} == {0} and calls[0]["function"]["name"] == "get_weather"
        assert "city" in json.loads("".join(call["function"].get("arguments") or "" for call in calls))
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    else:
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None, choice
        [call] = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "get_weather" and "city" in json.loads(call["function"]["arguments"])
