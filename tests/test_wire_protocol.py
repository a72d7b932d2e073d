"""The wire protocol: what a request may hold and how each fault in it is answered.

- Fields R3 does not know are ignored and named (`X-R3-Ignored-Fields`, a warning), or refused
  by name with `R3_STRICT_REQUEST_FIELDS`; a verifier spec stays strict.
- Every field, message and content part of OpenAI's request, walked from the `openai` package's
  own types, is known: none is ignored or refused as unknown.
- A stream fails before its first byte with the status and error object of the unstreamed request.
- A body that is not UTF-8 is refused (RFC 8259, section 8.1).
- JSON inside a request (a tool call's arguments) nests no deeper than `MAX_JSON_DEPTH`.
- `logit_bias` keys are token ids in ASCII digits, within the vocabulary.

The apps run in the test's event loop on the session's transformers engine, reached over ASGI.
"""

from __future__ import annotations

import json
import logging
import types
import typing
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import typing_extensions
from openai.types import completion_create_params as legacy_params
from openai.types.chat import completion_create_params as chat_params

from r3.chat_format import parse_tool_calls
from r3.engines.base import Engine
from r3.settings import Settings
from server.app import create_app
from verifiers import MAX_JSON_DEPTH
from verifiers.json_text import JsonTextError, JsonTooDeep, read_json, read_json_at

MODEL = "smol"  # the id the session engine was started with
ASK = [{"role": "user", "content": "Say hi."}]
IGNORED = "x-r3-ignored-fields"


async def _client(engine: Engine, model_path: Path, data_dir: Path, **settings: Any):
    app = create_app(Settings(default_max_tokens=2, reflection_max_tokens=2, models_dir=model_path.parent,
                              data_dir=data_dir, **settings), engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://r3", timeout=300) as http:
            yield http


@pytest.fixture(scope="module")
async def client(transformers_engine: Engine, model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    async for http in _client(transformers_engine, model_path, tmp_path_factory.mktemp("wire")):
        yield http


@pytest.fixture(scope="module")
async def strict(transformers_engine: Engine, model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """The same server with `R3_STRICT_REQUEST_FIELDS` on."""
    async for http in _client(transformers_engine, model_path, tmp_path_factory.mktemp("wire-strict"),
                              strict_request_fields=True):
        yield http


async def post(http: httpx.AsyncClient, path: str = "/v1/chat/completions", **body: Any) -> httpx.Response:
    defaults = {"model": MODEL, "max_tokens": 1, **({"messages": ASK} if "chat" in path else {"prompt": "Hi"})}
    return await http.post(path, json={**defaults, **body})


def refused(response: httpx.Response, status: int, param: str | None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


# ------------------------------------------------------------------ fields R3 does not know


async def test_unknown_fields_are_ignored_and_named(client, caplog) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "Say hi.", "foo": 1}]}]
    with caplog.at_level(logging.WARNING, logger="server.errors"):
        response = await post(client, temprature=0.5, messages=messages, stream=True,
                              stream_options={"include_usage": True, "include_obfuscation": False, "bar": []})
    assert response.status_code == 200, response.text
    assert response.headers[IGNORED] == "temprature,messages.0.content.0.foo,stream_options.bar"
    assert "temprature, messages.0.content.0.foo, stream_options.bar" in caplog.text
    assert response.text.rstrip().endswith("data: [DONE]")


async def test_a_request_of_known_fields_names_none(client) -> None:
    response = await post(client, stream=True, stream_options={"include_obfuscation": True})
    assert response.status_code == 200 and IGNORED not in response.headers


async def test_an_ignored_field_is_named_on_an_error_too(client) -> None:
    response = await post(client, model="no-such-model", temprature=1)
    refused(response, 404, "model", "model_not_found")
    assert response.headers[IGNORED] == "temprature"


async def test_keys_are_named_so_that_any_fits_a_header(client) -> None:
    response = await post(client, **{"a,b": 1, "x\r\nSet-Cookie: y": 2, "é": 3})
    assert response.status_code == 200, response.text
    assert response.headers[IGNORED] == "a%2Cb,x%0D%0ASet-Cookie%3A%20y,%C3%A9"
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_strict_fields_refuse_the_first_unknown_by_name(strict, client, path) -> None:
    error = refused(await post(strict, path, temprature=0.5), 400, "temprature", "unknown_parameter")
    assert error["message"].startswith("temprature: unknown parameter")
    nested = await post(strict, path, stream=True, stream_options={"include_usage": True, "bar": 1})
    refused(nested, 400, "stream_options.bar", "unknown_parameter")
    lenient = await post(client, path, temprature=0.5)
    assert lenient.status_code == 200 and lenient.headers[IGNORED] == "temprature"


async def test_feedback_follows_the_same_policy(client, strict) -> None:
    body = {"episode_id": "ep-none", "success": True, "sucess": False}
    response = await client.post("/feedback", json=body)
    assert response.status_code == 404 and response.headers[IGNORED] == "sucess"
    refused(await strict.post("/feedback", json=body), 400, "sucess", "unknown_parameter")


@pytest.mark.parametrize(("body", "param"), [
    ({"temperature": "0.5"}, "temperature"),
    ({"stream": True, "stream_options": {"include_obfuscation": "no"}}, "stream_options.include_obfuscation"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi",
                                                 "prompt_cache_breakpoint": {"mode": "always"}}]}]},
     "messages.0.content.0.prompt_cache_breakpoint.mode"),
])
async def test_known_fields_stay_strictly_checked(client, body, param) -> None:
    refused(await post(client, **body), 400, param)


async def test_a_verifier_spec_stays_strict(client) -> None:
    response = await post(client, verifier={"type": "exact", "expected": "hi", "case_sensitiv": False})
    error = refused(response, 400, "verifier.case_sensitiv")
    assert "Extra inputs are not permitted" in error["message"]


async def test_the_openai_sdk_s_typed_call_with_new_fields_is_served(client) -> None:
    sdk = openai.AsyncOpenAI(base_url="http://r3/v1", api_key="unused", http_client=client)
    stream = await sdk.chat.completions.create(
        model=MODEL, max_tokens=2, stream=True,
        stream_options={"include_usage": True, "include_obfuscation": False},
        messages=[{"role": "user", "content": [{"type": "text", "text": "Say hi.",
                                                "prompt_cache_breakpoint": {"mode": "explicit"}}]}])
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


# ------------------------------------------------------------------ OpenAI's whole request, walked from its types


def valid_values(hint: Any) -> list[Any]:
    """Valid values of a type of the `openai` package's request params, at least one for every
    alternative of every union inside it (a TypedDict's value k takes each key's value k, cycling)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if typing_extensions.is_typeddict(hint):
        per_key = {key: valid_values(value) for key, value in typing_extensions.get_type_hints(hint).items()}
        count = max(len(values) for values in per_key.values())
        return [{key: values[i % len(values)] for key, values in per_key.items()} for i in range(count)]
    if origin is typing.Literal:
        return list(args)
    if origin in (typing.Union, types.UnionType):
        return [value for arg in args if arg is not type(None) for value in valid_values(arg)]
    if origin is dict:
        return [{"1": value} for value in valid_values(args[1])]  # "1": a key that is also a token id
    if args:  # Iterable, List, SequenceNotStr: one list per kind of item
        return [[value] for value in valid_values(args[0])]
    return {str: ["x"], int: [1], float: [0.5], bool: [True], object: ["x"]}[hint]


# What R3's models cannot take: refused with 400 `unsupported_value`, or "not supported", saying so.
UNSUPPORTED_TYPES = {"image_url", "input_audio", "file", "custom"}


def unsupported(value: Any) -> bool:
    if isinstance(value, dict):
        return value.get("type") in UNSUPPORTED_TYPES or any(unsupported(v) for v in value.values())
    return isinstance(value, list) and any(unsupported(v) for v in value)


def with_what_it_needs(field: str, value: Any) -> dict[str, Any]:
    """The request fields one OpenAI field takes with a value, with those it depends on."""
    tool = {"type": "function", "function": {"name": "x"}}
    if field == "tool_choice" and isinstance(value, dict) and value["type"] == "allowed_tools":
        value = {**value, "allowed_tools": {**value["allowed_tools"], "tools": [tool]}}  # OpenAI: Dict[str, object]
    needs = {"top_logprobs": {"logprobs": True}, "stream_options": {"stream": True},
             "function_call": {"functions": [{"name": "x"}]}, "tool_choice": {"tools": [tool]}}
    return {field: value, **needs.get(field, {})}


def requests(*typed_dicts: type) -> list[tuple[str, dict[str, Any]]]:
    """(field, the request fields) for every valid value of every field of `typed_dicts`."""
    fields = {key: hint for typed in typed_dicts for key, hint in typing_extensions.get_type_hints(typed).items()}
    stream = [value for typed in typed_dicts for value in valid_values(typing_extensions.get_type_hints(typed)["stream"])]
    fields.pop("model")
    fields["stream"] = typing.Literal[tuple(stream)]
    return [(field, with_what_it_needs(field, value)) for field, hint in fields.items() for value in valid_values(hint)]


CHAT_REQUESTS = requests(chat_params.CompletionCreateParamsNonStreaming, chat_params.CompletionCreateParamsStreaming)
LEGACY_REQUESTS = requests(legacy_params.CompletionCreateParamsNonStreaming,
                           legacy_params.CompletionCreateParamsStreaming)


def test_the_walk_reaches_every_kind_of_message_and_part() -> None:
    sent = json.dumps([body for _, body in CHAT_REQUESTS])
    for role in ("system", "developer", "user", "assistant", "tool", "function"):
        assert f'"role": "{role}"' in sent
    for part in ("text", "image_url", "input_audio", "file", "refusal"):
        assert f'"type": "{part}"' in sent
    for field in ("prompt_cache_breakpoint", "include_obfuscation", "audio", "refusal", "function_call"):
        assert f'"{field}"' in sent


@pytest.mark.parametrize(("path", "cases"), [("/v1/chat/completions", CHAT_REQUESTS),
                                             ("/v1/completions", LEGACY_REQUESTS)])
async def test_every_field_and_part_of_openais_request_is_known(strict, path, cases) -> None:
    """On a strict server, so that a field R3 did not know would be a 400 `unknown_parameter`."""
    answers = []
    for field, body in cases:
        response = await post(strict, path, **body)
        error = response.json().get("error") if response.status_code != 200 else None
        answers.append((field, body, response.status_code, error))
        assert IGNORED not in response.headers
    wrong = [(field, body, status, error) for field, body, status, error in answers
             if (status, bool(error) and "not supported" in error["message"]) != (
                 (400, True) if unsupported(body) or field == "suffix" else (200, False))]
    assert not wrong


async def test_an_assistant_s_refusal_is_read_as_what_it_said(client) -> None:
    messages = [*ASK, {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot."}]},
                {"role": "assistant", "refusal": "No."}, {"role": "user", "content": "Why not?"}]
    response = await post(client, messages=messages)
    assert response.status_code == 200, response.text
    episode = (await client.get(f"/v1/episodes/{response.json()['r3']['episode_id']}")).json()
    assert episode["messages"][1]["content"] == [{"type": "text", "text": "I cannot."}]
    assert episode["messages"][2]["content"] == "No."


@pytest.mark.parametrize(("message", "param"), [
    ({"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                  {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]},
     "messages.1.content.1"),
    ({"role": "assistant", "tool_calls": [{"id": "c", "type": "custom", "custom": {"name": "f", "input": "x"}}]},
     "messages.1.tool_calls.0"),
])
async def test_what_the_model_cannot_read_is_refused_saying_so(client, message, param) -> None:
    error = refused(await post(client, messages=[*ASK, message]), 400, param, "unsupported_value")
    assert "not supported" in error["message"]


# ------------------------------------------------------------------ a stream fails before its first byte


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"model": "r3@v999"}),
    ("/v1/completions", {"model": "r3@v999"}),
    ("/v1/chat/completions", {"max_tokens": 10**6}),
    ("/v1/completions", {"max_tokens": 10**6}),
    ("/v1/chat/completions", {"logit_bias": {"99999999": 1}}),
])
async def test_a_stream_fails_as_the_unstreamed_request_does(client, path, body) -> None:
    whole = await post(client, path, **body)
    streamed = await post(client, path, **body, stream=True)
    assert whole.status_code in (400, 404), whole.text
    assert (streamed.status_code, streamed.json()) == (whole.status_code, whole.json())
    assert streamed.headers["content-type"] == "application/json"


async def test_an_unknown_adapter_version_is_a_404_naming_the_model(client) -> None:
    refused(await post(client, model="r3@v999", stream=True), 404, "model", "model_not_found")


# ------------------------------------------------------------------ bodies in UTF-8 only


def _body(text: str, encoding: str) -> bytes:
    return text.encode(encoding, "surrogatepass")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"])
@pytest.mark.parametrize("held", [
    '"messages": [{"role": "user", "content": "a\\ud800b"}]',  # a lone surrogate, escaped
    '"messages": [{"role": "user", "content": "hi"}], "verifier": {"type": "regex", "pattern": "\ud800"}',
    '"messages": [{"role": "user", "content": "hi"}], "verifier": {"type": "math", "expected": NaN}',
    '"messages": [{"role": "user", "content": "hi"}]',
])
async def test_a_body_not_in_utf8_is_refused(client, encoding, held) -> None:
    text = '{"model": "%s", "max_tokens": 1, %s}' % (MODEL, held)
    response = await client.post("/v1/chat/completions", content=_body(text, encoding),
                                 headers={"content-type": "application/json"})
    error = refused(response, 400, None, "invalid_encoding")
    assert "RFC 8259" in error["message"]


async def test_a_utf8_body_with_a_byte_order_mark_is_read_and_checked(client) -> None:
    nan = '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}' % MODEL
    refused(await client.post("/v1/chat/completions", content=_body(nan, "utf-8-sig"),
                              headers={"content-type": "application/json"}), 400, "temperature", "invalid_number")
    fine = '{"model": "%s", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}' % MODEL
    response = await client.post("/v1/chat/completions", content=_body(fine, "utf-8-sig"),
                                 headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


ROUTES_WITH_BODIES = ["/v1/chat/completions", "/v1/completions", "/feedback"]


@pytest.mark.parametrize("path", ROUTES_WITH_BODIES)
@pytest.mark.parametrize("latin1", [b"caf\xe9", b"\xff", b"\xed\xa0\x80"])  # Latin-1, never UTF-8, CESU surrogate
async def test_a_body_with_bytes_not_utf8_is_refused_naming_the_offset(client, path, latin1) -> None:
    body = b'{"model": "r3", "messages": [{"role": "user", "content": "' + latin1 + b'"}]}'
    response = await client.post(path, content=body, headers={"content-type": "application/json"})
    error = refused(response, 400, None, "invalid_encoding")
    offset = body.index(latin1) + (3 if latin1 == b"caf\xe9" else 0)
    assert f"offset {offset}" in error["message"] and "RFC 8259" in error["message"], error


@pytest.mark.parametrize("path", ROUTES_WITH_BODIES)
@pytest.mark.parametrize(("field", "depth"), [("verifier", 1000), ("not_a_field", 1000), ("verifier", 100_000)])
async def test_a_body_nested_too_deeply_is_refused_naming_the_field(client, path, field, depth) -> None:
    text = '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "%s": %s}' % (MODEL, field,
                                                                                            nested(depth))
    response = await client.post(path, content=text.encode(), headers={"content-type": "application/json"})
    error = refused(response, 400, field)
    assert f"{field}: nested deeper than {MAX_JSON_DEPTH} levels" in error["message"], error


# ------------------------------------------------------------------ JSON nested too deeply


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5000])
@pytest.mark.parametrize("form", ["tool_calls", "function_call"])
async def test_tool_call_arguments_nested_too_deeply_are_refused(client, depth, form) -> None:
    call = {"name": "f", "arguments": nested(depth)}
    assistant = ({"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": call}]}
                 if form == "tool_calls" else {"role": "assistant", "function_call": call})
    param = ("messages.1.tool_calls.0.function.arguments" if form == "tool_calls"
             else "messages.1.function_call.arguments")
    error = refused(await post(client, messages=[*ASK, assistant]), 400, param)
    assert f"nested deeper than {MAX_JSON_DEPTH}" in error["message"]


async def test_tool_call_arguments_to_the_limit_or_not_json_are_taken(client) -> None:
    for arguments in (nested(MAX_JSON_DEPTH), '{"a": "[[[[' + "[" * 100 + '"}', "not JSON {"):
        assistant = {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                          "function": {"name": "f", "arguments": arguments}}]}
        tool = {"role": "tool", "tool_call_id": "c1", "content": "done"}
        response = await post(client, messages=[*ASK, assistant, tool])
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("text", [nested(5000), "[" * 5000, '{"a":' * 3000, "x" + "[1," * 20000,
                                  '<tool_call>{"name": "f", "arguments": ' + nested(5000) + "}</tool_call>"])
def test_model_output_nested_too_deeply_stays_content(text) -> None:
    parsed = parse_tool_calls(text, {"f"})
    assert parsed.tool_calls == [] and parsed.content == text.strip()


def test_the_shared_reader_takes_json_to_the_limit_and_no_deeper() -> None:
    assert read_json(f" {nested(MAX_JSON_DEPTH)} ") == read_json(nested(MAX_JSON_DEPTH))
    for too_deep in (nested(MAX_JSON_DEPTH + 1), nested(5000), "{" + '"a": {' * 100):
        with pytest.raises(JsonTooDeep):
            read_json(too_deep)
    assert read_json('{"a": "[[[[' + "[" * 100 + '", "b": [[]]}') == {"a": "[" * 104, "b": [[]]}
    assert read_json_at('call: {"a": 1} and more', 6) == ({"a": 1}, 14)
    for not_json in ("NaN", "[Infinity]", "1e999", "{} x", "", "[1,"):
        with pytest.raises(JsonTextError):
            read_json(not_json)


# ------------------------------------------------------------------ logit_bias keys


@pytest.mark.parametrize("key", ["²", "١", "+1", "-1", " 1", "1.0", "1e3", "", "0x1", "1" * 19])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_a_logit_bias_key_that_is_no_token_id_is_refused(client, key, path) -> None:
    error = refused(await post(client, path, logit_bias={key: 1}), 400, f"logit_bias.{key}")
    assert "not a token id" in error["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_logit_bias_ids_are_checked_against_the_vocabulary(client, transformers_engine, path) -> None:
    vocabulary = len(transformers_engine.tokenizer)
    error = refused(await post(client, path, logit_bias={str(vocabulary): 1}), 400, "logit_bias")
    assert f"vocabulary has {vocabulary} tokens" in error["message"]
    response = await post(client, path, logit_bias={"007": 5, str(vocabulary - 1): -5})
    assert response.status_code == 200, response.text
    refused(await post(client, path, logit_bias={"7": 100.5}), 400, "logit_bias.7")
