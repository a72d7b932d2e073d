"""The live canary's decision: a sequential test on live outcomes whose error rates hold however
often it is looked at.

A candidate the gate accepted serves a share of its scenario's live traffic (`R3_CANARY_FRACTION`)
beside the current version. On judged episodes two outcomes are compared, canary against current:

- the first-attempt score (every judged episode: its first attempt's score in [0, 1]);
- the rescue rate (episodes whose first attempt failed: whether the final attempt passed).

Each comparison is the difference of means θ = canary − current, tested with the mixture sequential
probability ratio test (mSPRT) of Johari, Pekelis and Walsh, "Always Valid Inference: Continuous
Monitoring of A/B Tests" (Operations Research, 2022; Robbins 1970), in its normal approximation: with
θ̂ the observed difference, V its variance (each side's variance over its count, summed) and a
normal mixture of scale τ over the alternatives,

    Λ(θ0) = sqrt(V / (V + τ²)) · exp(τ² (θ̂ − θ0)² / (2 V (V + τ²)))

is a martingale under θ = θ0, so by Ville's inequality it ever reaches 1/α with probability at most
α: the test may be looked at after every episode and stopped at any time. Its always-valid
confidence sequence is {θ0 : Λ(θ0) < 1/α}.

The decision, at level α split evenly over the two outcomes (Bonferroni):

- **abort** when either outcome is significantly worse: θ̂ < 0 and Λ(0) ≥ 2/α;
- **promote** when each is shown not worse than the margin δ: θ̂ > −δ and Λ(−δ) ≥ 2/α (a canary
  truly worse than −δ is promoted with probability at most α);
- **give up** (keep the current version) when neither happened within the episode or time limit;
- otherwise go on.

An outcome is compared only once each side has `min_episodes` of it. The first-attempt score always
must be; the rescue rate counts only failed first attempts, which a good version may rarely make, so
while either side has too few of them it is left out (and said to be), rather than holding the
decision back until the limits.

A variance is estimated from the outcomes, plus one pseudo-observation of the largest variance a
[0, 1] outcome can have (1/4), so that an arm whose outcomes are all equal does not look certain.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

MIXTURE_SCALE = 0.05  # τ: the effect sizes the test is most sensitive to (5 points), as Johari et al. advise


class CanaryDecision(StrEnum):
    CONTINUE = "continue"
    PROMOTE = "promote"
    ABORT = "abort"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class Arm:
    """One side's outcomes on one measure: their count, sum and sum of squares (each in [0, 1])."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        """The outcomes' variance, with one pseudo-observation of variance 1/4 (the module's note)."""
        if not self.n:
            return 0.25
        return max(0.0, self.total_sq - self.n * self.mean ** 2 + 0.25) / self.n

    def add(self, value: float) -> Arm:
        return Arm(self.n + 1, self.total + value, self.total_sq + value * value)


@dataclass(frozen=True)
class Comparison:
    """One measure, canary against current: the difference of means, its always-valid interval, and
    the mSPRT statistics against 0 (worse?) and against −margin (not worse than the margin?)."""

    measure: str
    canary_n: int
    canary_mean: float
    current_n: int
    current_mean: float
    difference: float
    low: float  # the always-valid confidence sequence at the measure's level, now
    high: float
    worse_statistic: float  # log Λ(0)
    not_worse_statistic: float  # log Λ(−margin)
    boundary: float  # log(1 / level): a statistic at or above it decides
    worse: bool  # significantly below the current version
    not_worse: bool  # shown not worse than the margin


def log_msprt(difference: float, variance: float, null: float, tau: float = MIXTURE_SCALE) -> float:
    """log Λ(θ0 = `null`) of the normal mSPRT (the module's formula) for an observed `difference` of
    `variance`."""
    t2 = tau * tau
    return 0.5 * math.log(variance / (variance + t2)) + t2 * (difference - null) ** 2 / (2 * variance * (variance + t2))


def confidence_sequence(difference: float, variance: float, level: float, tau: float = MIXTURE_SCALE) -> float:
    """The half-width of the always-valid confidence sequence {θ0 : Λ(θ0) < 1/level} around `difference`."""
    t2 = tau * tau
    return math.sqrt(2 * variance * (variance + t2) / t2 * (math.log(1 / level) + 0.5 * math.log((variance + t2) / variance)))


def compare(measure: str, canary: Arm, current: Arm, margin: float, level: float) -> Comparison:
    """`measure`'s comparison at `level` (the share of α it is given)."""
    difference = canary.mean - current.mean
    variance = canary.variance / max(canary.n, 1) + current.variance / max(current.n, 1)
    worse, not_worse = log_msprt(difference, variance, 0.0), log_msprt(difference, variance, -margin)
    boundary = math.log(1 / level)
    half = confidence_sequence(difference, variance, level)
    return Comparison(measure, canary.n, canary.mean, current.n, current.mean, difference, difference - half,
                      difference + half, worse, not_worse, boundary, difference < 0 and worse >= boundary,
                      difference > -margin and not_worse >= boundary)


@dataclass(frozen=True)
class CanaryCounts:
    """A canary's live outcomes so far, each side's: first-attempt scores and rescues."""

    canary_first: Arm = Arm()
    current_first: Arm = Arm()
    canary_rescue: Arm = Arm()
    current_rescue: Arm = Arm()


@dataclass(frozen=True)
class CanaryPolicy:
    """How a canary is decided (`R3_CANARY_*`)."""

    margin: float = 0.02  # δ: how much worse than the current version the canary may be and still be promoted
    alpha: float = 0.05  # the test's error rate, over both measures
    min_episodes: int = 30  # of each measure on each side, before any decision
    max_episodes: int = 10_000  # canary episodes after which it gives up
    max_s: float = 7 * 24 * 3600.0  # seconds after which it gives up


@dataclass(frozen=True)
class Verdict:
    decision: CanaryDecision
    reason: str
    comparisons: tuple[Comparison, ...]

    def numbers(self) -> dict[str, Any]:
        return {"decision": self.decision.value, "reason": self.reason,
                "comparisons": [asdict(c) for c in self.comparisons]}


def decide(counts: CanaryCounts, policy: CanaryPolicy, elapsed_s: float) -> Verdict:
    """The canary's decision now (the module's rules); its reason says how much better or worse."""
    level = policy.alpha / 2
    comparisons = (compare("first_attempt_score", counts.canary_first, counts.current_first, policy.margin, level),
                   compare("rescue_rate", counts.canary_rescue, counts.current_rescue, policy.margin, level))
    compared = [c for c in comparisons if min(c.canary_n, c.current_n) >= policy.min_episodes]
    first_compared = comparisons[0] in compared

    def said(c: Comparison) -> str:
        if c not in compared:
            return f"{c.measure}: too few to compare yet (n={c.canary_n} vs {c.current_n})"
        return (f"{c.measure} {c.canary_mean:.3f} (n={c.canary_n}) vs {c.current_mean:.3f} (n={c.current_n}), "
                f"difference {c.difference:+.3f} in [{c.low:+.3f}, {c.high:+.3f}]")

    if worse := [c for c in compared if c.worse]:
        return Verdict(CanaryDecision.ABORT, "worse than the current version: " + "; ".join(map(said, worse)),
                       comparisons)
    if first_compared and all(c.not_worse for c in compared):
        return Verdict(CanaryDecision.PROMOTE, f"not worse than the current version by more than {policy.margin:g}: "
                       + "; ".join(map(said, comparisons)), comparisons)
    if counts.canary_first.n >= policy.max_episodes or elapsed_s >= policy.max_s:
        limit = (f"{counts.canary_first.n} canary episodes" if counts.canary_first.n >= policy.max_episodes
                 else f"{elapsed_s:.0f} s")
        return Verdict(CanaryDecision.GIVE_UP, f"undecided after {limit}: keeping the current version; "
                       + "; ".join(map(said, comparisons)), comparisons)
    return Verdict(CanaryDecision.CONTINUE, "; ".join(map(said, comparisons)), comparisons)


def in_canary(request_id: str, fraction: float) -> bool:
    """Whether the request `request_id` is canary traffic: a stable hash of the id below `fraction`,
    the same on every replica and at every retry of the id."""
    digest = hashlib.sha256(request_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2 ** 64
