"""How often one reflection rescues the untrained model: the learning signal GRPO has to work with.

    python bench/rescue.py [--tasks 40] [--conditions countdown2@0,countdown2@0.5,alarm@0.7]

GRPO rewards a reflection only when the retry after it passes, and a group of G reflections on one
failure teaches something only when some of its retries pass and some fail. So before training
can move anything, the model as it is must sometimes turn a failure into a pass after reflecting.
This measures that rate on `r3 bench learn`'s task families: each task is sent once, with one
reflect-retry allowed, at the condition's temperature (first attempt, reflection and retry alike;
seeded per task), and the rescue rate is rescued / failed first attempts, with a Wilson interval.
From it comes the share of GRPO groups of G = 4 that would carry signal, 1 - (1-p)^4 - p^4.
Writes bench/results/rescue.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo's packages first

import httpx

from bench import learn
from bench import tasks as suite
from bench.common import MODEL, RESULTS, R3Server, figure, require_bench_extra, save, table
from r3.stats import wilson

DEFAULT_CONDITIONS = "countdown2@0,countdown2@0.5,countdown2@1,alarm@0,alarm@0.7"
GROUP_SIZE = learn.Config.num_generations  # `r3 bench learn`'s G
SEED = 7  # not the learning run's training or held-out seeds


def signal_share(p: float, g: int = GROUP_SIZE) -> float:
    """Share of groups of `g` retries, each passing with probability p, that hold both a pass and a fail."""
    return 1 - (1 - p) ** g - p ** g


async def measure(url: str, family: str, temperature: float, n: int, max_tokens: int) -> dict:
    config = learn.Config(answer_max_tokens=max_tokens)  # requests as `r3 bench learn` sends them
    async with httpx.AsyncClient(base_url=url, timeout=900) as client:
        outcomes = await learn.send(client, suite.generate(SEED, n, (family,)), MODEL, config, store=False,
                                    temperature=temperature)
    failed = [outcome for outcome in outcomes if not outcome.first]
    rescued = sum(outcome.second for outcome in failed)
    rate = rescued / len(failed) if failed else 0.0
    low, high = wilson(rescued, len(failed)) if failed else (0.0, 1.0)
    return {"family": family, "temperature": temperature, "tasks": n, "first_attempt_passed": n - len(failed),
            "failed": len(failed), "rescued": rescued, "rescue_rate": round(rate, 4),
            "rescue_ci95": [round(low, 4), round(high, 4)],
            "groups_with_signal": round(signal_share(rate), 4),
            # signal_share rises up to p = 0.5: the most signal the interval allows
            "groups_with_signal_upper": round(signal_share(min(high, 0.5)), 4)}


def plot(rows: list[dict], path: Path) -> None:
    with figure(path, "One reflection, one retry: how often the untrained model recovers") as ax:
        labels = [f"{r['family']}\nT={r['temperature']:g}" for r in rows]
        rates = [r["rescue_rate"] * 100 for r in rows]
        errors = [[r["rescue_rate"] * 100 - r["rescue_ci95"][0] * 100 for r in rows],
                  [r["rescue_ci95"][1] * 100 - r["rescue_rate"] * 100 for r in rows]]
        ax.bar(range(len(rows)), rates, yerr=errors, capsize=4)
        for i, r in enumerate(rows):
            ax.annotate(f"{r['rescued']}/{r['failed']}", (i, r["rescue_ci95"][1] * 100), ha="center", va="bottom")
        ax.set_xticks(range(len(rows)), labels)
        ax.set_ylabel("failed first attempts rescued (%, Wilson 95%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=40, help="tasks per condition")
    parser.add_argument("--conditions", default=DEFAULT_CONDITIONS, help="family@temperature, comma-separated")
    parser.add_argument("--max-tokens", type=int, default=64, help="for answers and reflections")
    args = parser.parse_args()
    require_bench_extra()
    conditions = [(family, float(t)) for family, t in (c.split("@") for c in args.conditions.split(","))]
    unknown = sorted({family for family, _ in conditions} - set(suite.FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {sorted(suite.FAMILIES)}")
    rows = []
    with R3Server({"R3_REFLECTION_MAX_TOKENS": str(args.max_tokens)}) as url:
        for family, temperature in conditions:
            rows.append(asyncio.run(measure(url, family, temperature, args.tasks, args.max_tokens)))
    table(["family", "T", "first attempt", "rescued / failed", "rescue 95% CI", "groups with signal"],
          [[r["family"], r["temperature"], f"{r['first_attempt_passed']}/{r['tasks']}",
            f"{r['rescued']}/{r['failed']}", f"[{r['rescue_ci95'][0]:.2f}, {r['rescue_ci95'][1]:.2f}]",
            r["groups_with_signal"]] for r in rows])
    save("rescue", {"seed": SEED, "max_tokens": args.max_tokens, "group_size": GROUP_SIZE, "rows": rows})
    plot(rows, RESULTS / "rescue.png")


if __name__ == "__main__":
    main()
