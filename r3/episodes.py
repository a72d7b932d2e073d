"""Episodes: what one verified request (and the feedback on it) leaves behind for the trainer.

An episode holds the task (messages, tools, verifier spec) and every attempt the server made at
it: the output, its tokens, the verifier's verdict and the reflection that preceded it. With
`store: false` no text is kept (messages, outputs, reflections, token ids), only the numbers.

A request whose client hung up before its answer was ready is recorded too, as far as it got: its
last attempt's finish_reason is "abandoned", and the trainer never learns from such an episode.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from verifiers import is_replayable

ABANDONED = "abandoned"  # the finish_reason of the attempt being made when the client hung up


def new_episode_id() -> str:
    return f"ep_{uuid.uuid4().hex}"


@dataclass
class Feedback:
    """A client's later verdict on an attempt (`POST /feedback`); it overrides the verifier's."""

    success: bool
    detail: str | None
    received_at: float = field(default_factory=time.time)
    score: float | None = None  # in [0, 1]; None: the client sent only `success`, which scores 1.0 or 0.0

    @property
    def graded(self) -> float:
        return self.score if self.score is not None else float(self.success)


@dataclass
class AttemptRecord:
    number: int  # 1 is the first attempt; n > 1 followed reflection n - 1
    completion_id: str
    finish_reason: str  # stop | length | abandoned (the client hung up while it was made or judged)
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI form: {"id", "type", "function": {...}}
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    reflection: str | None = None  # the reflection written before this attempt
    reflection_tokens: int = 0
    success: bool | None = None  # None: not judged (no verifier, the client hung up, or the judge failed)
    detail: str | None = None  # the verdict's detail; for an unjudged attempt, why the judge gave none
    score: float | None = None  # the verdict's score in [0, 1] (`verifiers.Verdict.score`); None when success is
    feedback: Feedback | None = None
    judge_calls: int = 0  # model-judge calls made to judge this attempt (`verifiers.JudgeUsage`)
    judge_prompt_tokens: int = 0
    judge_completion_tokens: int = 0

    @property
    def passed(self) -> bool | None:
        """Client feedback, where given, overrides the verifier."""
        return self.feedback.success if self.feedback else self.success

    @property
    def graded(self) -> float | None:
        """The attempt's score in [0, 1]: the client's feedback where given, else the verifier's."""
        return self.feedback.graded if self.feedback else self.score

    @property
    def unjudged(self) -> bool:
        """Whether its verifier looked at it but could give no verdict (`verifiers.Verdict.unjudged`;
        `detail` says why): every verdict writes a detail, and nothing else does. Not so for an attempt
        with no verifier, or one cut off before it was judged. Client feedback may judge it still."""
        return self.success is None and self.detail is not None


@dataclass
class Episode:
    id: str
    tenant: str | None
    model: str
    adapter: str | None  # None: the base model
    task_kind: str
    verifier: dict[str, Any] | None
    store_text: bool
    messages: list[dict[str, Any]] | None
    tools: list[dict[str, Any]] | None
    tool_choice: str | dict[str, Any] | None
    sampling: dict[str, Any] = field(default_factory=dict)  # the request's SamplingParams, to replay it
    attempts: list[AttemptRecord] = field(default_factory=list)
    scenario: str = "default"  # the workload it served (`r3.store.scenarios`): whose lineage learns from it
    category: str | None = None  # the client's task family (`metadata.category`), for the gate's retained set
    canary: bool | None = None  # served by its scenario's live canary (True) or beside it (False); else None
    # A request made through OpenAI's Responses API (`POST /v1/responses`): what it asked beyond its task
    # (`instructions`, `previous_response_id`, `metadata`, `text`, ...) and its usage, as JSON, which
    # `GET /v1/responses/{id}` answers with and a later request's `previous_response_id` continues from
    # (`server.responses`); None for a chat completion.
    responses_api: dict[str, Any] | None = None
    created_at: float = field(default_factory=time.time)
    revision: int = 0  # raised by every save, so an older copy can never overwrite a newer one

    @property
    def latest(self) -> AttemptRecord:
        return self.attempts[-1]

    @property
    def abandoned(self) -> bool:
        """Whether the client hung up before the answer was ready."""
        return bool(self.attempts) and self.latest.finish_reason == ABANDONED

    @property
    def outcome(self) -> bool | None:
        return self.latest.passed if self.attempts else None

    @property
    def replayable(self) -> bool:
        """Whether the trainer may judge this episode's answers again: it has a verifier of a type
        registered as replayable (`verifiers.VerifierType.replayable`)."""
        return is_replayable(self.verifier)

    def attempt(self, number: int) -> AttemptRecord:
        return self.attempts[number - 1]

    def retry_of(self, number: int) -> AttemptRecord | None:
        """The attempt made after reflecting on attempt `number` (which carries that reflection), or None."""
        return self.attempts[number] if number < len(self.attempts) else None


def episode_to_dict(episode: Episode) -> dict[str, Any]:
    """A JSON-ready view of the episode (shallow: it shares the episode's lists; don't mutate it).

    Written out by hand because `dataclasses.asdict` deep-copies, which is most of the cost of
    journaling an episode.
    """
    attempts = [{**vars(a), "feedback": vars(a.feedback) if a.feedback else None} for a in episode.attempts]
    return {**vars(episode), "attempts": attempts}


def episode_from_dict(data: dict[str, Any]) -> Episode:
    attempts = []
    for attempt in data["attempts"]:
        feedback = Feedback(**attempt["feedback"]) if attempt.get("feedback") else None
        if "score" not in attempt and attempt.get("success") is not None:  # journaled before verdicts had scores
            attempt = {**attempt, "score": float(attempt["success"])}
        attempts.append(AttemptRecord(**{**attempt, "feedback": feedback}))
    return Episode(**{**data, "attempts": attempts})
