"""Reflect-retry through the real server and the bundled model, judged by a scripted webhook."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from support import ThreadedServer

from r3.settings import Settings
from server.app import create_app

MODEL = "SmolLM2-135M-Instruct"
TASK = [{"role": "user", "content": "Name a fruit."}]
HINT = "the answer must mention the word banana"


class ScriptedWebhook:
    """Fails attempt 1 with a hint, passes every later attempt; remembers every payload."""

    def __init__(self) -> None:
        self.payloads: list[dict] = []
        self.app = FastAPI()

        @self.app.post("/judge")
        async def judge(request: Request) -> dict:
            payload = await request.json()
            self.payloads.append(payload)
            if payload["attempt"] == 1:
                return {"success": False, "detail": HINT}
            return {"success": True}


@pytest.fixture(scope="module")
def webhook():
    hook = ScriptedWebhook()
    with ThreadedServer(hook.app) as url:
        hook.url = f"{url}/judge"
        yield hook


@pytest.fixture(autouse=True)
def _forget_payloads(webhook) -> None:
    webhook.payloads.clear()


@pytest.fixture(scope="module")
def r3(model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(webhook_allow_loopback=True, default_max_tokens=16, reflection_max_tokens=24,
                        models_dir=model_path.parent, data_dir=tmp_path_factory.mktemp("r3-data"))
    app = create_app(settings)
    with ThreadedServer(app) as url:
        yield settings, url


@pytest.fixture
def client(r3) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{r3[1]}/v1", api_key="unused", max_retries=0)


def stored(r3, episode_id: str) -> dict:
    response = httpx.get(f"{r3[1]}/v1/episodes/{episode_id}")
    assert response.status_code == 200, response.text
    return response.json()


def database_row(r3, episode_id: str) -> bytes:
    """The episode's rows as the embedded SQLite file holds them, once the log has written them."""
    deadline = time.monotonic() + 30
    with sqlite3.connect(r3[0].data_dir / "r3.db") as db:
        while not db.execute("SELECT 1 FROM episodes WHERE id = ?", (episode_id,)).fetchone():
            assert time.monotonic() < deadline, "the episode never reached the database"
            time.sleep(0.05)
        rows = db.execute("SELECT * FROM episodes WHERE id = ?", (episode_id,)).fetchall()
        rows += db.execute("SELECT * FROM attempts WHERE episode_id = ?", (episode_id,)).fetchall()
    return repr(rows).encode()


def ask(client, webhook, **extra):
    return client.chat.completions.create(model=MODEL, messages=TASK, temperature=0,
                                          extra_body={"verifier": {"type": "webhook", "url": webhook.url}, **extra})


def test_a_failed_attempt_is_reflected_on_and_retried(client, webhook, r3) -> None:
    response = ask(client, webhook)
    info = response.model_extra["r3"]
    assert info["reflected"] is True and info["adapter"] == "base"
    assert [(a["attempt"], a["success"], a["detail"]) for a in info["attempts"]] == [(1, False, HINT), (2, True, "")]
    reflection = info["attempts"][1]["reflection"]
    assert reflection and info["attempts"][0]["reflection"] is None

    first, second = webhook.payloads
    assert (first["attempt"], second["attempt"]) == (1, 2)
    assert first["episode_id"] == second["episode_id"] == info["episode_id"]
    assert first["messages"] == TASK
    # attempt 2 answered a conversation holding attempt 1, the hint, the reflection and the task again
    conversation = second["messages"]
    assert conversation[0] == TASK[0]
    assert conversation[1] == {"role": "assistant", "content": first["output"]["content"]}
    assert HINT in conversation[2]["content"] and "Reflect on what went wrong" in conversation[2]["content"]
    assert conversation[3] == {"role": "assistant", "content": reflection}
    assert conversation[4]["content"].endswith(TASK[0]["content"]) and len(conversation) == 5
    # the response is attempt 2
    assert response.choices[0].message.content == second["output"]["content"]

    episode = stored(r3, info["episode_id"])
    assert [a["success"] for a in episode["attempts"]] == [False, True]
    assert episode["attempts"][1]["reflection"] == reflection and episode["attempts"][1]["reflection_tokens"] > 0
    assert episode["attempts"][0]["content"] == first["output"]["content"]
    assert episode["task_kind"] == "generic"
    assert episode["verifier"] == {"type": "webhook", "url": webhook.url, "headers": {}}
    assert episode["messages"] == TASK and episode["outcome"] is True
    # usage counts both attempts and the reflection
    generated = sum(a["completion_tokens"] + a["reflection_tokens"] for a in episode["attempts"])
    assert response.usage.completion_tokens == generated


def test_max_retries_zero_judges_but_never_retries(client, webhook, r3) -> None:
    info = ask(client, webhook, reflect={"max_retries": 0}).model_extra["r3"]
    assert len(webhook.payloads) == 1
    assert info["reflected"] is False and [a["success"] for a in info["attempts"]] == [False]
    assert len(stored(r3, info["episode_id"])["attempts"]) == 1


def test_store_false_keeps_no_text(client, webhook, r3) -> None:
    response = ask(client, webhook, store=False)
    info = response.model_extra["r3"]
    assert [a["success"] for a in info["attempts"]] == [False, True]
    assert all(a["reflection"] is None for a in info["attempts"])
    episode = stored(r3, info["episode_id"])
    assert episode["messages"] is None and episode["tools"] is None and episode["store"] is False
    for attempt in episode["attempts"]:
        assert (attempt["content"], attempt["tool_calls"], attempt["reflection"]) == (None,) * 3
        assert attempt["completion_tokens"] > 0  # the numbers stay
    texts = [TASK[0]["content"], response.choices[0].message.content, webhook.payloads[0]["output"]["content"]]
    row = database_row(r3, info["episode_id"])
    assert b"Name a fruit" not in row and not any(text and text.encode() in row for text in texts)
    with sqlite3.connect(r3[0].data_dir / "r3.db") as db:
        kept = db.execute("SELECT count(*) FROM attempts WHERE episode_id = ? AND (content IS NOT NULL OR "
                          "tool_calls IS NOT NULL OR token_ids IS NOT NULL OR logprobs IS NOT NULL OR "
                          "reflection IS NOT NULL)", (info["episode_id"],)).fetchone()[0]
        kept += db.execute("SELECT count(*) FROM episodes WHERE id = ? AND (messages IS NOT NULL OR tools IS NOT NULL)",
                           (info["episode_id"],)).fetchone()[0]
    assert kept == 0


def test_a_streamed_request_with_a_verifier_streams_the_final_attempt(client, webhook, r3) -> None:
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=TASK, temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"verifier": {"type": "webhook", "url": webhook.url}}))
    assert len(webhook.payloads) == 2  # both attempts were judged before the answer went out
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == webhook.payloads[1]["output"]["content"]
    info = [c for c in chunks if c.choices][-1].model_extra["r3"]
    assert [a["success"] for a in info["attempts"]] == [False, True]
    episode = stored(r3, info["episode_id"])
    assert chunks[-1].usage.completion_tokens == sum(
        a["completion_tokens"] + a["reflection_tokens"] for a in episode["attempts"])


def test_a_plain_request_is_an_unjudged_episode(client, webhook, r3) -> None:
    response = client.chat.completions.create(model=MODEL, messages=TASK, temperature=0)
    info = response.model_extra["r3"]
    assert webhook.payloads == [] and info["attempts"] == [
        {"attempt": 1, "success": None, "score": None, "detail": None, "reflection": None,
         "finish_reason": response.choices[0].finish_reason}]
    assert stored(r3, info["episode_id"])["attempts"][0]["content"] == response.choices[0].message.content


def test_feedback_records_a_verdict_and_retries_on_request(client, r3) -> None:
    url = r3[1]
    first = client.chat.completions.create(model=MODEL, messages=TASK, temperature=0)
    retried = httpx.post(f"{url}/feedback", json={"completion_id": first.id, "success": False,
                                                  "detail": "that fruit is out of stock", "retry": True}, timeout=120)
    assert retried.status_code == 200, retried.text
    completion = retried.json()
    assert completion["object"] == "chat.completion" and completion["id"] != first.id
    attempts = completion["r3"]["attempts"]
    assert [(a["attempt"], a["success"]) for a in attempts] == [(1, False), (2, None)]
    assert attempts[0]["detail"] == "that fruit is out of stock" and attempts[1]["reflection"]

    # the same feedback again answers the same way; it does not retry twice
    again = httpx.post(f"{url}/feedback", json={"completion_id": first.id, "success": False,
                                                "detail": "that fruit is out of stock", "retry": True}, timeout=120)
    assert again.status_code == 200 and again.json()["id"] == completion["id"]
    episode_id = completion["r3"]["episode_id"]
    assert len(stored(r3, episode_id)["attempts"]) == 2

    # feedback on the retry is what rewards its reflection
    receipt = httpx.post(f"{url}/feedback", json={"completion_id": completion["id"], "success": True})
    assert receipt.json() == {"episode_id": episode_id, "attempt": 2, "success": True, "score": 1.0, "detail": None}
    assert httpx.post(f"{url}/feedback", json={"episode_id": episode_id, "success": True}).status_code == 200
    conflict = httpx.post(f"{url}/feedback", json={"episode_id": episode_id, "success": False})
    assert conflict.status_code == 409 and conflict.json()["error"]["param"] == "success"
    episode = stored(r3, episode_id)
    assert episode["outcome"] is True and episode["attempts"][1]["feedback"]["success"] is True
    assert episode["attempts"][0]["feedback"] == {"success": False, "score": 0.0, "detail": "that fruit is out of stock",
                                                  "received_at": pytest.approx(time.time(), abs=120)}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"episode_id": "ep_missing", "success": True}, 404),
        ({"completion_id": "chatcmpl-missing", "success": False}, 404),
        ({"success": True}, 400),
        ({"episode_id": "a", "completion_id": "b", "success": True}, 400),
        ({"episode_id": "a", "success": True, "retry": True}, 400),
        ({"episode_id": "a", "success": "maybe"}, 400),
    ],
)
def test_bad_feedback(r3, body, status) -> None:
    response = httpx.post(f"{r3[1]}/feedback", json=body)
    assert response.status_code == status and response.json()["error"]["message"]


def test_feedback_cannot_retry_an_episode_that_kept_no_text(client, r3) -> None:
    first = client.chat.completions.create(model=MODEL, messages=TASK, temperature=0, extra_body={"store": False})
    response = httpx.post(f"{r3[1]}/feedback", json={"completion_id": first.id, "success": False, "retry": True})
    assert response.status_code == 409 and "store: false" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("verifier", "param"),
    [
        ({"type": "telepathy"}, "verifier.type"),
        ({"expected": []}, "verifier.type"),
        ({"type": "tool_call"}, "verifier.expected"),
        ({"type": "tool_call", "expected": [{"name": "f", "arguments": "x"}]}, "verifier.expected.0.arguments"),
        ({"type": "regex", "pattern": "("}, "verifier.pattern"),
        ({"type": "countdown", "numbers": [1, 2], "target": "ten"}, "verifier.target"),
        ({"type": "exact", "expected": "x", "unknown_option": 1}, "verifier.unknown_option"),
        ({"type": "webhook", "url": "http://example.com/judge"}, "verifier.url"),
        ({"type": "webhook", "url": "ftp://127.0.0.1/judge"}, "verifier.url"),
    ],
)
def test_invalid_verifiers_are_refused_before_anything_runs(r3, webhook, verifier, param) -> None:
    response = httpx.post(f"{r3[1]}/v1/chat/completions",
                          json={"model": MODEL, "messages": TASK, "verifier": verifier})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert webhook.payloads == []


def test_reflect_options_are_validated(r3) -> None:
    response = httpx.post(f"{r3[1]}/v1/chat/completions",
                          json={"model": MODEL, "messages": TASK, "reflect": {"max_retries": 4}})
    assert response.status_code == 400 and response.json()["error"]["param"] == "reflect.max_retries"


def test_the_webhook_sees_tool_calls_as_openai_sends_them(client, webhook) -> None:
    tool = {"type": "function", "function": {"name": "pick_fruit", "parameters": {
        "type": "object", "properties": {"name": {"type": "string"}}}}}
    client.chat.completions.create(
        model=MODEL, messages=TASK, temperature=0, tools=[tool], max_tokens=24,
        tool_choice={"type": "function", "function": {"name": "pick_fruit"}},
        extra_body={"verifier": {"type": "webhook", "url": webhook.url}, "reflect": {"max_retries": 0}})
    output = webhook.payloads[0]["output"]
    assert set(output) == {"content", "tool_calls"}
    for call in output["tool_calls"]:
        assert call["name"] == "pick_fruit" and isinstance(json.loads(call["arguments"]), dict)
