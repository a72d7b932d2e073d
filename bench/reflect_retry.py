"""What a rescue costs: latency of a request that fails, reflects and passes vs one that passes at once.

    python bench/reflect_retry.py [--requests 8] [--max-tokens 32] [--configs "transformers prefix-cache on,..."]

A scripted webhook verifier decides: on `/pass` every attempt passes; on `/rescue` attempt 1 fails
and attempt 2 passes, so a rescued request runs attempt 1, a reflection and attempt 2. The prompt
carries a long passage, as real tasks do, so the reflection and the retry re-read a long shared
prefix: measured on each engine with prefix caching on and off (`R3_ENABLE_PREFIX_CACHING`). One
client, requests alternating, greedy. Besides latency, each kind's generated tokens (answers and
reflections): a rescue's share of them against a passing request's is what a rescue would cost if only
generating did. Writes bench/results/reflect_retry.json and .png, with the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo's packages first
# One torch thread per process (the servers it starts inherit it): with two model processes on a
# 2-core machine, more threads mostly spin waiting on each other. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))

import httpx
from fastapi import FastAPI, Request
from support import ThreadedServer  # a uvicorn server in a thread

from bench.common import MODEL, R3Server, figure, percentile, require_bench_extra, save, table

CONFIGS = {  # name: the server's settings
    "transformers prefix-cache on": {"R3_ENGINE": "transformers", "R3_ENABLE_PREFIX_CACHING": "true"},
    "transformers prefix-cache off": {"R3_ENGINE": "transformers", "R3_ENABLE_PREFIX_CACHING": "false"},
    "vllm prefix-cache on": {"R3_ENGINE": "vllm", "R3_ENABLE_PREFIX_CACHING": "true"},
    "vllm prefix-cache off": {"R3_ENGINE": "vllm", "R3_ENABLE_PREFIX_CACHING": "false"},
}


def passage(words: int = 350, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocabulary = ("harbour lighthouse keeper storm wave night lamp rope boat gull wind island tide rock "
                  "signal fog bell ship captain log").split()
    return " ".join(rng.choice(vocabulary) for _ in range(words))


def webhook_app() -> FastAPI:
    app = FastAPI()

    @app.post("/pass")
    async def always(request: Request) -> dict:
        return {"success": True}

    @app.post("/rescue")
    async def second_time(request: Request) -> dict:
        payload = await request.json()
        return {"success": payload["attempt"] > 1, "detail": "the answer must name the keeper"}

    return app


async def measure(url: str, hook: str, requests: int, max_tokens: int) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Each kind's latencies (s) and generated tokens (answers and reflections), the warm-ups left out."""
    messages = [{"role": "user", "content": f"{passage()}\n\nWho is the story about? Answer in one sentence."}]
    latencies: dict[str, list[float]] = {"pass": [], "rescue": []}
    generated: dict[str, list[int]] = {"pass": [], "rescue": []}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for i in range(2 * requests + 2):
            kind = ("pass", "rescue")[i % 2]
            body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                    "verifier": {"type": "webhook", "url": f"{hook}/{kind}"}}
            response = await client.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            payload = response.json()
            attempts = payload["r3"]["attempts"]
            assert [a["success"] for a in attempts] == ([True] if kind == "pass" else [False, True]), attempts
            if i >= 2:  # the first of each kind warms up
                latencies[kind].append(response.elapsed.total_seconds())
                generated[kind].append(payload["usage"]["completion_tokens"])  # every attempt's and reflection's
    return latencies, generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8, help="measured requests of each kind")
    parser.add_argument("--max-tokens", type=int, default=32, help="for answers and reflections")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args()
    require_bench_extra()
    rows, raw = [], {}
    load_before = os.getloadavg()
    with ThreadedServer(webhook_app()) as hook:
        for name in args.configs.split(","):
            settings = {**CONFIGS[name], "R3_WEBHOOK_ALLOW_LOOPBACK": "true", "R3_TRAINER": "false",
                        "R3_REFLECTION_MAX_TOKENS": str(args.max_tokens)}
            with R3Server(settings) as url:
                raw[name], generated = asyncio.run(measure(url, hook, args.requests, args.max_tokens))
            passing, rescued = (percentile(raw[name][k], 50) for k in ("pass", "rescue"))
            share = percentile(generated["rescue"], 50) / percentile(generated["pass"], 50)
            rows.append({"config": name, "passing_p50_s": round(passing, 3), "rescued_p50_s": round(rescued, 3),
                         "rescued_over_passing": round(rescued / passing, 2),
                         "generated_tokens": {k: percentile(v, 50) for k, v in generated.items()},
                         "generated_share": round(share, 2), "over_generated_share": round(rescued / passing / share, 2),
                         "passing_p99_s": round(percentile(raw[name]["pass"], 99), 3),
                         "rescued_p99_s": round(percentile(raw[name]["rescue"], 99), 3)})
    table(["config", "passing p50 (s)", "rescued p50 (s)", "rescued/passing", "generated share", "cost/share"],
          [[r["config"], r["passing_p50_s"], r["rescued_p50_s"], r["rescued_over_passing"], r["generated_share"],
            r["over_generated_share"]] for r in rows])
    save("reflect_retry", {"requests_per_kind": args.requests, "max_tokens": args.max_tokens,
                           "load_average_before": load_before, "load_average_after": os.getloadavg(), "rows": rows,
                           "latencies_s": raw})
    plot(rows, Path(__file__).parent / "results" / "reflect_retry.png")


def plot(rows: list[dict], path: Path) -> None:
    with figure(path, "The cost of a rescue") as ax:
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [r["passing_p50_s"] for r in rows], 0.4, label="passes at once")
        ax.bar([i + 0.2 for i in x], [r["rescued_p50_s"] for r in rows], 0.4, label="fails, reflects, passes")
        for i, r in zip(x, rows):
            ax.annotate(f"{r['rescued_over_passing']:.2f}×\n(tokens {r['generated_share']:.2f}×)",
                        (i + 0.2, r["rescued_p50_s"]), ha="center", va="bottom")
        ax.set_ylim(top=1.25 * max(r["rescued_p50_s"] for r in rows))  # room for the labels
        ax.set_xticks(list(x), [r["config"].replace(" ", "\n", 1) for r in rows])
        ax.set_ylabel("p50 latency (s)")
        ax.legend()


if __name__ == "__main__":
    main()
