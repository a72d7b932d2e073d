"""Episodes made through the API land in Postgres and on the Redis stream; a Redis outage loses none.

One server (`python -m r3 serve`) for the module: a fresh migrated database on the shared Postgres,
and a private Redis with an fsync-always AOF, which one test kills and restarts.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter

import pytest
from store_support import (
    STREAM_KEY,
    PrivateRedis,
    R3Process,
    RequestStream,
    query,
    wait_for,
)

pytestmark = pytest.mark.slow

NEVER = {"type": "regex", "pattern": "^never$"}


@pytest.fixture(scope="module")
def server(module_pg_url, private_redis: PrivateRedis, r3_process, tmp_path_factory) -> R3Process:
    process = r3_process(tmp_path_factory.mktemp("r3-api"), R3_DATABASE_URL=module_pg_url,
                         R3_REDIS_URL=private_redis.url)
    process.start()
    yield process
    process.close()


def attempts_of(url: str, episode_id: str) -> list:
    return query(url, "SELECT * FROM attempts WHERE episode_id = $1 ORDER BY number", episode_id)


def episode_row(url: str, episode_id: str):
    rows = query(url, "SELECT * FROM episodes WHERE id = $1", episode_id)
    return rows[0] if rows else None


def test_an_episode_reaches_postgres_with_every_attempt_and_redis_once(server, module_pg_url, private_redis) -> None:
    prompt = f"Say hello. ({uuid.uuid4().hex[:8]})"
    response = server.chat(prompt, max_tokens=8, verifier=NEVER, reflect={"max_retries": 1})
    assert response.status_code == 200, response.text
    info = response.json()["r3"]
    episode_id = info["episode_id"]
    assert [a["success"] for a in info["attempts"]] == [False, False]

    wait_for(lambda: (row := episode_row(module_pg_url, episode_id)) is not None and row["announced"], 30,
             "the episode to be written and announced")
    row = episode_row(module_pg_url, episode_id)
    assert row["attempt_count"] == 2 and row["store_text"] is True and row["outcome"] is False
    assert row["first_success"] is False and row["replayable"] is True
    assert json.loads(row["messages"]) == [{"role": "user", "content": prompt}]
    attempts = attempts_of(module_pg_url, episode_id)
    assert [(a["number"], a["success"]) for a in attempts] == [(1, False), (2, False)]
    assert attempts[1]["completion_id"] == response.json()["id"]  # the response is the last attempt
    assert attempts[1]["content"] == response.json()["choices"][0]["message"]["content"]
    assert attempts[0]["reflection"] is None and attempts[1]["reflection"]  # attempt 2 followed a reflection
    assert attempts[1]["reflection_tokens"] > 0
    assert json.loads(attempts[0]["token_ids"]) and attempts[0]["completion_tokens"] > 0

    ids = private_redis.stream_ids()
    assert ids.count(episode_id) == 1
    with private_redis.client() as client:
        groups = {g["name"].decode() for g in client.xinfo_groups(STREAM_KEY)}
    assert "trainer" in groups


def test_a_streamed_episode_is_stored_and_announced_too(server, module_pg_url, private_redis) -> None:
    body = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 4, "temperature": 0, "stream": True}
    with server.http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    [episode_id] = [json.loads(e)["r3"]["episode_id"] for e in events[:-1] if json.loads(e).get("r3")]
    wait_for(lambda: (row := episode_row(module_pg_url, episode_id)) is not None and row["announced"], 30,
             "the streamed episode to be written and announced")
    assert [a["number"] for a in attempts_of(module_pg_url, episode_id)] == [1]
    assert private_redis.stream_ids().count(episode_id) == 1


def test_store_false_keeps_no_text_in_postgres_redis_or_the_log(server, module_pg_url, private_redis) -> None:
    secret = f"zebra-{uuid.uuid4().hex}"
    prompt = f"Repeat this word: {secret}"
    response = server.chat(prompt, max_tokens=8, verifier=NEVER, reflect={"max_retries": 1}, store=False)
    assert response.status_code == 200, response.text
    body = response.json()
    episode_id = body["r3"]["episode_id"]
    completion = body["choices"][0]["message"]["content"]
    assert completion.strip(), "the test needs some completion text to look for"

    wait_for(lambda: (row := episode_row(module_pg_url, episode_id)) is not None and row["announced"], 30,
             "the episode to be written and announced")
    row = episode_row(module_pg_url, episode_id)
    assert row["store_text"] is False and row["messages"] is None and row["tools"] is None
    attempts = attempts_of(module_pg_url, episode_id)
    assert len(attempts) == 2
    for attempt in attempts:
        assert attempt["content"] is None and attempt["reflection"] is None
        assert attempt["token_ids"] is None and attempt["logprobs"] is None and attempt["tool_calls"] is None
    assert attempts[1]["reflection_tokens"] > 0  # numbers are kept
    everything = repr(dict(row)) + repr([dict(a) for a in attempts])
    assert secret not in everything and completion.strip() not in everything

    # Redis: the stream carries ids only; no key or value anywhere holds the text.
    with private_redis.client() as client:
        dump = []
        for key in client.scan_iter(count=1000):
            dump.append(key)
            kind = client.type(key)
            if kind == b"stream":
                dump.extend(repr(entry).encode() for entry in client.xrange(key, "-", "+"))
            elif kind == b"string":
                dump.append(client.get(key))
        for entry in client.xrange(STREAM_KEY, "-", "+"):
            assert set(entry[1]) == {b"episode_id"}
    blob = b"\n".join(dump).decode(errors="replace")
    assert episode_id in blob
    assert secret not in blob and completion.strip() not in blob

    log = server.output()
    assert secret not in log
    if len(completion.strip()) >= 6:  # a shorter one ("I", "Sure") could be in any log line by chance
        assert completion.strip() not in log


def test_a_redis_outage_loses_and_duplicates_nothing(server, module_pg_url, private_redis) -> None:
    total, kill_after, restart_after = 30, 6, 20
    requests = RequestStream(server, total)
    try:
        requests.wait_until_answered(kill_after, "the first requests")
        private_redis.kill()
        killed_at = len(requests.results)
        # While Redis is down, the episodes are still written to Postgres, waiting unannounced.
        requests.wait_until_answered(restart_after, "requests during the outage")
        during = [episode_id for status, episode_id in requests.results[killed_at:] if status == 200]
        assert during, "no request was served during the outage"
        wait_for(lambda: query(module_pg_url, "SELECT count(*) AS n FROM episodes WHERE id = ANY($1) AND NOT announced",
                               during)[0]["n"] > 0, 30, "an unannounced episode in Postgres during the outage")
        private_redis.start()
    finally:
        sent = requests.finish()
    assert len(set(sent)) == total

    def all_announced() -> bool:
        rows = query(module_pg_url, "SELECT count(*) AS n FROM episodes WHERE id = ANY($1) AND announced", sent)
        return rows[0]["n"] == total

    wait_for(all_announced, 60, "every episode to be announced after Redis came back")
    stored = query(module_pg_url, "SELECT id, attempt_count FROM episodes WHERE id = ANY($1)", sent)
    assert sorted(r["id"] for r in stored) == sorted(sent)
    assert all(r["attempt_count"] == 1 for r in stored)
    on_stream = Counter(private_redis.stream_ids())
    assert {episode_id: on_stream[episode_id] for episode_id in sent} == {episode_id: 1 for episode_id in sent}
    assert max(on_stream.values()) == 1  # nothing on the stream twice, these or earlier tests' episodes
