"""The gate: a candidate adapter replaces the active one only if it reflects measurably better.

`evaluate_adapter` runs an adapter, through an `r3` engine and the server's own `Reflector`, on
- held-out failures: the recorded failed first attempt stays fixed; the adapter reflects on it and
  retries once. What share of its retries pass? (The question is whether its reflections rescue
  failures, so every item starts from the same failure, whichever adapter is judged.)
- the regression set: requests whose first attempt once passed. Does the adapter's first attempt
  pass? (Greedy: a property of the adapter, not of a draw.)

Reflections are sampled as the trainer samples them (`R3_GATE_TEMPERATURE`, default the trainer's
T = 1), `R3_GATE_SAMPLES` of them per held-out failure, with seeds shared by both adapters (common
random numbers), each followed by a greedy retry, as in training. GRPO moves the sampled policy; a
greedy gate sees only its mode, which can stay put while the share of good reflections doubles (the
planted run in BENCHMARKS.md §5b: +22 points sampled, 0 vs 0 greedy). With one sample at
temperature 0 the gate is the greedy one.

`decide` compares a candidate's results with the active adapter's on the same items.

- Held-out success must be higher, by a one-sided exact sign test on the paired items
  (`r3.stats.sign_test_p_value`): an item is a win when the candidate's retries pass more often
  than the active adapter's on it, a loss when less often, a tie otherwise. Items, not samples, are
  the pairs, since the samples of one item are not independent. With one sample per item this is
  McNemar's exact test. Exact, so it stays valid on the small held-out sets of early rounds (where
  it simply cannot reject: 4 wins out of 4 gives p = 0.0625).
- First-attempt success on the regression set must not fall by more than `tolerance` (a rate,
  e.g. 0.02), so a gain in reflecting is not bought with worse first answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from r3.engines.base import Engine, PromptTooLongError, SamplingParams
from r3.reflect_retry import Reflector, recorded_params, recorded_task
from r3.stats import sign_test_p_value
from trainer.data import Failure, Success
from verifiers import VerifierRuntime


@dataclass(frozen=True)
class EvalResult:
    adapter: str | None  # None: the base model
    second_attempt: dict[str, float]  # held-out failure's episode id -> share of its retries after reflecting that passed
    first_attempt: dict[str, bool]  # regression item's episode id -> the first attempt passed
    samples: int = 1  # reflections (each with its retry) per held-out failure
    temperature: float = 0.0  # of the reflections

    @property
    def second_attempt_rate(self) -> float:
        return _rate(self.second_attempt)

    @property
    def first_attempt_rate(self) -> float:
        return _rate(self.first_attempt)


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    numbers: dict[str, Any]


def _rate(outcomes: dict[str, float] | dict[str, bool]) -> float:
    return sum(outcomes.values()) / len(outcomes) if outcomes else 0.0


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


async def evaluate_adapter(engine: Engine, adapter_name: str | None, failures: Sequence[Failure], successes: Sequence[Success],
                   verifier_runtime: VerifierRuntime, reflection_max_tokens: int = 256, samples: int = 1,
                   temperature: float = 0.0) -> EvalResult:
    """The adapter's second-attempt pass shares on `failures` and first-attempt outcomes on `successes`.

    Each failure gets `samples` reflections at `temperature`, each followed by a greedy retry.
    Sample j of a failure is seeded by (its episode id, j): two adapters draw with the same random
    numbers on it, and different failures with different ones. (One seed j for every failure made
    their outcomes move together: the base model's first 8 seeds gave long reflections on all 18
    held-out failures of a planted run.) The engine batches the items, which all run concurrently.
    """
    reflector = Reflector(engine, verifier_runtime, reflection_max_tokens)

    def greedy(item: Failure | Success) -> SamplingParams:
        return replace(recorded_params(item), temperature=0.0, seed=0, top_logprobs=0)

    second = asyncio.gather(*(
        retry_after_fixed_failure(reflector, failure, greedy(failure), adapter_name,
                                  replace(greedy(failure), temperature=temperature, seed=sample_seed(failure, j)))
        for failure in failures for j in range(samples)))
    first = asyncio.gather(*(
        first_attempt_passes(reflector, success, greedy(success), adapter_name) for success in successes))
    second_outcomes, first_outcomes = await asyncio.gather(second, first)
    return EvalResult(
        adapter=adapter_name,
        second_attempt={failure.episode_id: sum(second_outcomes[i * samples:(i + 1) * samples]) / samples
                        for i, failure in enumerate(failures)},
        first_attempt=dict(zip((s.episode_id for s in successes), first_outcomes)),
        samples=samples, temperature=temperature,
    )


def sample_seed(failure: Failure, j: int) -> int:
    """The seed of the gate's sample `j` on `failure`: a stable function of both, in [0, 2**63)."""
    digest = hashlib.sha256(f"{failure.episode_id}:{j}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


async def retry_after_fixed_failure(reflector: Reflector, failure: Failure, params: SamplingParams,
                                    adapter: str | None, reflection_params: SamplingParams | None = None) -> bool:
    """Reflect on the recorded failed attempt (sampling as `reflection_params` say; default `params`),
    retry once, judge the retry (as `Reflector.run` would after that attempt)."""
    task = recorded_task(failure, adapter=adapter, params=params)
    try:
        _, _, verdict = await reflector.reflect_and_retry(task, [failure.failed()], failure.episode_id, 2,
                                                          reflection_params=reflection_params)
    except PromptTooLongError:
        return False  # the server would have answered with the failed attempt
    return verdict.success


async def first_attempt_passes(reflector: Reflector, success: Success, params: SamplingParams,
                               adapter: str | None) -> bool:
    task = recorded_task(success, adapter=adapter, params=params)
    try:
        attempt = await reflector.generate(task, reflector.core.attempt_prompt(task, task.messages))
    except PromptTooLongError:
        return False
    verdict = await reflector.judge(task, attempt, task.messages, success.episode_id, 1)
    return verdict.success


# ---------------------------------------------------------------------------------------------
# Decision
# ---------------------------------------------------------------------------------------------


def decide(candidate: EvalResult, active: EvalResult, alpha: float, tolerance: float) -> GateDecision:
    if candidate.second_attempt.keys() != active.second_attempt.keys():
        raise ValueError("the candidate and the active adapter were evaluated on different held-out failures")
    if (candidate.samples, candidate.temperature) != (active.samples, active.temperature):
        raise ValueError("the candidate and the active adapter were sampled differently")
    if candidate.first_attempt.keys() != active.first_attempt.keys():
        raise ValueError("the candidate and the active adapter were evaluated on different regression items")

    wins = sum(candidate.second_attempt[i] > active.second_attempt[i] for i in candidate.second_attempt)
    losses = sum(candidate.second_attempt[i] < active.second_attempt[i] for i in candidate.second_attempt)
    p_value = sign_test_p_value(wins, losses)
    first_attempt_drop = active.first_attempt_rate - candidate.first_attempt_rate
    numbers = {
        "heldout": len(candidate.second_attempt),
        "samples": candidate.samples,
        "temperature": candidate.temperature,
        "candidate_second_attempt": candidate.second_attempt_rate,
        "active_second_attempt": active.second_attempt_rate,
        "candidate_better": wins,  # held-out items on which the candidate's retries passed more often
        "active_better": losses,
        "p_value": p_value,
        "alpha": alpha,
        "regression": len(candidate.first_attempt),
        "candidate_first_attempt": candidate.first_attempt_rate,
        "active_first_attempt": active.first_attempt_rate,
        "first_attempt_drop": first_attempt_drop,
        "tolerance": tolerance,
    }

    if not candidate.second_attempt:
        return GateDecision(False, "no held-out failures to judge the candidate on", numbers)
    if p_value >= alpha:
        return GateDecision(False, f"second-attempt success not significantly higher "
                                   f"({wins} vs {losses} not tied, p = {p_value:.3g} ≥ {alpha})", numbers)
    # Rates are ratios of counts: float rounding must not turn a drop at the tolerance into one beyond it.
    if first_attempt_drop > tolerance and not math.isclose(first_attempt_drop, tolerance):
        return GateDecision(False, f"first-attempt success fell by {first_attempt_drop:.3f} "
                                   f"(more than {tolerance}) on the regression set", numbers)
    return GateDecision(True, f"second-attempt success higher ({wins} vs {losses} held-out items, p = {p_value:.3g}); "
                              f"first attempts within tolerance ({first_attempt_drop:+.3f})", numbers)
