"""The gate: a candidate adapter replaces the active one only if it reflects measurably better.

`evaluate` runs an adapter, through an `r3` engine and the server's own `Reflector`, on
- held-out failures: the recorded failed first attempt stays fixed; the adapter reflects on it and
  retries once. Did the retry pass? (The question is whether its reflections rescue failures, so
  every item starts from the same failure, whichever adapter is judged.)
- the regression set: requests whose first attempt once passed. Does the adapter's first attempt
  pass?
Generation is greedy (temperature 0), so a result is a property of the adapter, not of a draw.

`decide` compares a candidate's results with the active adapter's on the same items.

- Second-attempt success must be higher, by a one-sided exact McNemar test (a sign test on the
  discordant pairs). The items are paired — both adapters face the same held-out failures — and
  the pairs on which both pass or both fail say nothing about which is better; under "no
  difference" each discordant pair is equally likely to favour either side, so the number the
  candidate wins is Binomial(discordant, 1/2). Exact, so it stays valid on the small held-out sets
  of early rounds (where it simply cannot reject: 4 wins out of 4 gives p = 0.0625).
- First-attempt success on the regression set must not fall by more than `tolerance` (a rate,
  e.g. 0.02), so a gain in reflecting is not bought with worse first answers.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from r3.engines.base import Engine, PromptTooLongError, SamplingParams
from r3.reflect_retry import Reflector
from r3.reflection import FailedAttempt
from trainer.data import Failure, Success, chat_task, recorded_params
from verifiers import WebhookPolicy


@dataclass(frozen=True)
class EvalResult:
    adapter: str | None  # None: the base model
    second_attempt: dict[str, bool]  # held-out failure's episode id -> the retry after reflecting passed
    first_attempt: dict[str, bool]  # regression item's episode id -> the first attempt passed

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


def _rate(outcomes: dict[str, bool]) -> float:
    return sum(outcomes.values()) / len(outcomes) if outcomes else 0.0


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


async def evaluate(engine: Engine, adapter_name: str | None, failures: Sequence[Failure], successes: Sequence[Success],
                   webhook_policy: WebhookPolicy, max_tokens: int | None = None,
                   reflection_max_tokens: int = 256) -> EvalResult:
    """The adapter's second-attempt outcomes on `failures` and first-attempt outcomes on `successes`.

    `max_tokens` caps each answer (default: what the request asked for); the engine batches the
    items, which all run concurrently.
    """
    reflector = Reflector(engine, webhook_policy, reflection_max_tokens)

    def greedy(item: Failure | Success) -> SamplingParams:
        params = recorded_params(item)
        return replace(params, temperature=0.0, seed=0, top_logprobs=0,
                       max_tokens=min(params.max_tokens, max_tokens or params.max_tokens))

    second = asyncio.gather(*(
        retry_after_fixed_failure(reflector, failure, greedy(failure), adapter_name) for failure in failures))
    first = asyncio.gather(*(
        first_attempt_passes(reflector, success, greedy(success), adapter_name) for success in successes))
    second_outcomes, first_outcomes = await asyncio.gather(second, first)
    return EvalResult(
        adapter=adapter_name,
        second_attempt=dict(zip((f.episode_id for f in failures), second_outcomes)),
        first_attempt=dict(zip((s.episode_id for s in successes), first_outcomes)),
    )


async def retry_after_fixed_failure(reflector: Reflector, failure: Failure, params: SamplingParams,
                                    adapter: str | None) -> bool:
    """Reflect on the recorded failed attempt, retry once, judge the retry (as `Reflector.run` would
    after that attempt)."""
    task = chat_task(failure, params, adapter)
    try:
        _, _, verdict = await reflector.reflect_and_retry(
            task, [FailedAttempt(failure.failed_attempt, failure.detail)], failure.episode_id, 2)
    except PromptTooLongError:
        return False  # the server would have answered with the failed attempt
    return verdict.success


async def first_attempt_passes(reflector: Reflector, success: Success, params: SamplingParams,
                               adapter: str | None) -> bool:
    task = chat_task(success, params, adapter)
    try:
        attempt = await reflector.generate(task, task.messages, task.params)
    except PromptTooLongError:
        return False
    verdict = await reflector.judge(task, attempt, task.messages, success.episode_id, 1)
    return verdict.success


# ---------------------------------------------------------------------------------------------
# Decision
# ---------------------------------------------------------------------------------------------


def sign_test_p_value(wins: int, losses: int) -> float:
    """One-sided exact McNemar: P(at least `wins` of the wins + losses discordant pairs | p = 1/2)."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n


def decide(candidate: EvalResult, active: EvalResult, alpha: float, tolerance: float) -> GateDecision:
    if candidate.second_attempt.keys() != active.second_attempt.keys():
        raise ValueError("the candidate and the active adapter were evaluated on different held-out failures")
    if candidate.first_attempt.keys() != active.first_attempt.keys():
        raise ValueError("the candidate and the active adapter were evaluated on different regression items")

    wins = sum(candidate.second_attempt[i] and not active.second_attempt[i] for i in candidate.second_attempt)
    losses = sum(active.second_attempt[i] and not candidate.second_attempt[i] for i in candidate.second_attempt)
    p_value = sign_test_p_value(wins, losses)
    first_attempt_drop = active.first_attempt_rate - candidate.first_attempt_rate
    numbers = {
        "heldout": len(candidate.second_attempt),
        "candidate_second_attempt": candidate.second_attempt_rate,
        "active_second_attempt": active.second_attempt_rate,
        "candidate_only_passed": wins,
        "active_only_passed": losses,
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
                                   f"({wins} vs {losses} discordant, p = {p_value:.3g} ≥ {alpha})", numbers)
    # Rates are ratios of counts: float rounding must not turn a drop at the tolerance into one beyond it.
    if first_attempt_drop > tolerance and not math.isclose(first_attempt_drop, tolerance):
        return GateDecision(False, f"first-attempt success fell by {first_attempt_drop:.3f} "
                                   f"(more than {tolerance}) on the regression set", numbers)
    return GateDecision(True, f"second-attempt success higher ({wins} vs {losses} discordant, p = {p_value:.3g}); "
                              f"first attempts within tolerance ({first_attempt_drop:+.3f})", numbers)
