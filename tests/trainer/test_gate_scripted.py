"""The gate (`trainer.gate.evaluate_adapter` and `decide`) end to end on a scripted engine, judged by
the real `exact` verifier: no model, so the numbers are known in advance. The candidate adapter's
retries rescue every held-out failure; the active adapter's only the first; both answer the
regression set right unless a test says otherwise."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
from support import ScriptedEngine, last_user_message

from r3.engines.base import SamplingParams
from r3.reflection import reflection_request, retry_request
from r3.stats import sign_test_p_value
from trainer.data import Failure, Success
from trainer.gate import decide, evaluate_adapter, sample_seed
from verifiers import VerifierRuntime

HELD_OUT = {f"What is {i} plus {i}?": str(2 * i) for i in range(7)}
REGRESSION = {f"What is {i} times three?": str(3 * i) for i in range(4)}
# Families of regression items a client tagged with a `metadata.category`.
COUNTING = {f"What comes after {i}?": str(i + 1) for i in range(22)}
CAPITALS = dict(zip((f"What is the capital of {c}?" for c in ("France", "Italy", "Spain", "Japan", "Peru", "Chad")),
                    ("Paris", "Rome", "Madrid", "Tokyo", "Lima", "N'Djamena")))
ANSWERS = HELD_OUT | REGRESSION | COUNTING | CAPITALS
SAMPLING = asdict(SamplingParams(max_tokens=32))
SAMPLES, TEMPERATURE = 2, 1.0
WRONG = 'the answer "no idea" is not the expected answer'  # the exact verifier's detail on "no idea"


def logged(question: str) -> dict:
    return {"episode_id": f"ep_{question}", "messages": [{"role": "user", "content": question}], "tools": None,
            "tool_choice": None, "verifier": {"type": "exact", "expected": ANSWERS[question]},
            "task_kind": "generic", "sampling": SAMPLING}


def failures(count: int) -> list[Failure]:
    return [Failure(**logged(q), failed_attempt={"role": "assistant", "content": "no idea"},
                    detail=WRONG) for q in list(HELD_OUT)[:count]]


SUCCESSES = [Success(**logged(q)) for q in REGRESSION]


def script(wrong_first: frozenset[tuple[str, str]] = frozenset()):
    """Answers each prompt by the question in it and the adapter asked: first attempts right (except
    the (adapter, question) pairs in `wrong_first`); a retry right through "candidate", and through
    "active" on the first held-out question only; a reflection with a sentence."""
    rescued_by_active = next(iter(HELD_OUT))

    def answer(prompt: str, adapter: str | None) -> str:
        question = next(q for q in ANSWERS if q in prompt)
        asked = last_user_message(prompt)
        if asked == question:
            return "no idea" if (adapter, question) in wrong_first else ANSWERS[question]
        if asked == retry_request([{"role": "user", "content": question}])["content"]:
            return ANSWERS[question] if adapter == "candidate" or question == rescued_by_active else "no idea"
        return f"I should work out {question} step by step."

    return answer


def tagged(questions: dict[str, str], category: str) -> list[Success]:
    return [Success(**logged(q), category=category) for q in questions]


async def gate(engine: ScriptedEngine, tmp_path: Path, held_out: int, successes: list[Success] = SUCCESSES,
               tolerance: float = 0.02):
    for name in ("candidate", "active"):
        (tmp_path / name).mkdir()
        await engine.load_adapter(name, tmp_path / name)
    candidate, active = [await evaluate_adapter(engine, name, failures(held_out), successes, VerifierRuntime(),
                                                samples=SAMPLES, temperature=TEMPERATURE)
                         for name in ("candidate", "active")]
    return candidate, active, decide(candidate, active, alpha=0.05, tolerance=tolerance)


@pytest.mark.parametrize(("held_out", "promote"), [(7, True), (5, False)])
async def test_a_candidate_whose_retries_rescue_more_failures_is_promoted_when_the_sign_test_says_so(
        tmp_path: Path, held_out: int, promote: bool) -> None:
    engine = ScriptedEngine(script())
    candidate, active, decision = await gate(engine, tmp_path, held_out)

    assert candidate.second_attempt == {f"ep_{q}": 1.0 for q in list(HELD_OUT)[:held_out]}
    assert active.second_attempt == {f"ep_{q}": float(i == 0) for i, q in enumerate(list(HELD_OUT)[:held_out])}
    wins = held_out - 1  # the first item is a tie: both adapters rescue it
    assert decision.numbers | {"p_value": None} == {
        "heldout": held_out, "samples": SAMPLES, "temperature": TEMPERATURE,
        "candidate_second_attempt": 1.0, "active_second_attempt": 1 / held_out,
        "measure": "mean score", "candidate_better": wins, "active_better": 0, "unjudged": 0, "judge_calls": 0,
        "judge_tokens": 0, "p_value": None, "alpha": 0.05,
        "regression": len(REGRESSION), "candidate_first_attempt": 1.0, "active_first_attempt": 1.0,
        "first_attempt_drop": 0.0, "tolerance": 0.02,
        "families": {"exact": {"n": 4, "unjudged": 0, "candidate": 1.0, "active": 1.0, "drop": 0.0,
                               "candidate_better": 0, "active_better": 0, "p_value": 1.0, "p_adjusted": 1.0,
                               "refused": False}}}
    assert decision.numbers["p_value"] == sign_test_p_value(wins, 0) == 2.0 ** -wins
    assert decision.promote is promote, decision.reason

    # Each adapter drew its reflections on an item with the same seeds (common random numbers), at
    # the gate's temperature, and retried greedily.
    reflect = reflection_request("generic", WRONG)["content"]
    reflections = [c for c in engine.calls if last_user_message(c.prompt) == reflect]
    assert len(reflections) == 2 * held_out * SAMPLES
    for failure in failures(held_out):
        seeds = {(c.adapter, c.params.seed) for c in reflections if failure.messages[0]["content"] in c.prompt}
        expected = {sample_seed(failure, j) for j in range(SAMPLES)}
        assert seeds == {(name, seed) for name in ("candidate", "active") for seed in expected}
    assert {c.params.temperature for c in reflections} == {TEMPERATURE}
    assert {c.params.temperature for c in engine.calls if c not in reflections} == {0.0}


async def test_a_candidate_with_worse_first_attempts_is_not_promoted(tmp_path: Path) -> None:
    engine = ScriptedEngine(script(wrong_first=frozenset({("candidate", next(iter(REGRESSION)))})))
    candidate, _, decision = await gate(engine, tmp_path, held_out=7)
    assert candidate.first_attempt == {f"ep_{q}": float(i > 0) for i, q in enumerate(REGRESSION)}
    assert decision.numbers["first_attempt_drop"] == 0.25 and decision.numbers["p_value"] < 0.05
    assert not decision.promote and "first-attempt score fell by 0.250" in decision.reason


async def test_a_candidate_that_improves_its_target_family_and_hurts_another_is_refused_naming_it(
        tmp_path: Path) -> None:
    """The candidate answers the counting family right where the active adapter fails 6 of it, and gets
    all 6 capitals wrong: the pooled first-attempt score does not move, and its retries are
    significantly better, so only the family check refuses it, and says which family fell."""
    counting = dict(list(COUNTING.items())[:6])
    wrong_first = {("active", q) for q in counting} | {("candidate", q) for q in CAPITALS}
    engine = ScriptedEngine(script(wrong_first=frozenset(wrong_first)))
    successes = [*SUCCESSES, *tagged(counting, "counting"), *tagged(CAPITALS, "capitals")]
    candidate, _, decision = await gate(engine, tmp_path, held_out=7, successes=successes)

    assert {candidate.families[f"ep_{q}"] for q in CAPITALS} == {"exact/capitals"}
    assert decision.numbers["first_attempt_drop"] == 0.0 and decision.numbers["p_value"] < 0.05
    families = decision.numbers["families"]
    assert {name: (row["n"], row["candidate"], row["active"], row["refused"]) for name, row in families.items()} == {
        "exact": (4, 1.0, 1.0, False), "exact/counting": (6, 1.0, 0.0, False), "exact/capitals": (6, 0.0, 1.0, True)}
    # Two families have untied items: the capitals' p = 2**-6 is doubled.
    assert families["exact/capitals"]["p_adjusted"] == 2 * sign_test_p_value(6, 0) == 2**-5
    assert not decision.promote
    assert decision.reason.startswith("mean first-attempt score fell in task family 'exact/capitals' by 1.000")


async def test_a_small_family_whose_one_item_flips_does_not_veto_the_candidate(tmp_path: Path) -> None:
    """One of 2 capitals answered wrong: a drop of 0.5 in that family, but 1 item worse is no evidence
    (p = 0.5), and the pooled drop (1 of 28) is within tolerance: promoted."""
    capitals = dict(list(CAPITALS.items())[:2])
    engine = ScriptedEngine(script(wrong_first=frozenset({("candidate", next(iter(capitals)))})))
    successes = [*SUCCESSES, *tagged(COUNTING, "counting"), *tagged(capitals, "capitals")]
    _, _, decision = await gate(engine, tmp_path, held_out=7, successes=successes, tolerance=0.05)

    capitals_row = decision.numbers["families"]["exact/capitals"]
    assert (capitals_row["n"], capitals_row["drop"], capitals_row["p_value"]) == (2, 0.5, 0.5)
    assert not capitals_row["refused"] and decision.numbers["first_attempt_drop"] == pytest.approx(1 / 28)
    assert decision.promote, decision.reason
