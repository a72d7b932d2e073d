"""`POST /v1/responses` and `GET /v1/responses/{id}` (OpenAI's Responses API) on the real app with a
scripted engine (no model; the embedded SQLite in a temporary folder), driven through the `openai`
SDK as a client would: text and item input, instructions, function tools and their results, the
stream's events in OpenAI's order, `previous_response_id`, `store: false`, R3's verifier and
reflection, and the errors a client gets for what R3 does not offer. The answers of the bundled
model through the same API, on both engines, are in `test_clients.py`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from support import ScriptedEngine, ThreadedServer, last_user_message

from r3.engines.base import EngineError
from r3.settings import Settings
from server.app import create_app

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added"]
TEXT_DONE = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


@asynccontextmanager
async def serving(tmp_path: Path, script: Any, kind: type[ScriptedEngine] = ScriptedEngine,
                  **settings: Any) -> AsyncIterator[tuple[openai.AsyncOpenAI, ScriptedEngine]]:
    """An `openai` client of the app on a scripted engine (of `kind`), and the engine (its `calls`)."""
    engine = kind(script)
    app = create_app(Settings(data_dir=tmp_path, models_dir=tmp_path, database_url=None, redis_url=None, **settings),
                     engine=engine)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://r3/v1") as http:
        yield openai.AsyncOpenAI(base_url="http://r3/v1", api_key="unused", http_client=http, max_retries=0), engine


def turns(prompt: str) -> list[tuple[str, str]]:
    """The (role, text) of each message of a ChatML prompt, as the scripted engine saw it."""
    blocks = prompt.split("<|im_start|>")[1:]
    return [(block.partition("\n")[0], block.partition("\n")[2].removesuffix("<|im_end|>\n").strip())
            for block in blocks if block.partition("\n")[2]]


async def test_text_in_text_out(tmp_path: Path) -> None:
    """Text input with instructions: a system message and a user message; the answer is a completed
    message whose id names its episode, with usage, R3's account, and the request's settings echoed."""
    async with serving(tmp_path, ["Paris."]) as (client, engine):
        response = await client.responses.create(model=engine.model_id, input="The capital of France?",
                                                 instructions="Answer in one word.", temperature=0.5,
                                                 metadata={"category": "geography"})
        assert turns(engine.calls[0].prompt) == [("system", "Answer in one word."),
                                                 ("user", "The capital of France?")]
        assert response.object == "response" and response.status == "completed"
        assert response.output_text == "Paris." and len(response.output) == 1
        [message] = response.output
        assert message.type == "message" and message.role == "assistant" and message.status == "completed"
        assert message.id.startswith("msg_") and message.content[0].type == "output_text"
        assert response.instructions == "Answer in one word." and response.temperature == 0.5
        assert response.metadata == {"category": "geography"} and response.store is True
        usage = response.usage
        assert usage.output_tokens == len("Paris.") and usage.input_tokens == len(engine.encode(engine.calls[0].prompt))
        assert usage.total_tokens == usage.input_tokens + usage.output_tokens
        r3 = response.model_extra["r3"]
        assert response.id == "resp_" + r3["episode_id"].removeprefix("ep_")
        assert [a["attempt"] for a in r3["attempts"]] == [1]

        episode = (await client.get(f"/episodes/{r3['episode_id']}", cast_to=httpx.Response)).json()
        assert episode["category"] == "geography" and episode["attempts"][0]["content"] == "Paris."
        retrieved = await client.responses.retrieve(response.id)
        assert retrieved.model_dump() == response.model_dump()


async def test_items_in_order_and_developer_messages(tmp_path: Path) -> None:
    """Message items of every role, in text or parts (an earlier answer as an output item), are the
    conversation in their order; reasoning items are left out."""
    async with serving(tmp_path, ["Four."]) as (client, engine):
        await client.responses.create(model=engine.model_id, input=[
            {"role": "developer", "content": "Be terse."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "1+1?"}]},
            {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
             "content": [{"type": "output_text", "text": "Two.", "annotations": []}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"role": "user", "content": [{"type": "input_text", "text": "2+2"}, {"type": "input_text", "text": "?"}]},
        ])
        assert turns(engine.calls[0].prompt) == [("system", "Be terse."), ("user", "1+1?"), ("assistant", "Two."),
                                                 ("user", "2+2?")]


async def test_a_function_call_then_its_output(tmp_path: Path) -> None:
    """A named `tool_choice` makes the answer a call of that function: a `function_call` item with a
    `call_id`; its output sent back as a `function_call_output` item answers it, whether the client
    sends the whole conversation or continues with `previous_response_id`."""
    async with serving(tmp_path, ['{"city": "Paris"}}\n</tool_call>', "Sunny.", "Sunny."]) as (client, engine):
        asked = [{"role": "user", "content": "Weather in Paris?"}]
        called = await client.responses.create(model=engine.model_id, input=asked, tools=[WEATHER],
                                               tool_choice={"type": "function", "name": "get_weather"})
        # the named choice reached the prompt: the call was opened for the model (no grammar on this engine)
        assert engine.calls[0].prompt.endswith('<tool_call>\n{"name": "get_weather", "arguments": ')
        [call] = called.output
        assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
        assert json.loads(call.arguments) == {"city": "Paris"} and call.call_id.startswith("call_")
        assert called.tool_choice.name == "get_weather" and called.tools[0].name == "get_weather"
        assert called.model_extra["r3"]["attempts"][0]["finish_reason"] == "stop"

        result = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 24 C"}
        continued = await client.responses.create(model=engine.model_id, previous_response_id=called.id,
                                                  input=[result], tools=[WEATHER])
        whole = await client.responses.create(model=engine.model_id, tools=[WEATHER], input=[
            *asked, call.model_dump(exclude_none=True), result])
        assert continued.output_text == whole.output_text == "Sunny."
        assert engine.calls[1].prompt == engine.calls[2].prompt
        said = turns(engine.calls[1].prompt)
        assert said[-2][0] == "assistant" and '"city": "Paris"' in said[-2][1]
        assert said[-1] == ("tool", "<tool_response>\nsunny, 24 C\n</tool_response>")
        assert continued.previous_response_id == called.id


async def test_the_stream_sends_openais_events_in_order(tmp_path: Path) -> None:
    """A text answer streams as OpenAI's events, numbered from 0: created, in_progress, the message
    added, its part added, its text in deltas, then done (text, part, item), then completed with the
    whole response, which GET returns too. Each is an SSE `event:` with its `data:`; no `[DONE]`."""
    async with serving(tmp_path, ["Hi!", "Hi!"]) as (client, engine):
        async with client.responses.stream(model=engine.model_id, input="Hello") as stream:
            events = [event async for event in stream]
            final = await stream.get_final_response()
        assert [event.type for event in events] == [*TEXT_EVENTS, *["response.output_text.delta"] * 3, *TEXT_DONE,
                                                    "response.completed"]
        assert [event.sequence_number for event in events] == list(range(len(events)))
        assert "".join(event.delta for event in events if event.type == "response.output_text.delta") == "Hi!"
        created, added, done = events[0], events[2], events[-2]
        assert created.response.status == "in_progress" and created.response.output == []
        assert created.response.id == final.id and added.item.id == done.item.id == final.output[0].id
        assert done.item.status == "completed" and events[-4].text == "Hi!"
        assert final.status == "completed" and final.output_text == "Hi!" and final.usage.output_tokens == 3
        retrieved = await client.responses.retrieve(final.id)
        assert (retrieved.output_text, retrieved.output[0].id, retrieved.usage) == ("Hi!", final.output[0].id,
                                                                                   final.usage)

        raw = await client.post("/responses", body={"model": engine.model_id, "input": "Hello", "stream": True},
                                cast_to=httpx.Response)
        blocks = [block for block in raw.text.split("\n\n") if block]
        assert "[DONE]" not in raw.text
        for block in blocks:
            event_line, data_line = block.split("\n")
            assert event_line.removeprefix("event: ") == json.loads(data_line.removeprefix("data: "))["type"]


async def test_a_streamed_call_and_an_incomplete_answer(tmp_path: Path) -> None:
    """Text then a call stream as two items, the message done before the call is added; the call's
    arguments come in deltas, then done with its name. An answer cut by `max_output_tokens` ends
    with `response.incomplete`."""
    async with serving(tmp_path, ["Let me look. " + CALL, "A long answer."]) as (client, engine):
        stream = await client.responses.create(model=engine.model_id, input="Weather in Paris?", tools=[WEATHER],
                                               stream=True)
        events = [event async for event in stream]
        kinds = [event.type for event in events]
        first_call = kinds.index("response.function_call_arguments.delta")
        assert kinds[:4] == TEXT_EVENTS and kinds[first_call - 4:first_call] == [*TEXT_DONE,
                                                                                 "response.output_item.added"]
        assert kinds[kinds.index("response.function_call_arguments.done"):] == [
            "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
        assert set(kinds[first_call:kinds.index("response.function_call_arguments.done")]) == {
            "response.function_call_arguments.delta"}
        arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
        final = events[-1].response
        assert [item.type for item in final.output] == ["message", "function_call"]
        assert final.output[0].content[0].text == "Let me look." and json.loads(arguments) == {"city": "Paris"}
        assert final.output[1].arguments == events[-3].arguments and events[-3].name == "get_weather"
        assert events[first_call - 1].item.call_id == final.output[1].call_id

        cut = await client.responses.create(model=engine.model_id, input="Say a lot.", max_output_tokens=4,
                                            stream=True)
        last = [event async for event in cut][-1]
        assert last.type == "response.incomplete" and last.response.status == "incomplete"
        assert last.response.incomplete_details.reason == "max_output_tokens"
        assert last.response.output_text == "A lo" and last.response.output[0].status == "incomplete"


async def test_previous_response_id_continues_the_conversation(tmp_path: Path) -> None:
    """The previous response's input and output come before the new input; its instructions do not
    (OpenAI carries none over), the new ones do; a chain goes on from each response."""
    async with serving(tmp_path, ["Paris.", "About 2 million.", "Yes."]) as (client, engine):
        first = await client.responses.create(model=engine.model_id, input="Capital of France?",
                                              instructions="Be brief.")
        second = await client.responses.create(model=engine.model_id, input="Its population?",
                                               previous_response_id=first.id, instructions="Use numbers.")
        third = await client.responses.create(model=engine.model_id, input="Sure?", previous_response_id=second.id)
        assert turns(engine.calls[1].prompt) == [("system", "Use numbers."), ("user", "Capital of France?"),
                                                 ("assistant", "Paris."), ("user", "Its population?")]
        assert turns(engine.calls[2].prompt) == [("user", "Capital of France?"), ("assistant", "Paris."),
                                                 ("user", "Its population?"), ("assistant", "About 2 million."),
                                                 ("user", "Sure?")]
        assert third.output_text == "Yes." and third.previous_response_id == second.id
        assert (await client.responses.retrieve(second.id)).instructions == "Use numbers."


async def test_store_false_keeps_nothing_to_retrieve_or_continue(tmp_path: Path) -> None:
    async with serving(tmp_path, ["Secret answer."]) as (client, engine):
        response = await client.responses.create(model=engine.model_id, input="A secret?", store=False)
        assert response.output_text == "Secret answer." and response.store is False
        episode = (await client.get(f"/episodes/{response.model_extra['r3']['episode_id']}",
                                    cast_to=httpx.Response)).json()
        assert episode["messages"] is None and episode["attempts"][0]["content"] is None
        with pytest.raises(openai.NotFoundError) as missing:
            await client.responses.retrieve(response.id)
        assert "store: false" in missing.value.message
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.create(model=engine.model_id, input="Again?", previous_response_id=response.id)
        assert refused.value.param == "previous_response_id" and "store: false" in refused.value.message
        assert len(engine.calls) == 1


class SlowEngine(ScriptedEngine):
    """The scripted engine, one token every 20 ms: a client has time to hang up mid-answer."""

    async def stream(self, prompt, params, adapter=None, conversation=None):
        async for chunk in super().stream(prompt, params, adapter, conversation):
            await asyncio.sleep(0.02)
            yield chunk


class BreakingEngine(ScriptedEngine):
    """The scripted engine, failing after its answer's first token."""

    async def stream(self, prompt, params, adapter=None, conversation=None):
        async for chunk in super().stream(prompt, params, adapter, conversation):
            yield chunk
            raise EngineError("the engine broke")


async def test_a_stream_that_fails_after_it_started_says_so(tmp_path: Path) -> None:
    """Once the stream has started, a failure is an `error` event, then `response.failed` saying why."""
    async with serving(tmp_path, ["Half an answer."], BreakingEngine) as (client, engine):
        events = [event async for event in await client.responses.create(model=engine.model_id, input="Hi",
                                                                          stream=True)]
    assert [event.type for event in events] == [*TEXT_EVENTS, "response.output_text.delta", "error",
                                                "response.failed"]
    assert events[-2].message == "the engine broke" and events[-1].response.status == "failed"
    assert events[-1].response.error.message == "the engine broke"


def test_a_stream_whose_client_hangs_up_is_cancelled(tmp_path: Path) -> None:
    """A client that hangs up mid-stream leaves its episode as far as it got: the response is
    "cancelled", its message incomplete, and there is no answer to continue from."""
    engine = SlowEngine(["A long answer that takes a while. " * 10])
    app = create_app(Settings(data_dir=tmp_path, models_dir=tmp_path, database_url=None, redis_url=None),
                     engine=engine)
    with ThreadedServer(app) as url:
        body = {"model": engine.model_id, "input": "Tell me a story.", "stream": True}
        with httpx.stream("POST", f"{url}/v1/responses", json=body, timeout=30) as streamed:
            for line in streamed.iter_lines():
                event = json.loads(line.removeprefix("data: ")) if line.startswith("data: ") else {}
                if event.get("type") == "response.created":
                    created = event["response"]["id"]
                if event.get("type") == "response.output_text.delta":
                    break  # leaving the block closes the connection mid-stream
        deadline = time.monotonic() + 30
        while (stored := httpx.get(f"{url}/v1/responses/{created}")).status_code == 404 and time.monotonic() < deadline:
            time.sleep(0.1)
        response = stored.json()
        assert response["status"] == "cancelled" and response["output"][0]["status"] == "incomplete"
        assert 0 < len(response["output"][0]["content"][0]["text"]) < len(engine.calls[0].answer)
        refused = httpx.post(f"{url}/v1/responses", json={"model": engine.model_id, "input": "Go on.",
                                                          "previous_response_id": created})
        assert refused.status_code == 400 and "cancelled" in refused.json()["error"]["message"]


async def test_a_verifier_reflects_and_retries(tmp_path: Path) -> None:
    """R3's `verifier` and `reflect`, sent through `extra_body` as to chat completions: a failed answer
    is reflected on and retried; the response is the retry, with each attempt in `r3`, the reflection's
    tokens as reasoning tokens. Streamed, the judged answer goes out whole."""
    reflection = "Mangoes are out of stock; I should name another fruit."
    script = ["Mango", reflection, "Apple"] * 2
    verified = {"verifier": {"type": "exact", "expected": "Apple"}, "reflect": {"max_retries": 1}}
    async with serving(tmp_path, script) as (client, engine):
        response = await client.responses.create(model=engine.model_id, input="Name a fruit we sell.",
                                                 extra_body=verified)
        assert response.output_text == "Apple" and response.status == "completed"
        r3 = response.model_extra["r3"]
        assert r3["reflected"] is True and [(a["attempt"], a["success"]) for a in r3["attempts"]] == [(1, False),
                                                                                                       (2, True)]
        assert r3["attempts"][1]["reflection"] == reflection
        assert response.usage.output_tokens_details.reasoning_tokens == len(reflection)
        assert response.usage.output_tokens == len("Mango") + len(reflection) + len("Apple")
        assert r3["attempts"][0]["detail"] in last_user_message(engine.calls[1].prompt)  # asked to reflect on it

        async with client.responses.stream(model=engine.model_id, input="Name a fruit we sell.",
                                           extra_body=verified) as stream:
            deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
            final = await stream.get_final_response()
        assert deltas == ["Apple"] and final.model_extra["r3"]["reflected"] is True


async def test_structured_outputs_go_down_as_the_chat_requests_do(tmp_path: Path) -> None:
    """`text.format` is the chat request's `response_format`: on an engine that cannot constrain
    decoding (this scripted one) it is refused as chat completions refuse it, named as `text.format`;
    a bad schema is refused naming `text.format.schema`. (Answers held to a schema: test_clients.py.)"""
    async with serving(tmp_path, []) as (client, engine):
        schema = {"type": "json_schema", "name": "city", "schema": {"type": "object"}}
        with pytest.raises(openai.BadRequestError) as refused:
            await client.responses.create(model=engine.model_id, input="A city?", text={"format": schema})
        assert refused.value.param == "text.format" and "constrains decoding" in refused.value.message
        bad = {**schema, "schema": {"type": "object", "properties": {"a": {"type": 5}}}}
        with pytest.raises(openai.BadRequestError) as invalid:
            await client.responses.create(model=engine.model_id, input="A city?", text={"format": bad})
        assert invalid.value.param == "text.format.schema"
        assert engine.calls == []


async def test_a_response_is_its_callers_own(tmp_path: Path) -> None:
    """GET answers only the key that made the response (another key's is a 404), and no chat completion."""
    async with serving(tmp_path, ["Mine.", "A chat answer."], api_keys=["key-a", "key-b"]) as (client, engine):
        alice, bob = client.with_options(api_key="key-a"), client.with_options(api_key="key-b")
        response = await alice.responses.create(model=engine.model_id, input="Hi")
        assert (await alice.responses.retrieve(response.id)).output_text == "Mine."
        with pytest.raises(openai.NotFoundError) as theirs:
            await bob.responses.retrieve(response.id)
        assert theirs.value.param == "response_id"
        with pytest.raises(openai.NotFoundError):
            await bob.responses.create(model=engine.model_id, input="Hi", previous_response_id=response.id)
        chat = await alice.chat.completions.create(model=engine.model_id, messages=[{"role": "user", "content": "Hi"}])
        with pytest.raises(openai.NotFoundError):
            await alice.responses.retrieve("resp_" + chat.model_extra["r3"]["episode_id"].removeprefix("ep_"))


@pytest.fixture(scope="module")
async def refusing(tmp_path_factory: pytest.TempPathFactory):
    """One app for the requests refused before anything is generated (its engine has no answer to give)."""
    async with serving(tmp_path_factory.mktemp("refusing"), []) as served:
        yield served


@pytest.mark.parametrize(("body", "param", "says"), [
    ({"tools": [WEATHER, {"type": "web_search"}]}, "tools.1.type", "built-in tools"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools.0.type", "built-in tools"),
    ({"tools": [{"type": "computer_use_preview", "display_width": 1024, "display_height": 768,
                 "environment": "linux"}]}, "tools.0.type", "built-in tools"),
    ({"tools": [{"type": "mcp", "server_label": "x", "server_url": "https://example.com"}]}, "tools.0.type",
     "built-in tools"),
    ({"tools": [{"type": "custom", "name": "grammar"}]}, "tools.0.type", "function tools only"),
    ({"tools": [{"type": {"not": "a name"}}]}, "tools.0.type", None),
    ({"tools": [WEATHER], "tool_choice": {"type": "web_search_preview"}}, "tool_choice.type", "built-in tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [
        {"type": "function", "name": "get_weather"}, {"type": "code_interpreter"}]}}, "tool_choice.tools.1.type",
     "built-in tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice", "not in tools"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "What is this?"},
                                             {"type": "input_image", "image_url": "https://example.com/a.png"}]}]},
     "input.0.content.1.type", "reads text only"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": [
        {"type": "input_file", "file_id": "file_1"}]}]}, "input.0.output.0.type", "reads text only"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0.type", "item references"),
    ({"input": [{"type": "web_search_call", "id": "ws_1", "status": "completed"}]}, "input.0.type",
     "function tools only"),
    ({"input": []}, "input", "nothing to answer"),
    ({"input": [{"role": "robot", "content": "hi"}]}, "input.0.role", None),
    ({"temperature": 3}, "temperature", None),
    ({"max_output_tokens": 10**6}, "max_output_tokens", "max_output_tokens is 1000000"),
    ({"include": ["message.output_text.logprobs"]}, "include", "logprobs"),
    ({"background": True}, "background", "within the request"),
    ({"conversation": "conv_1"}, "conversation", "previous_response_id"),
])
async def test_what_r3_does_not_offer_is_a_400_naming_it(refusing, body: dict, param: str, says: str | None) -> None:
    client, engine = refusing
    with pytest.raises(openai.BadRequestError) as refused:
        await client.post("/responses", body={"model": engine.model_id, "input": "Hi", **body}, cast_to=httpx.Response)
    error = refused.value
    assert error.param == param and error.type == "invalid_request_error", error.body
    assert says is None or says in error.message, error.message
    assert engine.calls == []


async def test_unknown_names_are_404s(tmp_path: Path) -> None:
    async with serving(tmp_path, []) as (client, engine):
        with pytest.raises(openai.NotFoundError) as previous:
            await client.responses.create(model=engine.model_id, input="Hi", previous_response_id="resp_nothing")
        assert previous.value.param == "previous_response_id" and previous.value.code == "previous_response_not_found"
        with pytest.raises(openai.NotFoundError) as model:
            await client.responses.create(model="no-such-model", input="Hi")
        assert model.value.param == "model"
        for unknown in ("resp_0123", "not-a-response-id"):
            with pytest.raises(openai.NotFoundError) as response:
                await client.responses.retrieve(unknown)
            assert response.value.param == "response_id"
