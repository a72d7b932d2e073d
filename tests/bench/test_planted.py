"""The planted suite's verifier, through R3's own webhook verifier: the retry passes iff the
reflection before it is short, whatever the retry says; attempt 1 as its mode says."""

from __future__ import annotations

import pytest

from bench import planted
from r3.reflection import FailedAttempt, retry_conversation
from verifiers import Attempt, TaskContext, Verdict, VerifierRuntime, WebhookPolicy, parse_spec, verify


async def verdict_on(task, answer: str, conversation: list[dict], number: int) -> Verdict:
    context = TaskContext(messages=tuple(conversation), episode_id="e", attempt_number=number)
    return await verify(parse_spec(task.verifier), Attempt(content=answer), context,
                        VerifierRuntime(WebhookPolicy(allow_loopback=True)))


async def judge(task, answer: str, conversation: list[dict], number: int) -> bool:
    return (await verdict_on(task, answer, conversation, number)).success


def retry_after(task, reflection: str) -> list[dict]:
    failed = FailedAttempt({"role": "assistant", "content": "0"}, planted.FAIL_DETAIL, reflection)
    return retry_conversation(task.messages, [failed], "generic")


async def test_retries_pass_iff_the_reflection_is_short_and_first_attempts_as_their_mode_says() -> None:
    with planted.planted_verifier() as url:
        train, heldout = planted.split_planted(0, 8, 4, url)
        number, fail = train[0], heldout[0]
        right = str(number.meta["a"] + number.meta["b"])
        assert await judge(number, f"{number.meta['a']} + {number.meta['b']} = ", number.messages, 1)
        assert await judge(number, right, number.messages, 1)
        assert not await judge(number, "I cannot say.", number.messages, 1)
        assert not await judge(fail, str(fail.meta["a"] + fail.meta["b"]), fail.messages, 1)
        short, long = " ".join(["word"] * planted.MAX_WORDS), " ".join(["word"] * (planted.MAX_WORDS + 1))
        for task in (number, fail):
            assert await judge(task, "anything", retry_after(task, short), 2)
            assert not await judge(task, right, retry_after(task, long), 2)


async def test_a_graded_retry_scores_by_the_reflections_length_and_passes_at_most_max_words() -> None:
    """Through R3's webhook verifier, as the server and the trainer judge: (32 - words) / 32, clamped."""
    with planted.planted_verifier() as url:
        train, heldout = planted.split_planted(0, 8, 4, url, "graded")
        number, fail = train[0], heldout[0]
        for n_words, score in ((0, 1.0), (8, 0.75), (16, 0.5), (17, 0.46875), (24, 0.25), (32, 0.0), (40, 0.0)):
            reflection = " ".join(["word"] * n_words)
            got = await verdict_on(fail, "anything", retry_after(fail, reflection), 2)
            assert (got.score, got.success) == (score, n_words <= planted.MAX_WORDS), n_words
        # Graded and binary agree on pass/fail; attempt 1 stays pass/fail, scored 1 or 0.
        assert (await verdict_on(number, "59 + 63 = ", number.messages, 1)).score == 1.0
        assert (await verdict_on(fail, "42", fail.messages, 1)).score == 0.0
        binary_train, binary_heldout = planted.split_planted(0, 8, 4, url)
        assert [t.prompt for t in binary_train + binary_heldout] == [t.prompt for t in train + heldout]
        assert "reward" not in binary_heldout[0].verifier["url"]  # binary runs judge as before


def test_the_endpoint_refuses_an_unknown_reward() -> None:
    with pytest.raises(ValueError, match="reward"):
        planted.verdict({"attempt": 2, "messages": []}, "fail", "linear")


def test_training_and_heldout_prompts_are_disjoint_and_the_stream_alternates_modes() -> None:
    train, heldout = planted.split_planted(0, 40, 40, "http://127.0.0.1:9")
    assert not {t.prompt for t in train} & {t.prompt for t in heldout}
    assert [t.family for t in train[:4]] == ["planted-number", "planted-fail"] * 2
    assert {t.family for t in heldout} == {"planted-fail"}


def failed_with(task, answer: str, reflection: str) -> list[dict]:
    """The retry conversation after `answer` failed under the value rule (its detail names the value)."""
    failed = FailedAttempt({"role": "assistant", "content": answer}, planted.value_detail(answer), reflection)
    return retry_conversation(task.messages, [failed], "generic")


async def test_value_rule_retries_pass_iff_the_reflection_names_the_failed_answers_number() -> None:
    """Through R3's webhook verifier: attempt 1's detail reports the failing value, and the retry
    passes iff the reflection names it as a whole number, whatever the retry says."""
    with planted.planted_verifier() as url:
        train, heldout = planted.split_planted(0, 8, 4, url, rule="value")
        number, fail = train[0], heldout[0]
        first = await verdict_on(fail, "59 + 63 = ", fail.messages, 1)
        assert not first.success and first.detail == "the answer 59 was not accepted"
        assert (await verdict_on(fail, "I cannot say", fail.messages, 1)).detail == planted.NO_VALUE_DETAIL
        assert await judge(number, "59 + 63 = ", number.messages, 1)  # first=number as under the short rule
        for reflection, passes in (("I wrote 59, which is only the first number.", True), ("59", True),
                                   ("The sum is 122, not 63.", False), ("I wrote 159.", False),
                                   ("It was 5.9 or 59.5 but never right.", False), ("Add both numbers.", False)):
            assert await judge(fail, "122", failed_with(fail, "59 + 63 = ", reflection), 2) is passes, reflection
        # A failed answer without a number has no failing value: no reflection passes.
        assert not await judge(fail, "122", failed_with(fail, "To add them", "There was no 59 in it."), 2)
        # Length does not matter under this rule, nor the value under the short one.
        long = "I said 59 " + " ".join(["word"] * 40)
        assert await judge(fail, "x", failed_with(fail, "59 + 63 = ", long), 2)
        short_train, short_heldout = planted.split_planted(0, 8, 4, url)
        assert not await judge(short_heldout[0], "x", failed_with(short_heldout[0], "59 + 63 = ", long), 2)
        assert [t.prompt for t in short_train + short_heldout] == [t.prompt for t in train + heldout]
        assert "rule" not in short_heldout[0].verifier["url"]  # short-rule runs judge as before


def test_the_failing_value_is_the_first_whole_number_of_the_answer() -> None:
    assert planted.failing_value("59 + 63 = ") == "59"
    assert planted.failing_value("To add 61 and 4") == "61"
    assert planted.failing_value("Sure, here's a corrected version:") is None
    assert planted.names_value("so 61 was wrong", "61") and not planted.names_value("so 610 was wrong", "61")
    assert not planted.names_value("anything at all", None)


def test_the_value_rule_has_no_graded_reward_and_unknown_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="rule"):
        planted.verdict({"attempt": 2, "messages": []}, "fail", "graded", "value")
    with pytest.raises(ValueError, match="rule"):
        planted.verdict({"attempt": 2, "messages": []}, "fail", "binary", "polite")
    failures = planted.planted_failures(3, 0, "http://127.0.0.1:9", rule="value")
    assert [f.detail for f in failures] == [f"the answer {f.failed_attempt['content']} was not accepted"
                                            for f in failures]
