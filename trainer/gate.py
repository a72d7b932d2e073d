"""The gate: a candidate adapter replaces the active one only if it reflects measurably better.

`evaluate_adapter` runs an adapter, through an `r3` engine and the server's own `Reflector`, on
- held-out failures: the recorded failed first attempt stays fixed; the adapter reflects on it and
  retries once. What do its retries score? (The question is whether its reflections rescue
  failures, so every item starts from the same failure, whichever adapter is judged.)
- the regression set: requests whose first attempt once passed. What does the adapter's first
  attempt score? (Greedy: a property of the adapter, not of a draw.)

A score is the verifier's (`verifiers.Verdict.score`, in [0, 1]): 1.0 or 0.0 for a pass/fail check, so
that a mean score is a pass rate, and the grade for a grader or a model judge. A sample whose judge
gave no verdict (unjudged) counts for neither adapter: an item is compared on its judged samples, and
an item with none judged for either adapter is left out of the comparison and counted.

Reflections are sampled as the trainer samples them (`R3_GATE_TEMPERATURE`, default the trainer's
T = 1), `R3_GATE_SAMPLES` of them per held-out failure, with seeds shared by both adapters (common
random numbers), each followed by a greedy retry, as in training. GRPO moves the sampled policy; a
greedy gate sees only its mode, which can stay put while the share of good reflections doubles (the
planted run in BENCHMARKS.md §5b: +22 points sampled, 0 vs 0 greedy). With one sample at
temperature 0 the gate is the greedy one.

`decide` compares a candidate's results with the active adapter's on the same items.

- The held-out mean retry score must be higher, by a one-sided exact sign test on the paired items
  (`r3.stats.sign_test_p_value`): an item is a win when the candidate's retries score higher on
  average than the active adapter's on it, a loss when lower, a tie otherwise. Items, not samples,
  are the pairs, since the samples of one item are not independent; the sign test needs only that
  each item's difference be independent of the others', so it holds for graded scores as for
  pass/fail (where, with one sample per item, it is McNemar's exact test). Exact, so it stays valid
  on the small held-out sets of early rounds (where it simply cannot reject: 4 wins out of 4 gives
  p = 0.0625).
- The mean first-attempt score on the regression set must not fall by more than `tolerance`
  (e.g. 0.02), so a gain in reflecting is not bought with worse first answers.
- Nor may it fall in any task family (`trainer.data.LoggedRequest.family`: the verifier's type, and
  the client's `metadata.category` where it names one; the worker stratifies the set by family with
  `trainer.data.retained_set`): a gain on the family trained on must not hide, in the pooled mean, a
  loss on another. `family_checks` has the rule.
- Where the operator supplies a general-capability probe (`trainer.probe`), the candidate's accuracy
  on it must not fall below the base model's by more than the probe's bound (`probe_decision`).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from r3.engines.base import Engine, PromptTooLongError, SamplingParams
from r3.reflect_retry import Reflector, recorded_params, recorded_task
from r3.stats import holm, sign_test_p_value
from trainer.data import Failure, Success
from verifiers import JudgeUsage, Verdict, VerifierRuntime


@dataclass(frozen=True)
class EvalResult:
    adapter: str | None  # None: the base model
    # held-out failure's episode id -> the mean score of its judged retries after reflecting (None: none judged)
    second_attempt: dict[str, float | None]
    first_attempt: dict[str, float | None]  # regression item's episode id -> its first attempt's score
    samples: int = 1  # reflections (each with its retry) per held-out failure
    temperature: float = 0.0  # of the reflections
    judge_usage: JudgeUsage = JudgeUsage()  # model-judge calls the evaluation took
    # regression item's episode id -> its task family (`trainer.data.LoggedRequest.family`); an item not
    # in it (a result made by hand) is in the family UNSTRATIFIED
    families: dict[str, str] = field(default_factory=dict)

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


UNSTRATIFIED = "all"


def _rate(scores: dict[str, float | None]) -> float:
    """The mean of the judged scores (0.0 for none)."""
    judged = [score for score in scores.values() if score is not None]
    return sum(judged) / len(judged) if judged else 0.0


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


async def evaluate_adapter(engine: Engine, adapter_name: str | None, failures: Sequence[Failure], successes: Sequence[Success],
                   verifier_runtime: VerifierRuntime, reflection_max_tokens: int = 256, samples: int = 1,
                   temperature: float = 0.0) -> EvalResult:
    """The adapter's mean second-attempt scores on `failures` and first-attempt scores on `successes`.

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
        first_attempt_verdict(reflector, success, greedy(success), adapter_name) for success in successes))
    second_verdicts, first_verdicts = await asyncio.gather(second, first)
    second_scores = [verdict.score for verdict in second_verdicts]

    def mean_judged(scores: list[float | None]) -> float | None:
        judged = [score for score in scores if score is not None]
        return sum(judged) / len(judged) if judged else None

    return EvalResult(
        adapter=adapter_name,
        second_attempt={failure.episode_id: mean_judged(second_scores[i * samples:(i + 1) * samples])
                        for i, failure in enumerate(failures)},
        first_attempt={success.episode_id: verdict.score for success, verdict in zip(successes, first_verdicts)},
        samples=samples, temperature=temperature,
        families={success.episode_id: success.family for success in successes},
        judge_usage=sum((v.usage for v in [*second_verdicts, *first_verdicts] if v.usage), JudgeUsage()),
    )


def sample_seed(failure: Failure, j: int) -> int:
    """The seed of the gate's sample `j` on `failure`: a stable function of both, in [0, 2**63)."""
    digest = hashlib.sha256(f"{failure.episode_id}:{j}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# The verdict on an answer the context had no room for: the server answers such a request with its
# failed attempt, so it scores as a failure.
_NO_ROOM = Verdict(False, "the prompt outgrew the context")


async def retry_after_fixed_failure(reflector: Reflector, failure: Failure, params: SamplingParams,
                                    adapter: str | None, reflection_params: SamplingParams | None = None) -> Verdict:
    """Reflect on the recorded failed attempt (sampling as `reflection_params` say; default `params`),
    retry once, judge the retry (as `Reflector.run` would after that attempt)."""
    task = recorded_task(failure, adapter=adapter, params=params)
    try:
        _, _, verdict = await reflector.reflect_and_retry(task, [failure.failed()], failure.episode_id, 2,
                                                          reflection_params=reflection_params)
    except PromptTooLongError:
        return _NO_ROOM
    return verdict


async def first_attempt_verdict(reflector: Reflector, success: Success, params: SamplingParams,
                                adapter: str | None) -> Verdict:
    task = recorded_task(success, adapter=adapter, params=params)
    try:
        attempt = await reflector.generate(task, reflector.core.attempt_prompt(task, task.messages))
    except PromptTooLongError:
        return _NO_ROOM
    return await reflector.judge(task, attempt, task.messages, success.episode_id, 1)


# ---------------------------------------------------------------------------------------------
# Decision
# ---------------------------------------------------------------------------------------------


def decide(candidate: EvalResult, active: EvalResult, alpha: float, tolerance: float,
           probe: tuple[bool, dict[str, Any]] | None = None) -> GateDecision:
    """Whether `candidate` replaces `active`, why (the first check it fails, naming the task family
    that fell or the probe), and the numbers of every check (`numbers["families"]`: `family_checks`;
    `numbers["probe"]`: the second of `probe`, `trainer.probe.run_probe`'s outcome, when given).
    Raises `ValueError` when the two were evaluated on different items or sampled differently."""
    if candidate.second_attempt.keys() != active.second_attempt.keys():
        raise ValueError("the candidate and the active adapter were evaluated on different held-out failures")
    if (candidate.samples, candidate.temperature) != (active.samples, active.temperature):
        raise ValueError("the candidate and the active adapter were sampled differently")
    if candidate.first_attempt.keys() != active.first_attempt.keys() or candidate.families != active.families:
        raise ValueError("the candidate and the active adapter were evaluated on different regression items")

    # Items judged for both adapters are the pairs; the rest are left out and counted.
    pairs = [(candidate.second_attempt[i], active.second_attempt[i]) for i in candidate.second_attempt
             if candidate.second_attempt[i] is not None and active.second_attempt[i] is not None]
    wins = sum(c > a for c, a in pairs)
    losses = sum(c < a for c, a in pairs)
    p_value = sign_test_p_value(wins, losses)
    first_attempt_drop = active.first_attempt_rate - candidate.first_attempt_rate
    families = family_checks(candidate, active, alpha, tolerance)
    numbers = {
        "heldout": len(candidate.second_attempt),
        "samples": candidate.samples,
        "temperature": candidate.temperature,
        "candidate_second_attempt": candidate.second_attempt_rate,
        "active_second_attempt": active.second_attempt_rate,
        "measure": "mean score",  # 1.0 or 0.0 per pass/fail verdict: a pass rate for pass/fail verifiers
        "candidate_better": wins,  # held-out items on which the candidate's retries scored higher on average
        "active_better": losses,
        "unjudged": len(candidate.second_attempt) - len(pairs),  # held-out items left out: no judged retry
        "judge_calls": candidate.judge_usage.calls + active.judge_usage.calls,
        "judge_tokens": sum(u.prompt_tokens + u.completion_tokens for u in (candidate.judge_usage, active.judge_usage)),
        "p_value": p_value,
        "alpha": alpha,
        "regression": len(candidate.first_attempt),
        "candidate_first_attempt": candidate.first_attempt_rate,
        "active_first_attempt": active.first_attempt_rate,
        "first_attempt_drop": first_attempt_drop,
        "tolerance": tolerance,
        "families": families,
    }
    if probe is not None:
        numbers["probe"] = probe[1]

    if not pairs:
        return GateDecision(False, "no judged held-out failures to judge the candidate on", numbers)
    if p_value >= alpha:
        return GateDecision(False, f"mean second-attempt score not significantly higher "
                                   f"({wins} vs {losses} not tied, p = {p_value:.3g} ≥ {alpha})", numbers)
    if fallen := [(name, row) for name, row in families.items() if row["refused"]]:
        each = "; ".join(f"{name!r} by {row['drop']:.3f} (more than {tolerance}; {row['active_better']} of its "
                         f"{row['n']} items worse, {row['candidate_better']} better; Holm-adjusted p = "
                         f"{row['p_adjusted']:.3g} < {alpha})" for name, row in fallen)
        return GateDecision(False, f"mean first-attempt score fell in task famil{'y' if len(fallen) == 1 else 'ies'} "
                                   f"{each}", numbers)
    if beyond(first_attempt_drop, tolerance):
        return GateDecision(False, f"mean first-attempt score fell by {first_attempt_drop:.3f} "
                                   f"(more than {tolerance}) on the regression set", numbers)
    if probe is not None and not probe[0]:
        p = probe[1]
        return GateDecision(False, f"accuracy on the general-capability probe fell by {p['drop']:.3f} (from "
                                   f"{p['base_acc']:.3f} for the base model to {p['candidate_acc']:.3f} on "
                                   f"{p['n']} items; more than {p['max_drop']})", numbers)
    probed = "" if probe is None else (f"; probe accuracy {probe[1]['candidate_acc']:.3f} "
                                       f"(base {probe[1]['base_acc']:.3f})")
    return GateDecision(True, f"mean second-attempt score higher ({wins} vs {losses} held-out items, "
                              f"p = {p_value:.3g}); first attempts within tolerance ({first_attempt_drop:+.3f}, "
                              f"and in each of {len(families)} task families){probed}", numbers)


def family_checks(candidate: EvalResult, active: EvalResult, alpha: float,
                  tolerance: float) -> dict[str, dict[str, Any]]:
    """Each task family of the regression set, checked on its own: {family: {
    `n`: its items judged for both adapters (the pairs), `unjudged`: its other items,
    `candidate`, `active`: each adapter's mean first-attempt score on the pairs (None: no pairs),
    `drop`: active − candidate (None: no pairs),
    `candidate_better`, `active_better`: pairs on which that adapter's first attempt scored higher,
    `p_value`: the one-sided exact sign test that the candidate's first attempts score lower,
    `p_adjusted`: Holm's adjustment of it across the families (1.0 for a family whose pairs all tie),
    `refused`: whether the family fell}}.

    The rule: a family has fallen when its drop is beyond `tolerance` AND its Holm-adjusted p-value
    is below `alpha`. Each half alone is wrong. The drop alone lets noise veto: one item of a family
    of 2 that flips is a drop of 0.5. Significance alone refuses a fall of a point on a family of
    thousands, which the tolerance allows. The sign test is the held-out test's (items are the pairs;
    ties say nothing; valid for graded scores as for pass/fail), and it is what makes the rule account
    for a family's size: with no item better, a family needs 5 items worse to reach p = 2**-5 < 0.05
    alone, and more when other families share α (Holm: the k-th smallest of m p-values is multiplied
    by m − k). A smaller family cannot be refused by itself; the pooled tolerance still counts its
    items. Holm, not the tests one by one: with a test per family, a candidate that forgot nothing
    would otherwise be refused for some family's chance losses about as often as there are families
    times α; Holm holds that chance to α whatever the families' dependence (`r3.stats.holm`). The
    families whose pairs all tie take no share of α: conditional on its untied pairs a sign test is
    exact, and one with none can reject nothing.

    The null hypothesis is "no fall", not "a fall within tolerance" (a non-inferiority test, e.g.
    J. Nam, Biometrics 53 (1997), for paired proportions), which would demand more evidence of a fall
    before refusing: the gate errs toward the active adapter, since a refused candidate costs a round
    and a promoted one that forgot answers every request of that family worse.
    """
    members: dict[str, list[str]] = defaultdict(list)
    for item in candidate.first_attempt:
        members[candidate.families.get(item, UNSTRATIFIED)].append(item)
    rows: dict[str, dict[str, Any]] = {}
    for family, items in sorted(members.items()):
        pairs = [(c, a) for c, a in ((candidate.first_attempt[i], active.first_attempt[i]) for i in items)
                 if c is not None and a is not None]
        better, worse = sum(c > a for c, a in pairs), sum(c < a for c, a in pairs)
        means = [sum(scores) / len(pairs) for scores in zip(*pairs)] if pairs else [None, None]
        rows[family] = {"n": len(pairs), "unjudged": len(items) - len(pairs), "candidate": means[0],
                        "active": means[1], "drop": means[1] - means[0] if pairs else None,
                        "candidate_better": better, "active_better": worse,
                        "p_value": sign_test_p_value(worse, better), "p_adjusted": 1.0}
    tested = [family for family, row in rows.items() if row["candidate_better"] + row["active_better"]]
    for family, adjusted in zip(tested, holm([rows[family]["p_value"] for family in tested])):
        rows[family]["p_adjusted"] = adjusted
    for row in rows.values():
        row["refused"] = row["drop"] is not None and beyond(row["drop"], tolerance) and row["p_adjusted"] < alpha
    return rows


def beyond(drop: float, bound: float) -> bool:
    """Whether `drop` exceeds `bound`. Rates are ratios of counts: float rounding must not turn a drop
    at the bound into one beyond it."""
    return drop > bound and not math.isclose(drop, bound)
