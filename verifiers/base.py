"""What every verifier shares: the attempt it judges, the request's context, the verdict, the spec base."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

MAX_DETAIL_CHARS = 300


@dataclass(frozen=True)
class ToolCall:
    """A function call as OpenAI's API carries it; the one type for it in R3 (parsed from model
    output by `r3.chat_format`, judged here, recorded in episodes)."""

    name: str
    arguments: str  # JSON object as a string, as OpenAI sends it
    id: str = ""  # the call's id in the response (`call_...`); set once the completion's id is known


@dataclass(frozen=True)
class Attempt:
    """What the model produced, to be judged."""

    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class TaskContext:
    """What the request offered, for verifiers that need it."""

    tools: tuple[dict, ...] = ()  # OpenAI tool dicts {"type": "function", "function": {"name", "parameters"...}}
    tool_choice: str | dict | None = None
    messages: tuple[dict, ...] = ()  # the OpenAI request messages (plain dicts)
    episode_id: str = ""
    attempt_number: int = 1  # 1 = first attempt, 2 = first retry, ...


@dataclass(frozen=True)
class JudgeUsage:
    """What judging an attempt cost in model calls (`score_model`, `label_model`): calls made, retries
    included, and their tokens as the judge's `usage` reported them."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: JudgeUsage) -> JudgeUsage:
        return JudgeUsage(self.calls + other.calls, self.prompt_tokens + other.prompt_tokens,
                          self.completion_tokens + other.completion_tokens)


@dataclass(frozen=True)
class Verdict:
    """A verifier's judgement of one attempt.

    - `success`: whether the attempt passed, which decides whether it is reflected on and retried.
      None means *unjudged*: the judge could not give a verdict (a model judge down, timed out, or
      answering unreadably); `detail` says why. An unjudged attempt is not retried, not trained on and
      counted neither as a pass nor as a failure.
    - `score`: how good the attempt is, in [0, 1]; what GRPO rewards and the gate compares. A
      pass/fail check scores 1.0 or 0.0 (the default, from `success`); a grader that scores on a scale
      decides `success` by its `pass_threshold` (`Verdict.graded`). None exactly when unjudged.
    - `detail`: short and human-readable; the reflection prompt shows it to the model.
    - `usage`: model calls the judging made (None: none).
    """

    success: bool | None
    detail: str = ""
    score: float | None = None
    usage: JudgeUsage | None = None

    def __post_init__(self) -> None:
        # Details quote model output and webhook replies; clipping here keeps every verifier within bounds.
        if len(self.detail) > MAX_DETAIL_CHARS:
            object.__setattr__(self, "detail", self.detail[: MAX_DETAIL_CHARS - 1] + "…")
        if self.success is None:
            if self.score is not None:
                raise ValueError("an unjudged verdict has no score")
        elif self.score is None:
            object.__setattr__(self, "score", 1.0 if self.success else 0.0)
        elif not 0.0 <= self.score <= 1.0:
            raise ValueError(f"a verdict's score is in [0, 1], not {self.score!r}")

    @classmethod
    def graded(cls, score: float, pass_threshold: float, detail: str = "",
               usage: JudgeUsage | None = None) -> Verdict:
        """A verdict on a scale: passed when `score` (clamped to [0, 1]) reaches `pass_threshold`."""
        score = min(1.0, max(0.0, score))
        return cls(score >= pass_threshold, detail, score, usage)

    @classmethod
    def unjudged(cls, reason: str, usage: JudgeUsage | None = None) -> Verdict:
        """No verdict: the judge failed for `reason`."""
        return cls(None, reason, None, usage)

    @property
    def failed(self) -> bool:
        """Judged, and not passed: what a reflect-retry follows."""
        return self.success is False


class UnreadableOutput(Exception):
    """The model's output cannot be read the way a verifier needs; the message says why, for the detail."""


class ClientInput(BaseModel):
    """The base of every model a client's JSON is read into (the server's request bodies, verifier
    specs, replay tasks): an unknown field is refused, not ignored, and nothing is coerced — a boolean
    must be a JSON boolean (`"true"`, `1` are not), a number a JSON number (`"0.1"`, `true` are not;
    an integer is a number, but `5.0` is not an integer), a string a JSON string.

    Strictness is pydantic's strict mode, set here once. It does not reach into a nested model whose
    own config is lax, so every nested model must derive from this class as well.
    """

    model_config = ConfigDict(extra="forbid", strict=True)


_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")


def validation_message(error: Any) -> str:
    """One of a pydantic `ValidationError`'s `errors()` as a client reads it: its message without
    pydantic's "Value error, " prefix (which says only that a validator raised `ValueError`)."""
    message = error.get("msg", "invalid input")
    for prefix in _PYDANTIC_PREFIXES:
        message = message.removeprefix(prefix)
    return message


class SpecBase(ClientInput):
    """A verifier's task spec as the client sends it (strict: see `ClientInput`)."""

    model_config = ConfigDict(frozen=True)

    @property
    def pass_score(self) -> float | None:
        """The score in [0, 1] from which an answer passes, for a spec that grades on a scale (a grader's
        `pass_threshold`, on R3's [0, 1] scale); None for a pass/fail check. A client's feedback score
        is read against it (`POST /feedback`)."""
        return None

    @property
    def task_kind(self) -> str:
        """The kind of task its type judges (`VerifierType.task_kind`): which reflection prompt a failure gets."""
        from verifiers.registry import verifier_type  # the registry imports this module

        return verifier_type(self).task_kind


def quote(value: Any, limit: int = 60) -> str:
    """A JSON value as it would be written, shortened to fit in a verdict's detail."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"
