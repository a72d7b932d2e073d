"""A trainer killed mid-round: its stream entries stay pending, no version is half-promoted, and the
next worker claims the entries, redoes the round and acknowledges them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from store_support import REPO, STREAM_KEY, run, wait_for

from r3.episodes import AttemptRecord, Episode, new_episode_id
from r3.settings import Settings
from r3.store import database
from r3.store.rounds import Round
from r3.store.store import open_store
from r3.store.stream import TRAINER_GROUP

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


def start_worker(env: dict[str, str], log: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "r3", "train", *options], env=env, cwd=REPO,
                            stdout=log.open("a"), stderr=subprocess.STDOUT)


def test_a_killed_once_round_is_failed_and_rounds_run_again(model_path: Path, tmp_path: Path) -> None:
    """`r3 train --once` killed mid-round: the admin's next POST /admin/train gets a new round (not the
    dead one), the dead round is failed saying why, and the next `--once` runs the new round."""
    settings = Settings(_env_file=None, data_dir=tmp_path)
    url = database.database_url(settings)

    async def record() -> None:
        async with open_store(settings) as store:  # the embedded SQLite migrates itself
            await store.episodes.write([failed_episode(word) for word in WORDS])

    async def ask() -> tuple[Round, bool]:  # what POST /admin/train does
        async with open_store(settings) as store:
            return await store.rounds.request("admin")

    run(record)
    env = {**os.environ, "R3_DATA_DIR": str(tmp_path), "R3_MODELS_DIR": str(model_path.parent),
           "R3_TRAIN_NUM_GENERATIONS": "2", "R3_TRAIN_MAX_STEPS": "1", "R3_REFLECTION_MAX_TOKENS": "6",
           "R3_TRAIN_HELDOUT_FRACTION": "0.5", "R3_TRAIN_HEARTBEAT_S": "0.2", "R3_TRAIN_STALE_AFTER_S": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("R3_DATABASE_URL", None)
    env.pop("R3_REDIS_URL", None)
    log = tmp_path / "trainer.log"
    once = start_worker(env, log, "--once")
    try:
        (dead,) = wait_for(lambda: rows(url, "SELECT id FROM training_rounds WHERE status = 'running' "
                                             "AND heartbeat_at IS NOT NULL"), 180, "the round to start")[0]
        asked, new = run(ask)
        assert (asked.id, new) == (dead, False)  # alive: asking again queues nothing
    finally:
        once.send_signal(signal.SIGKILL)
        once.wait(30)

    # Once its trainer has been silent past the bound it set, asking gets a new round.
    asked, new = wait_for(lambda: (lambda answer: answer if answer[1] else None)(run(ask)), 60,
                          "the dead round to be presumed dead")
    assert asked.id != dead and asked.status == "requested"
    ((status, error),) = rows(url, f"SELECT status, error FROM training_rounds WHERE id = {dead}")
    assert status == "failed" and "stopped: no heartbeat since" in error

    again = subprocess.run([sys.executable, "-m", "r3", "train", "--once", "--json"], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert rows(url, f"SELECT status FROM training_rounds WHERE id = {asked.id}") == [("finished",)]


def test_a_killed_round_is_redone_and_loses_no_stream_entry(private_redis, model_path: Path, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, redis_url=private_redis.url)
    url = database.database_url(settings)
    episodes = [failed_episode(word) for word in WORDS]

    async def record() -> None:  # what the server's episode log does
        async with open_store(settings) as store:  # the embedded SQLite migrates itself
            await store.episodes.write(episodes)
            await store.stream.announce([e.id for e in episodes])

    run(record)
    env = {**os.environ, "R3_DATA_DIR": str(tmp_path), "R3_REDIS_URL": private_redis.url,
           "R3_MODELS_DIR": str(model_path.parent), "R3_TRAIN_MIN_FAILURES": "1", "R3_TRAIN_NUM_GENERATIONS": "2",
           "R3_TRAIN_MAX_STEPS": "1", "R3_REFLECTION_MAX_TOKENS": "6", "R3_TRAIN_HELDOUT_FRACTION": "0.5",
           "R3_TRAIN_CLAIM_IDLE_S": "0.5", "OMP_NUM_THREADS": "1",
           # Its round is presumed dead a second after its last heartbeat (the next worker takes longer to start).
           "R3_TRAIN_HEARTBEAT_S": "0.2", "R3_TRAIN_STALE_AFTER_S": "1"}
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
    assert rounds[-1][0] == "finished"  # with a candidate, or none when its rollouts carried no signal
    statuses = rows(url, "SELECT status FROM adapter_versions")
    assert sum(status == "active" for (status,) in statuses) <= 1
    assert all(status in ("active", "rejected", "failed") for (status,) in statuses)  # none left undecided
    assert redis_client.xlen(STREAM_KEY) == len(WORDS)  # every entry is still there, read and acknowledged
