"""The OpenAI API end to end: a real `r3 serve` process on a free port, driven by the `openai` SDK."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

MODEL = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def base_url(model_path: Path, lora_path: Path, tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    env = {**os.environ, "R3_PORT": str(port), "R3_DATA_DIR": str(tmp_path_factory.mktemp("r3-data")), "R3_LORA_MODULES": json.dumps({"test-lora": str(lora_path)}),
           "R3_MAX_REQUEST_BYTES": str(1024 * 1024)}
    log = (tmp_path_factory.mktemp("server") / "server.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "r3", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None, f"r3 serve exited; see {log.name}"
        assert time.monotonic() < deadline, "r3 serve did not become healthy"
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(30)


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def async_client(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def greedy(client: openai.OpenAI, model: str = MODEL, **extra):
    return client.chat.completions.create(model=model, messages=QUESTION, temperature=0, seed=1,
                                          max_tokens=16, logprobs=True, **extra)


def test_models_lists_the_base_and_the_adapter(client) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {MODEL, "r3", "base", "test-lora"}  # r3: the active version
    assert models["test-lora"].model_extra["parent"] == MODEL
    assert models[MODEL].model_extra["parent"] is None  # no adapter version is active yet


def test_a_chat_completion(client) -> None:
    response = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0)
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.model == MODEL
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length") and choice.message.tool_calls is None
    usage = response.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_logprobs_match_the_tokens(client) -> None:
    response = greedy(client, top_logprobs=2)
    choice = response.choices[0]
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    assert len(tokens) == response.usage.completion_tokens
    for t in tokens:
        assert t.logprob <= 0 and bytes(t.bytes).decode() == t.token
        assert len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token  # greedy picks the top one


def test_a_stream_reassembles_to_the_same_text(client) -> None:
    whole = greedy(client)
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, seed=1, max_tokens=16,
                                                 logprobs=True, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    streamed_tokens = [t.token for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert streamed_tokens == [t.token for t in whole.choices[0].logprobs.content]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_the_adapter_gives_different_logprobs(client) -> None:
    base, adapted = greedy(client), greedy(client, model="test-lora")
    assert base.choices[0].logprobs.content[0].logprob != pytest.approx(
        adapted.choices[0].logprobs.content[0].logprob, abs=1e-3)


async def test_concurrent_base_and_adapter_requests_each_get_what_they_get_alone(async_client) -> None:
    async def ask(model: str):
        response = await async_client.chat.completions.create(
            model=model, messages=QUESTION, temperature=0, max_tokens=16, logprobs=True)
        return response.choices[0].message.content, [t.logprob for t in response.choices[0].logprobs.content]

    alone = [await ask(MODEL), await ask("test-lora")]
    together = await asyncio.gather(ask(MODEL), ask("test-lora"))
    for (text_alone, logprobs_alone), (text_together, logprobs_together) in zip(alone, together):
        assert text_together == text_alone
        assert logprobs_together == pytest.approx(logprobs_alone, abs=1e-4)


async def test_the_server_answers_while_it_generates(base_url, async_client) -> None:
    stream = await async_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=200, temperature=0, stream=True)
    first = await anext(stream)
    async with httpx.AsyncClient() as http:
        health = await http.get(f"{base_url}/health")
    assert health.status_code == 200
    rest = [chunk async for chunk in stream]  # the story was still being written
    assert first.choices and rest and rest[-1].choices[0].finish_reason is not None


def test_tool_calls_come_back_as_openai_tool_calls_streamed_or_not(client) -> None:
    request = dict(model=MODEL, messages=[{"role": "user", "content": "What's the weather in Paris?"}],
                   tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
                   temperature=0, max_tokens=60)
    whole = client.chat.completions.create(**request).choices[0]
    chunks = list(client.chat.completions.create(**request, stream=True))
    streamed: dict[int, list[str]] = {}  # index -> [name, arguments], put together as the SDK does
    for call in (call for c in chunks if c.choices and c.choices[0].delta.tool_calls
                 for call in c.choices[0].delta.tool_calls):
        streamed.setdefault(call.index, ["", ""])
        streamed[call.index][0] += call.function.name or ""
        streamed[call.index][1] += call.function.arguments or ""
    streamed_content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (streamed_content or None) == whole.message.content is None
    assert [tuple(streamed[i]) for i in sorted(streamed)] == \
        [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    # held to the named tool and its schema, the call is whole and ends the answer
    assert whole.finish_reason == "tool_calls" and chunks[-1].choices[0].finish_reason == "tool_calls"
    [call] = whole.message.tool_calls
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)


# ------------------------------------------------------------------ bad requests

@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": MODEL, "messages": []}, 400, "messages"),
        ({"model": "no-such-model", "messages": QUESTION}, 404, "model"),
        ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0"),
        ({"model": MODEL, "messages": QUESTION, "temperature": "hot"}, 400, "temperature"),
        ({"model": MODEL, "messages": QUESTION, "temperature": 3}, 400, "temperature"),
        ({"model": MODEL, "messages": QUESTION, "max_tokens": 10_000_000}, 400, "max_tokens"),
        ({"model": MODEL, "messages": QUESTION, "max_completion_tokens": 0}, 400, "max_completion_tokens"),
        ({"model": MODEL, "messages": QUESTION, "tool_choice": "required"}, 400, "tool_choice"),
        ({"model": MODEL, "messages": QUESTION, "tools": [WEATHER],
          "tool_choice": {"type": "function", "function": {"name": "other"}}}, 400, "tool_choice"),
        ({"model": MODEL, "messages": QUESTION, "top_logprobs": 2}, 400, None),
        ({"model": MODEL, "messages": QUESTION, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"model": MODEL, "messages": QUESTION, "verifier": {"type": "exact", "expected": "x", "frobnicate": True}},
         400, "verifier.frobnicate"),  # a verifier spec stays strict; elsewhere an unknown field is ignored
        ({"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, 400, "messages.0.content.0"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi " * 9000}]}, 400, "messages"),
        ({"model": MODEL, "messages": QUESTION, "n": 9}, 400, "n"),
        ({"model": MODEL, "messages": QUESTION, "response_format": {"type": "json_schema"}}, 400, "response_format"),
        ({"model": MODEL, "messages": QUESTION, "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": 5}}}}, 400, "response_format.json_schema.schema"),
    ],
)
def test_bad_requests_get_a_clear_openai_error(base_url, body, status, param) -> None:
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] in ("invalid_request_error", "not_found_error")
    assert error["param"] == param


def test_the_sdk_raises_the_matching_exceptions(client) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=10_000_000)


def test_malformed_and_oversized_bodies(base_url) -> None:
    url = f"{base_url}/v1/chat/completions"
    not_json = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"
    huge = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (2 * 1024 * 1024)}]}
    too_large = httpx.post(url, json=huge)
    assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "request_too_large"
    unknown_route = httpx.get(f"{base_url}/v1/nothing-here")
    assert unknown_route.status_code == 404 and "error" in unknown_route.json()
