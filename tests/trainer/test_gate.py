"""The gate's decision on constructed results, and a real evaluation on the bundled model."""

from __future__ import annotations

import math

import pytest

from r3.engines.transformers_engine import TransformersEngine
from trainer.data import Failure, Success
from r3.stats import holm, sign_test_p_value, wilson
from trainer.gate import EvalResult, decide, evaluate_adapter, sample_seed
from trainer.probe import probe_decision
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


def test_holm_adjusts_each_p_value_by_its_rank():
    # Sorted 0.01, 0.03, 0.04: × 3, × 2, × 1 = 0.03, 0.06, 0.04, each at least the one before.
    assert holm([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])
    assert holm([0.5]) == [0.5] and holm([0.6, 0.7]) == [1.0, 1.0] and holm([]) == []


WIN = ([True] * 8, [False] * 8)  # held-out retries: the candidate's rescue all 8, p = 2**-8


def stratified(candidate: dict[str, list[float | None]],
               active: dict[str, list[float | None]]) -> tuple[EvalResult, EvalResult]:
    """(candidate, active) whose regression items are in the families named, with these first-attempt scores."""
    families = {f"{family}:{i}": family for family, scores in active.items() for i in range(len(scores))}

    def evaluated(first: dict[str, list[float | None]], second: list[bool]) -> EvalResult:
        return EvalResult(adapter="x", second_attempt={f"h{i}": ok for i, ok in enumerate(second)},
                          first_attempt={f"{family}:{i}": score for family, scores in first.items()
                                         for i, score in enumerate(scores)}, families=families)

    return evaluated(candidate, WIN[0]), evaluated(active, WIN[1])


def test_a_family_falls_when_its_drop_is_beyond_tolerance_and_significant_for_its_size():
    """With no item better, a family needs 5 items worse (p = 2**-5 < 0.05) to be refused: a family of
    4 that lost all 4 is not, though its drop is 1.0. 200 unchanged items keep the pooled drop within
    tolerance, so only the family check can refuse here; they all tie, so they take no share of α."""
    unchanged = [1.0] * 200
    candidate, active = stratified({"exact": unchanged, "tool_call/weather": [0.0] * 4},
                                   {"exact": unchanged, "tool_call/weather": [1.0] * 4})
    decision = decide(candidate, active, alpha=0.05, tolerance=0.05)
    assert decision.promote, decision.reason
    assert decision.numbers["families"] == {
        "exact": {"n": 200, "unjudged": 0, "candidate": 1.0, "active": 1.0, "drop": 0.0, "candidate_better": 0,
                  "active_better": 0, "p_value": 1.0, "p_adjusted": 1.0, "refused": False},
        "tool_call/weather": {"n": 4, "unjudged": 0, "candidate": 0.0, "active": 1.0, "drop": 1.0,
                              "candidate_better": 0, "active_better": 4, "p_value": 1 / 16, "p_adjusted": 1 / 16,
                              "refused": False}}
    assert decision.numbers["first_attempt_drop"] == pytest.approx(4 / 204)  # within tolerance

    candidate, active = stratified({"exact": unchanged, "tool_call/weather": [0.0] * 5},
                                   {"exact": unchanged, "tool_call/weather": [1.0] * 5})
    decision = decide(candidate, active, alpha=0.05, tolerance=0.05)
    assert not decision.promote
    assert decision.reason == ("mean first-attempt score fell in task family 'tool_call/weather' by 1.000 (more than "
                               "0.05; 5 of its 5 items worse, 0 better; Holm-adjusted p = 0.0312 < 0.05)")
    assert decision.numbers["families"]["tool_call/weather"]["refused"]


def test_a_small_family_in_which_one_item_flips_does_not_veto():
    candidate, active = stratified({"exact": [1.0] * 40, "exact/rare": [1.0, 0.0]},
                                   {"exact": [1.0] * 40, "exact/rare": [1.0, 1.0]})
    decision = decide(candidate, active, alpha=0.05, tolerance=0.05)
    assert decision.promote, decision.reason
    rare = decision.numbers["families"]["exact/rare"]
    assert (rare["drop"], rare["p_value"], rare["refused"]) == (0.5, 0.5, False)


def test_a_significant_fall_within_tolerance_is_allowed():
    """6 of 400 items worse, none better: significant (p = 2**-6), but a drop of 0.015 ≤ 0.02."""
    candidate, active = stratified({"exact": [0.0] * 6 + [1.0] * 394}, {"exact": [1.0] * 400})
    decision = decide(candidate, active, alpha=0.05, tolerance=0.02)
    assert decision.promote, decision.reason
    assert decision.numbers["families"]["exact"]["p_adjusted"] == 2**-6


def test_families_share_alpha_by_holms_method():
    """Three families that each lost 5 of 5 items: each alone would be refused (p = 2**-5), but a
    candidate that forgot nothing would show chance losses in one of three families about three times as
    often, and Holm's adjustment (× 3) leaves none refused: only the pooled check guards them. With 6
    lost each (2**-6 × 3 < 0.05) all three are refused, and named."""
    unchanged = {"exact": [1.0] * 1000}
    for lost, refused in ((5, []), (6, ["a", "b", "c"])):
        candidate, active = stratified(unchanged | {name: [0.0] * lost for name in "abc"},
                                       unchanged | {name: [1.0] * lost for name in "abc"})
        decision = decide(candidate, active, alpha=0.05, tolerance=0.05)
        assert [name for name, row in decision.numbers["families"].items() if row["refused"]] == refused
        assert decision.numbers["families"]["a"]["p_adjusted"] == pytest.approx(3 * 2**-lost)
        assert decision.promote is not refused, decision.reason
    assert decision.reason.startswith("mean first-attempt score fell in task families 'a' by 1.000")
    assert "; 'b' by 1.000" in decision.reason and "; 'c' by 1.000" in decision.reason


def test_a_family_compares_items_judged_for_both_and_counts_the_rest():
    candidate, active = stratified({"score_model": [0.2, 0.4, None, 0.9]}, {"score_model": [0.6, 0.4, 1.0, None]})
    row = decide(candidate, active, alpha=0.05, tolerance=0.02).numbers["families"]["score_model"]
    assert (row["n"], row["unjudged"], row["candidate_better"], row["active_better"]) == (2, 2, 0, 1)
    assert row["candidate"] == pytest.approx(0.3) and row["active"] == pytest.approx(0.5)
    assert row["drop"] == pytest.approx(0.2) and row["p_value"] == 0.5


def test_the_probe_refuses_a_candidate_that_fell_below_the_base_model_beyond_its_bound():
    passed, numbers = probe_decision(candidate_acc=0.55, base_acc=0.6, n=40, max_drop=0.05)
    assert passed and numbers["drop"] == pytest.approx(0.05) and not numbers["refused"]  # at the bound
    assert numbers["base_ci95"] == pytest.approx(wilson(24, 40))
    passed, numbers = probe_decision(candidate_acc=0.525, base_acc=0.6, n=40, max_drop=0.05)
    assert not passed and numbers["refused"]
    with pytest.raises(ValueError):
        probe_decision(0.5, 0.5, 0, 0.05)

    candidate, active = stratified({"exact": [1.0] * 10}, {"exact": [1.0] * 10})
    decision = decide(candidate, active, alpha=0.05, tolerance=0.02, probe=(passed, numbers))
    assert not decision.promote and decision.numbers["probe"] == numbers
    assert decision.reason == ("accuracy on the general-capability probe fell by 0.075 (from 0.600 for the base model "
                               "to 0.525 on 40 items; more than 0.05)")
    promoted = decide(candidate, active, alpha=0.05, tolerance=0.02, probe=probe_decision(0.6, 0.6, 40, 0.05))
    assert promoted.promote and promoted.reason.endswith("; probe accuracy 0.600 (base 0.600)")


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
