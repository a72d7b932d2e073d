"""A trainer killed mid-round: its stream entries stay pending, no version is half-promoted, and the
next worker claims the entries, redoes the round and acknowledges them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from store_support import REPO, STREAM_KEY, run, run_in_thread, wait_for

from r3.episodes import AttemptRecord, Episode, new_episode_id
from r3.settings import Settings
from r3.store import database
from r3.store.sql import SqlEpisodeStore
from r3.store.stream import TRAINER_GROUP, RedisEpisodeStream

WORDS = ["apple", "river", "stone", "cloud", "tiger", "maple"]


def failed_episode(word: str) -> Episode:
    attempt = AttemptRecord(number=1, completion_id=f"chatcmpl-{new_episode_id()}", finish_reason="stop",
                            prompt_tokens=20, completion_tokens=3, latency_s=0.1, content="I cannot.",
                            success=False, detail="the answer must contain the word")
    return Episode(id=new_episode_id(), tenant=None, model="m", adapter=None, task_kind="generic",
                   verifier={"type": "regex", "pattern": word, "mode": "search"}, store_text=True,
                   messages=[{"role": "user", "content": f"Say the word {word}."}], tools=None, tool_choice=None,
                   sampling={"max_tokens": 4, "temperature": 0.0, "top_p": 1.0, "seed": None, "stop": [],
                             "top_logprobs": 0},
                   attempts=[attempt])


def rows(url: str, sql: str) -> list[tuple]:
    async def fetch() -> list[tuple]:
        engine = database.create_engine(url)
        try:
            async with engine.connect() as connection:
                return [tuple(r) for r in (await connection.exec_driver_sql(sql)).all()]
        finally:
            await engine.dispose()

    return run(fetch)


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli", "train"], env=env, cwd=REPO,
                            stdout=log.open("a"), stderr=subprocess.STDOUT)


def test_a_killed_round_is_redone_and_loses_no_stream_entry(private_redis, model_path: Path, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, redis_url=private_redis.url)
    url = database.database_url(settings)
    run_in_thread(database.migrate, url)
    episodes = [failed_episode(word) for word in WORDS]

    async def record() -> None:
        engine = database.create_engine(url)
        stream = RedisEpisodeStream(private_redis.url)
        try:
            await SqlEpisodeStore(database.sessions(engine)).write(episodes)
            await stream.announce([e.id for e in episodes])
        finally:
            await stream.close()
            await engine.dispose()

    run(record)
    env = {**os.environ, "R3_DATA_DIR": str(tmp_path), "R3_REDIS_URL": private_redis.url,
           "R3_MODELS_DIR": str(model_path.parent), "R3_TRAIN_MIN_FAILURES": "1", "R3_TRAIN_NUM_GENERATIONS": "2",
           "R3_TRAIN_MAX_STEPS": "1", "R3_REFLECTION_MAX_TOKENS": "6", "R3_TRAIN_HELDOUT_FRACTION": "0.5",
           "R3_TRAIN_CLAIM_IDLE_S": "0.5", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "trainer.log"
    redis_client = private_redis.client()

    first = start_worker(env, log)
    try:
        wait_for(lambda: rows(url, "SELECT id FROM training_rounds WHERE status = 'running'"), 180,
                 "the first round to start")
        wait_for(lambda: redis_client.xpending(STREAM_KEY, TRAINER_GROUP)["pending"] == len(WORDS), 30,
                 "the worker to read the stream")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)

    assert rows(url, "SELECT name FROM adapter_versions WHERE status = 'active'") == []
    assert redis_client.xpending(STREAM_KEY, TRAINER_GROUP)["pending"] == len(WORDS)  # nothing acknowledged

    second = start_worker(env, log)
    try:
        wait_for(lambda: rows(url, "SELECT id FROM training_rounds WHERE status = 'finished'"), 420,
                 f"the redone round to finish (log: {log})", interval_s=0.5)
        wait_for(lambda: redis_client.xpending(STREAM_KEY, TRAINER_GROUP)["pending"] == 0, 30,
                 "the entries to be acknowledged")
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)

    rounds = rows(url, "SELECT status, candidate, error FROM training_rounds ORDER BY id")
    assert rounds[0][0] == "failed" and "stopped" in rounds[0][2]  # the killed one, marked by its successor
    assert rounds[-1][0] == "finished" and rounds[-1][1] is not None
    statuses = rows(url, "SELECT status FROM adapter_versions")
    assert sum(status == "active" for (status,) in statuses) <= 1
    assert all(status in ("pending", "candidate", "active", "rejected") for (status,) in statuses)
    assert redis_client.xlen(STREAM_KEY) == len(WORDS)  # every entry is still there, read and acknowledged
