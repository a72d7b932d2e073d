"""How long the operator's dashboard takes to render as the episode table grows.

Starts `r3 serve` (the embedded SQLite store, the bundled model), writes made-up episodes straight
into its database in steps (1,000, then 10,000, then 100,000 in all), and after each step times
`GET /dashboard` (the overview, 24-hour window) and a filtered `GET /dashboard/episodes` page,
logged in as an admin: the median of 5 requests after a warm-up, next to `GET /health` as the floor
of an HTTP round trip. Writes bench/results/dashboard.json.

    python bench/dashboard.py [--sizes 1000 10000 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import time
from collections.abc import Sequence

import httpx

from bench.common import R3Server, machine, save, table
from r3.episodes import AttemptRecord, Episode, new_episode_id
from r3.settings import Settings
from r3.store.sql import SqlEpisodeStore
from r3.store.store import open_store

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


def median_ms(client: httpx.Client, path: str, params: dict[str, str] | None = None, repeats: int = 5) -> float:
    client.get(path, params=params).raise_for_status()  # warm: templates compiled, connections open
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        client.get(path, params=params).raise_for_status()
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


def main(sizes: Sequence[int]) -> None:
    server = R3Server({"R3_ADMIN_KEY": ADMIN_KEY})
    rows, results, written = [], [], 0
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
            results.append(result)
            rows.append([f"{size:,}", f"{result['health_ms']:.1f}", f"{result['overview_ms']:.1f}",
                         f"{result['episodes_page_ms']:.1f}"])
    table(["episodes", "/health ms", "overview ms", "episodes page ms"], rows)
    print(f"saved {save('dashboard', {'machine': machine(), 'store': 'sqlite', 'results': results})}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    main(parser.parse_args().sizes)
