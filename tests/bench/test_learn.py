"""`r3 bench learn` without a model: the task suite and the statistics."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import sys

import pytest

from r3.stats import sign_test_p_value

from bench import learn
from bench import tasks as suite
from verifiers import Attempt, TaskContext, ToolCall, parse_spec


def judge(task: suite.Task, answer: dict) -> bool:
    calls = tuple(ToolCall(c["name"], c["arguments"]) for c in answer.get("tool_calls", []))
    attempt = Attempt(content=answer.get("content"), tool_calls=calls)
    context = TaskContext(tools=tuple(task.tools or ()), tool_choice=task.tool_choice, messages=tuple(task.messages))
    return parse_spec(task.verifier).judge(attempt, context).success


def wrong(answer: dict) -> dict:
    """The reference answer with one value changed."""
    if "content" in answer:
        return {"content": "<answer>1 + 1 + 1</answer>"}
    call = answer["tool_calls"][0]
    arguments = json.loads(call["arguments"])
    key = sorted(arguments)[0]
    value = arguments[key]
    arguments[key] = value + 1 if isinstance(value, int) else value + "x"
    return {"tool_calls": [{"name": call["name"], "arguments": json.dumps(arguments)}]}


@pytest.mark.parametrize("family", sorted(suite.FAMILIES))
def test_the_verifier_accepts_the_reference_answer_and_rejects_a_wrong_one(family):
    for task in suite.generate(seed=3, n=40, families=[family]):
        assert judge(task, task.reference), task
        assert not judge(task, wrong(task.reference)), task


def test_a_number_written_as_a_string_is_wrong():
    task = suite.generate(seed=1, n=1, families=["timer"])[0]
    minutes = json.loads(task.reference["tool_calls"][0]["arguments"])["minutes"]
    answer = {"tool_calls": [{"name": "set_timer", "arguments": json.dumps({"minutes": str(minutes)})}]}
    assert not judge(task, answer)


def test_the_same_seed_gives_the_same_tasks_and_another_seed_others():
    first, again, other = (suite.generate(seed, 30) for seed in (5, 5, 6))
    assert first == again
    assert [t.messages for t in first] != [t.messages for t in other]


def test_training_and_heldout_prompts_are_disjoint_and_unique():
    train, heldout = suite.split_suite(seed=0, train=300, heldout=80)
    train_keys = {suite.prompt_key(t) for t in train}
    heldout_keys = {suite.prompt_key(t) for t in heldout}
    assert len(train_keys) == len(train) == 300 and len(heldout_keys) == len(heldout) == 80
    assert not train_keys & heldout_keys


def test_every_family_is_in_the_heldout_set_in_turn():
    _, heldout = suite.split_suite(seed=0, train=10, heldout=80)
    counts = {family: sum(t.family == family for t in heldout) for family in suite.DEFAULT_FAMILIES}
    assert counts == {family: 80 // len(suite.DEFAULT_FAMILIES) for family in suite.DEFAULT_FAMILIES}


def test_a_request_carries_the_verifier_and_the_forced_tool_choice():
    task = suite.generate(seed=0, n=1, families=["weather"])[0]
    body = task.request("r3", max_tokens=40, store=False)
    assert body["verifier"]["type"] == "tool_call" and body["tool_choice"] == suite.TOOL_CHOICE
    assert body["reflect"] == {"max_retries": 1} and body["store"] is False and body["temperature"] == 0.0
    assert "get_weather" in {tool["function"]["name"] for tool in body["tools"]}


def test_exact_mcnemar_matches_hand_computed_values():
    assert sign_test_p_value(5, 0) == 1 / 32
    # 6 of 8 discordant pairs for the later version: (C(8,6) + C(8,7) + C(8,8)) / 2^8 = 37/256.
    assert sign_test_p_value(6, 2) == pytest.approx(37 / 256)
    assert sign_test_p_value(0, 0) == 1.0
    assert sign_test_p_value(0, 3) == 1.0
    assert math.isclose(sign_test_p_value(3, 3), 42 / 64)


def test_paired_counts_only_the_discordant_tasks():
    before = [True, True, False, False, False, True]
    after = [True, False, True, True, False, True]
    assert learn.paired(before, after) == {"after_only": 2, "before_only": 1, "p_one_sided": 0.5, "p_two_sided": 1.0}


def test_the_two_sided_p_doubles_the_smaller_tail_either_way():
    """"Did it move at all", as asked of a scenario's held-out set on the other scenario's lineage."""
    up, down = learn.paired([False] * 5, [True] * 5), learn.paired([True] * 5, [False] * 5)
    assert (up["p_one_sided"], up["p_two_sided"]) == (1 / 32, 1 / 16)
    assert (down["p_one_sided"], down["p_two_sided"]) == (1.0, 1 / 16)
    assert learn.paired([True, False], [True, False])["p_two_sided"] == 1.0


def test_a_canary_phase_has_requests_enough_for_the_canary_to_reach_its_limit():
    """At a share F of the traffic, the canary's limit of N episodes takes about N / F requests: the
    pool holds a quarter more and a batch, so that the server's test, not the bench, ends the phase."""
    config = learn.Config(canary_fraction=0.5, canary_max_episodes=300, concurrency=16)
    assert learn.canary_pool(config) == 750 + 16
    assert learn.canary_pool(learn.Config()) == 0  # no canary, no live canary requests


def test_a_mean_score_has_a_student_t_interval():
    # mean 0.5, s = 0.5, n = 3: 0.5 ± t(0.975, 2) · 0.5 / √3, t(0.975, 2) = 4.302653 (tables)
    summary = learn.mean_score([0.0, 0.5, 1.0, None])
    half = 4.302653 * 0.5 / math.sqrt(3)
    assert (summary["n"], summary["unjudged"], summary["mean"]) == (3, 1, 0.5)
    assert summary["ci95"] == pytest.approx((0.5 - half, 0.5 + half), abs=1e-6)
    assert learn.mean_score([0.25, 0.25])["ci95"] == (0.25, 0.25)
    assert learn.mean_score([None])["mean"] is None


def test_paired_scores_rank_the_differences_and_leave_ties_out():
    # Differences +0.125, +0.25, +0.375, -0.03125 and one tie: ranks 2, 3, 4 up, 1 down, W+ = 9;
    # exact P(W+ >= 9) over the 16 equally likely sign patterns of 4 ranks = 2/16 (sums 9 and 10).
    before = [0.0, 0.0, 0.0, 0.5, 0.75]
    after = [0.125, 0.25, 0.375, 0.46875, 0.75]
    row = learn.paired_scores(before, after)
    assert (row["n"], row["after_higher"], row["before_higher"], row["ties"]) == (5, 3, 1, 1)
    assert row["p_one_sided"] == pytest.approx(2 / 16)
    assert row["mean_difference"] == pytest.approx(0.14375)
    low, high = row["mean_difference_ci95"]
    assert low < 0 < row["mean_difference"] < high  # a t interval around the mean difference
    # A pass/fail rise on every task is a rise too, and no difference at all is p = 1.
    assert learn.paired_scores([0.0] * 6, [1.0] * 6)["p_one_sided"] == pytest.approx(1 / 64)
    assert learn.paired_scores([0.5, None], [0.5, 1.0]) == {
        "n": 1, "after_higher": 0, "before_higher": 0, "ties": 1, "mean_difference": 0.0, "p_one_sided": 1.0,
        "mean_difference_ci95": (0.0, 0.0), "t_test_p_one_sided": None}



PLOTTING = ("canary", "episode_log", "hot_swap", "multi_adapter", "overhead", "reflect_retry", "rescue")


@pytest.mark.parametrize("name", PLOTTING)
def test_a_benchmark_without_its_extra_stops_before_any_work(name, monkeypatch) -> None:
    """The two-scenario run once ended at its plot after 51 minutes, matplotlib missing: every
    benchmark that plots checks the bench extra before it starts anything."""
    module = importlib.import_module(f"bench.{name}")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an environment without it imports
    monkeypatch.setattr(sys, "argv", [name])
    with pytest.raises(SystemExit) as stopped:
        module.main()
    assert str(stopped.value) == NO_EXTRA


def test_the_learning_run_without_its_extra_stops_before_any_work(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as stopped:
        learn.main(dataclasses.replace(learn.PLANTED, scenarios=2))
    assert str(stopped.value) == NO_EXTRA


NO_EXTRA = "the benchmarks need matplotlib (the bench extra): pip install -e '.[bench]', or make bench"
