"""Issue 16, section 2: the OpenAI contract as strict clients read it, on both engines.

Each case is a kind of fault that public bug reports describe for vLLM, llama.cpp, ollama or
LiteLLM. The app runs in the test's event loop on the session's engines (`transformers_engine`,
`vllm_engine`), reached over ASGI, behind the `x-request-id` middleware as `r3 serve` runs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import pytest
from support import TIME, WEATHER

from r3.engines.base import Engine
from r3.settings import Settings
from server.app import create_app
from server.request_id import RequestId

MODEL = "smol"  # the id the session engines were started with
ASK = [{"role": "user", "content": "What is the capital of France?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def tokenizer(model_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


@pytest.fixture(scope="module")
async def client(started_engine: Engine, model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(default_max_tokens=48, reflection_max_tokens=16, models_dir=model_path.parent,
                        data_dir=tmp_path_factory.mktemp("contract"))
    app = create_app(settings, engine=started_engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=RequestId(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://r3", timeout=300) as http:
            yield http


async def chat(client: httpx.AsyncClient, **body) -> dict:
    response = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, **body})
    assert response.status_code == 200, response.text
    return response.json()


async def sse(client: httpx.AsyncClient, **body) -> list[dict]:
    """The chunks of a streamed answer, as sent (`[DONE]` checked and left out)."""
    response = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, "stream": True, **body})
    assert response.status_code == 200, response.text
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


def streamed_calls(chunks: list[dict]) -> list[tuple[str, str]]:
    """Tool call deltas put together by index, as clients do."""
    calls: dict[int, list[str]] = {}
    for chunk in chunks:
        for delta in (chunk["choices"][0]["delta"].get("tool_calls") or []) if chunk["choices"] else []:
            call = calls.setdefault(delta["index"], ["", ""])
            call[0] += delta["function"].get("name") or ""
            call[1] += delta["function"].get("arguments") or ""
    return [tuple(calls[index]) for index in sorted(calls)]


# ------------------------------------------------------------------ stream chunks: null, not absent


async def test_every_stream_chunk_carries_finish_reason_and_logprobs_null_until_the_last(client) -> None:
    chunks = await sse(client, max_tokens=6, temperature=0)
    choices = [chunk["choices"][0] for chunk in chunks]
    assert all("finish_reason" in c and "logprobs" in c for c in choices)
    assert [c["finish_reason"] for c in choices[:-1]] == [None] * (len(choices) - 1)
    assert choices[-1]["finish_reason"] in ("stop", "length")
    assert all(c["logprobs"] is None for c in choices) and all("usage" not in chunk for chunk in chunks)


async def test_with_include_usage_every_chunk_but_the_last_carries_usage_null(client) -> None:
    chunks = await sse(client, max_tokens=6, temperature=0, logprobs=True, stream_options={"include_usage": True})
    assert all("usage" in chunk for chunk in chunks)
    assert [chunk["usage"] for chunk in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert any(chunk["choices"][0]["logprobs"] for chunk in chunks[:-1])


# ------------------------------------------------------------------ logprobs bytes


async def test_logprob_bytes_are_each_tokens_own_and_rejoin_into_the_text(client) -> None:
    body = await chat(client, messages=[{"role": "user", "content": "Translate to Japanese: good morning"}],
                      max_tokens=16, temperature=0, logprobs=True, top_logprobs=1)
    choice = body["choices"][0]
    tokens = choice["logprobs"]["content"]
    text = b"".join(bytes(t["bytes"]) for t in tokens).decode("utf-8", errors="strict")
    assert text == choice["message"]["content"]
    assert any(ord(c) > 0x3000 for c in text)  # the answer has Japanese characters, several tokens each
    assert any(t["token"].startswith("bytes:\\x") for t in tokens)  # a piece of a character, named as OpenAI names it
    for t in tokens:
        assert t["top_logprobs"][0]["bytes"] == t["bytes"]  # greedy: the top alternative is the token chosen


# ------------------------------------------------------------------ nullable parameters and OpenAI's fields


async def test_null_means_the_default_for_every_nullable_parameter(client) -> None:
    nulls = {field: None for field in ("temperature", "top_p", "n", "presence_penalty", "frequency_penalty",
                                       "logprobs", "stream", "store", "parallel_tool_calls", "top_logprobs", "seed",
                                       "stop", "max_tokens", "max_completion_tokens", "logit_bias", "tools",
                                       "tool_choice", "response_format", "stream_options", "user", "metadata")}
    body = await chat(client, **nulls)
    assert body["choices"][0]["message"]["content"] and len(body["choices"]) == 1
    refused = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, "stream": "yes"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "stream"


async def test_every_field_of_openais_request_is_accepted(client) -> None:
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "sunny"}]
    body = await chat(client, messages=messages, max_tokens=4, tools=[WEATHER], metadata={"team": "eval"},
                      service_tier="auto", reasoning_effort="low", verbosity="low", modalities=["text"],
                      prediction={"type": "content", "content": "Paris"}, prompt_cache_key="k",
                      prompt_cache_retention="in_memory", safety_identifier="user-1", user="u",
                      web_search_options={}, logit_bias={"15": -100}, presence_penalty=0.5, frequency_penalty=0.5,
                      parallel_tool_calls=False, store=False)
    assert body["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")


async def test_a_field_outside_openais_request_is_ignored_and_named(client) -> None:
    response = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, "top_k": 5,
                                                               "max_tokens": 1})
    assert response.status_code == 200 and response.headers["x-r3-ignored-fields"] == "top_k"


async def test_logit_bias_is_honoured(client, tokenizer) -> None:
    plain = await chat(client, max_tokens=1, temperature=0, logprobs=True, top_logprobs=2)
    runner_up = plain["choices"][0]["logprobs"]["content"][0]["top_logprobs"][1]
    [token_id] = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(runner_up["token"]))
    biased = await chat(client, max_tokens=1, temperature=0, logprobs=True, logit_bias={str(token_id): 100})
    [token] = biased["choices"][0]["logprobs"]["content"]
    assert token["token"] == runner_up["token"]
    assert token["logprob"] == pytest.approx(runner_up["logprob"], abs=1e-4)  # the model's, before the bias
    outside = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK,
                                                             "logit_bias": {str(len(tokenizer)): 1}})
    assert outside.status_code == 400 and outside.json()["error"]["param"] == "logit_bias"


async def test_n_choices_follow_vllms_seed_rule(client) -> None:
    body = await chat(client, n=3, seed=11, temperature=1.0, max_tokens=8)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert len({c["r3"]["episode_id"] for c in body["choices"]}) == 3  # each choice is an episode of its own
    second = await chat(client, seed=12, temperature=1.0, max_tokens=8)  # choice i has seed + i
    assert body["choices"][1]["message"]["content"] == second["choices"][0]["message"]["content"]
    chunks = await sse(client, n=2, seed=11, temperature=1.0, max_tokens=8, logprobs=True,
                       stream_options={"include_usage": True})
    per_choice = [[c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == i] for i in (0, 1)]
    assert ["".join(c["delta"].get("content", "") for c in choices) for choices in per_choice] == \
        [body["choices"][i]["message"]["content"] for i in (0, 1)]
    assert all(choices[-1]["finish_reason"] and choices[-1]["r3"]["episode_id"] for choices in per_choice)
    tokens = sum(len(c["logprobs"]["content"]) for choices in per_choice for c in choices if c["logprobs"])
    assert chunks[-1]["usage"]["completion_tokens"] == tokens and len({c["id"] for c in chunks}) == 1


# ------------------------------------------------------------------ tool calls


async def test_a_forced_tool_call_ends_the_answer_and_leaks_nothing_into_content(client) -> None:
    for tool_choice in ("required", NAMED):
        body = await chat(client, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
                          tools=[WEATHER, TIME], tool_choice=tool_choice, temperature=0, max_tokens=80,
                          parallel_tool_calls=False)
        choice = body["choices"][0]
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
        [call] = choice["message"]["tool_calls"]
        assert call["function"]["name"] in ({"get_weather"} if tool_choice == NAMED else {"get_weather", "get_time"})
        schema = (WEATHER if call["function"]["name"] == "get_weather" else TIME)["function"]["parameters"]
        jsonschema.validate(json.loads(call["function"]["arguments"]), schema)


async def test_json_that_is_no_call_of_an_offered_tool_stays_content(client) -> None:
    body = await chat(client, messages=[{"role": "user", "content": 'Repeat exactly: {"name": "Alice", "age": 30}'}],
                      tools=[WEATHER], temperature=0, max_tokens=40)
    message = body["choices"][0]["message"]
    assert all(call["function"]["name"] == "get_weather" for call in message["tool_calls"] or [])


async def test_a_streamed_call_sends_its_name_first_then_its_arguments_in_pieces(client) -> None:
    chunks = await sse(client, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
                       tools=[WEATHER, TIME], tool_choice=NAMED, temperature=0, max_tokens=80)
    deltas = [d for c in chunks if c["choices"] for d in c["choices"][0]["delta"].get("tool_calls") or []]
    assert deltas[0]["function"]["name"] == "get_weather" and deltas[0]["id"].startswith("call_")
    assert deltas[0]["type"] == "function" and deltas[0]["function"]["arguments"] == ""
    assert len(deltas) > 2 and all("name" not in d["function"] and "id" not in d for d in deltas[1:])
    whole = await chat(client, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
                       tools=[WEATHER, TIME], tool_choice=NAMED, temperature=0, max_tokens=80)
    [call] = whole["choices"][0]["message"]["tool_calls"]
    assert streamed_calls(chunks) == [(call["function"]["name"], call["function"]["arguments"])]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_the_deprecated_functions_are_read_as_tools(client) -> None:
    conversation = [{"role": "user", "content": "What is the weather in Paris?"},
                    {"role": "assistant", "content": None, "function_call": {"name": "get_weather",
                                                                             "arguments": '{"city": "Paris"}'}},
                    {"role": "function", "name": "get_weather", "content": "sunny"},
                    {"role": "user", "content": "And in Rome?"}]
    body = await chat(client, messages=conversation, functions=[WEATHER["function"]],
                      function_call={"name": "get_weather"}, temperature=0, max_tokens=60)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert [call["function"]["name"] for call in choice["message"]["tool_calls"]] == ["get_weather"]
    both = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, "tools": [WEATHER],
                                                           "functions": [WEATHER["function"]]})
    assert both.status_code == 400


async def test_allowed_tools_offer_only_those_tools(client) -> None:
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
        {"type": "function", "function": {"name": "get_time"}}]}}
    body = await chat(client, tools=[WEATHER, TIME], tool_choice=choice, temperature=0, max_tokens=60)
    assert {c["function"]["name"] for c in body["choices"][0]["message"]["tool_calls"]} == {"get_time"}


# ------------------------------------------------------------------ structured outputs


async def test_response_format_holds_the_answer_to_the_schema(client) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                               "sunny": {"type": "boolean"}},
              "required": ["city", "sunny"], "additionalProperties": False}
    body = await chat(client, temperature=0, max_tokens=60,
                      response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}})
    assert body["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), schema)
    body = await chat(client, temperature=0, max_tokens=24, response_format={"type": "json_object"})
    assert body["choices"][0]["message"]["content"].lstrip().startswith("{")


async def test_a_schema_no_grammar_can_hold_is_a_400_before_anything_streams(client) -> None:
    bad = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}
    for stream in (False, True):
        response = await client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": ASK, "tools": [bad], "tool_choice": "required", "stream": stream})
        assert response.status_code == 400 and response.json()["error"]["param"] == "tools", response.text


# ------------------------------------------------------------------ models and request ids


async def test_a_listed_model_can_be_retrieved(client) -> None:
    listed = (await client.get("/v1/models")).json()["data"]
    for card in listed:
        response = await client.get(f"/v1/models/{card['id']}")
        assert response.status_code == 200 and response.json() == card
    missing = await client.get("/v1/models/no-such-model")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


async def test_every_response_carries_a_request_id_and_keeps_the_clients(client) -> None:
    own = await client.get("/v1/models")
    assert len(own.headers["x-request-id"]) >= 16
    assert (await client.get("/v1/models")).headers["x-request-id"] != own.headers["x-request-id"]
    mine = {"x-request-id": "trace-42"}
    assert (await client.get("/v1/models", headers=mine)).headers["x-request-id"] == "trace-42"
    error = await client.post("/v1/chat/completions", json={"model": "nope", "messages": ASK}, headers=mine)
    assert error.status_code == 404 and error.headers["x-request-id"] == "trace-42"
    response = await client.post("/v1/chat/completions", headers=mine,
                                 json={"model": MODEL, "messages": ASK, "max_tokens": 2, "stream": True})
    assert response.headers["x-request-id"] == "trace-42"
    unusable = await client.get("/v1/models", headers={"x-request-id": "x" * 500})
    assert unusable.headers["x-request-id"] != "x" * 500


# ------------------------------------------------------------------ the legacy POST /v1/completions

PROMPT = "The capital of France is"


async def complete(client: httpx.AsyncClient, **body) -> dict:
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, **body})
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_legacy_completion_continues_the_prompt(client) -> None:
    body = await complete(client, max_tokens=5, temperature=0, logprobs=2)
    [choice] = body["choices"]
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert choice["text"] and choice["finish_reason"] in ("stop", "length")
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"] and len(logprobs["tokens"]) == body["usage"]["completion_tokens"]
    assert logprobs["text_offset"][0] == 0 and all(lp <= 0 for lp in logprobs["token_logprobs"])
    chunks = await _completion_chunks(client, max_tokens=5, temperature=0, stream_options={"include_usage": True})
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == choice["text"]
    assert chunks[-1]["usage"] == body["usage"]


async def test_scoring_as_lm_evaluation_harness_does_gives_the_models_own_logprobs(client, tokenizer) -> None:
    """lm-eval's `local-completions` loglikelihood: the context and continuation echoed with logprobs,
    the continuation's logprobs read from the end (`token_logprobs[ctxlen:-1]`), greedy if each is the top one."""
    generated = await complete(client, max_tokens=2, temperature=0, logprobs=1)  # " Paris."
    continuation = generated["choices"][0]["text"]
    context_ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    whole_ids = tokenizer(PROMPT + continuation, add_special_tokens=False)["input_ids"]
    assert whole_ids[:len(context_ids)] == context_ids  # the continuation tokenizes on its own
    scored = await complete(client, prompt=whole_ids, max_tokens=1, temperature=0, logprobs=1, echo=True, seed=1234)
    logprobs = scored["choices"][0]["logprobs"]
    assert scored["choices"][0]["text"].startswith(PROMPT + continuation)
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert len(logprobs["tokens"]) == len(whole_ids) + 1
    continuation_logprobs = logprobs["token_logprobs"][len(context_ids):-1]
    assert continuation_logprobs == pytest.approx(generated["choices"][0]["logprobs"]["token_logprobs"], abs=1e-3)
    tops = logprobs["top_logprobs"][len(context_ids):-1]
    assert all(lp >= max(top.values()) - 1e-6 for lp, top in zip(continuation_logprobs, tops))  # greedy
    only_scored = await complete(client, prompt=whole_ids, max_tokens=0, logprobs=0, echo=True)
    assert only_scored["choices"][0]["text"] == PROMPT + continuation
    assert only_scored["choices"][0]["logprobs"]["token_logprobs"][1:] == pytest.approx(logprobs["token_logprobs"][1:-1],
                                                                                         abs=1e-3)
    assert only_scored["usage"]["completion_tokens"] == 0


async def test_several_prompts_and_choices_are_numbered_as_vllm_numbers_them(client) -> None:
    body = await complete(client, prompt=[PROMPT, "Once upon a time"], n=2, max_tokens=3, seed=5)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    one = await complete(client, prompt="Once upon a time", max_tokens=3, seed=6)
    assert body["choices"][3]["text"] == one["choices"][0]["text"]  # prompt 1, choice 1: seed + 1


@pytest.mark.parametrize(("body", "param"), [({"suffix": "x"}, None), ({"max_tokens": 0}, None),
                                             ({"prompt": [[1, 10**9]]}, "prompt"), ({"best_of": 3}, None),
                                             ({"prompt": ""}, None), ({"logprobs": 21}, "logprobs")])
async def test_a_legacy_completion_refuses_what_it_cannot_do(client, body, param) -> None:
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def _completion_chunks(client: httpx.AsyncClient, **body) -> list[dict]:
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "stream": True, **body})
    assert response.status_code == 200, response.text
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]
