"""Long prompts and the other streams: another tenant's worst inter-token gap, and the process's peak memory.

    git worktree add /tmp/before-b 747fb16   # the engine before chunked prefill
    python bench/prefill_fairness.py [--before /tmp/before-b] [--prompt-tokens 7000] [--name prefill_fairness]

For each tree (`--before`, then this one) a fresh process builds the embedded engine as the server
does (`r3.engines.create_engine(Settings())`) and, once warm, streams one tenant's
greedy answer (its end of sequence banned, so it outlasts the rest). When that stream is running,
two prompts of `--prompt-tokens` tokens arrive at once (another tenant's, 16 tokens each). Measured:
the streaming tenant's largest gap between two chunks from their arrival until both long requests
are answered (its median gap before they came, for scale), how long they took, and the process's
resident memory before they came and at its peak (VmHWM). Times are given twice: wall-clock, and the
CPU time the process spent (torch on one thread, as the test suite runs it), which other work on a
shared machine does not inflate. `R3_*` variables reach both runs (`R3_MAX_NUM_BATCHED_TOKENS=128`
tries another budget; the engine before ignores it). Prints a table and writes bench/results/NAME.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo's packages first

from bench.common import REPO, save, table

STREAMING_PROMPT = "Count from one to ten thousand, one number a line."
STEADY_CHUNKS = 8  # the streaming tenant's chunks before the long prompts come (its gap alone)


def memory_kb(field: str) -> int:
    """This process's `field` of /proc/self/status (VmRSS: resident now; VmHWM: its peak), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def long_prompts(tokenizer, tokens: int) -> list[list[int]]:
    """Two different prompts of exactly `tokens` token ids each (plain prose, unlike each other)."""
    prompts = []
    for subject in ("marbles", "lighthouses"):
        text = " ".join(f"Note {i}: the {subject} of shelf {i % 97} number {i * 7 % 1000}." for i in range(tokens // 8))
        prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"][:tokens])
    return prompts


async def measure(prompt_tokens: int) -> dict:
    """The scenario, in this process, on the `r3` that is first on sys.path."""
    import r3
    from r3.chat_format import render_prompt
    from r3.engines import create_engine
    from r3.engines.base import SamplingParams
    from r3.settings import Settings

    engine = await create_engine(Settings())
    try:
        streaming = render_prompt(engine.tokenizer, [{"role": "user", "content": STREAMING_PROMPT}]).text
        await engine.generate(streaming, SamplingParams(max_tokens=4, temperature=0))  # warm
        endless = SamplingParams(max_tokens=engine.max_model_len - 64, temperature=0,
                                 logit_bias=((engine.tokenizer.eos_token_id, -100.0),))
        long = long_prompts(engine.tokenizer, prompt_tokens)
        rss_before_kb = memory_kb("VmRSS")

        arrivals: list[tuple[float, float]] = []  # each chunk's (wall, CPU) time
        stream = engine.stream(streaming, endless)
        async for _ in stream:
            arrivals.append(now())
            if len(arrivals) == STEADY_CHUNKS:
                break
        came = now()
        requests = asyncio.gather(*(engine.generate(ids, SamplingParams(max_tokens=16, temperature=0)) for ids in long))
        async for _ in stream:
            arrivals.append(now())
            if requests.done():
                break
        await stream.aclose()
        results = await requests
        answered = now()
        gaps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(arrivals, arrivals[1:])]
        during = gaps[STEADY_CHUNKS - 1:]
        alone = gaps[:STEADY_CHUNKS - 1]
        return {
            "r3": str(Path(r3.__file__).parent.parent),
            "max_num_batched_tokens": getattr(engine, "max_num_batched_tokens", None),
            "long_prompts": [len(ids) for ids in long],
            "long_completion_tokens": [r.completion_tokens for r in results],
            "stream_gap_alone_p50_s": round(statistics.median(wall for wall, _ in alone), 3),
            "stream_gap_alone_p50_cpu_s": round(statistics.median(cpu for _, cpu in alone), 3),
            "stream_max_gap_s": round(max(wall for wall, _ in during), 3),
            "stream_max_gap_cpu_s": round(max(cpu for _, cpu in during), 3),
            "stream_chunks_meanwhile": len(during),
            "long_answered_s": round(answered[0] - came[0], 2),
            "long_answered_cpu_s": round(answered[1] - came[1], 2),
            "rss_before_gb": round(rss_before_kb / 2**20, 2),
            "peak_rss_gb": round(memory_kb("VmHWM") / 2**20, 2),
        }
    finally:
        await engine.close()


def now() -> tuple[float, float]:
    """(wall-clock, this process's CPU time), in seconds."""
    return time.monotonic(), time.process_time()


def run_tree(tree: Path, prompt_tokens: int) -> dict:
    """`measure` in a fresh process importing `r3` from `tree` (its own peak memory, its own code)."""
    done = subprocess.run([sys.executable, __file__, "--child", str(tree), "--prompt-tokens", str(prompt_tokens)],
                          cwd=tree, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise RuntimeError(f"the run on {tree} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, default=Path("/tmp/before-b"),
                        help="a worktree of the commit before chunked prefill (747fb16)")
    parser.add_argument("--prompt-tokens", type=int, default=7000)
    parser.add_argument("--name", default="prefill_fairness", help="the results file's name, without .json")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # internal: measure on this tree's r3
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(args.child))
        print(json.dumps(asyncio.run(measure(args.prompt_tokens))))
        return

    if not (args.before / "r3").is_dir():
        parser.error(f"no r3 in {args.before}: make it with `git worktree add {args.before} 747fb16`")
    commits = {}
    runs = {}
    for label, tree in (("before", args.before), ("after", REPO)):
        commits[label] = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True, check=True).stdout.strip()
        runs[label] = run_tree(tree, args.prompt_tokens)
    table(["", "budget (tokens/step)", "stream gap alone p50, s (CPU s)", "stream max gap, s (CPU s)",
           "long prompts answered, s (CPU s)", "RSS before (GB)", "peak RSS (GB)"],
          [[label, run["max_num_batched_tokens"] or "whole prompt",
            f'{run["stream_gap_alone_p50_s"]} ({run["stream_gap_alone_p50_cpu_s"]})',
            f'{run["stream_max_gap_s"]} ({run["stream_max_gap_cpu_s"]})',
            f'{run["long_answered_s"]} ({run["long_answered_cpu_s"]})', run["rss_before_gb"], run["peak_rss_gb"]]
           for label, run in runs.items()])
    path = save(args.name, {"what": f"bench/prefill_fairness.py --prompt-tokens {args.prompt_tokens}",
                                     "commits": commits, **runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
