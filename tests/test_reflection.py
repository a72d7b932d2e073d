"""The reflect-retry protocol: the conversations the server retries with and the trainer trains on."""

from __future__ import annotations

import pytest

from r3.reflection import (
    REFLECTION_TEMPLATES,
    RESTATED_TASK_MAX_CHARS,
    FailedAttempt,
    assistant_message,
    reflection_conversation,
    reflection_request,
    retry_conversation,
)

TASK = [{"role": "system", "content": "You are careful."},
        {"role": "user", "content": "Use 3, 5, 8 to make 24."}]
CALL = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]


def test_the_reflection_follows_the_failed_attempt_with_the_verifiers_detail() -> None:
    failed = FailedAttempt(assistant_message("<answer>3+5+8</answer>"), detail="3+5+8 = 16, not 24")
    conversation = reflection_conversation(TASK, [failed], "countdown")
    assert conversation[:2] == TASK
    assert conversation[2] == {"role": "assistant", "content": "<answer>3+5+8</answer>"}
    request = conversation[3]
    assert request["role"] == "user" and len(conversation) == 4
    assert "your equation was wrong" in request["content"]
    assert "The checker said: 3+5+8 = 16, not 24." in request["content"]
    assert "Reflect on what went wrong" in request["content"]


def test_the_retry_restates_the_task_after_the_reflection() -> None:
    failed = FailedAttempt(assistant_message(None, CALL), detail="wrong tool", reflection="I should call g.")
    conversation = retry_conversation(TASK, [failed], "function_calling")
    assert conversation[2] == {"role": "assistant", "content": None, "tool_calls": CALL}
    assert "failed to generate the correct tool call" in conversation[3]["content"]
    assert conversation[4] == {"role": "assistant", "content": "I should call g."}
    assert conversation[5]["role"] == "user" and conversation[5]["content"].endswith("Use 3, 5, 8 to make 24.")
    assert len(conversation) == 6


def test_a_long_task_is_pointed_to_not_restated() -> None:
    # Restating a passage would prefill it all again: a rescue would cost more than its generated tokens.
    passage = "The lighthouse stood on the rock. " * 40 + "Who kept it?"
    assert len(passage) > RESTATED_TASK_MAX_CHARS
    long_task = [{"role": "user", "content": passage}]
    failed = FailedAttempt(assistant_message("Nobody."), "wrong", "Read the passage again.")
    retry = retry_conversation(long_task, [failed], "generic")[-1]
    assert retry["role"] == "user" and "lighthouse" not in retry["content"]
    assert "my last message before your failed answer" in retry["content"]
    at_the_limit = [{"role": "user", "content": passage[-RESTATED_TASK_MAX_CHARS:]}]
    assert retry_conversation(at_the_limit, [failed], "generic")[-1]["content"].endswith(passage[-RESTATED_TASK_MAX_CHARS:])


def test_a_second_failure_continues_the_same_conversation() -> None:
    first = FailedAttempt(assistant_message("16"), "no", "Multiply.")
    second = FailedAttempt(assistant_message("3*5*8"), "120", None)
    conversation = reflection_conversation(TASK, [first, second], "countdown")
    roles = [m["role"] for m in conversation]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user", "assistant", "user"]
    assert conversation[5]["content"].startswith("Now try the task again")
    assert conversation[6]["content"] == "3*5*8" and "120" in conversation[7]["content"]
    # the prefix is exactly the first round's retry conversation
    assert conversation[:6] == retry_conversation(TASK, [first], "countdown")


def test_each_task_kind_has_its_wording_and_unknown_kinds_fall_back() -> None:
    assert len({reflection_request(kind)["content"] for kind in REFLECTION_TEMPLATES}) == len(REFLECTION_TEMPLATES)
    assert reflection_request("poetry") == reflection_request("generic")
    assert "checker" not in reflection_request("math", "   ")["content"]


def test_conversations_refuse_an_inconsistent_history() -> None:
    with pytest.raises(ValueError):
        reflection_conversation(TASK, [], "generic")
    with pytest.raises(ValueError):
        reflection_conversation(TASK, [FailedAttempt(assistant_message("x"), "", "done")], "generic")
    with pytest.raises(ValueError):
        retry_conversation(TASK, [FailedAttempt(assistant_message("x"), "")], "generic")
