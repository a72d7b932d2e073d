"""Logprobs and token counts, on both engines: what a client reads off a response's tokens.

Regression tests of faults a tester found: a grammar's forbidden alternatives reported as −inf (a
500, or `"logprob": null` streamed); logprobs past a stop string; the prompt counted once per choice
of `n`; byte-piece alternatives that all carried the chosen token's bytes; token-id prompts of
`/v1/completions` decoded and tokenized again. The app runs in the test's event loop on the
session's engines, reached over ASGI.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import pytest

from r3.chat_format import render_prompt
from r3.engines.base import Engine, SamplingParams
from r3.engines.token_bytes import vocabulary_bytes
from r3.settings import Settings
from server.app import create_app

MODEL = "smol"  # the id the session engines were started with
HELLO = [{"role": "user", "content": "Say hello."}]  # greedy: "Hello there, welcome to my world!..."
JAPANESE = [{"role": "user", "content": "Translate to Japanese: good morning"}]
# After `{"sunny":` only a few tokens are allowed: most of the 20 most likely are forbidden.
SUNNY = {"type": "object", "properties": {"sunny": {"type": "boolean"}}, "required": ["sunny"],
         "additionalProperties": False}


@pytest.fixture(scope="module")
async def client(started_engine: Engine, model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(default_max_tokens=16, reflection_max_tokens=16, models_dir=model_path.parent,
                        data_dir=tmp_path_factory.mktemp("logprobs"))
    app = create_app(settings, engine=started_engine)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r3", timeout=300) as http:
            yield http


def strict_json(text: str):
    """`text` read as JSON proper: Python's reader takes `-Infinity` and `NaN`, which JSON has not."""
    def refuse(constant: str):
        raise AssertionError(f"{constant} in {text[:200]}")

    return json.loads(text, parse_constant=refuse)


async def chat(client: httpx.AsyncClient, messages=HELLO, **body) -> dict:
    response = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, **body})
    assert response.status_code == 200, response.text
    return strict_json(response.text)


async def chat_chunks(client: httpx.AsyncClient, messages=HELLO, **body) -> list[dict]:
    response = await client.post("/v1/chat/completions",
                                 json={"model": MODEL, "messages": messages, "stream": True, **body})
    assert response.status_code == 200, response.text
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [strict_json(event) for event in events[:-1]]


def streamed_tokens(chunks: list[dict], index: int = 0) -> list[dict]:
    return [token for chunk in chunks for choice in chunk["choices"] if choice["index"] == index
            for token in (choice["logprobs"] or {"content": []})["content"]]


def streamed_text(chunks: list[dict], index: int = 0) -> str:
    return "".join(choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"]
                   if choice["index"] == index)


def assert_finite(tokens: list[dict]) -> None:
    for token in tokens:
        assert isinstance(token["logprob"], float) and math.isfinite(token["logprob"]), token
        for alternative in token["top_logprobs"]:
            assert isinstance(alternative["logprob"], float) and math.isfinite(alternative["logprob"]), token


def joined(tokens: list[dict]) -> str:
    return b"".join(bytes(token["bytes"]) for token in tokens).decode("utf-8", errors="strict")


# ------------------------------------------------------------------ a grammar's forbidden alternatives


async def test_under_a_grammar_only_allowed_alternatives_are_reported(started_engine: Engine) -> None:
    prompt = render_prompt(started_engine.tokenizer, [{"role": "user", "content": "Is it sunny in Paris?"}]).text
    result = await started_engine.generate(prompt, SamplingParams(max_tokens=12, temperature=0, top_logprobs=20,
                                                                  json_schema=SUNNY))
    assert json.loads(result.text)["sunny"] in (True, False)
    logprobs = [a.logprob for t in result.tokens for a in t.top] + [t.logprob for t in result.tokens]
    assert all(math.isfinite(logprob) for logprob in logprobs)
    assert any(len(t.top) < 20 for t in result.tokens)  # the forbidden ones are left out, not sent as −inf


async def test_top_logprobs_under_a_grammar_are_finite_json_whole_or_streamed(client) -> None:
    asked = {"messages": [{"role": "user", "content": "Is it sunny in Paris?"}], "max_tokens": 12, "temperature": 0,
             "logprobs": True, "top_logprobs": 20,
             "response_format": {"type": "json_schema", "json_schema": {"name": "weather", "schema": SUNNY}}}
    body = await chat(client, **asked)
    tokens = body["choices"][0]["logprobs"]["content"]
    assert_finite(tokens)
    assert any(len(t["top_logprobs"]) < 20 for t in tokens)
    streamed = streamed_tokens(await chat_chunks(client, **asked))
    assert_finite(streamed)
    assert [t["token"] for t in streamed] == [t["token"] for t in tokens]


# ------------------------------------------------------------------ logprobs end where the text does


@pytest.mark.parametrize(("stop", "content", "tokens"), [
    ([" there"], "Hello", ["Hello"]),  # the tester's case: " there" is a token wholly in the stop string
    (["o there"], "Hell", ["Hello"]),  # "Hello" straddles the cut: kept, as vLLM keeps it
    (["ere"], "Hello th", ["Hello", " there"]),
])
async def test_logprobs_cover_exactly_the_text_a_stop_string_leaves(client, stop, content, tokens) -> None:
    body = await chat(client, stop=stop, max_tokens=12, temperature=0, logprobs=True)
    choice = body["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == (content, "stop")
    assert [t["token"] for t in choice["logprobs"]["content"]] == tokens
    assert body["usage"]["completion_tokens"] == len(tokens)
    chunks = await chat_chunks(client, stop=stop, max_tokens=12, temperature=0, logprobs=True,
                               stream_options={"include_usage": True})
    assert streamed_text(chunks) == content
    assert [t["token"] for t in streamed_tokens(chunks)] == tokens
    assert chunks[-1]["usage"] == body["usage"]


async def test_without_a_straddling_token_the_bytes_rejoin_into_the_text(client) -> None:
    body = await chat(client, stop=[" there"], max_tokens=12, temperature=0, logprobs=True)
    choice = body["choices"][0]
    assert joined(choice["logprobs"]["content"]) == choice["message"]["content"] == "Hello"


async def test_each_streamed_chunk_has_the_tokens_that_make_its_text(started_engine: Engine) -> None:
    prompt = render_prompt(started_engine.tokenizer, JAPANESE).text
    params = SamplingParams(max_tokens=16, temperature=0, stop=("ございます",))
    text, ids = "", []
    async for chunk in started_engine.stream(prompt, params):
        text += chunk.text
        ids += [t.token_id for t in chunk.tokens]
        # Every token sent has text in what was sent (a character's pieces go with the character).
        assert started_engine.tokenizer.decode(ids, skip_special_tokens=True).startswith(text)
        assert not ids or not started_engine.tokenizer.decode(ids[:-1], skip_special_tokens=True).startswith(text)
    whole = await started_engine.generate(prompt, params)
    assert (whole.text, whole.token_ids) == (text, ids)


async def test_a_legacy_completion_s_logprobs_end_where_its_text_does(client) -> None:
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0, "logprobs": 1}
    plain = (await client.post("/v1/completions", json=body)).json()["choices"][0]
    assert plain["text"].startswith(" Paris.")
    response = await client.post("/v1/completions", json={**body, "stop": ["."]})
    assert response.status_code == 200, response.text
    stopped = response.json()
    assert stopped["choices"][0]["text"] == " Paris"
    assert stopped["choices"][0]["logprobs"]["tokens"] == [" Paris"] and stopped["usage"]["completion_tokens"] == 1


# ------------------------------------------------------------------ usage with n


async def test_the_prompt_is_counted_once_however_many_choices_read_it(client) -> None:
    one = await chat(client, max_tokens=4, temperature=1.0, seed=3, logprobs=True)
    two = await chat(client, max_tokens=4, temperature=1.0, seed=3, n=2, logprobs=True)
    assert two["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"] > 0
    generated = sum(len(choice["logprobs"]["content"]) for choice in two["choices"])
    assert two["usage"]["completion_tokens"] == generated
    assert two["usage"]["total_tokens"] == two["usage"]["prompt_tokens"] + generated
    chunks = await chat_chunks(client, max_tokens=4, temperature=1.0, seed=3, n=2,
                               stream_options={"include_usage": True})
    assert chunks[-1]["usage"] == two["usage"]  # the same seeds make the same tokens


# ------------------------------------------------------------------ byte-piece alternatives


async def test_each_alternative_of_a_byte_piece_has_its_own_bytes_and_name(client, started_engine: Engine) -> None:
    vocabulary = vocabulary_bytes(started_engine.tokenizer)
    body = await chat(client, messages=JAPANESE, max_tokens=16, temperature=0, logprobs=True, top_logprobs=5)
    choice = body["choices"][0]
    tokens = choice["logprobs"]["content"]
    assert joined(tokens) == choice["message"]["content"] and any(ord(c) > 0x3000 for c in choice["message"]["content"])
    pieces = 0
    for token in tokens:
        named = [token, *token["top_logprobs"]]
        for t in named:
            raw = bytes(t["bytes"])
            assert raw in vocabulary  # a token's own bytes, whichever token it is
            try:
                assert t["token"] == raw.decode("utf-8")
            except UnicodeDecodeError:  # part of a character: named by its bytes, as OpenAI names it
                assert t["token"] == "bytes:" + "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in raw)
                pieces += 1
        assert len({bytes(t["bytes"]) for t in token["top_logprobs"]}) == 5  # five tokens, five byte strings
        assert (token["top_logprobs"][0]["token"], token["top_logprobs"][0]["bytes"]) == (token["token"], token["bytes"])
    assert pieces and not any(t["token"] == "\ufffd" for token in tokens for t in [token, *token["top_logprobs"]])


# ------------------------------------------------------------------ token-id prompts of /v1/completions


async def test_a_token_id_prompt_is_scored_as_given(client, started_engine: Engine) -> None:
    encode = started_engine.encode
    ids = encode("The capital of France is") + encode(" Par") + encode("is")  # " Paris" split in two
    assert len(ids) == 7 and encode(started_engine.tokenizer.decode(ids)) != ids  # its text tokenizes otherwise
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": ids, "max_tokens": 0,
                                                          "echo": True, "logprobs": 1})
    assert response.status_code == 200, response.text
    body = response.json()
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["tokens"] == [started_engine.tokenizer.decode([i]) for i in ids]
    assert body["choices"][0]["text"] == "The capital of France is Paris"
    assert body["usage"]["prompt_tokens"] == 7
    # Each id after the first is scored as the engine scores those very ids ("is" after " Par").
    [first, *_] = [c async for c in started_engine.stream(ids, SamplingParams(max_tokens=1, prompt_logprobs=0))]
    assert [t.token_id for t in first.prompt_tokens] == ids[1:]
    assert logprobs["token_logprobs"][1:] == pytest.approx([t.logprob for t in first.prompt_tokens], abs=1e-3)
    streamed = await client.post("/v1/completions", json={"model": MODEL, "prompt": [ids], "max_tokens": 1,
                                                          "echo": True, "logprobs": 1, "temperature": 0,
                                                          "stream": True, "stream_options": {"include_usage": True}})
    events = [json.loads(line.removeprefix("data: ")) for line in streamed.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    assert events[-1]["usage"]["prompt_tokens"] == 7
    echoed = [token for event in events for choice in event["choices"] for token in choice["logprobs"]["tokens"]]
    assert echoed[:7] == logprobs["tokens"] and len(echoed) == 8


async def test_a_legacy_completion_names_each_byte_piece_and_alternative_by_its_own_bytes(client) -> None:
    text = "おはようございます"
    response = await client.post("/v1/completions", json={"model": MODEL, "prompt": text, "max_tokens": 0,
                                                          "echo": True, "logprobs": 5})
    assert response.status_code == 200, response.text
    logprobs = response.json()["choices"][0]["logprobs"]
    assert any(token.startswith("bytes:\\x") for token in logprobs["tokens"])
    # Five alternatives, five names (the token itself among them, or a sixth): none lost to a shared "\ufffd".
    assert all(len(top) >= 5 for top in logprobs["top_logprobs"][1:])
    assert "\ufffd" not in [name for top in logprobs["top_logprobs"][1:] for name in top]
    # Each token starts where the character it begins, or is part of, starts.
    offsets = logprobs["text_offset"]
    assert offsets == sorted(offsets) and offsets[0] == 0 and offsets[-1] < len(text)
    whole = [(token, offset) for token, offset in zip(logprobs["tokens"], offsets) if not token.startswith("bytes:")]
    assert whole and all(text[offset:offset + len(token)] == token for token, offset in whole)
