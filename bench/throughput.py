"""Tokens/s of the transformers engine alone vs through the HTTP API, 1 and 8 concurrent requests.

    python bench/throughput.py [--max-tokens 64] [--rounds 3]

Same prompt, greedy, so both paths generate the same tokens; the API path adds HTTP, JSON,
chat rendering and the event loop. Prints a table and writes bench/results/throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from r3 import bundled_model
from r3.chat_format import render_prompt
from r3.engines.base import SamplingParams
from r3.engines.transformers_engine import TransformersEngine
from r3.settings import Settings

MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]
RESULTS = Path(__file__).parent / "results"


async def engine_tokens_per_second(model_path: str, concurrency: int, max_tokens: int, rounds: int) -> float:
    engine = TransformersEngine(model_path, "bench", max_batch_size=8)
    prompt = render_prompt(engine.tokenizer, MESSAGES).text
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    try:
        await engine.generate(prompt, params)  # warm-up
        start, tokens = time.perf_counter(), 0
        for _ in range(rounds):
            results = await asyncio.gather(*(engine.generate(prompt, params) for _ in range(concurrency)))
            tokens += sum(r.completion_tokens for r in results)
        return tokens / (time.perf_counter() - start)
    finally:
        await engine.close()


async def api_tokens_per_second(url: str, model: str, concurrency: int, max_tokens: int, rounds: int) -> float:
    body = {"model": model, "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        async def one() -> int:
            response = await client.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            return response.json()["usage"]["completion_tokens"]

        await one()  # warm-up
        start, tokens = time.perf_counter(), 0
        for _ in range(rounds):
            tokens += sum(await asyncio.gather(*(one() for _ in range(concurrency))))
        return tokens / (time.perf_counter() - start)


def start_server(port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "r3", "serve", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("server did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model_path = str(bundled_model.pull(Settings().models_dir))
    rows = []
    for concurrency in (1, 8):
        engine_rate = asyncio.run(engine_tokens_per_second(model_path, concurrency, args.max_tokens, args.rounds))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = start_server(port)
        try:
            api_rate = asyncio.run(api_tokens_per_second(f"http://127.0.0.1:{port}", Path(model_path).name,
                                                         concurrency, args.max_tokens, args.rounds))
        finally:
            server.terminate()
            server.wait(30)
        rows.append({"concurrency": concurrency, "engine_tokens_per_s": round(engine_rate, 2),
                     "api_tokens_per_s": round(api_rate, 2), "api_over_engine": round(api_rate / engine_rate, 3)})
    print(f"{'concurrent':>10} {'engine tok/s':>13} {'API tok/s':>10} {'API/engine':>11}")
    for row in rows:
        print(f"{row['concurrency']:>10} {row['engine_tokens_per_s']:>13} {row['api_tokens_per_s']:>10} "
              f"{row['api_over_engine']:>11}")
    RESULTS.mkdir(exist_ok=True)
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    (RESULTS / "throughput.json").write_text(json.dumps(
        {"max_tokens": args.max_tokens, "rounds": args.rounds, "machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
