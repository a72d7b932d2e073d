"""Reflect-retry orchestration: attempt → verify → (fail) reflect → retry → verify.

The server runs it inside a request; the trainer's gate runs it to compare adapters. Every attempt
and reflection runs on the adapter the task names. The conversations come
from `r3.reflection`, so they are the ones the trainer will learn from. The result is an
`Episode`: the server answers with its last attempt and records it whole.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from r3.chat_format import ChatPrompt, ParsedOutput, parse_tool_calls, render_prompt
from r3.engines.base import Engine, GenerationResult, PromptTooLongError, SamplingParams
from r3.episodes import AttemptRecord, Episode, new_episode_id
from r3.reflection import (
    FailedAttempt,
    assistant_message,
    reflection_conversation,
    retry_conversation,
)
from r3.settings import Settings
from verifiers import (
    Attempt,
    TaskContext,
    ToolCall,
    Verdict,
    VerifierSpec,
    WebhookPolicy,
    verify,
)


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class ChatTask:
    """A validated chat request: everything needed to generate, judge and regenerate its answer."""

    model: str
    adapter: str | None
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    tool_choice: str | dict[str, Any] | None
    params: SamplingParams
    verifier: VerifierSpec | None = None
    max_retries: int = 1
    store_text: bool = True

    @property
    def parses_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def task_kind(self) -> str:
        if self.verifier is not None:
            return self.verifier.task_kind
        return "function_calling" if self.parses_tools else "generic"


@dataclass
class Turn:
    """One generation: its output as text and as parsed tool calls."""

    result: GenerationResult
    text: str  # the forced assistant prefix (if any) + what the engine generated
    parsed: ParsedOutput
    latency_s: float
    completion_id: str = field(default_factory=completion_id)

    def message(self) -> dict[str, Any]:
        return assistant_message(self.parsed.content, openai_tool_calls(self.parsed))


def openai_tool_calls(parsed: ParsedOutput) -> list[dict[str, Any]] | None:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in parsed.tool_calls] or None


def task_of(episode: Episode, verifier: VerifierSpec | None) -> ChatTask:
    """The task an episode recorded, to run again (only episodes that kept their text)."""
    sampling = {**episode.sampling, "stop": tuple(episode.sampling.get("stop", ()))}
    return ChatTask(model=episode.model, adapter=episode.adapter, messages=episode.messages or [],
                    tools=episode.tools, tool_choice=episode.tool_choice, params=SamplingParams(**sampling),
                    verifier=verifier, store_text=episode.store_text)


def webhook_policy(settings: Settings) -> WebhookPolicy:
    return WebhookPolicy(
        allowed_hosts=frozenset(settings.webhook_allowed_hosts),
        allow_loopback=settings.webhook_allow_loopback,
        secret=settings.webhook_secret.get_secret_value() if settings.webhook_secret else None,
        timeout_s=settings.webhook_timeout_s,
        max_attempts=settings.webhook_max_attempts,
    )


@dataclass
class Reflector:
    """Runs attempts, reflections and retries for chat tasks on one engine."""

    engine: Engine
    webhook_policy: WebhookPolicy
    reflection_max_tokens: int = 256

    def prompt(self, task: ChatTask, conversation: list[dict[str, Any]], forced_prefix: bool = True) -> ChatPrompt:
        """The conversation rendered for the engine; with `forced_prefix`, the tool call `tool_choice`
        forces is started (and, on an engine that can, held to the call's schema)."""
        return render_prompt(self.engine.tokenizer, conversation, task.tools,
                             task.tool_choice if forced_prefix else None,
                             json_constrained=self.engine.supports_json_schema)

    @staticmethod
    def constrained(params: SamplingParams, prompt: ChatPrompt) -> SamplingParams:
        """`params`, holding the answer to the forced tool call's schema where there is one."""
        return replace(params, json_schema=prompt.json_schema) if prompt.json_schema else params

    @staticmethod
    def turn(task: ChatTask, prefix: str, result: GenerationResult, latency_s: float, parse_tools: bool = True,
             completion: str | None = None) -> Turn:
        text = prefix + result.text
        parsed = parse_tool_calls(text) if parse_tools and task.parses_tools else ParsedOutput(text, [])
        return Turn(result, text, parsed, latency_s, completion or completion_id())

    async def generate(self, task: ChatTask, conversation: list[dict[str, Any]], params: SamplingParams,
                       parse_tools: bool = True, forced_prefix: bool = True) -> Turn:
        prompt = self.prompt(task, conversation, forced_prefix)
        started = time.perf_counter()
        # The engine shortens max_tokens to what the context leaves, and raises when nothing is left.
        result = await self.engine.generate(prompt.engine_input, self.constrained(params, prompt), task.adapter)
        return self.turn(task, prompt.assistant_prefix, result, time.perf_counter() - started, parse_tools)

    async def judge(self, task: ChatTask, turn: Turn, conversation: list[dict[str, Any]], episode_id: str,
                    number: int) -> Verdict | None:
        """The verifier's verdict on an attempt; `conversation` is what the attempt answered."""
        if task.verifier is None:
            return None
        attempt = Attempt(content=turn.parsed.content,
                          tool_calls=tuple(ToolCall(c.name, c.arguments) for c in turn.parsed.tool_calls))
        context = TaskContext(tools=tuple(task.tools or ()), tool_choice=task.tool_choice,
                              messages=tuple(conversation), episode_id=episode_id, attempt_number=number)
        return await verify(task.verifier, attempt, context, self.webhook_policy)

    async def reflect(self, task: ChatTask, failures: list[FailedAttempt]) -> Turn:
        """The model's reflection on the last failure (shown the tools, never forced to call one)."""
        conversation = reflection_conversation(task.messages, failures, task.task_kind)
        params = replace(task.params, max_tokens=self.reflection_max_tokens, stop=(), top_logprobs=0, json_schema=None)
        return await self.generate(task, conversation, params, parse_tools=False, forced_prefix=False)

    async def run(self, task: ChatTask, tenant: str | None, first: Turn | None = None) -> tuple[Episode, list[Turn]]:
        """The request's episode: attempt 1 (`first`, if already generated), then reflect and retry
        while the verifier says no."""
        episode = Episode(
            id=new_episode_id(), tenant=tenant, model=task.model, adapter=task.adapter, task_kind=task.task_kind,
            verifier=task.verifier.model_dump(mode="json", by_alias=True) if task.verifier else None,
            store_text=task.store_text, messages=task.messages if task.store_text else None,
            tools=task.tools if task.store_text else None, tool_choice=task.tool_choice,
            sampling=asdict(task.params),
        )
        turns = [first or await self.generate(task, task.messages, task.params)]
        verdict = await self.judge(task, turns[0], task.messages, episode.id, 1)
        episode.attempts.append(_record(1, turns[0], verdict, None, task.store_text))
        failures: list[FailedAttempt] = []
        while verdict is not None and not verdict.success and len(episode.attempts) <= task.max_retries:
            failures.append(FailedAttempt(turns[-1].message(), verdict.detail))
            number = len(episode.attempts) + 1
            try:
                reflection, retry, verdict = await self.reflect_and_retry(task, failures, episode.id, number)
            except PromptTooLongError:
                break  # the growing conversation outgrew the context: answer with the last attempt
            failures[-1] = replace(failures[-1], reflection=reflection.text)
            turns += [reflection, retry]
            episode.attempts.append(_record(number, retry, verdict, reflection, task.store_text))
        return episode, turns

    async def reflect_and_retry(self, task: ChatTask, failures: list[FailedAttempt], episode_id: str,
                                number: int) -> tuple[Turn, Turn, Verdict | None]:
        """Reflect on the last failure (still without its reflection), retry as attempt `number`,
        judge the retry. Raises `PromptTooLongError` when the conversation outgrew the context."""
        reflection = await self.reflect(task, failures)
        reflected = [*failures[:-1], replace(failures[-1], reflection=reflection.text)]
        conversation = retry_conversation(task.messages, reflected, task.task_kind)
        retry = await self.generate(task, conversation, task.params)
        return reflection, retry, await self.judge(task, retry, conversation, episode_id, number)

    async def retry_after_feedback(self, task: ChatTask, episode: Episode) -> tuple[AttemptRecord, list[Turn]]:
        """One reflect-retry round on an episode whose latest attempt the client reported failed."""
        failures = [
            FailedAttempt(assistant_message(a.content, a.tool_calls),
                          (a.feedback.detail if a.feedback else a.detail) or "",
                          episode.attempts[a.number].reflection if a.number < len(episode.attempts) else None)
            for a in episode.attempts
        ]
        number = len(episode.attempts) + 1
        reflection, retry, verdict = await self.reflect_and_retry(task, failures, episode.id, number)
        return _record(number, retry, verdict, reflection, episode.store_text), [reflection, retry]


def _record(number: int, turn: Turn, verdict: Verdict | None, reflection: Turn | None, store_text: bool) -> AttemptRecord:
    result = turn.result
    record = AttemptRecord(
        number=number, completion_id=turn.completion_id, finish_reason=result.finish_reason,
        prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens, latency_s=turn.latency_s,
        reflection_tokens=reflection.result.completion_tokens if reflection else 0,
        success=verdict.success if verdict else None, detail=verdict.detail if verdict else None,
    )
    if store_text:
        record.content = turn.parsed.content
        record.tool_calls = openai_tool_calls(turn.parsed)
        record.token_ids = result.token_ids
        record.logprobs = [t.logprob for t in result.tokens]
        record.reflection = reflection.text if reflection else None
    return record

