"""How long the operator's dashboard takes to render as the episode table grows.

Two stores, one run each:

- `--store sqlite` (the default): starts `r3 serve` (the embedded SQLite store, the bundled model),
  writes made-up episodes through the store into its database in steps (1,000, then 10,000, then
  100,000 in all), and after each step times `GET /dashboard` (the overview, 24-hour window) and a
  filtered `GET /dashboard/episodes` page, logged in as an admin: the median of 5 requests after a
  warm-up, next to `GET /health` as the floor of an HTTP round trip. Beside them, the overview's
  queries themselves, read from the rollups and counted over the episodes as before the rollups.
- `--store postgres`: a private database on the Postgres at `--database`, made at the migration
  before the rollups; `--episodes` (a million) made-up episodes generated inside Postgres (`fill`);
  then `r3 migrate` to the head (timed: it counts the rollups of the episodes stored), and the
  overview's queries both ways, counted over the episodes (as before the rollups) and from the
  rollups: the ratio of the two, in one run. Then `r3 serve` on that database and `GET /dashboard`,
  `GET /admin/stats` and `GET /health` as above.

Writes bench/results/dashboard.json (sqlite) or dashboard_postgres.json, with the machine's load
(`os.getloadavg()`) before and after.

    python -m bench.dashboard [--sizes 1000 10000 100000]
    python -m bench.dashboard --store postgres [--episodes 1000000] [--database postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
from alembic.script import ScriptDirectory

from bench.common import R3Server, machine, save, table
from r3.episodes import AttemptRecord, Episode, new_episode_id
from r3.settings import Settings
from r3.store import database
from r3.store.live_stats import counted, microseconds, version_stats
from r3.store.models import DEFAULT_SCENARIO
from r3.store.sql import SqlEpisodeStore
from r3.store.store import Store, open_store
from r3.store.timeline import _counted, first_episode_at, timeline
from server.dashboard.charts import WINDOWS

ADMIN_KEY = "bench-admin-key"
TASK_KINDS = ("function_calling", "countdown", "math", "generic")


def made_up_episodes(count: int, versions: Sequence[str | None], start: float, end: float,
                     seed: int = 0) -> list[Episode]:
    """`count` episodes spread evenly over [start, end) (Unix seconds), served by `versions` (None: the
    base model) one after the other, each for an equal share of the time, as a line of promotions
    would. The k-th version's first attempts pass with probability 0.5 + 0.1 k, so each is better than
    the one before; a failure is retried after a reflection, and the retry passes with probability
    0.3 + 0.1 k."""
    draw = random.Random(seed)
    episodes = []
    for i in range(count):
        k = i * len(versions) // count
        first_passed = draw.random() < 0.5 + 0.1 * k
        attempts = [_attempt(1, first_passed, draw, reflection=None)]
        if not first_passed:
            attempts.append(_attempt(2, draw.random() < 0.3 + 0.1 * k, draw,
                                     reflection="I added the numbers; the target needs their product, so multiply them."))
        episodes.append(Episode(
            id=new_episode_id(), tenant=f"tenant-{i % 3}", model="SmolLM2-135M-Instruct",
            adapter=versions[k], task_kind=TASK_KINDS[i % len(TASK_KINDS)],
            verifier={"type": "countdown", "numbers": [2, 3, 4], "target": 24}, store_text=True,
            messages=[{"role": "user", "content": f"Using 2, 3 and 4 once each, make 24. (task {i})"}],
            tools=None, tool_choice=None, attempts=attempts, created_at=start + (end - start) * i / count,
            revision=1))
    return episodes


def _attempt(number: int, passed: bool, draw: random.Random, reflection: str | None) -> AttemptRecord:
    return AttemptRecord(
        number=number, completion_id=f"chatcmpl-{new_episode_id()[3:]}", finish_reason="stop", prompt_tokens=40,
        completion_tokens=12, latency_s=round(draw.uniform(0.05, 0.5), 3),
        content="<answer>2 * 3 * 4</answer>" if passed else "<answer>2 + 3 + 4</answer>",
        reflection=reflection, reflection_tokens=11 if reflection else 0, success=passed, score=float(passed),
        detail="" if passed else "2 + 3 + 4 = 9, not 24")


def login(client: httpx.Client) -> None:
    form = client.get("/dashboard/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    answer = client.post("/dashboard/login", data={"key": ADMIN_KEY, "csrf": csrf})
    if answer.status_code != 303:  # a login sends the browser on to the overview
        raise RuntimeError(f"login failed: {answer.status_code} {answer.text[:200]}")


def median_ms(client: httpx.Client, path: str, params: dict[str, str] | None = None, repeats: int = 5,
              headers: dict[str, str] | None = None) -> float:
    client.get(path, params=params, headers=headers).raise_for_status()  # warm: templates compiled, connections open
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        client.get(path, params=params, headers=headers).raise_for_status()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


async def write_episodes(store: SqlEpisodeStore, episodes: Sequence[Episode], batch: int = 1000) -> None:
    """Write `episodes` as the episode log does (batched upserts)."""
    for i in range(0, len(episodes), batch):
        await store.write(episodes[i:i + batch])


async def add_episodes(settings: Settings, count: int, seed: int) -> None:
    """`count` more made-up episodes over the last 20 hours, straight into the server's database."""
    async with open_store(settings) as store:
        now = time.time()
        episodes = made_up_episodes(count, [None, "r3-v1", "r3-v2"], now - 20 * 3600, now, seed=seed)
        await write_episodes(store.episodes, episodes)


# The migration before the one that adds the rollups (0007): where `--store postgres` starts.
BEFORE_ROLLUPS = ScriptDirectory.from_config(database.alembic_config("")).get_revision("0007").down_revision

# `made_up_episodes`' episodes, generated inside Postgres: $1 episodes over [$2, $3) (Unix seconds)
# of scenario $4, ids salted with $5, served by the base model, r3-v1 and r3-v2 a third of the time
# each; version k's first attempts pass with probability 0.5 + 0.1 k, a failure is retried and
# passes with probability 0.3 + 0.1 k. The columns of the schema before the rollups.
_EPISODES = """
INSERT INTO episodes (id, created_at, tenant, scenario, model, adapter, task_kind, verifier, replayable, store_text,
                      messages, tools, tool_choice, sampling, revision, attempt_count, first_success, outcome,
                      first_score, outcome_score, announced)
SELECT 'ep_' || md5(CAST($5 AS text) || i), to_timestamp(CAST($2 AS float8) + (CAST($3 AS float8) - $2) * i / $1),
       'tenant-' || i % 3, CAST($4 AS text), 'SmolLM2-135M-Instruct',
       (ARRAY[NULL, 'r3-v1', 'r3-v2'])[k + 1], (ARRAY['function_calling', 'countdown', 'math', 'generic'])[i % 4 + 1],
       '{"type": "countdown", "numbers": [2, 3, 4], "target": 24}', true, true,
       jsonb_build_array(jsonb_build_object('role', 'user',
                                            'content', 'Using 2, 3 and 4 once each, make 24. (task ' || i || ')')),
       NULL, NULL, '{}', 1, CASE WHEN first THEN 1 ELSE 2 END, first, first OR retry,
       CAST(first AS integer), CAST(first OR retry AS integer), true
FROM (SELECT i, k, drawn.first < 0.5 + 0.1 * k AS first, drawn.retry < 0.3 + 0.1 * k AS retry
      FROM (SELECT i, i * 3 / $1 AS k, random() AS first, random() AS retry
            FROM generate_series(0, CAST($1 AS integer) - 1) AS i) AS drawn) AS episode
"""
_ATTEMPTS = """
INSERT INTO attempts (episode_id, number, completion_id, finish_reason, prompt_tokens, completion_tokens, latency_s,
                      content, reflection, reflection_tokens, success, detail, score)
SELECT id, n, 'chatcmpl-' || md5(id || n), 'stop', 40, 12, round(CAST(0.05 + random() * 0.45 AS numeric), 3),
       CASE WHEN passed THEN '<answer>2 * 3 * 4</answer>' ELSE '<answer>2 + 3 + 4</answer>' END,
       CASE WHEN n = 2 THEN 'I added the numbers; the target needs their product, so multiply them.' END,
       CASE WHEN n = 2 THEN 11 ELSE 0 END, passed, CASE WHEN passed THEN '' ELSE '2 + 3 + 4 = 9, not 24' END,
       CAST(passed AS integer)
FROM (SELECT id, n, CASE WHEN n = 1 THEN first_success ELSE outcome END AS passed
      FROM episodes CROSS JOIN LATERAL generate_series(1, attempt_count) AS n) AS attempt
"""


async def fill(url: str, count: int, start: float, end: float, scenario: str = DEFAULT_SCENARIO) -> None:
    """`count` made-up episodes over [start, end) (Unix seconds) with their attempts, generated inside
    Postgres (`url`: asyncpg's) by INSERT ... SELECT over generate_series, into a database with no
    episodes yet, at the migration before the rollups or any after it (the rollups are not written:
    the migration that adds them counts them). Then ANALYZE, so the planner knows the tables."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("SELECT setseed(0.5)")
        await connection.execute(_EPISODES, count, start, end, scenario, uuid.uuid4().hex)
        await connection.execute(_ATTEMPTS)
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


Query = Callable[[Store, datetime], Awaitable[Any]]


async def overview_from_rollups(store: Store, now: datetime) -> None:
    """The overview's store queries (`server.dashboard.routes.overview`), 24-hour window."""
    window, sessions = WINDOWS["24h"], store.database.sessions
    since = window.start(now)
    await first_episode_at(sessions, DEFAULT_SCENARIO)
    await timeline(sessions, since, window.bucket_s, window.buckets, DEFAULT_SCENARIO)
    await version_stats(sessions, since=since, scenario=DEFAULT_SCENARIO)


async def overview_counted(store: Store, now: datetime) -> None:
    """The same numbers counted over the episodes, as the overview did before the rollups."""
    window, sessions = WINDOWS["24h"], store.database.sessions
    since = window.start(now)
    await first_episode_at(sessions, DEFAULT_SCENARIO)
    await _counted(sessions, since, window.bucket_s, window.buckets, DEFAULT_SCENARIO)
    async with sessions() as session:
        await counted(session, [(microseconds(since), None)], DEFAULT_SCENARIO)


async def median_query_ms(settings: Settings, query: Query, repeats: int = 5) -> float:
    """The median of `repeats` runs of `query` after a warm-up, on a store of its own."""
    async with open_store(settings) as store:
        now = datetime.now(UTC)
        await query(store, now)
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            await query(store, now)
            timings.append(time.perf_counter() - started)
        return statistics.median(timings) * 1000


def load() -> list[float]:
    """The machine's load average over 1, 5 and 15 minutes (what `uptime` prints)."""
    return [round(value, 2) for value in os.getloadavg()]


def main_sqlite(sizes: Sequence[int]) -> None:
    server = R3Server({"R3_ADMIN_KEY": ADMIN_KEY, "R3_TRAINER": "false"})
    rows, results, written, load_before = [], [], 0, load()
    with server as url, httpx.Client(base_url=url, timeout=120) as client:
        login(client)
        # The server's own store: its embedded SQLite, whatever this shell's R3_* say.
        settings = Settings(_env_file=None, data_dir=server.data_dir, database_url=None, redis_url=None)
        for size in sorted(sizes):
            asyncio.run(add_episodes(settings, size - written, seed=size))
            written = size
            result = {"episodes": size, "health_ms": median_ms(client, "/health"),
                      "overview_ms": median_ms(client, "/dashboard", {"window": "24h"}),
                      "episodes_page_ms": median_ms(client, "/dashboard/episodes", {"outcome": "fail"})}
            result["queries_counted_ms"] = asyncio.run(median_query_ms(settings, overview_counted))
            result["queries_rollups_ms"] = asyncio.run(median_query_ms(settings, overview_from_rollups))
            results.append(result)
            rows.append([f"{size:,}", f"{result['health_ms']:.1f}", f"{result['overview_ms']:.1f}",
                         f"{result['episodes_page_ms']:.1f}", f"{result['queries_counted_ms']:.1f}",
                         f"{result['queries_rollups_ms']:.1f}",
                         f"{result['queries_counted_ms'] / result['queries_rollups_ms']:.1f}x"])
    table(["episodes", "/health ms", "overview ms", "episodes page ms", "queries counted ms", "queries rollups ms",
           "ratio"], rows)
    print(f"saved {save('dashboard', {'store': 'sqlite', 'load_before': load_before, 'load_after': load(), 'results': results})}")


async def fresh_database(admin_url: str) -> str:
    """A new database on the server of `admin_url` (asyncpg's); its SQLAlchemy URL."""
    name = f"r3_bench_{uuid.uuid4().hex[:8]}"
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"


async def drop_database(admin_url: str, url: str) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await connection.close()


def main_postgres(admin_url: str, count: int) -> None:
    url = asyncio.run(fresh_database(admin_url))
    plain = url.replace("postgresql+asyncpg://", "postgresql://")
    settings = Settings(_env_file=None, database_url=plain, redis_url=None)
    load_before = load()
    try:
        database.migrate(url, BEFORE_ROLLUPS)
        now = time.time()
        started = time.perf_counter()
        asyncio.run(fill(plain, count, now - 20 * 3600, now))
        fill_s = time.perf_counter() - started
        started = time.perf_counter()
        database.migrate(url)  # the rollups counted from the episodes stored, once
        migrate_s = time.perf_counter() - started
        asyncio.run(_analyze(plain))  # the rollups and the new index, to the planner
        counted_ms = asyncio.run(median_query_ms(settings, overview_counted, repeats=3))
        rollups_ms = asyncio.run(median_query_ms(settings, overview_from_rollups))
        server = R3Server({"R3_ADMIN_KEY": ADMIN_KEY, "R3_DATABASE_URL": plain, "R3_TRAINER": "false"})
        with server as served, httpx.Client(base_url=served, timeout=120) as client:
            login(client)
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            page = {"health_ms": median_ms(client, "/health"),
                    "overview_ms": median_ms(client, "/dashboard", {"window": "24h"}),
                    "admin_stats_ms": median_ms(client, "/admin/stats", {"window_s": "3600"}, headers=admin),
                    "episodes_page_ms": median_ms(client, "/dashboard/episodes", {"outcome": "fail"})}
    finally:
        asyncio.run(drop_database(admin_url, url))
    result = {"store": "postgres", "episodes": count, "load_before": load_before, "load_after": load(),
              "fill_s": round(fill_s, 1), "migrate_s": round(migrate_s, 1),
              "queries_counted_ms": round(counted_ms, 1), "queries_rollups_ms": round(rollups_ms, 1),
              "ratio": round(counted_ms / rollups_ms, 1), **{k: round(v, 1) for k, v in page.items()}}
    table(["measure", "value"], [[key, value] for key, value in result.items()])
    print(f"saved {save('dashboard_postgres', result)}")


async def _analyze(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000], help="sqlite")
    parser.add_argument("--episodes", type=int, default=1_000_000, help="postgres")
    parser.add_argument("--database", default=os.environ.get("R3_BENCH_DATABASE",
                                                             "postgresql://postgres@127.0.0.1:5432/test"))
    arguments = parser.parse_args()
    if arguments.store == "sqlite":
        main_sqlite(arguments.sizes)
    else:
        main_postgres(arguments.database, arguments.episodes)
