"""Bad input never hurts anyone else: a real server answers each kind of bad request with an
OpenAI-style 4xx naming the param, never a 500, and a client that hangs up costs no more generation."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI, Request
from support import ThreadedServer

from r3.engines.base import EngineError, GenerationChunk
from r3.episodes import ABANDONED, AttemptRecord, Episode
from r3.settings import Settings
from server.app import create_app
from server.chat.sse import ChoiceChunks, Wire
from server.openai.sse import sse_stream
from server.errors import BodySizeLimit, install_error_handlers, refuse_unsound_body
from trainer.data import failures_from_episodes
from verifiers import MAX_JSON_DEPTH

MODEL = "SmolLM2-135M-Instruct"
KEY = "r3-test-key"
ADMIN = "r3-test-admin"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUESTION = [{"role": "user", "content": "Say hi."}]
LONG_TASK = [{"role": "user", "content": "Count from 1 to 1000, one number per line."}]


@pytest.fixture(scope="module")
def url(model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    # One sequence at a time: a second request finishes quickly only if a hung-up one freed the slot.
    settings = Settings(models_dir=model_path.parent, data_dir=tmp_path_factory.mktemp("bad-input-data"),
                        api_keys=[KEY], admin_key=ADMIN, default_max_tokens=4, max_batch_size=1)
    with ThreadedServer(create_app(settings)) as base_url:
        yield base_url


def chat(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, **body},
                      headers=AUTH, timeout=120)


def assert_refused(response: httpx.Response, param: str | None, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    return error


def nested_object(depth: int) -> dict:
    """A JSON Schema whose `not`s nest `depth` objects deep."""
    schema: dict = {"type": "string"}
    for _ in range(depth - 1):
        schema = {"not": schema}
    return schema


# ------------------------------------------------------------------ 1b: deeply nested JSON values


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": nested_object(500)}}]},
         "tools.0.function.parameters"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": nested_object(440)}}},
         "response_format.json_schema.schema"),
        ({"verifier": {"type": "json_schema", "schema": nested_object(440)}}, "verifier"),
        ({"verifier": {"type": "tool_call", "expected": [{"name": "f", "arguments": nested_object(300)}]}},
         "verifier"),
        ({"verifier": {"type": "json_schema", "schema": nested_object(MAX_JSON_DEPTH + 1)}}, "verifier"),
    ],
)
def test_json_nested_deeper_than_the_limit_is_refused(url, body, param) -> None:
    error = assert_refused(chat(url, **body), param)
    assert str(MAX_JSON_DEPTH) in error["message"]


def test_json_nested_to_the_limit_is_taken(url) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": nested_object(MAX_JSON_DEPTH)}}
    response = chat(url, tools=[tool], max_tokens=1, reflect={"max_retries": 0},
                    verifier={"type": "json_schema", "schema": nested_object(MAX_JSON_DEPTH - 1)})
    assert response.status_code == 200, response.text


# ------------------------------------------------------------------ 4: 500s that must be 400s


@pytest.mark.parametrize("seed", [2**64, -(2**64), 2**63, 10**100])
@pytest.mark.parametrize("stream", [False, True])
def test_a_seed_beyond_64_bits_is_refused(url, seed, stream) -> None:
    assert_refused(chat(url, seed=seed, stream=stream), "seed")


@pytest.mark.parametrize("seed", [2**63 - 1, -(2**63)])
def test_the_64_bit_seed_range_is_served(url, seed) -> None:
    response = chat(url, seed=seed, max_tokens=2)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("text", "param"),
    [
        ('{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800b"}]}' % MODEL, "messages.0.content"),
        ('{"model": "%s", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}' % MODEL,
         "messages.0.content.0.text"),
        ('{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "user": "\\ud83d"}' % MODEL, "user"),
        ('{"model": "%s", "messages": [{"role": "user", "content": "hi"}], '
         '"verifier": {"type": "exact", "expected": "x", "\\udc00": 1}}' % MODEL, "verifier.\\udc00"),
    ],
)
def test_text_with_a_lone_surrogate_is_refused(url, text, param) -> None:
    response = httpx.post(f"{url}/v1/chat/completions", content=text.encode(),
                          headers={**AUTH, "content-type": "application/json"}, timeout=60)
    error = assert_refused(response, param)
    assert error["code"] == "invalid_unicode"


def test_text_with_surrogate_pairs_is_served(url) -> None:
    body = '{"model": "%s", "max_tokens": 1, "messages": [{"role": "user", "content": "smile \\ud83d\\ude00"}]}'
    response = httpx.post(f"{url}/v1/chat/completions", content=(body % MODEL).encode(),
                          headers={**AUTH, "content-type": "application/json"}, timeout=60)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("window_s", ["1e11", "inf", "6e307", "nan", "-1", "0"])
def test_an_unbounded_stats_window_is_refused(url, window_s) -> None:
    response = httpx.get(f"{url}/admin/stats", params={"window_s": window_s},
                         headers={"Authorization": f"Bearer {ADMIN}"})
    error = assert_refused(response, "window_s")
    if window_s in ("inf", "nan"):  # not "less than or equal to 31622400", which nan is not either
        assert "finite number" in error["message"], error


def test_a_year_of_stats_is_served(url) -> None:
    response = httpx.get(f"{url}/admin/stats", params={"window_s": 366 * 24 * 3600},
                         headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 200, response.text


async def framed(wire: Wire, pieces, offered_tools, after: Exception | None = None):
    """One choice's SSE chunks, framed as the server frames a live stream, from `pieces`; then `after`
    raised (e.g. the episode failing to be recorded), standing for anything failing once the tokens are out."""
    chunks = ChoiceChunks(wire, 0, "chatcmpl-x", offered_tools)
    for event in chunks.start():
        yield event
    async for piece in pieces:
        for event in chunks.piece(piece.text, piece.tokens):
            yield event
    raise after or AssertionError("never reached: the stream failed first")


async def test_a_stream_that_fails_midway_ends_with_an_error_event_and_done() -> None:
    async def pieces():
        yield GenerationChunk("Hello", [])
        raise RuntimeError("the disk is on fire")

    async def engine_pieces():
        yield GenerationChunk("Hello", [])
        raise EngineError("generation failed: out of memory")

    for source, message in ((pieces(), "internal server error"), (engine_pieces(), "out of memory")):
        wire = Wire(MODEL, "chatcmpl-x", 0, logprobs=False, include_usage=False)
        sent = [e async for e in sse_stream(framed(wire, source, None))]
        assert sent[-1] == "data: [DONE]\n\n"
        error = json.loads(sent[-2].removeprefix("data: "))["error"]
        assert message in error["message"] and error["type"] == "server_error"
        assert json.loads(sent[1].removeprefix("data: "))["choices"][0]["delta"]["content"] == "Hello"


async def test_a_stream_that_fails_before_or_after_its_tokens_ends_with_an_error_event_and_done() -> None:
    async def pieces():
        yield GenerationChunk("Hello", [], "stop")

    async def failing_setup():
        raise KeyError("no such adapter")
        yield  # an async generator that fails before its first event

    wire = Wire(MODEL, "chatcmpl-x", 0, logprobs=False, include_usage=True)
    late = framed(wire, pieces(), frozenset(), ValueError("the episode could not be built"))
    for events in (late, failing_setup()):
        sent = [e async for e in sse_stream(events)]
        assert sent[-1] == "data: [DONE]\n\n" and '"server_error"' in sent[-2]


# ------------------------------------------------------------------ NaN and infinities, anywhere in a body


def raw_chat(url: str, text: str, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(f"{url}{path}", content=text.encode(), headers={**AUTH, "content-type": "application/json"},
                      timeout=60)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ('"verifier": {"type": "tool_call", "expected": [{"name": "f", "arguments": {"b": {"$one_of": [NaN, Infinity]}}}]}',
         "verifier.expected.0.arguments.b.$one_of.0"),
        ('"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "number", "maximum": NaN}}}]',
         "tools.0.function.parameters.maximum"),
        ('"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "number", '
         '"minimum": 1e999}}}', "response_format.json_schema.schema.minimum"),
        ('"verifier": {"type": "json_schema", "schema": {"const": -Infinity}}', "verifier.schema.const"),
        ('"temperature": Infinity', "temperature"),
        ('"logit_bias": {"5": -Infinity}', "logit_bias.5"),
        ('"metadata": {"a": "b"}, "prediction": {"x": [1, 2, 10000000000000000000000000000000000000000000000000000'
         '000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000'
         '000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000'
         '000000000000000000000000000000000000000000000000000000000000.5]}', "prediction.x.2"),
    ],
)
def test_a_number_that_is_not_finite_is_refused_wherever_it_is(url, extra, param) -> None:
    """JSON has no NaN or Infinity (Python's json reads them, and 1e999 as inf): judged with one, a
    verifier or schema would be stored with null in its place. One walk over the body refuses them."""
    text = '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], %s}' % (MODEL, extra)
    error = assert_refused(raw_chat(url, text), param)
    assert error["code"] == "invalid_number" and "finite" in error["message"]


def test_a_legacy_completion_with_a_non_finite_number_is_refused(url) -> None:
    error = assert_refused(raw_chat(url, '{"model": "%s", "prompt": "hi", "top_p": NaN}' % MODEL, "/v1/completions"),
                           "top_p")
    assert error["code"] == "invalid_number"


def test_finite_numbers_with_exponents_are_served(url) -> None:
    text = ('{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "temperature": 5e-1, "max_tokens": 1, '
            '"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "number", '
            '"maximum": 1E+300}}}]}' % MODEL)
    response = raw_chat(url, text)
    assert response.status_code == 200, response.text


# ------------------------------------------------------------------ strict booleans and numbers


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": "0"}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": "1"}, "top_p"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 5.0}, "max_tokens"),
        ({"n": "2"}, "n"),
        ({"seed": "7"}, "seed"),
        ({"logit_bias": {"5": "10"}}, "logit_bias.5"),
        ({"reflect": {"max_retries": True}}, "reflect.max_retries"),
        ({"verifier": {"type": "tool_call", "expected": [], "ordered": 1}}, "verifier.ordered"),
        ({"verifier": {"type": "tool_call", "expected": [], "ordered": "true"}}, "verifier.ordered"),
        ({"verifier": {"type": "tool_call", "expected": [], "numeric_tolerance": "0.1"}}, "verifier.numeric_tolerance"),
        ({"verifier": {"type": "exact", "expected": "hi", "ignore_case": "yes"}}, "verifier.ignore_case"),
        ({"verifier": {"type": "countdown", "numbers": [1, 2], "target": "3"}}, "verifier.target"),
    ],
)
def test_booleans_and_numbers_must_be_json_booleans_and_numbers(url, body, param) -> None:
    """Nothing in a request or its verifier is coerced: `"0"`, `true`, `"true"`, `1` are not what they look like."""
    error = assert_refused(chat(url, **body), param)
    assert "Value error" not in error["message"]


def test_an_integer_is_a_number(url) -> None:
    response = chat(url, temperature=0, top_p=1, max_tokens=1,
                    verifier={"type": "tool_call", "expected": [], "numeric_tolerance": 1})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("arguments", [{"$one_of": [{"a": 1}]}, {"$one_of": [{"a": 1}], "$optional": True},
                                       {"a": 1, "$optional": True}])
def test_an_operator_for_a_whole_call_s_arguments_is_refused(url, arguments) -> None:
    """`arguments` are argument names: read literally, `{"$one_of": [...]}` there could never match."""
    verifier = {"type": "tool_call", "expected": [{"name": "f", "arguments": arguments}]}
    error = assert_refused(chat(url, verifier=verifier), "verifier.expected.0.arguments")
    assert "cannot stand for a call's whole arguments" in error["message"]
    assert not error["message"].startswith("verifier.expected.0.arguments: Value error"), error


# ------------------------------------------------------------------ messages that say what is wrong


@pytest.mark.parametrize("body", [b"null", b"", b"[]", b"5", b'"hi"'])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/feedback"])
def test_a_body_that_is_not_an_object_is_called_so(url, body, path) -> None:
    response = httpx.post(f"{url}{path}", content=body, headers={**AUTH, "content-type": "application/json"})
    error = assert_refused(response, None)
    assert error["message"] == "the request body must be a JSON object", error


def test_messages_carry_no_pydantic_prefix(url) -> None:
    error = assert_refused(chat(url, messages=[{"role": "assistant"}]), "messages.0")
    assert error["message"].startswith("messages.0: an assistant message needs content, refusal, tool_calls or "
                                        "function_call"), error
    error = assert_refused(chat(url, stream=False, stream_options={"include_usage": True}), None)
    assert error["message"] == "stream_options requires stream: true", error


def test_a_long_value_is_not_echoed_whole(url) -> None:
    name = "m" * 10_000
    response = httpx.post(f"{url}/v1/chat/completions", json={"model": name, "messages": QUESTION}, headers=AUTH)
    assert response.status_code == 404 and response.json()["error"]["param"] == "model"
    assert len(response.json()["error"]["message"]) < 200
    response = httpx.get(f"{url}/v1/models/{name}", headers=AUTH)
    assert response.status_code == 404 and len(response.json()["error"]["message"]) < 200
    key = "k" * 10_000
    response = chat(url, **{key: 1}, max_tokens=1)  # ignored, and named in a header
    assert response.status_code == 200 and len(response.headers["x-r3-ignored-fields"]) < 200


def test_load_balancers_may_probe_with_head(url) -> None:
    for path, headers in (("/health", {}), ("/v1/models", AUTH)):
        response = httpx.head(f"{url}{path}", headers=headers)
        assert response.status_code == 200 and response.content == b"", (path, response.status_code)
    assert httpx.head(f"{url}/v1/models").status_code == 401  # a probe is still a request: it needs the key


def test_asking_for_training_while_a_round_is_pending_adds_none(url) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    first, second, third = (httpx.post(f"{url}/admin/train", headers=admin) for _ in range(3))
    assert first.status_code == second.status_code == third.status_code == 200
    round_id = first.json()["round"]
    assert first.json()["status"] == "requested"
    asked_again = [{key: answer.json()[key] for key in ("round", "status", "new")} for answer in (second, third)]
    assert asked_again == [{"round": round_id, "status": "requested", "new": False}] * 2
    rounds = httpx.get(f"{url}/admin/train", headers=admin).json()["rounds"]
    assert [r["round"] for r in rounds if r["status"] == "requested"] == [round_id]


# ------------------------------------------------------------------ 5: invalid tool schemas


@pytest.mark.parametrize("parameters", [{"type": "nonsense"}, {"type": 12}, {"properties": []},
                                        {"$schema": []}, {"$schema": 5}, {"pattern": "("}])
def test_an_invalid_tool_schema_is_refused(url, parameters) -> None:
    tools = [{"type": "function", "function": {"name": "ok", "parameters": {"type": "object"}}},
             {"type": "function", "function": {"name": "f", "parameters": parameters}}]
    assert_refused(chat(url, tools=tools), "tools.1.function.parameters")


@pytest.mark.parametrize("schema", [{"$schema": []}, {"type": "nonsense"}])
def test_an_invalid_verifier_or_response_schema_is_refused(url, schema) -> None:
    assert_refused(chat(url, verifier={"type": "json_schema", "schema": schema}), "verifier.schema")
    assert_refused(chat(url, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}),
                   "response_format.json_schema.schema")


# ------------------------------------------------------------------ 7: smaller breaches of the contract


@pytest.mark.parametrize("value", ["yes", 1, 0, "true", None])
def test_feedback_success_must_be_a_boolean(url, value) -> None:
    response = httpx.post(f"{url}/feedback", json={"episode_id": "ep_x", "success": value}, headers=AUTH)
    assert_refused(response, "success")


@pytest.mark.parametrize("value", [None, "0.5", -0.1, 1.5, True])
def test_feedback_score_must_be_a_number_in_0_1(url, value) -> None:
    response = httpx.post(f"{url}/feedback", json={"episode_id": "ep_x", "score": value}, headers=AUTH)
    assert_refused(response, "score")


def test_feedback_without_a_verdict_says_what_to_give(url) -> None:
    response = httpx.post(f"{url}/feedback", json={"episode_id": "ep_x"}, headers=AUTH)
    assert "give success, score, or both" in assert_refused(response, None)["message"]


@pytest.mark.parametrize("field", ["stream", "logprobs", "store", "parallel_tool_calls"])
@pytest.mark.parametrize("value", ["true", 1])
def test_request_booleans_must_be_booleans(url, field, value) -> None:
    assert_refused(chat(url, **{field: value}), field)


def test_include_usage_and_retry_must_be_booleans(url) -> None:
    assert_refused(chat(url, stream=True, stream_options={"include_usage": 1}), "stream_options.include_usage")
    response = httpx.post(f"{url}/feedback", json={"episode_id": "ep_x", "success": False, "retry": "yes"},
                          headers=AUTH)
    assert_refused(response, "retry")


def test_a_chunked_body_over_the_limit_gets_413(url) -> None:
    def chunks():  # no Content-Length: httpx sends it chunked
        for _ in range(5):
            yield b" " * (1024 * 1024)

    response = httpx.post(f"{url}/v1/chat/completions", content=chunks(),
                          headers={**AUTH, "content-type": "application/json"}, timeout=60)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"


def test_a_chunked_body_under_the_limit_is_served(url) -> None:
    body = json.dumps({"model": MODEL, "messages": QUESTION, "max_tokens": 1}).encode()

    def chunks():
        yield body[:10]
        yield body[10:]

    response = httpx.post(f"{url}/v1/chat/completions", content=chunks(),
                          headers={**AUTH, "content-type": "application/json"}, timeout=60)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("body", [b"{not json", b'{"model": ', b"[" * 100_000])
def test_a_caller_without_a_key_hears_401_before_anything_about_its_body(url, body) -> None:
    for path in ("/v1/chat/completions", "/feedback"):
        keyless = httpx.post(f"{url}{path}", content=body, headers={"content-type": "application/json"})
        assert keyless.status_code == 401, keyless.text
        assert keyless.json()["error"]["code"] == "invalid_api_key"
        keyed = httpx.post(f"{url}{path}", content=body, headers={**AUTH, "content-type": "application/json"})
        assert_refused(keyed, None)


def declared_post(url: str, path: str, headers: dict[str, str], declared: int) -> tuple[int, dict]:
    """POST that declares a `declared`-byte body and sends one byte of it: (status, JSON body) of the
    answer, which must come without the server waiting for the rest."""
    parts = urlsplit(url)
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": parts.hostname, "Content-Type": "application/json",
                                                "Content-Length": str(declared), **headers}.items())
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as connection:
        connection.sendall(f"POST {path} HTTP/1.1\r\n{head}\r\n{{".encode())
        received = b""
        while b"\r\n\r\n" not in received or len(received.split(b"\r\n\r\n", 1)[1]) < _length(received):
            chunk = connection.recv(65536)
            if not chunk:
                break
            received += chunk
    status = int(received.split(b" ", 2)[1])
    return status, json.loads(received.split(b"\r\n\r\n", 1)[1][: _length(received)])


def _length(response: bytes) -> int:
    for line in response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 30


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/feedback", "/v1/completions", "/admin/train"])
def test_a_caller_without_a_key_hears_401_before_anything_about_its_body_size(url, path) -> None:
    """The key is checked before the body is read: a stranger learns nothing about the size limit."""
    for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"Authorization": f"Bearer {KEY}"} if "admin" in path
                    else {"Authorization": f"Bearer {ADMIN}"}):
        status, body = declared_post(url, path, headers, 99_999_999)
        assert status == 401 and body["error"]["code"] == "invalid_api_key", body
    if "admin" in path:
        return  # takes no body: it never reads one, so there is nothing to refuse
    good = AUTH
    status, body = declared_post(url, path, good, 99_999_999)
    assert status == 413 and body["error"]["code"] == "request_too_large", body

    def chunks():  # no Content-Length: sent chunked, and over the limit
        for _ in range(5):
            yield b" " * (1024 * 1024)

    for headers in ({}, {"Authorization": "Bearer not-a-key"}):
        keyless = httpx.post(f"{url}{path}", content=chunks(), headers={**headers, "content-type": "application/json"},
                             timeout=60)
        assert keyless.status_code == 401, keyless.text
    keyed = httpx.post(f"{url}{path}", content=chunks(), headers={**good, "content-type": "application/json"},
                       timeout=60)
    assert keyed.status_code == 413 and keyed.json()["error"]["code"] == "request_too_large", keyed.text


@pytest.mark.parametrize(("messages", "status"), [
    ([{"type": "http.request", "body": b'{"a": ', "more_body": True}, {"type": "http.disconnect"}], 499),
    ([{"type": "http.request", "body": b" " * 60, "more_body": True}] * 2, 413),
    ([{"type": "http.request", "body": b'{"a": [1, NaN]}', "more_body": False}], 400),
    ([{"type": "http.request", "body": b'{"a": [1, 2e3]}', "more_body": False}], 200),
])
async def test_the_body_checks_at_the_asgi_level(messages: list, status: int, caplog) -> None:
    """The size limit is enforced as the body is read (after any caller check); a client that hangs
    up while sending its body is no server error (499, nobody reads it)."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/x")
    async def endpoint(request: Request) -> dict:
        await refuse_unsound_body(request)
        return {}

    pending, sent = list(messages), []

    async def receive() -> dict:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/x", "raw_path": b"/x", "root_path": "", "query_string": b"", "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 2), "headers": [(b"content-type", b"application/json")]}
    await BodySizeLimit(app, max_bytes=100)(scope, receive, send)
    assert sent[0]["status"] == status
    assert "unhandled error" not in caplog.text


# ~3 MB is refused by its length alone; ~1 MB must be tokenized (about a second of work) to be refused.
@pytest.mark.parametrize("repeats", [170_000, 60_000])
def test_a_huge_request_does_not_hold_up_others(url, repeats) -> None:
    huge = {"model": MODEL, "messages": [{"role": "user", "content": "lorem ipsum dolor " * repeats}]}
    answered: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answered.append(
        httpx.post(f"{url}/v1/chat/completions", json=huge, headers=AUTH, timeout=60)))
    thread.start()
    waits = []
    while thread.is_alive():
        started = time.perf_counter()
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        waits.append(time.perf_counter() - started)
        time.sleep(0.01)
    thread.join()
    error = assert_refused(answered[0], "messages")
    assert error["code"] == "context_length_exceeded"
    assert max(waits) < 0.5, waits


def test_a_prompt_just_over_the_context_is_counted_exactly(url) -> None:
    error = assert_refused(chat(url, messages=[{"role": "user", "content": "hi " * 9000}]), "messages")
    assert "at least" not in error["message"] and error["code"] == "context_length_exceeded"


# ------------------------------------------------------------------ 3: a client that hangs up


def abandoned_episodes(url: str, timeout_s: float = 30) -> list[dict]:
    """The episodes whose last attempt was abandoned, once the log has written at least one."""
    deadline = time.monotonic() + timeout_s
    while True:
        page = httpx.get(f"{url}/admin/episodes", params={"limit": 500},
                         headers={"Authorization": f"Bearer {ADMIN}"}).json()
        found = [e for e in page["data"] if e["attempts"][-1]["finish_reason"] == ABANDONED]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def quick_answer_s(url: str) -> float:
    started = time.perf_counter()
    response = chat(url, max_tokens=4, temperature=0)
    assert response.status_code == 200, response.text
    return time.perf_counter() - started


def test_a_client_that_hangs_up_frees_its_slot_and_leaves_an_abandoned_episode(url) -> None:
    known = {e["id"] for e in abandoned_episodes(url, timeout_s=0)}
    body = {"model": MODEL, "messages": LONG_TASK, "max_tokens": 2000, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=1.5)
    # The engine decodes one sequence at a time here: this waits unless the first one was cancelled.
    assert quick_answer_s(url) < 10
    episode = next(e for e in abandoned_episodes(url) if e["id"] not in known)
    attempt = episode["attempts"][-1]
    assert len(episode["attempts"]) == 1 and attempt["success"] is None
    assert 0 < attempt["completion_tokens"] < 500 and attempt["content"]
    assert episode["outcome"] is None
    refused = httpx.post(f"{url}/feedback", json={"episode_id": episode["id"], "success": False}, headers=AUTH)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "episode_abandoned"


def test_a_stream_whose_client_hangs_up_leaves_an_abandoned_episode(url) -> None:
    known = {e["id"] for e in abandoned_episodes(url, timeout_s=0)}
    body = {"model": MODEL, "messages": LONG_TASK, "max_tokens": 2000, "temperature": 0, "stream": True}
    received = ""
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                received += json.loads(line.removeprefix("data: "))["choices"][0]["delta"].get("content", "")
            if len(received) > 20:
                break  # leaving the block closes the connection mid-stream
    assert quick_answer_s(url) < 10
    episode = next(e for e in abandoned_episodes(url) if e["id"] not in known)
    attempt = episode["attempts"][-1]
    assert attempt["content"].startswith(received) and 0 < attempt["completion_tokens"] < 500


def test_a_client_that_hangs_up_while_the_server_reflects_leaves_what_was_made(url) -> None:
    known = {e["id"] for e in abandoned_episodes(url, timeout_s=0)}
    # `<|im_end|>` (id 2) banned: the reflection cannot end early, whatever the model would write.
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 4, "temperature": 0, "logit_bias": {"2": -100},
            "verifier": {"type": "exact", "expected": "a word the model will not say"}}
    with pytest.raises(httpx.ReadTimeout):  # attempt 1 fails at once; the reflection (256 tokens) is cut short
        httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=3)
    assert quick_answer_s(url) < 10
    episode = next(e for e in abandoned_episodes(url) if e["id"] not in known)
    first, cut = episode["attempts"]
    assert first["success"] is False and first["finish_reason"] != ABANDONED
    assert cut["attempt"] == 2 and cut["success"] is None and cut["reflection"] and cut["reflection_tokens"] > 0


def test_the_trainer_never_picks_an_abandoned_episode() -> None:
    def episode(finish_reasons: list[str]) -> Episode:
        attempts = [AttemptRecord(number=n, completion_id=f"c{n}", finish_reason=reason, prompt_tokens=1,
                                  completion_tokens=1, latency_s=0.1, content="x", success=False)
                    for n, reason in enumerate(finish_reasons, start=1)]
        return Episode(id="ep", tenant=None, model=MODEL, adapter=None, task_kind="generic",
                       verifier={"type": "exact", "expected": "y"}, store_text=True, messages=QUESTION, tools=None,
                       tool_choice=None, attempts=attempts)

    assert len(failures_from_episodes([episode(["stop"])])) == 1
    assert failures_from_episodes([episode([ABANDONED]), episode(["stop", ABANDONED])]) == []


# ------------------------------------------------------------------ 1: a poisoned journal at start


def test_a_poisoned_journal_left_by_an_earlier_process_is_set_aside_shown_and_blocks_nothing(
        model_path: Path, tmp_path: Path) -> None:
    """An episode the database cannot take (here, tool parameters nested 900 deep, which an earlier
    version took in) waits in the journal of a process that stopped: the next server sets it aside,
    says so in `/admin/stats` and `/metrics`, and every other episode, old and new, reaches the database."""
    import sqlite3

    from r3.episodes import episode_to_dict, new_episode_id

    def episode(tools: list | None = None) -> Episode:
        return Episode(id=new_episode_id(), tenant=None, model=MODEL, adapter=None, task_kind="generic",
                       verifier=None, store_text=True, messages=QUESTION, tools=tools, tool_choice="none",
                       attempts=[AttemptRecord(number=1, completion_id=f"chatcmpl-{new_episode_id()}",
                                               finish_reason="length", prompt_tokens=3, completion_tokens=1,
                                               latency_s=0.1, content="hi")])

    parameters: dict = {}
    for _ in range(900):
        parameters = {"a": parameters}
    poison = episode([{"type": "function", "function": {"name": "f", "parameters": parameters}}])
    old = episode()
    folder = tmp_path / "journal" / f"process-{1:020d}-1"  # a stopped process's folder: its lock is free
    folder.mkdir(parents=True)
    (folder / ".lock").touch()
    (folder / "segment-000000001.jsonl").write_text(
        "".join(json.dumps(episode_to_dict(e)) + "\n" for e in (poison, old)))

    settings = Settings(models_dir=model_path.parent, data_dir=tmp_path, api_keys=[KEY], admin_key=ADMIN,
                        default_max_tokens=2)
    with ThreadedServer(create_app(settings)) as url:
        ids = [chat(url).json()["r3"]["episode_id"] for _ in range(20)]
        deadline = time.monotonic() + 10  # the last episodes may still be on their way to the database
        while (stats := httpx.get(f"{url}/admin/stats", headers={"Authorization": f"Bearer {ADMIN}"}).json()
               )["episode_log"]["backlog"] and time.monotonic() < deadline:
            time.sleep(0.1)
        metrics = httpx.get(f"{url}/metrics").text
    assert stats["episode_log"] == {"backlog": 0, "rejected": 1}
    assert "r3_episode_log_rejected 1.0" in metrics
    with sqlite3.connect(tmp_path / "r3.db") as database:
        stored = {row[0] for row in database.execute("SELECT id FROM episodes")}
    assert stored == {old.id, *ids}
    [rejected] = [json.loads(line) for line in (tmp_path / "journal" / "rejected.jsonl").read_text().splitlines()]
    assert rejected["record"]["id"] == poison.id and "RecursionError" in rejected["reason"]


@pytest.mark.parametrize("body", [b"-2.064797108713639e+16", b"7", b'"text"', b"true"])
def test_a_body_that_is_one_scalar_is_a_400(url, body) -> None:
    """Regression: the schemathesis run found that a bare number as the body was a 500."""
    response = httpx.post(f"{url}/v1/chat/completions", content=body,
                          headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"
