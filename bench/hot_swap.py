"""Hot-swap under load: failed requests, and the time from a promotion to the first answer on the new version.

    python bench/hot_swap.py [--engines transformers,vllm] [--swaps 20] [--clients 2]

Per engine: `r3 serve` with its own database, Redis for the promotion event, and `--clients`
clients sending verified requests without pause. This process then promotes `--swaps` freshly
trained-looking versions one after another, the way the trainer does (`AdapterRegistry.activate`:
commit, then publish), and for each one measures the time from the commit to the first response
served on that version, and to when the request that got that answer was sent (an answer comes
one request's latency after its request: `to its request` is how soon the server served the new
version, `to first answer` what a client sees). Every version is new to the server, so each swap includes checking the
files' sha256 and loading the adapter. Writes bench/results/hot_swap.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo's packages first
# One torch thread per process (the servers it starts inherit it): with two model processes on a
# 2-core machine, more threads mostly spin waiting on each other. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))

import httpx
from support import make_lora  # the tests' random, non-zero LoRA adapters

from bench.common import MODEL, PASSING, R3Server, Sample, figure, require_bench_extra, save, table
from r3 import bundled_model
from r3.settings import Settings
from r3.store.registry import AdapterRegistry
from r3.store.store import open_store

REDIS = "redis://127.0.0.1:6379/0"
REQUEST = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0,
           "verifier": PASSING}


async def register(settings: Settings, folders: list[Path]) -> list[str]:
    """Each folder registered as a version, each the next one's parent (the embedded SQLite migrates itself)."""
    async with open_store(settings) as store:
        names: list[str] = []
        for folder in folders:
            names.append((await store.registry.register(folder, names[-1] if names else None, {}, [])).name)
        return names


async def swap_on(url: str, settings: Settings, versions: list[str], clients: int) -> dict:
    """`swap_under_load` through the store of `settings` (the server's)."""
    async with open_store(settings) as store:
        return await swap_under_load(url, store.registry, versions, clients)


async def swap_under_load(url: str, registry: AdapterRegistry, versions: list[str], clients: int) -> dict:
    samples: list[Sample] = []
    stop = asyncio.Event()

    async def client(http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                response = await http.post("/v1/chat/completions", json=REQUEST)
                body = response.json() if response.status_code == 200 else None
            except httpx.HTTPError:
                body = None
            samples.append(Sample(started, time.monotonic() - started, 0, body))

    async def first_answer_on(name: str, since: float, timeout_s: float = 60) -> tuple[float, float]:
        """Seconds from `since` to the first answer on `name`, and to when that request was sent."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = [s for s in samples if s.body and s.body["r3"]["adapter"] == name and s.started + s.latency_s >= since]
            if done:
                first = min(done, key=lambda s: s.started + s.latency_s)
                return first.started + first.latency_s - since, first.started - since
            await asyncio.sleep(0.005)
        raise RuntimeError(f"no answer on {name} within {timeout_s} s")

    await registry.activate(versions[0], actor="bench")
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        load = [asyncio.create_task(client(http)) for _ in range(clients)]
        await first_answer_on(versions[0], 0, timeout_s=300)
        swaps = []
        for name in versions[1:]:
            await registry.activate(name, actor="bench", reason="benchmark promotion")
            committed = time.monotonic()
            swaps.append(await first_answer_on(name, committed))
            await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*load)
    return {"swap_s": [answered for answered, _ in swaps], "sent_s": [sent for _, sent in swaps],
            "request_p50_s": sorted(s.latency_s for s in samples)[len(samples) // 2],
            "requests": len(samples), "failed": sum(s.body is None for s in samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="transformers,vllm")
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--clients", type=int, default=2)
    args = parser.parse_args()
    require_bench_extra()
    model_path = bundled_model.pull(Settings().models_dir)
    scratch = Path(tempfile.mkdtemp(prefix="r3-bench-swap-"))
    folders = [make_lora(model_path, scratch / f"lora-{seed}", seed) for seed in range(args.swaps + 1)]
    rows, runs = [], {}
    for engine in args.engines.split(","):
        data_dir = scratch / engine
        # Redis: the registry's events tell the server of each promotion at once, as in production.
        settings = Settings(data_dir=data_dir, redis_url=REDIS)
        versions = asyncio.run(register(settings, folders))
        server = R3Server({"R3_ENGINE": engine, "R3_DATA_DIR": str(data_dir), "R3_REDIS_URL": REDIS,
                           "R3_ADAPTER_GRACE_S": "1", "R3_MAX_LORAS": "4", "R3_MAX_LORA_RANK": "16"})
        with server as server_url:
            run = asyncio.run(swap_on(server_url, settings, versions, args.clients))
        runs[engine] = run
        swaps, sent = sorted(run["swap_s"]), sorted(run["sent_s"])
        rows.append({"engine": engine, "swaps": len(swaps), "requests": run["requests"], "failed": run["failed"],
                     "promotion_to_first_answer_p50_s": round(swaps[len(swaps) // 2], 3),
                     "promotion_to_first_answer_max_s": round(swaps[-1], 3),
                     "promotion_to_first_request_sent_p50_s": round(sent[len(sent) // 2], 3),
                     "promotion_to_first_request_sent_max_s": round(sent[-1], 3),
                     "request_latency_p50_s": round(run["request_p50_s"], 3)})
    table(["engine", "swaps", "requests", "failed", "to first answer p50 / max (s)",
           "to its request p50 / max (s)", "request p50 (s)"],
          [[r["engine"], r["swaps"], r["requests"], r["failed"],
            f"{r['promotion_to_first_answer_p50_s']} / {r['promotion_to_first_answer_max_s']}",
            f"{r['promotion_to_first_request_sent_p50_s']} / {r['promotion_to_first_request_sent_max_s']}",
            r["request_latency_p50_s"]] for r in rows])
    save("hot_swap", {"clients": args.clients, "request": REQUEST, "rows": rows,
                      "swap_s": {engine: run["swap_s"] for engine, run in runs.items()},
                      "sent_s": {engine: run["sent_s"] for engine, run in runs.items()}})
    plot(runs, Path(__file__).parent / "results" / "hot_swap.png")


def plot(runs: dict[str, dict], path: Path) -> None:
    with figure(path, "Hot-swap under load") as ax:
        for engine, run in runs.items():
            ax.plot(range(1, len(run["swap_s"]) + 1), run["swap_s"], marker="o",
                    label=f"{engine} ({run['failed']} failed of {run['requests']} requests)")
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="target: 1 s")
        ax.set_xlabel("promotion")
        ax.set_ylabel("commit → first answer on it (s)")
        ax.legend()


if __name__ == "__main__":
    main()
