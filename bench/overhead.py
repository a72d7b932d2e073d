"""What R3 costs over the bare engine: throughput and added latency, 1 and 8 concurrent clients.

    python bench/overhead.py [--engines transformers,vllm] [--max-tokens 32] [--requests 2] [--rounds 2]

For each engine, in one run: the engine alone, driven in this process, and `r3 serve` on the same
engine and model in its own process, driven over HTTP with a verifier that always passes (so every
request is judged, recorded as an episode, and never retried), measured in alternation. Same
prompt, greedy, a fixed number of tokens, so both sides generate the same text. Writes bench/results/overhead.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo's packages first
# One torch thread per process (the servers it starts inherit it): with two model processes on a
# 2-core machine, more threads mostly spin waiting on each other. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import httpx

from bench.common import (MODEL, PASSING, R3Server, Sample, chat_sender, closed_loop, figure, percentile,
                          require_bench_extra, save, table)
from r3 import bundled_model
from r3.chat_format import render_prompt
from r3.engines.base import SamplingParams
from r3.settings import Settings

MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]
CONCURRENCY = (1, 8)


def start_engine(name: str, model_path: str):
    if name == "vllm":
        from r3.engines.vllm_engine import VllmEngine

        return VllmEngine.start(model_path, MODEL, max_batch_size=8)
    from r3.engines.transformers_engine import TransformersEngine

    return TransformersEngine(model_path, MODEL, max_batch_size=8)


async def side_by_side(name: str, model_path: str, url: str, max_tokens: int, rounds: int,
                       requests: int) -> dict[str, dict[int, list[tuple[list[Sample], float]]]]:
    """The engine alone (in this process) and R3 (over HTTP), measured in alternation, so a change in
    the machine's load over the run falls on both sides alike."""
    engine = start_engine(name, model_path)
    prompt = render_prompt(engine.tokenizer, MESSAGES).text
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0, "verifier": PASSING}

    async def alone():
        result = await engine.generate(prompt, params)
        return result.completion_tokens, None

    runs: dict[str, dict[int, list]] = {"alone": {c: [] for c in CONCURRENCY}, "r3": {c: [] for c in CONCURRENCY}}
    try:
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            senders = {"alone": alone, "r3": chat_sender(client, body)}
            for send in senders.values():
                await send()  # warm-up
            for _ in range(rounds):
                for concurrency in CONCURRENCY:
                    for side, send in senders.items():
                        runs[side][concurrency].append(await closed_loop(send, concurrency, requests))
    finally:
        await engine.close()
    return runs


def summary(runs: list[tuple[list[Sample], float]]) -> dict[str, float]:
    samples = [sample for run, _ in runs for sample in run]
    latencies = [s.latency_s for s in samples]
    return {"tokens_per_s": sum(s.completion_tokens for s in samples) / sum(wall for _, wall in runs),
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
            "failed": sum(s.completion_tokens == 0 for s in samples)}


def plot(rows: list[dict], path: Path) -> None:
    with figure(path, "R3 overhead: throughput, same model and load") as ax:
        draw(ax, rows)


def draw(ax, rows: list[dict]) -> None:
    labels = [f"{r['engine']}\n{r['concurrency']} client{'s' if r['concurrency'] > 1 else ''}" for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["bare_tokens_per_s"] for r in rows], 0.4, label="engine alone")
    ax.bar([i + 0.2 for i in x], [r["r3_tokens_per_s"] for r in rows], 0.4, label="through R3 (verified)")
    for i, r in zip(x, rows):
        ax.annotate(f"{r['ratio']:.2f}×", (i + 0.2, r["r3_tokens_per_s"]), ha="center", va="bottom")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("generated tokens/s")
    ax.legend()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="transformers,vllm")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=2, help="requests per client per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two sides")
    args = parser.parse_args()
    require_bench_extra()
    model_path = str(bundled_model.pull(Settings().models_dir))
    rows = []
    for name in args.engines.split(","):
        with R3Server({"R3_ENGINE": name, "R3_MAX_BATCH_SIZE": "8"}) as url:
            runs = asyncio.run(side_by_side(name, model_path, url, args.max_tokens, args.rounds, args.requests))
        for concurrency in CONCURRENCY:
            b, r = summary(runs["alone"][concurrency]), summary(runs["r3"][concurrency])
            rows.append({"engine": name, "concurrency": concurrency,
                         "bare_tokens_per_s": round(b["tokens_per_s"], 2), "r3_tokens_per_s": round(r["tokens_per_s"], 2),
                         "ratio": round(r["tokens_per_s"] / b["tokens_per_s"], 3),
                         "bare_p50_ms": round(b["p50_ms"], 1), "r3_p50_ms": round(r["p50_ms"], 1),
                         "added_p50_ms": round(r["p50_ms"] - b["p50_ms"], 1),
                         "bare_p99_ms": round(b["p99_ms"], 1), "r3_p99_ms": round(r["p99_ms"], 1),
                         "added_p99_ms": round(r["p99_ms"] - b["p99_ms"], 1),
                         "r3_failed_requests": r["failed"]})
    table(["engine", "clients", "alone tok/s", "R3 tok/s", "R3/alone", "added p50 ms", "added p99 ms"],
          [[r["engine"], r["concurrency"], r["bare_tokens_per_s"], r["r3_tokens_per_s"], r["ratio"],
            r["added_p50_ms"], r["added_p99_ms"]] for r in rows])
    save("overhead", {"max_tokens": args.max_tokens, "requests_per_client": args.requests, "rounds": args.rounds,
                      "verifier": PASSING, "rows": rows})
    plot(rows, Path(__file__).parent / "results" / "overhead.png")


if __name__ == "__main__":
    main()
