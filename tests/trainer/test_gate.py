"""The gate's decision on constructed results, and a real evaluation on the bundled model."""

from __future__ import annotations

import math

import pytest

from r3.engines.transformers_engine import TransformersEngine
from trainer.data import Failure, Success
from r3.stats import sign_test_p_value
from trainer.gate import EvalResult, decide, evaluate_adapter, sample_seed
from verifiers import VerifierRuntime


def result(second: list[bool], first: list[bool]) -> EvalResult:
    return EvalResult(adapter="x", second_attempt={f"h{i}": ok for i, ok in enumerate(second)},
                      first_attempt={f"r{i}": ok for i, ok in enumerate(first)})


def test_sign_test_p_value():
    assert sign_test_p_value(4, 0) == 1 / 16
    assert sign_test_p_value(0, 0) == 1.0
    assert sign_test_p_value(0, 5) == 1.0
    assert math.isclose(sign_test_p_value(9, 1), 11 / 1024)


def test_clear_win_is_promoted():
    active = result([False] * 30 + [True] * 10, [True] * 20)
    candidate = result([True] * 12 + [False] * 18 + [True] * 10, [True] * 20)
    decision = decide(candidate, active, alpha=0.05, tolerance=0.02)
    assert decision.promote, decision.reason
    assert decision.numbers["candidate_better"] == 12 and decision.numbers["active_better"] == 0
    assert decision.numbers["p_value"] == 2**-12
    assert decision.numbers["candidate_second_attempt"] == 22 / 40
    assert decision.numbers["active_second_attempt"] == 10 / 40


def test_tie_is_rejected():
    active = result([True, False] * 10, [True] * 10)
    candidate = result([False, True] * 10, [True] * 10)  # as many wins as losses
    decision = decide(candidate, active, alpha=0.05, tolerance=0.02)
    assert not decision.promote and "not significantly higher" in decision.reason


def test_small_sample_is_rejected_even_when_every_difference_favours_the_candidate():
    decision = decide(result([True] * 3, []), result([False] * 3, []), alpha=0.05, tolerance=0.02)
    assert not decision.promote
    assert decision.numbers["p_value"] == 0.125


def test_first_attempt_regression_beyond_tolerance_is_rejected():
    active = result([False] * 20, [True] * 20)
    candidate_first = [True] * 16 + [False] * 4  # 20 points lower
    decision = decide(result([True] * 20, candidate_first), active, alpha=0.05, tolerance=0.05)
    assert not decision.promote and "first-attempt score fell" in decision.reason
    assert math.isclose(decision.numbers["first_attempt_drop"], 0.2)

    within = [True] * 19 + [False]  # 5 points lower, at the tolerance
    assert decide(result([True] * 20, within), active, alpha=0.05, tolerance=0.05).promote


def sampled(second: list[float]) -> EvalResult:
    return EvalResult(adapter="x", second_attempt={f"h{i}": share for i, share in enumerate(second)},
                      first_attempt={}, samples=4, temperature=1.0)


def test_sampled_gate_pairs_items_by_their_pass_shares():
    """With several reflections per failure, an item is a win when the candidate's retries pass more
    often on it, a loss when less often; items, not samples, are the sign test's pairs."""
    active = sampled([0.25] * 8 + [0.5] * 4)
    candidate = sampled([0.5] * 8 + [0.5] * 3 + [0.25])  # 8 items better, 3 tied, 1 worse
    decision = decide(candidate, active, alpha=0.05, tolerance=0.02)
    assert decision.promote, decision.reason
    assert (decision.numbers["candidate_better"], decision.numbers["active_better"]) == (8, 1)
    assert decision.numbers["p_value"] == sign_test_p_value(8, 1) == 10 / 512
    assert decision.numbers["samples"] == 4 and decision.numbers["candidate_second_attempt"] == 5.75 / 12
    with pytest.raises(ValueError, match="sampled differently"):
        decide(candidate, result([True] * 12, []), alpha=0.05, tolerance=0.02)


def graded(second: list[float | None], first: list[float | None] = ()) -> EvalResult:
    return EvalResult(adapter="x", second_attempt={f"h{i}": score for i, score in enumerate(second)},
                      first_attempt={f"r{i}": score for i, score in enumerate(first)})


def test_graded_scores_are_compared_per_item_by_their_mean():
    """A grader's scores: a candidate whose retries score a little higher on most items is promoted, on
    the sign test over items; a pass/fail comparison of the same retries (threshold 0.5) would see
    no difference at all, since no retry crosses it."""
    active = graded([0.2] * 10 + [0.4] * 2)
    candidate = graded([0.3] * 10 + [0.35] * 2)  # 10 items better, 2 worse; all below 0.5
    decision = decide(candidate, active, alpha=0.05, tolerance=0.02)
    assert decision.promote, decision.reason
    assert "mean second-attempt score higher" in decision.reason and decision.numbers["measure"] == "mean score"
    assert (decision.numbers["candidate_better"], decision.numbers["active_better"]) == (10, 2)
    assert decision.numbers["p_value"] == sign_test_p_value(10, 2)
    assert math.isclose(decision.numbers["candidate_second_attempt"], (3.0 + 0.7) / 12)
    assert math.isclose(decision.numbers["active_second_attempt"], (2.0 + 0.8) / 12)


def test_unjudged_items_are_left_out_of_the_comparison_and_counted():
    """An item that no judge scored for one adapter is no pair: it is neither a win nor a loss, and
    the rates are over judged scores only."""
    active = graded([0.0] * 6 + [None, 0.0], [1.0, None])
    candidate = graded([1.0] * 6 + [1.0, None], [1.0, 1.0])
    decision = decide(candidate, active, alpha=0.05, tolerance=0.02)
    assert decision.numbers["unjudged"] == 2
    assert (decision.numbers["candidate_better"], decision.numbers["active_better"]) == (6, 0)
    assert decision.numbers["p_value"] == 2**-6
    assert decision.numbers["active_first_attempt"] == 1.0  # the unjudged regression item counts for nothing
    assert decide(graded([None] * 3), graded([0.0] * 3), alpha=0.05, tolerance=0.02).reason == \
        "no judged held-out failures to judge the candidate on"


def test_each_failures_samples_have_their_own_seeds_shared_by_both_adapters():
    """Common random numbers between the adapters on one failure, independent draws across failures
    (one seed j for all made a whole held-out set come out alike)."""
    one, two = (Failure(f"ep_{i}", [], None, None, {}, "generic", {}, failed_attempt={}, detail="") for i in (1, 2))
    seeds = [sample_seed(failure, j) for failure in (one, two) for j in range(4)]
    assert len(set(seeds)) == 8 and all(0 <= seed < 2**63 for seed in seeds)
    assert sample_seed(one, 3) == sample_seed(Failure("ep_1", [], None, None, {}, "generic", {}, {}, ""), 3)


def test_no_heldout_failures_is_rejected_and_mismatched_items_are_an_error():
    assert not decide(result([], []), result([], []), alpha=0.05, tolerance=0.02).promote
    with pytest.raises(ValueError):
        decide(result([True], []), result([True, True], []), alpha=0.05, tolerance=0.02)


@pytest.mark.slow
async def test_evaluate_reflects_on_the_recorded_failure_and_replays_first_attempts(model_path, lora_path):
    sampling = {"max_tokens": 8, "temperature": 1.0, "top_p": 1.0, "seed": None, "stop": [], "top_logprobs": 0}
    question = [{"role": "user", "content": "Name a fruit."}]
    anything = {"type": "regex", "pattern": "(?s).*"}
    impossible = {"type": "exact", "expected": "a string no model writes: 7f3a9c"}
    failures = [
        Failure("ep_any", question, None, None, anything, "generic", sampling,
                failed_attempt={"role": "assistant", "content": "A car."}, detail="not a fruit"),
        Failure("ep_never", question, None, None, impossible, "generic", sampling,
                failed_attempt={"role": "assistant", "content": "A car."}, detail=""),
    ]
    successes = [Success("ep_ok", question, None, None, anything, "generic", sampling),
                 Success("ep_no", question, None, None, impossible, "generic", sampling)]
    engine = TransformersEngine(str(model_path), "gate-test")
    try:
        await engine.load_adapter("candidate", lora_path)
        outcome = await evaluate_adapter(engine, "candidate", failures, successes, VerifierRuntime(), reflection_max_tokens=8)
        assert outcome.adapter == "candidate"
        assert outcome.second_attempt == {"ep_any": True, "ep_never": False}
        assert outcome.first_attempt == {"ep_ok": True, "ep_no": False}
        assert outcome.second_attempt_rate == 0.5 and outcome.first_attempt_rate == 0.5

        # Sampled reflections, each retried: the share of each failure's retries that passed.
        sampled = await evaluate_adapter(engine, "candidate", failures, [], VerifierRuntime(), reflection_max_tokens=8,
                                 samples=3, temperature=1.0)
        assert sampled.second_attempt == {"ep_any": 1.0, "ep_never": 0.0} and sampled.samples == 3
    finally:
        await engine.close()
