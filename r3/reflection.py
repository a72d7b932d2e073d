"""The reflect-retry protocol: the one place that words the reflection and builds the retry.

After a failed attempt the conversation grows like this (OpenAI messages, plain dicts):

    ...the request's messages...
    assistant: <the failed attempt, unchanged: its text and tool calls>
    user:      <reflection request for the task kind, with the verifier's detail>
    assistant: <the model's reflection>                 <- the only tokens GRPO rewards
    user:      <retry request, restating the task (a long one is pointed to instead)>
    assistant: <the retry>                              <- judged by the same verifier

A second failure appends another (attempt, reflection request, reflection, retry request) round.
The server builds its retries here and the trainer builds its prompts here, so a reflection is
rendered and tokenized the same way when it is served and when it is trained on.

The wording follows "Reflect, Retry, Reward" (Bensal et al., 2025): the model is told it failed,
asked to reflect on what went wrong and to write a short explanation that helps it do better next
time, and then asked to do the task again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from r3.chat_format import message_text

_REFLECT = (
    "Reflect on what went wrong and write a short explanation that will help you do better next "
    "time. Do not answer the task yet."
)

REFLECTION_TEMPLATES: dict[str, str] = {
    "function_calling": "You tried performing the task, but failed to generate the correct tool call.{detail} "
    + _REFLECT,
    "countdown": "You tried solving the problem, but your equation was wrong.{detail} " + _REFLECT,
    "math": "You tried solving the problem, but your answer was wrong.{detail} " + _REFLECT,
    "generic": "You tried performing the task, but your answer was not accepted.{detail} " + _REFLECT,
}
RETRY_TEMPLATE = "Now try the task again, using your reflection. The task was:\n\n{task}"
LONG_TASK_RETRY = "Now try the task again, using your reflection. The task is my last message before your failed answer."
# A task restated costs its whole prefill again, though the conversation above holds it verbatim (and a
# prefix cache its keys and values): a short one costs little and keeps it beside the retry for a small
# model; a long one (a document, a passage: about 250 tokens and up) is pointed to instead.
RESTATED_TASK_MAX_CHARS = 1_000


@dataclass(frozen=True)
class FailedAttempt:
    """One failed attempt: the assistant message as produced, why it failed, and the reflection on it."""

    message: dict[str, Any]  # {"role": "assistant", "content": ..., "tool_calls": [...]?}
    detail: str = ""
    reflection: str | None = None  # None while it is still to be written


def assistant_message(content: str | None, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An attempt as an OpenAI assistant message (tool calls in OpenAI's `{"function": ...}` form)."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def reflection_request(task_kind: str, detail: str = "") -> dict[str, str]:
    template = REFLECTION_TEMPLATES.get(task_kind, REFLECTION_TEMPLATES["generic"])
    said = f" The checker said: {detail.strip()}" if detail.strip() else ""
    if said and not said.endswith((".", "!", "?")):
        said += "."
    return {"role": "user", "content": template.format(detail=said)}


def retry_request(messages: list[dict[str, Any]]) -> dict[str, str]:
    """The user turn asking for the retry: it restates the task (`task_statement`) up to
    `RESTATED_TASK_MAX_CHARS` characters, and points to a longer one."""
    task = task_statement(messages)
    if len(task) > RESTATED_TASK_MAX_CHARS:
        return {"role": "user", "content": LONG_TASK_RETRY}
    return {"role": "user", "content": RETRY_TEMPLATE.format(task=task)}


def task_statement(messages: list[dict[str, Any]]) -> str:
    """The task as the client last stated it: the text of the last user message."""
    for message in reversed(messages):
        if message["role"] == "user":
            return message_text(message.get("content"))
    return ""


def reflection_conversation(messages: list[dict[str, Any]], failures: list[FailedAttempt], task_kind: str) -> list[dict[str, Any]]:
    """The conversation whose next assistant turn is the reflection on the last failure."""
    if not failures or failures[-1].reflection is not None:
        raise ValueError("the last failed attempt must still lack its reflection")
    return _history(messages, failures, task_kind)


def retry_conversation(messages: list[dict[str, Any]], failures: list[FailedAttempt], task_kind: str) -> list[dict[str, Any]]:
    """The conversation whose next assistant turn is the retry after the last reflection."""
    if not failures or any(failure.reflection is None for failure in failures):
        raise ValueError("every failed attempt needs its reflection before a retry")
    return [*_history(messages, failures, task_kind), retry_request(messages)]


def _history(messages: list[dict[str, Any]], failures: list[FailedAttempt], task_kind: str) -> list[dict[str, Any]]:
    conversation = list(messages)
    for number, failure in enumerate(failures):
        if number:
            conversation.append(retry_request(messages))
        conversation += [failure.message, reflection_request(task_kind, failure.detail)]
        if failure.reflection is not None:
            conversation.append({"role": "assistant", "content": failure.reflection})
    return conversation
