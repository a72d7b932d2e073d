"""The planted suite's verifier, through R3's own webhook verifier: the retry passes iff the
reflection before it is short, whatever the retry says; attempt 1 as its mode says."""

from __future__ import annotations

from bench import planted
from r3.reflection import FailedAttempt, retry_conversation
from verifiers import Attempt, TaskContext, VerifierRuntime, WebhookPolicy, parse_spec, verify


async def judge(task, answer: str, conversation: list[dict], number: int) -> bool:
    context = TaskContext(messages=tuple(conversation), episode_id="e", attempt_number=number)
    verdict = await verify(parse_spec(task.verifier), Attempt(content=answer), context,
                           VerifierRuntime(WebhookPolicy(allow_loopback=True)))
    return verdict.success


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


def test_training_and_heldout_prompts_are_disjoint_and_the_stream_alternates_modes() -> None:
    train, heldout = planted.split_planted(0, 40, 40, "http://127.0.0.1:9")
    assert not {t.prompt for t in train} & {t.prompt for t in heldout}
    assert [t.family for t in train[:4]] == ["planted-number", "planted-fail"] * 2
    assert {t.family for t in heldout} == {"planted-fail"}
