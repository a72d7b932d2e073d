"""What verifiers may use beyond a spec and an answer, built once per process and handed in once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from verifiers.base import JudgeUsage
from verifiers.webhook import WebhookPolicy, webhook_client


@dataclass(frozen=True)
class JudgeSampling:
    """How a model judge samples its answer: a grader's `sampling_params` as OpenAI's graders name
    them (`max_completions_tokens` is `max_completion_tokens` here, as chat completions name it).
    None: the judge's own default."""

    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    max_completion_tokens: int | None = None
    reasoning_effort: str | None = None  # for reasoning models behind an HTTP judge; the engine ignores it


@dataclass(frozen=True)
class JudgeReply:
    """A model judge's answer: its text (JSON under the schema it was asked for) and what it cost."""

    text: str
    usage: JudgeUsage


class JudgeFailed(Exception):
    """The model judge gave no usable answer (down, timed out after its retries, refused, cut off by its
    token limit, an HTTP error); the message says why, `usage` what the calls made before cost."""

    def __init__(self, reason: str, usage: JudgeUsage | None = None) -> None:
        super().__init__(reason)
        self.usage = usage or JudgeUsage()


class ModelJudge(Protocol):
    """A chat model that judges answers for the model graders (`score_model`, `label_model`):
    an OpenAI-compatible server (`r3.judge.HttpJudge`) or this process's own engine
    (`r3.judge.EngineJudge`)."""

    def model_problem(self, model: str) -> str | None:
        """Why `model` cannot judge here (a sentence for a 400), or None when it can."""
        ...

    async def complete(self, model: str, messages: list[dict[str, Any]], json_schema: dict[str, Any],
                       sampling: JudgeSampling) -> JudgeReply:
        """`model`'s answer to `messages` (OpenAI chat messages), held to `json_schema` (OpenAI's
        `response_format.json_schema` object: `name`, `schema`, `strict`). Raises `JudgeFailed`, and
        nothing else, when there is no answer to read."""
        ...


@dataclass(frozen=True)
class VerifierRuntime:
    """The process's means of judging, for the verifier types that need more than their spec
    (`VerifierType.judge_with`, `VerifierType.admit`): the operator's webhook policy, the HTTP client
    webhooks are posted with, the sleep their retries back off with, and the model judge of the model
    graders (None: this process has none, and refuses them).

    The server builds one from its settings (`r3.reflect_retry.verifier_runtime`) and hands it to its
    `Reflector`; the trainer and the gate build theirs the same way. The default runtime allows no
    webhook host at all, and has no model judge.
    """

    webhooks: WebhookPolicy = field(default_factory=WebhookPolicy)
    http_client: Callable[[], httpx.AsyncClient] = webhook_client  # a new client, closed by its user
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # seconds
    judge: ModelJudge | None = None
