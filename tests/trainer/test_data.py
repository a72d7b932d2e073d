"""Selecting failures and successes from episodes; deterministic split, dedupe, balance."""

from __future__ import annotations

from collections import Counter

from r3.engines.base import SamplingParams
from r3.episodes import AttemptRecord, Episode, Feedback
from r3.reflect_retry import recorded_task
from trainer.data import (
    Failure,
    balance,
    dedupe,
    failures_from_episodes,
    first_attempt_successes,
    retained_set,
    split,
)

EXACT = {"type": "exact", "expected": "Paris"}


def episode(number: int, *, first_success: bool | None = False, verifier: dict | None = EXACT, store_text: bool = True,
            feedback: Feedback | None = None, question: str | None = None, kind: str = "generic",
            category: str | None = None) -> Episode:
    messages = [{"role": "user", "content": question or f"Question {number}?"}]
    attempt = AttemptRecord(number=1, completion_id=f"c{number}", finish_reason="stop", prompt_tokens=5,
                            completion_tokens=1, latency_s=0.1, success=first_success,
                            detail=None if first_success else "the answer is not the expected answer",
                            feedback=feedback)
    if store_text:
        attempt.content = "London"
    return Episode(id=f"ep_{number}", tenant=None, model="m", adapter=None, task_kind=kind, verifier=verifier,
                   store_text=store_text, messages=messages if store_text else None, tools=None, tool_choice=None,
                   sampling={"max_tokens": 32, "temperature": 1.0, "top_p": 1.0, "seed": None, "stop": [],
                             "top_logprobs": 0},
                   attempts=[attempt], category=category)


def failure(number: int, kind: str = "generic", question: str | None = None) -> Failure:
    return Failure(episode_id=f"ep_{number}", messages=[{"role": "user", "content": question or f"Question {number}?"}],
                   tools=None, tool_choice=None, failed_attempt={"role": "assistant", "content": "London"},
                   detail="", verifier=EXACT, task_kind=kind, sampling={})


def test_only_replayable_failed_first_attempts_are_selected():
    episodes = [
        episode(1),  # kept
        episode(2, first_success=True),  # passed
        episode(3, verifier=None),  # nothing to replay
        episode(4, store_text=False),  # no text to train on
        episode(5, first_success=None),  # never judged
        # The client said it failed, the verifier passed it: replaying the verifier would reward the rejected answer.
        episode(6, first_success=True, feedback=Feedback(success=False, detail="the tool returned 404")),
        episode(7, feedback=Feedback(success=False, detail="HTTP 404 from the tool")),  # kept, with the client's detail
        episode(8, feedback=Feedback(success=True, detail=None)),  # the client overruled the verifier
    ]
    failures = failures_from_episodes(episodes)
    assert [f.episode_id for f in failures] == ["ep_1", "ep_7"]
    first = failures[0]
    assert first.failed_attempt == {"role": "assistant", "content": "London"}
    assert first.detail == "the answer is not the expected answer"
    assert first.messages == [{"role": "user", "content": "Question 1?"}]
    assert first.verifier == EXACT and first.task_kind == "generic" and first.sampling["max_tokens"] == 32
    assert failures[1].detail == "HTTP 404 from the tool"


def test_first_attempt_successes_are_replayable_verifier_passes():
    episodes = [episode(1, first_success=True), episode(2), episode(3, first_success=True, store_text=False),
                episode(4, first_success=True, feedback=Feedback(success=False, detail=None))]
    assert [s.episode_id for s in first_attempt_successes(episodes)] == ["ep_1"]


def test_an_item_has_the_task_family_of_its_verifier_and_the_clients_category():
    """The gate's families: the verifier's type, and the client's `metadata.category` where it named one."""
    weather = {"type": "tool_call", "name": "get_weather"}
    [failed] = failures_from_episodes([episode(1, verifier=weather, category="weather")])
    passed = first_attempt_successes([episode(2, first_success=True, category="capitals"),
                                      episode(3, first_success=True)])
    assert failed.category == "weather" and failed.family == "tool_call/weather"
    assert [s.family for s in passed] == ["exact/capitals", "exact"]


def test_the_retained_set_takes_each_family_in_turn_up_to_its_size():
    """Equal allocation: a rare family keeps every item it has while a common one fills the rest, one
    prompt each, in log order within a family."""
    common = [episode(n, first_success=True, category="common") for n in range(20)]
    rare = [episode(100 + n, first_success=True, category="rare") for n in range(2)]
    repeated = episode(200, first_success=True, category="rare", question="Question 100?")  # rare's first prompt again
    successes = first_attempt_successes([*common[:10], *rare, repeated, *common[10:]])
    retained = retained_set(successes, 8)
    assert Counter(s.family for s in retained) == {"exact/common": 6, "exact/rare": 2}
    assert [s.episode_id for s in retained[:4]] == ["ep_0", "ep_100", "ep_1", "ep_101"]
    assert [s.episode_id for s in retained if s.category == "common"] == [f"ep_{n}" for n in range(6)]
    assert len(retained_set(successes, 100)) == 22 and retained_set(successes, 0) == []


def test_dedupe_keeps_the_first_failure_of_each_prompt():
    failures = [failure(1, question="Same?"), failure(2, question="Other?"), failure(3, question="Same?")]
    assert [f.episode_id for f in dedupe(failures)] == ["ep_1", "ep_2"]


def test_split_is_deterministic_disjoint_and_by_prompt():
    failures = [failure(n) for n in range(400)]
    train, heldout = split(failures, 0.25)
    assert split(list(reversed(failures)), 0.25) == (list(reversed(train)), list(reversed(heldout)))
    assert {f.episode_id for f in train}.isdisjoint({f.episode_id for f in heldout})
    assert len(train) + len(heldout) == 400
    assert 60 < len(heldout) < 140  # about a quarter

    # A later round: the same prompts recorded again (new episodes) land on the same side.
    again = [failure(1000 + n, question=f"Question {n}?") for n in range(400)]
    train_again, heldout_again = split(again, 0.25)
    assert {f.messages[0]["content"] for f in heldout_again} == {f.messages[0]["content"] for f in heldout}
    assert {f.messages[0]["content"] for f in train_again} == {f.messages[0]["content"] for f in train}


def test_split_deduplicates_before_assigning():
    train, heldout = split([failure(1, question="Same?"), failure(2, question="Same?")], 0.5)
    assert len(train) + len(heldout) == 1
    assert split([failure(1)], 0.0) == ([failure(1)], [])
    assert split([failure(1)], 1.0) == ([], [failure(1)])


def test_balance_caps_each_kind_and_interleaves():
    failures = ([failure(n, "function_calling") for n in range(10)] + [failure(100 + n, "countdown") for n in range(3)]
                + [failure(200, "math")])
    balanced = balance(failures, factor=2.0)
    assert Counter(f.task_kind for f in balanced) == {"function_calling": 2, "countdown": 2, "math": 1}
    assert [f.task_kind for f in balanced[:3]] == ["function_calling", "countdown", "math"]
    assert [f.episode_id for f in balanced if f.task_kind == "function_calling"] == ["ep_0", "ep_1"]  # log order
    assert balance([]) == []


def test_recorded_task_replays_the_request():
    task = recorded_task(failure(1), adapter="r3-v2", params=SamplingParams(max_tokens=8, temperature=0.0))
    assert task.adapter == "r3-v2" and task.params.max_tokens == 8
    assert task.verifier.type == "exact" and task.task_kind == "generic" and task.max_retries == 1
