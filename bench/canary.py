"""The live canary's sequential test in simulation: the real decision code on made-up live outcomes, no model.

    python bench/canary.py [--canaries 500] [--fraction 0.1] [--every 50] [--seed 0]

Each simulated canary is a scenario's traffic, episode after episode: each is the canary's with
probability `--fraction`, else the current version's; its first attempt passes with its side's
first-attempt pass rate (a pass/fail verifier: score 1 or 0), and a failed first attempt is rescued
with its side's rescue rate. Every `--every` episodes of the scenario (both sides) the test runs,
as a server's watch runs it every `R3_CANARY_CHECK_S`: `r3.canary.decide` on the counts so far
(`CanaryCounts` of `Arm`s, as `r3.store.canaries` reads them from the episodes) under the default
`CanaryPolicy` (margin 0.02, alpha 0.05, 30 of each outcome on each side first, give up after
10,000 canary episodes), until it promotes, aborts or gives up.

The current version passes `BASE_FIRST` of first attempts and rescues `BASE_RESCUE` of its
failures; per case the canary's two rates are shifted by the same points (`CASES`): equal, 2 points
worse (exactly the margin: the hardest case the guarantee covers), 5 points worse, 5 points better;
and equal again, given 40,000 canary episodes before it gives up. The test promises that a canary
worse than the margin on an outcome is promoted with probability at most alpha / 2 (its share of
alpha; Ville's inequality on the mSPRT, r3/canary.py), so the share of worse canaries promoted,
with its Wilson 95% interval, is the number to hold against alpha.

Outcomes are drawn a look at a time (binomial counts per block of `--every` episodes, vectorised
over a canary's looks): the test sees exactly what it would see episode by episode at the same
looks. Per case: how many were promoted (with a Wilson 95% interval), aborted and given up, and
the quartiles of canary episodes to a decision. Writes bench/results/canary.json and
canary.png.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repo's packages first

import numpy as np

from bench.common import RESULTS, figure, require_bench_extra, save, table
from r3.canary import Arm, CanaryCounts, CanaryDecision, CanaryPolicy, decide
from r3.stats import wilson

BASE_FIRST = 0.6  # the current version's first-attempt pass rate
BASE_RESCUE = 0.3  # and the share of its failed first attempts that the retry rescues


@dataclass(frozen=True)
class Case:
    name: str
    shift: float  # added to both of the canary's rates: its first-attempt pass rate and its rescue rate
    max_episodes: int | None = None  # R3_CANARY_MAX_EPISODES, when not the default

    @property
    def worse_than_margin(self) -> bool:
        """A canary whose promotion is an error the test bounds: at least `margin` worse."""
        return self.shift <= -CanaryPolicy().margin


CASES = (Case("equal", 0.0), Case("2 points worse (at the margin)", -0.02), Case("5 points worse", -0.05),
         Case("5 points better", 0.05),
         # What an equal canary needs to be promoted, beyond the default limit most of them reach.
         Case("equal, given 40,000 canary episodes", 0.0, max_episodes=40_000))


@dataclass(frozen=True)
class Run:
    """A case's canaries, each: its decision and the canary's (and the scenario's) episodes when it was made."""

    case: Case
    decisions: list[CanaryDecision]
    canary_episodes: np.ndarray
    episodes: np.ndarray
    shown_not_worse: list[tuple[bool, bool]]  # at the decision: (first-attempt score, rescue rate) shown not worse

    def count(self, decision: CanaryDecision) -> int:
        return sum(d is decision for d in self.decisions)


def simulate(case: Case, canaries: int, policy: CanaryPolicy = CanaryPolicy(), fraction: float = 0.1,
             every: int = 50, seed: int = 0) -> Run:
    """`canaries` canaries of `case`, each run until `decide` ends it (at the latest when its canary
    episodes reach `policy.max_episodes`, or the case's); `every`: episodes of the scenario between two looks."""
    if case.max_episodes is not None:
        policy = replace(policy, max_episodes=case.max_episodes)
    rng = np.random.default_rng(seed)
    # Enough looks that every canary reaches max_episodes (10% over the mean, against a spread of ~1%).
    looks = math.ceil(1.1 * policy.max_episodes / fraction / every) + 10
    rates = {True: (BASE_FIRST + case.shift, BASE_RESCUE + case.shift), False: (BASE_FIRST, BASE_RESCUE)}
    decisions, at, shown = [], [], []
    for i in range(canaries):
        n_canary = rng.binomial(every, fraction, looks)
        sides = []
        for side, n in ((True, n_canary), (False, every - n_canary)):
            first, rescue = rates[side]
            passed = rng.binomial(n, first)
            failed = n - passed
            rescued = rng.binomial(failed, rescue)
            # Cumulative per look, as Python lists: decide() reads them a look at a time.
            sides.append([np.cumsum(counts).tolist() for counts in (n, passed, failed, rescued)])
        (cn, cp, cf, cr), (un, up, uf, ur) = sides
        for j in range(looks):
            # Scores are 1 or 0, so an arm's sum of squares is its sum.
            counts = CanaryCounts(Arm(cn[j], cp[j], cp[j]), Arm(un[j], up[j], up[j]),
                                  Arm(cf[j], cr[j], cr[j]), Arm(uf[j], ur[j], ur[j]))
            verdict = decide(counts, policy, elapsed_s=0.0)
            if verdict.decision is not CanaryDecision.CONTINUE:
                decisions.append(verdict.decision)
                at.append((cn[j], (j + 1) * every))
                shown.append(tuple(c.not_worse for c in verdict.comparisons))
                break
        else:
            raise RuntimeError(f"canary {i} of {case.name!r} undecided after {looks} looks")
    canary_episodes, episodes = (np.array(column) for column in zip(*at))
    return Run(case, decisions, canary_episodes, episodes, shown)


def summary(run: Run, alpha: float) -> dict:
    """A case's shares of each decision (promotion with its Wilson 95% interval) and the quartiles of
    canary episodes to a decision (a give-up is one: at the episode limit)."""
    n = len(run.decisions)
    promoted = run.count(CanaryDecision.PROMOTE)
    low, high = wilson(promoted, n)
    q1, median, q3 = (int(v) for v in np.percentile(run.canary_episodes, [25, 50, 75], method="inverted_cdf"))
    result = {
        "case": run.case.name, "shift": run.case.shift, "max_episodes": run.case.max_episodes, "canaries": n,
        "promoted": promoted, "aborted": run.count(CanaryDecision.ABORT), "gave_up": run.count(CanaryDecision.GIVE_UP),
        "promoted_share": promoted / n, "promoted_ci95": [round(low, 4), round(high, 4)],
        "canary_episodes_quartiles": [q1, median, q3],
        "episodes_median": int(np.percentile(run.episodes, 50, method="inverted_cdf")),
    }
    decided = run.canary_episodes[[d is not CanaryDecision.GIVE_UP for d in run.decisions]]
    result["decided_canary_episodes_median"] = (int(np.percentile(decided, 50, method="inverted_cdf"))
                                                if len(decided) else None)
    gave_up = [s for d, s in zip(run.decisions, run.shown_not_worse) if d is CanaryDecision.GIVE_UP]
    # Which outcomes the give-ups had shown not worse when the limit came (the others held them back).
    result["gave_up_first_shown_not_worse"] = sum(first for first, _ in gave_up)
    result["gave_up_rescue_shown_not_worse"] = sum(rescue for _, rescue in gave_up)
    if run.case.worse_than_margin:
        result["false_promotion_within_alpha"] = promoted / n <= alpha
    return result


def plot(runs: list[Run], policy: CanaryPolicy, path: Path) -> None:
    """Per case, the share of its canaries decided by n canary episodes (a give-up at the limit)."""
    with figure(path, "Live canary in simulation: canary episodes to a decision") as ax:
        ax.figure.set_size_inches(8, 6.5)  # room for the legend below
        for run in runs:
            ordered = np.sort(run.canary_episodes)
            ax.step(ordered, np.arange(1, len(ordered) + 1) / len(ordered), where="post",
                    label=f"{run.case.name}: {run.count(CanaryDecision.PROMOTE)} promoted, "
                          f"{run.count(CanaryDecision.ABORT)} aborted, {run.count(CanaryDecision.GIVE_UP)} gave up")
        ax.axvline(policy.max_episodes, color="grey", linestyle=":", label="give up (R3_CANARY_MAX_EPISODES)")
        ax.set_xscale("log")
        ax.set_xlabel("canary episodes when the test decided")
        ax.set_ylabel("share of canaries decided")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15))  # below: clear of the curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canaries", type=int, default=500, help="simulated canaries per case")
    parser.add_argument("--fraction", type=float, default=0.1, help="the canary's share of traffic (R3_CANARY_FRACTION)")
    parser.add_argument("--every", type=int, default=50, help="episodes of the scenario between two looks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    require_bench_extra()
    policy = CanaryPolicy()
    started = time.monotonic()
    runs = [simulate(case, args.canaries, policy, args.fraction, args.every, args.seed + i)
            for i, case in enumerate(CASES)]
    rows = [summary(run, policy.alpha) for run in runs]
    elapsed = time.monotonic() - started
    table(["case", "promoted", "95% CI", "aborted", "gave up", "canary episodes to a decision (q1 / median / q3)",
           "median of those decided"],
          [[r["case"], f"{r['promoted']}/{r['canaries']}", f"[{r['promoted_ci95'][0]:.3f}, {r['promoted_ci95'][1]:.3f}]",
            r["aborted"], r["gave_up"], " / ".join(map(str, r["canary_episodes_quartiles"])),
            r["decided_canary_episodes_median"]] for r in rows])
    print(f"{elapsed:.0f} s")
    save("canary", {"policy": asdict(policy), "base_first": BASE_FIRST,
                    "base_rescue": BASE_RESCUE, "fraction": args.fraction, "every": args.every,
                    "seed": args.seed, "seconds": round(elapsed, 1), "cases": rows})
    plot(runs, policy, RESULTS / "canary.png")


if __name__ == "__main__":
    main()
