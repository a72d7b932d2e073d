"""The episode log: how many episodes/s it writes into Postgres + Redis, and what it adds to a request.

    python bench/episode_log.py [--episodes 20000] [--requests 200]
        [--database postgresql://postgres@127.0.0.1:5432/test] [--redis redis://127.0.0.1:6379/0]
    python bench/episode_log.py --writers 4 [--episodes 20000]

1. Throughput: record N synthetic two-attempt episodes as fast as the caller can, and time until
   every one is in Postgres and announced on the Redis stream (a fresh database and stream key).
2. Request latency with logging on vs off, in one run: two servers on the same model, one whose
   episodes go nowhere; requests alternate between them, one at a time, max_tokens=1 so the model's
   time does not drown the difference. Reports p50/p99 of each and their ratio.
Writes bench/results/episode_log.json and .png.

With `--writers W`: W processes, as W servers would be, each with its own store and episode log
(and journal), record N episodes each into one fresh Postgres database and one stream, starting
together; the throughput is all W×N episodes over the time from the start until the last process's
are in the database and on the stream. Then the count check: every episode stored, announced, and
counted once in the rollups. In the same run, first, one such process alone (N episodes): the
ratio says how far W writers scale on this machine. Writes bench/results/episode_log_writers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]  # the packages first: tests/verifiers must not shadow `verifiers`
sys.path.append(str(ROOT / "tests"))
# One torch thread per process (the servers it starts inherit it): with two model processes on a
# 2-core machine, more threads mostly spin waiting on each other. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
from support import ThreadedServer  # noqa: E402

from bench.common import figure, require_bench_extra  # noqa: E402
from r3.episodes import AttemptRecord, Episode, new_episode_id  # noqa: E402
from r3.settings import Settings  # noqa: E402
from r3.store import database  # noqa: E402
from r3.store.episode_log import EpisodeLog  # noqa: E402
from r3.store.journal import Journal  # noqa: E402
from r3.store.store import open_store  # noqa: E402
from r3.store.stream import RedisEpisodeStream  # noqa: E402
from server.app import create_app  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def synthetic_episode() -> Episode:
    messages = [{"role": "user", "content": "What is the weather in Paris today? Please call the tool."}]
    attempts = [
        AttemptRecord(number=n, completion_id=f"chatcmpl-{uuid.uuid4().hex}", finish_reason="stop",
                      prompt_tokens=120, completion_tokens=24, latency_s=0.4, content="I will check the weather.",
                      token_ids=list(range(24)), logprobs=[-0.5] * 24, success=n == 2,
                      reflection="I forgot to call the tool." if n == 2 else None, reflection_tokens=12 * (n == 2),
                      detail="expected 1 call, got 0" if n == 1 else "")
        for n in (1, 2)
    ]
    return Episode(id=new_episode_id(), tenant=None, model="bench", adapter=None, task_kind="function_calling",
                   verifier={"type": "tool_schema"}, store_text=True, messages=messages, tools=None,
                   tool_choice="auto", attempts=attempts)


async def fresh_database(admin_url: str) -> str:
    name = f"r3_bench_{uuid.uuid4().hex[:8]}"
    connection = await asyncpg.connect(admin_url)
    await connection.execute(f'CREATE DATABASE "{name}"')
    await connection.close()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


async def drop_database(admin_url: str, url: str) -> None:
    connection = await asyncpg.connect(admin_url)
    await connection.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    await connection.close()


async def throughput(admin_url: str, redis_url: str, count: int) -> dict:
    url = await fresh_database(admin_url)
    settings = Settings(database_url=url)
    await asyncio.to_thread(database.migrate, database.database_url(settings))
    key = f"r3:bench:{uuid.uuid4().hex[:8]}"
    # A stream of its own (not the store's), so the benchmark's ids reach no trainer.
    stream = RedisEpisodeStream(redis_url, key=key)
    try:
        async with open_store(settings) as store:
            with tempfile.TemporaryDirectory() as journal_dir:
                log = EpisodeLog(store.episodes, stream, Journal(Path(journal_dir)))
                await log.start()
                episodes = [synthetic_episode() for _ in range(count)]
                started = time.perf_counter()
                for number, episode in enumerate(episodes):
                    log.record(episode)
                    if number % 100 == 0:
                        await asyncio.sleep(0)  # a server records between requests, not in one burst
                recorded = time.perf_counter() - started
                await log.flush()
                elapsed = time.perf_counter() - started
                on_stream = redis.from_url(redis_url).xlen(key)
                await log.close()
            async with store.database.engine.connect() as connection:
                stored = (await connection.exec_driver_sql("SELECT count(*) FROM episodes")).scalar()
    finally:
        await stream.close()
        redis.from_url(redis_url).delete(key)
        await drop_database(admin_url, url)
    return {"episodes": count, "stored": stored, "on_stream": on_stream, "seconds": round(elapsed, 3),
            "episodes_per_s": round(count / elapsed), "record_call_us": round(recorded / count * 1e6, 1)}


class DiscardingLog:
    """Logging off: episodes go nowhere (in place of the server's `EpisodeLog`)."""

    def unrecordable(self) -> str | None:
        return None

    async def save(self, episode: Episode) -> None:
        return None

    async def close(self) -> None:
        return None


def latency(requests: int) -> dict:
    with tempfile.TemporaryDirectory() as on_dir, tempfile.TemporaryDirectory() as off_dir:
        on_app, off_app = (create_app(Settings(data_dir=Path(d))) for d in (on_dir, off_dir))
        with ThreadedServer(on_app) as on_url, ThreadedServer(off_app) as off_url:
            off_app.state.episode_log = DiscardingLog()
            body = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Hi"}],
                    "max_tokens": 1, "temperature": 0}
            times: dict[str, list[float]] = {"on": [], "off": []}
            with httpx.Client(timeout=60) as client:
                for url in (on_url, off_url):  # warm-up
                    client.post(f"{url}/v1/chat/completions", json=body).raise_for_status()
                for _ in range(requests):
                    for name, url in (("on", on_url), ("off", off_url)):
                        started = time.perf_counter()
                        client.post(f"{url}/v1/chat/completions", json=body).raise_for_status()
                        times[name].append(time.perf_counter() - started)
    def percentile(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1] * 1000

    result = {name: {"p50_ms": round(percentile(v, 50), 2), "p99_ms": round(percentile(v, 99), 2)}
              for name, v in times.items()}
    result["p50_ratio_on_off"] = round(result["on"]["p50_ms"] / result["off"]["p50_ms"], 3)
    result["p99_ratio_on_off"] = round(result["on"]["p99_ms"] / result["off"]["p99_ms"], 3)
    result["latencies_ms"] = {name: [round(t * 1000, 2) for t in v] for name, v in times.items()}
    return result


def plot(result: dict, path: Path) -> None:
    with figure(path, "The episode log", columns=2) as (rate, latency):
        draw(rate, latency, result)


def draw(rate, latency, result: dict) -> None:
    rate.bar(["measured"], [result["throughput"]["episodes_per_s"]])
    rate.axhline(2000, color="grey", linestyle="--", linewidth=1, label="target: 2,000/s")
    rate.set_ylabel("episodes/s into Postgres + Redis")
    rate.legend()
    for name, values in result["latency"]["latencies_ms"].items():
        ordered = sorted(values)
        latency.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=f"logging {name}")
    latency.set_xlabel("request latency (ms), max_tokens=1")
    latency.set_ylabel("fraction of requests")
    latency.legend()


async def write_share(url: str, redis_url: str, key: str, count: int, start: multiprocessing.Barrier) -> dict:
    """One writer process's part: `count` episodes through an episode log of its own, from the
    moment every writer is ready (`start`) until all are in the database and on the stream."""
    stream = RedisEpisodeStream(redis_url, key=key)
    try:
        async with open_store(Settings(database_url=url)) as store:
            with tempfile.TemporaryDirectory() as journal_dir:
                log = EpisodeLog(store.episodes, stream, Journal(Path(journal_dir)))
                await log.start()
                episodes = [synthetic_episode() for _ in range(count)]
                await asyncio.to_thread(start.wait)
                started, cpu = time.time(), time.process_time()
                for number, episode in enumerate(episodes):
                    log.record(episode)
                    if number % 100 == 0:
                        await asyncio.sleep(0)  # a server records between requests, not in one burst
                await log.flush()
                ended, cpu = time.time(), time.process_time() - cpu
                await log.close()
                return {"started": started, "ended": ended, "cpu_s": cpu, "rejected": log.rejected}
    finally:
        await stream.close()


def _writer(url: str, redis_url: str, key: str, count: int, start: multiprocessing.Barrier, results) -> None:
    results.put(asyncio.run(write_share(url, redis_url, key, count, start)))


async def _counts(url: str) -> dict:
    async with open_store(Settings(database_url=url)) as store, store.database.engine.connect() as connection:
        stored = (await connection.exec_driver_sql("SELECT count(*) FROM episodes")).scalar()
        announced = (await connection.exec_driver_sql("SELECT count(*) FROM episodes WHERE announced")).scalar()
        counted = (await connection.exec_driver_sql(
            "SELECT coalesce(sum(requests), 0) FROM episode_rollups WHERE bucket_s = 86400")).scalar()
    return {"stored": stored, "announced": announced, "rollup_requests": counted}


def writers(admin_url: str, redis_url: str, processes: int, count: int) -> dict:
    """W writer processes into one database and one stream; the total throughput and the count check."""
    load_before = [round(value, 2) for value in os.getloadavg()]
    url = asyncio.run(fresh_database(admin_url))
    database.migrate(database.database_url(Settings(database_url=url)))
    key = f"r3:bench:{uuid.uuid4().hex[:8]}"
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_writer, args=(url, redis_url, key, count, start, results))
               for _ in range(processes)]
    try:
        for worker in workers:
            worker.start()
        shares = [results.get(timeout=1800) for _ in workers]
        for worker in workers:
            worker.join()
        on_stream = redis.from_url(redis_url).xlen(key)
        counts = asyncio.run(_counts(url))
    finally:
        redis.from_url(redis_url).delete(key)
        asyncio.run(drop_database(admin_url, url))
    seconds = max(s["ended"] for s in shares) - min(s["started"] for s in shares)
    total = processes * count
    return {"writers": processes, "episodes_each": count, "episodes": total, "seconds": round(seconds, 3),
            "episodes_per_s": round(total / seconds), "on_stream": on_stream, **counts,
            "rejected": sum(s["rejected"] for s in shares), "lost": total - counts["stored"],
            "per_writer_episodes_per_s": [round(count / (s["ended"] - s["started"])) for s in shares],
            # CPU time the writer processes spent per episode (recording, journal, batches, stream), Postgres' not included
            "writer_cpu_ms_per_episode": round(sum(s["cpu_s"] for s in shares) / total * 1000, 3),
            "load_before": load_before, "load_after": [round(value, 2) for value in os.getloadavg()]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=20_000, help="per writer, with --writers")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--writers", type=int, default=0, help="writer processes into one database (0: the single-log run)")
    parser.add_argument("--database", default=os.environ.get("R3_BENCH_DATABASE", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--redis", default=os.environ.get("R3_BENCH_REDIS", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    require_bench_extra()
    RESULTS.mkdir(exist_ok=True)
    if args.writers:
        runs = [writers(args.database, args.redis, count, args.episodes) for count in (1, args.writers)]
        for run in runs:
            print(f"{run['writers']} writers: {run['episodes_per_s']} episodes/s in all into Postgres + Redis "
                  f"({run['episodes']} recorded, {run['stored']} stored, {run['announced']} announced, "
                  f"{run['on_stream']} on the stream, {run['rollup_requests']} in the rollups, "
                  f"{run['lost']} lost; per writer {run['per_writer_episodes_per_s']}; writers' CPU "
                  f"{run['writer_cpu_ms_per_episode']} ms an episode); load {run['load_before']} -> {run['load_after']}")
        ratio = round(runs[1]["episodes_per_s"] / runs[0]["episodes_per_s"], 2)
        print(f"{args.writers} writers / 1 writer: {ratio}")
        (RESULTS / "episode_log_writers.json").write_text(json.dumps({"runs": runs, "ratio": ratio}, indent=2))
        return
    result = {"throughput": asyncio.run(throughput(args.database, args.redis, args.episodes)),
              "latency": latency(args.requests)}
    t, lat = result["throughput"], result["latency"]
    print(f"episode log: {t['episodes_per_s']} episodes/s into Postgres + Redis "
          f"({t['stored']} stored, {t['on_stream']} on the stream, {t['record_call_us']} µs per record call)")
    print(f"request latency, logging on / off: p50 {lat['on']['p50_ms']} / {lat['off']['p50_ms']} ms "
          f"(ratio {lat['p50_ratio_on_off']}), p99 {lat['on']['p99_ms']} / {lat['off']['p99_ms']} ms "
          f"(ratio {lat['p99_ratio_on_off']})")
    (RESULTS / "episode_log.json").write_text(json.dumps(result, indent=2))
    plot(result, RESULTS / "episode_log.png")


if __name__ == "__main__":
    main()
