"""Many adapters in one batch: throughput with 1, 4 and 16 distinct adapters against 1, and what a cold adapter's first request adds.

    python bench/multi_adapter.py [--engines transformers,vllm] [--rows 16] [--max-tokens 32] [--rounds 3] [--colds 6]
                                  [--name multi_adapter]

Per engine, one engine in this process (residency is the engine's own: `R3_MAX_RESIDENT_ADAPTERS`),
holding `--rows` adapters in memory and decoding up to `--rows` rows a step (vLLM: as many LoRA slots,
prefix caching off so that no case shares prefills the others cannot). Adapters are rank 16 on every
attention and MLP projection, as the trainer makes them (`R3_TRAIN_LORA_*`).

- **Throughput**: `--rows` concurrent requests, each for a prompt of its own, greedy, `--max-tokens`
  tokens with the end of sequence banned (every row generates exactly that many), their adapters taken
  in turn from 1, 4 or 16 distinct ones (all resident), and with none (the base model, for scale). The
  cases alternate within each of `--rounds` rounds, so a change in the machine's load falls on all alike;
  a case's tok/s is its tokens over its wall time summed over the rounds, reported against 1 adapter.
- **Cold start**: two adapters more are registered than the engine holds, and requests go to them in
  turn, so each finds its adapter evicted (the least recently used; vLLM: out of its CPU cache, read from
  disk again): cold. Each is followed at once by the same request again: warm. Reported: time to first token and to the whole answer (8 tokens), medians
  over `--colds` pairs, and cold minus warm. Then the same again beside a stream already decoding on a
  resident adapter: that stream's longest gap between chunks while the cold adapters load, against its
  median gap — what a load costs the rows already in the batch.

Writes bench/results/NAME.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo's packages first
# One torch thread per process, as the test suite runs: on a 2-core machine more threads mostly spin.
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))

from support import make_lora  # the tests' random, non-zero LoRA adapters

from bench.common import MODEL, figure, require_bench_extra, save, table
from r3 import bundled_model
from r3.chat_format import render_prompt
from r3.engines.base import Engine, SamplingParams
from r3.settings import Settings

ADAPTER_COUNTS = (1, 4, 16)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TOPICS = ("a lighthouse", "the sea", "a mountain", "a city", "a forest", "the moon", "a river", "a train",
          "a garden", "a library", "a storm", "a bridge", "a desert", "a harbour", "a market", "a castle")


def start_engine(name: str, model_path: str, rows: int) -> Engine:
    if name == "vllm":
        from r3.engines.vllm_engine import VllmEngine

        return VllmEngine.start(model_path, MODEL, max_batch_size=rows, max_loras=rows, max_resident_adapters=rows,
                                max_lora_rank=16, enable_prefix_caching=False)
    from r3.engines.transformers_engine import TransformersEngine

    return TransformersEngine(model_path, MODEL, max_batch_size=rows, max_resident_adapters=rows)


def prompts(engine: Engine, rows: int) -> list[str]:
    return [render_prompt(engine.tokenizer, [{"role": "user", "content": f"Tell me a long story about {topic}."}]).text
            for topic in (TOPICS * (rows // len(TOPICS) + 1))[:rows]]


def exactly(engine: Engine, tokens: int) -> SamplingParams:
    """Greedy, `tokens` tokens: the end of sequence banned."""
    return SamplingParams(max_tokens=tokens, temperature=0, logit_bias=((engine.tokenizer.eos_token_id, -100.0),))


async def throughput(engine: Engine, names: list[str], rows: int, max_tokens: int, rounds: int) -> dict[str, dict]:
    """tok/s and wall time per case ("base", or the number of distinct adapters), summed over the rounds."""
    texts, params = prompts(engine, rows), exactly(engine, max_tokens)
    cases: dict[str, list[str | None]] = {"base": [None] * rows}
    cases.update({str(count): [names[row % count] for row in range(rows)] for count in ADAPTER_COUNTS})
    totals = {case: {"tokens": 0, "wall_s": 0.0} for case in cases}
    for case, adapters in cases.items():  # warm-up: every adapter used once, so all are resident, none loading
        await asyncio.gather(*(engine.generate(text, exactly(engine, 2), adapter=a) for text, a in zip(texts, adapters)))
    for _ in range(rounds):
        for case, adapters in cases.items():
            started = time.monotonic()
            results = await asyncio.gather(*(engine.generate(text, params, adapter=a) for text, a in zip(texts, adapters)))
            totals[case]["wall_s"] += time.monotonic() - started
            totals[case]["tokens"] += sum(r.completion_tokens for r in results)
    for total in totals.values():
        total["tokens_per_s"] = total["tokens"] / total["wall_s"]
    return totals


async def timed(engine: Engine, text: str, params: SamplingParams, adapter: str) -> tuple[float, float]:
    """Seconds to the first token and to the whole answer."""
    started, first = time.monotonic(), None
    async for chunk in engine.stream(text, params, adapter=adapter):
        if first is None and chunk.tokens:
            first = time.monotonic() - started
    return first, time.monotonic() - started


async def cold_start(engine: Engine, cycle: list[str], colds: int) -> dict[str, float]:
    """Pairs of (cold, warm) requests, each for the next adapter of `cycle`: medians, in seconds. `cycle`
    holds more adapters than the engine keeps for them, and each is asked for once first, so they leave
    in its order: the next one is always the one evicted longest ago (least recently used)."""
    text, params = prompts(engine, 1)[0], exactly(engine, 8)
    for adapter in cycle:
        await engine.generate(text, exactly(engine, 1), adapter=adapter)
    pairs = []
    for i in range(colds):
        adapter = cycle[i % len(cycle)]
        pairs.append((await timed(engine, text, params, adapter), await timed(engine, text, params, adapter)))
    cold_first, cold_total = (statistics.median(p[0][k] for p in pairs) for k in (0, 1))
    warm_first, warm_total = (statistics.median(p[1][k] for p in pairs) for k in (0, 1))
    return {"cold_first_token_s": cold_first, "warm_first_token_s": warm_first,
            "added_first_token_s": cold_first - warm_first, "cold_total_s": cold_total, "warm_total_s": warm_total,
            "pairs": colds}


async def cold_beside_a_stream(engine: Engine, resident: str, cycle: list[str], colds: int) -> dict[str, float]:
    """`cold_start` while a stream on `resident` decodes: that stream's median gap between chunks before
    the cold requests, and its longest gap while they run, in seconds."""
    arrivals: list[float] = []
    stream = engine.stream(prompts(engine, 2)[1], exactly(engine, 100_000), adapter=resident)

    async def follow() -> None:
        async for _ in stream:
            arrivals.append(time.monotonic())

    follower = asyncio.create_task(follow())
    while len(arrivals) < 20:
        await asyncio.sleep(0.01)
    steady = statistics.median(b - a for a, b in zip(arrivals, arrivals[1:]))
    since = len(arrivals) - 1
    cold = await cold_start(engine, cycle, colds)
    during = arrivals[since:]
    follower.cancel()
    await asyncio.gather(follower, return_exceptions=True)
    await stream.aclose()
    return {**cold, "stream_median_gap_s": steady, "stream_max_gap_s": max(b - a for a, b in zip(during, during[1:]))}


async def measure(name: str, model_path: str, folders: list[Path], rows: int, max_tokens: int, rounds: int,
                  colds: int) -> dict:
    engine = start_engine(name, model_path, rows)
    try:
        names = [f"a{i}" for i in range(len(folders))]
        for adapter, folder in zip(names[:rows], folders):
            await engine.load_adapter(adapter, folder)
        totals = await throughput(engine, names, rows, max_tokens, rounds)
        for adapter, folder in zip(names[rows:], folders[rows:]):
            await engine.load_adapter(adapter, folder)
        cold = await cold_start(engine, names, colds)
        # The stream's adapter stays resident: the others cycle through what is left.
        beside = await cold_beside_a_stream(engine, names[0], names[1:], colds)
    finally:
        await engine.close()
    return {"throughput": totals, "cold": cold, "cold_beside_a_stream": beside}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="transformers,vllm")
    parser.add_argument("--rows", type=int, default=16, help="concurrent requests, and adapters held in memory")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--colds", type=int, default=6, help="cold/warm pairs measured")
    parser.add_argument("--name", default="multi_adapter", help="the results' file name in bench/results/")
    args = parser.parse_args()
    require_bench_extra()
    if args.rows < max(ADAPTER_COUNTS):
        parser.error(f"--rows must be at least {max(ADAPTER_COUNTS)}")
    model_path = bundled_model.pull(Settings().models_dir)
    scratch = Path(tempfile.mkdtemp(prefix="r3-bench-multi-"))
    # Two more than the engine holds: vLLM on the CPU holds one more, its identity LoRA for base requests
    # (`r3.engines.vllm_engine`), which leaves first when idle and frees a place.
    folders = [make_lora(model_path, scratch / f"lora-{seed}", seed, rank=16, alpha=32, target_modules=TARGETS)
               for seed in range(args.rows + 2)]
    runs = {engine: asyncio.run(measure(engine, str(model_path), folders, args.rows, args.max_tokens, args.rounds,
                                        args.colds))
            for engine in args.engines.split(",")}
    rows = []
    for engine, run in runs.items():
        one = run["throughput"]["1"]["tokens_per_s"]
        for case, total in run["throughput"].items():
            rows.append([engine, case, round(total["tokens_per_s"], 2), round(total["tokens_per_s"] / one, 3)])
    table(["engine", "distinct adapters", "tok/s", "vs 1 adapter"], rows)
    table(["engine", "first token cold / warm (s)", "added (s)", "8 tokens cold / warm (s)",
           "beside a stream: added (s)", "its gap median / max (s)"],
          [[engine, f"{r['cold']['cold_first_token_s']:.3f} / {r['cold']['warm_first_token_s']:.3f}",
            round(r["cold"]["added_first_token_s"], 3),
            f"{r['cold']['cold_total_s']:.3f} / {r['cold']['warm_total_s']:.3f}",
            round(r["cold_beside_a_stream"]["added_first_token_s"], 3),
            f"{r['cold_beside_a_stream']['stream_median_gap_s']:.3f} / "
            f"{r['cold_beside_a_stream']['stream_max_gap_s']:.3f}"] for engine, r in runs.items()])
    save(args.name, {"rows": args.rows, "max_tokens": args.max_tokens, "rounds": args.rounds,
                           "lora": {"rank": 16, "alpha": 32, "target_modules": list(TARGETS)}, "runs": runs})
    plot(runs, Path(__file__).parent / "results" / f"{args.name}.png")


def plot(runs: dict[str, dict], path: Path) -> None:
    with figure(path, "Many adapters in one batch", columns=2) as (left, right):
        cases = ["base", *map(str, ADAPTER_COUNTS)]
        width = 0.8 / len(runs)
        for i, (engine, run) in enumerate(runs.items()):
            one = run["throughput"]["1"]["tokens_per_s"]
            left.bar([x + i * width for x in range(len(cases))],
                     [run["throughput"][c]["tokens_per_s"] / one for c in cases], width, label=engine)
            cold = run["cold"]
            right.bar([x + i * width for x in range(2)], [cold["warm_first_token_s"], cold["cold_first_token_s"]],
                      width, label=engine)
        left.set_xticks([x + 0.4 - width / 2 for x in range(len(cases))], ["base", "1", "4", "16"])
        left.set_xlabel("distinct adapters among the batch's rows")
        left.set_ylabel("tok/s vs 1 adapter")
        left.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        left.legend()
        right.set_xticks([x + 0.4 - width / 2 for x in range(2)], ["warm", "cold"])
        right.set_ylabel("time to first token (s)")
        right.legend()


if __name__ == "__main__":
    main()
