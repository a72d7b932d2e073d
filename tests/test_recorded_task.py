"""From a recorded episode back to a task: one builder for /feedback, the trainer and the gate, and the
reflections read from what each attempt carries."""

from __future__ import annotations

import pytest

from r3.engines.base import SamplingParams
from r3.episodes import AttemptRecord, Episode, Feedback
from r3.reflect_retry import recorded_failures, recorded_task
from r3.reflection import FailedAttempt, assistant_message
from trainer.data import failures_from_episodes

EXACT = {"type": "exact", "expected": "Paris"}
SAMPLING = {"max_tokens": 16, "temperature": 0.0, "stop": ["\n\n"]}


def attempt(number: int, content: str, reflection: str | None = None, **verdict) -> AttemptRecord:
    return AttemptRecord(number=number, completion_id=f"c{number}", finish_reason="stop", prompt_tokens=5,
                         completion_tokens=1, latency_s=0.1, content=content, reflection=reflection, **verdict)


def recorded(*attempts: AttemptRecord, verifier: dict | None = EXACT) -> Episode:
    return Episode(id="ep_1", tenant=None, model="m", adapter="r3-v3", task_kind="generic", verifier=verifier,
                   store_text=True, messages=[{"role": "user", "content": "Capital of France?"}], tools=None,
                   tool_choice=None, sampling=SAMPLING, attempts=list(attempts))


def test_each_failure_carries_the_reflection_its_retry_followed() -> None:
    episode = recorded(
        attempt(1, "London", success=False, detail="not the expected answer"),
        attempt(2, "Lyon", reflection="I named the wrong country's capital.", success=True,
                feedback=Feedback(success=False, detail="Lyon is not the capital")),
        attempt(3, "Marseille", reflection="Lyon is a city, not the capital.", success=False, detail="wrong"),
    )
    assert recorded_failures(episode) == [
        FailedAttempt(assistant_message("London"), "not the expected answer", "I named the wrong country's capital."),
        FailedAttempt(assistant_message("Lyon"), "Lyon is not the capital", "Lyon is a city, not the capital."),
        FailedAttempt(assistant_message("Marseille"), "wrong", None),  # the one to reflect on next
    ]
    assert recorded_failures(recorded(attempt(1, "London", success=False))) == [
        FailedAttempt(assistant_message("London"), "", None)]
    assert episode.retry_of(1) is episode.attempt(2) and episode.retry_of(3) is None


def test_an_episode_and_the_trainers_item_of_it_become_the_same_task() -> None:
    episode = recorded(attempt(1, "London", success=False, detail="not the expected answer"))
    [item] = failures_from_episodes([episode])
    from_episode = recorded_task(episode, model="m", adapter="r3-v3")
    assert recorded_task(item, model="m", adapter="r3-v3") == from_episode
    assert from_episode.params == SamplingParams(max_tokens=16, temperature=0.0, stop=("\n\n",))
    assert from_episode.verifier.type == "exact" and from_episode.max_retries == 1
    greedy = SamplingParams(max_tokens=4, temperature=0.0)
    assert recorded_task(item, params=greedy).params is greedy


@pytest.mark.parametrize("verifier", [{"type": "exact"}, {"type": "retired_type", "expected": "Paris"}])
def test_a_stored_verifier_that_no_longer_validates_is_refused(verifier: dict) -> None:
    with pytest.raises(ValueError):
        recorded_task(recorded(attempt(1, "London", success=False), verifier=verifier))
