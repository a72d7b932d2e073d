"""Reflect-retry: attempt → verify → (fail) reflect → retry → verify, in one place.

`ReflectRetry` is the protocol without an engine: conversation → prompt (attempt, reflection,
retry, rendered as the engine expects), generated text → answer (stop strings, tool calls to the
offered tools), answer → verdict. The conversations come from `r3.reflection`. The server, the
gate and the GRPO rollout all go through it, so a model is trained and gated on exactly the prompts
it is served with. `Reflector` runs it on an engine: every attempt and reflection on the adapter the
task names; the result is an `Episode`, which the server answers with (its last attempt) and
records whole.

A request is made in a `Run`, which holds each generation while it is streamed from the engine;
`Reflector.events` makes it as a sequence of events (attempt 1 started, its chunks, each attempt
judged), which a streamed response frames as it comes and a whole one reads to the end. When
the client hangs up, the server cancels the run (which cancels the engine's request: its batch slot
is freed at once) and `Reflector.abandon` records what was made so far as an abandoned episode.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Any, Protocol

from opentelemetry import trace

from r3 import telemetry
from r3.chat_format import ChatPrompt, ParsedOutput, parse_tool_calls, render_prompt, with_call_ids
from r3.engines.base import (
    Engine,
    GenerationChunk,
    GenerationResult,
    PromptTooLongError,
    SamplingParams,
    TokenLogprob,
)
from r3.episodes import ABANDONED, AttemptRecord, Episode, new_episode_id
from r3.judge import model_judge
from r3.reflection import (
    FailedAttempt,
    assistant_message,
    reflection_conversation,
    retry_conversation,
)
from r3.settings import Settings
from r3.structured_output import structural_tag
from verifiers import (
    Attempt,
    JudgeUsage,
    TaskContext,
    Verdict,
    VerifierRuntime,
    VerifierSpec,
    WebhookPolicy,
    parse_spec,
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
    prompt: ChatPrompt | None = None  # the first attempt's prompt, if rendered (and encoded) already


    @property
    def parses_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    @cached_property
    def structural_tag(self) -> dict[str, Any] | None:
        """The grammar an attempt is held to on an engine that constrains decoding: tool calls to the
        offered tools and their schemas, `tool_choice` enforced, `response_format`'s schema beside
        them (`r3.structured_output.structural_tag`; None when no tool is in play). Built once per task."""
        return structural_tag(self.tools, self.tool_choice, self.params.parallel_tool_calls, self.params.json_schema)

    @property
    def tool_names(self) -> frozenset[str]:
        """The names an answer's tool calls may have: those of the tools offered."""
        return frozenset(tool.get("function", tool)["name"] for tool in self.tools or ())

    @property
    def task_kind(self) -> str:
        if self.verifier is not None:
            return self.verifier.task_kind
        return "function_calling" if self.parses_tools else "generic"


@dataclass
class Generated:
    """A finished generation (an attempt or a reflection): the engine's result, its text and the
    answer read from it (`Generation` is one while it is being made)."""

    result: GenerationResult
    text: str  # the forced assistant prefix (if any) + what the engine generated
    parsed: ParsedOutput
    latency_s: float
    completion_id: str = field(default_factory=completion_id)

    def message(self) -> dict[str, Any]:
        return assistant_message(self.parsed.content, openai_tool_calls(self.parsed))


@dataclass
class Generation:
    """One generation as far as it has got, kept while the engine streams it."""

    prompt: ChatPrompt
    reflecting: bool = False  # a reflection, or else an attempt at the task
    completion_id: str = field(default_factory=completion_id)
    started: float = field(default_factory=time.perf_counter)  # time.perf_counter() seconds
    text: str = ""
    tokens: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str = "length"
    prompt_length: int = 0  # in tokens, as the engine's first chunk reports it
    cached_tokens: int | None = None  # of those, the ones the engine's prefix cache held, as it reports them
    first_token_s: float | None = None  # seconds from the start to the first token (None: none yet)
    span: trace.Span = trace.INVALID_SPAN  # its r3.engine.generate span, ended by `follow`

    async def follow(self, chunks: AsyncIterator[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
        """`chunks`, passed on and kept as they come (cancelling the reader cancels the engine's request).
        When they end, so does the generation's span, with its usage and time to first token."""
        with telemetry.ended(self.span):
            try:
                async for chunk in chunks:
                    if self.first_token_s is None and chunk.tokens:
                        self.first_token_s = time.perf_counter() - self.started
                    self.text += chunk.text
                    self.tokens += chunk.tokens
                    self.finish_reason = chunk.finish_reason or self.finish_reason
                    self.prompt_length = chunk.prompt_length or self.prompt_length
                    self.cached_tokens = self.cached_tokens if chunk.cached_tokens is None else chunk.cached_tokens
                    yield chunk
            finally:  # what was made, however it ended
                self.span.set_attributes(telemetry.generation_usage(self.prompt_length, len(self.tokens),
                                                                    self.first_token_s, self.cached_tokens))
            self.span.set_attribute(telemetry.FINISH_REASONS, [self.finish_reason])


@dataclass
class Run:
    """A request's episode while it is being made. If it is cancelled midway (its client hung up), it
    still holds what was made: `Reflector.abandon` records that."""

    task: ChatTask
    episode: Episode
    turns: list[Generated] = field(default_factory=list)
    generation: Generation | None = None  # the latest one started
    reflection: Generation | None = None  # the latest reflection started: the one the next attempt follows


@dataclass(frozen=True)
class AttemptStarted:
    """Attempt 1 of a run has started (nothing generated yet): its generation names the answer."""

    generation: Generation


@dataclass(frozen=True)
class Chunk:
    """A chunk of attempt 1, as the engine made it."""

    chunk: GenerationChunk


@dataclass(frozen=True)
class Judged:
    """Attempt `number` made and judged (`verdict` None: the task has no verifier); a retry comes
    with the reflection written before it."""

    number: int
    turn: Generated
    verdict: Verdict | None
    reflection: Generated | None


# What `Reflector.events` yields, in order: AttemptStarted, Chunk..., Judged (attempt 1), Judged (each retry)...
RunEvent = AttemptStarted | Chunk | Judged


def openai_tool_calls(parsed: ParsedOutput) -> list[dict[str, Any]] | None:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in parsed.tool_calls] or None


class RecordedRequest(Protocol):
    """A request as recorded: an `Episode` (that kept its text), or a trainer's item made from one."""

    messages: list[dict[str, Any]] | None
    tools: list[dict[str, Any]] | None
    tool_choice: str | dict[str, Any] | None
    verifier: dict[str, Any] | None  # the spec as JSON
    sampling: dict[str, Any]  # the request's `SamplingParams`, as JSON


def recorded_task(recorded: RecordedRequest, *, model: str = "", adapter: str | None = None,
                  params: SamplingParams | None = None) -> ChatTask:
    """The task `recorded` asked for, to run again (one reflect-retry round at most): its verifier read
    again, sampling as recorded (`recorded_params`) unless `params` are given. The one way from a
    record back to a task, for /feedback's retries, the trainer and the gate. Raises pydantic's `ValidationError` (a
    `ValueError`) or `TypeError` when the stored verifier or sampling no longer validate."""
    params = recorded_params(recorded) if params is None else params
    verifier = parse_spec(recorded.verifier) if recorded.verifier is not None else None
    return ChatTask(model=model, adapter=adapter, messages=recorded.messages or [], tools=recorded.tools,
                    tool_choice=recorded.tool_choice, params=params, verifier=verifier, max_retries=1)


def recorded_params(recorded: RecordedRequest) -> SamplingParams:
    """The sampling `recorded` asked for. Raises `TypeError`/`ValueError` for fields that no longer fit."""
    return SamplingParams(**{**recorded.sampling, "stop": tuple(recorded.sampling.get("stop", ()))})


def recorded_failures(episode: Episode) -> list[FailedAttempt]:
    """Each attempt of `episode`, as a failure to reflect on, with the reflection written on it: the one
    the attempt it led to carries (`AttemptRecord.reflection`). The latest has none yet. Why each
    failed is the client's feedback where it gave one, else the verifier's detail."""
    failures: list[FailedAttempt] = []
    for attempt in episode.attempts:
        if failures:  # `attempt` is a retry: its reflection was written on the failure before it
            failures[-1] = replace(failures[-1], reflection=attempt.reflection)
        why = (attempt.feedback.detail if attempt.feedback else attempt.detail) or ""
        failures.append(FailedAttempt(assistant_message(attempt.content, attempt.tool_calls), why))
    return failures


def verifier_runtime(settings: Settings, engine: Engine | None = None) -> VerifierRuntime:
    """The process's `VerifierRuntime`, from the operator's `R3_WEBHOOK_*` and `R3_JUDGE_*` settings:
    built once, by the server and by each trainer process, and handed to its `Reflector` or
    `ReflectRetry`. Its model judge (`r3.judge.model_judge`) is `R3_JUDGE_BASE_URL`'s, else the
    server's `engine`, else (a trainer, which passes none) an engine of the process's own."""
    return VerifierRuntime(judge=model_judge(settings, engine), webhooks=WebhookPolicy(
        allowed_hosts=frozenset(settings.webhook_allowed_hosts),
        allow_loopback=settings.webhook_allow_loopback,
        secret=settings.webhook_secret.get_secret_value() if settings.webhook_secret else None,
        timeout_s=settings.webhook_timeout_s,
        max_attempts=settings.webhook_max_attempts,
    ))


@dataclass(frozen=True)
class ReflectRetry:
    """The reflect-retry protocol without an engine: conversation → prompt, generated text → answer,
    answer → verdict. The server (through `Reflector`), the gate and the GRPO rollout all build their
    prompts, read their answers and judge them here, so the model is trained and gated on exactly the
    prompts it is served with (`tests/trainer/test_grpo.py` checks it token for token).

    `constrained_decoding`: the engine holds an answer to a grammar (`Engine.supports_json_schema`):
    then `tool_choice` is enforced by the grammar (`attempt_params`) rather than by prefilling the
    start of a forced call, so the two modes render different prompts.
    """

    tokenizer: Any
    verifier_runtime: VerifierRuntime
    constrained_decoding: bool = True
    reflection_max_tokens: int = 256

    def first_prompt(self, task: ChatTask) -> ChatPrompt:
        """The first attempt's prompt: the task's own, when the server made it while checking the request."""
        return task.prompt or self.attempt_prompt(task, task.messages)

    def attempt_prompt(self, task: ChatTask, conversation: list[dict[str, Any]]) -> ChatPrompt:
        """An attempt at `task` answering `conversation` (its first, or a retry): the answer
        `tool_choice` forces is started, unless the engine holds it to a grammar."""
        return render_prompt(self.tokenizer, conversation, task.tools, task.tool_choice,
                             constrained_decoding=self.constrained_decoding)

    def reflection_prompt(self, task: ChatTask, failures: list[FailedAttempt]) -> ChatPrompt:
        """The reflection on the last of `failures` (which still lacks it): tools shown, no answer forced."""
        conversation = reflection_conversation(task.messages, failures, task.task_kind)
        return render_prompt(self.tokenizer, conversation, task.tools, None,
                             constrained_decoding=self.constrained_decoding)

    def retry_prompt(self, task: ChatTask, failures: list[FailedAttempt]) -> tuple[list[dict[str, Any]], ChatPrompt]:
        """The retry after the last of `failures` (each with its reflection): its conversation (what
        the verifier is shown) and its prompt."""
        conversation = retry_conversation(task.messages, failures, task.task_kind)
        return conversation, self.attempt_prompt(task, conversation)

    def attempt_params(self, task: ChatTask) -> SamplingParams:
        """The sampling of an attempt at `task`: its params, held (on an engine that constrains
        decoding) to the task's `structural_tag`."""
        if not self.constrained_decoding or task.structural_tag is None:
            return task.params
        return replace(task.params, structural_tag=task.structural_tag)

    def reflection_params(self, params: SamplingParams) -> SamplingParams:
        """A reflection samples as `params` (the request's) say, but free of their stops, schema and
        logprobs, and at most `reflection_max_tokens` long."""
        return replace(params, max_tokens=self.reflection_max_tokens, stop=(), top_logprobs=0, json_schema=None)

    def answer(self, task: ChatTask, prompt: ChatPrompt, generated: str, reflecting: bool = False) -> ParsedOutput:
        """What the model said, from the text generated after `prompt`: cut at the request's first stop
        string (an engine has already cut there; a trainer sampling with transformers has not), after
        any forced prefix, with the tool calls to offered tools parsed out (never a reflection's)."""
        if not reflecting:
            generated = generated[:min((i for i in map(generated.find, task.params.stop) if i >= 0),
                                       default=len(generated))]
        text = prompt.assistant_prefix + generated
        if reflecting or not task.parses_tools:
            return ParsedOutput(text, [])
        return parse_tool_calls(text, task.tool_names)

    async def judge(self, task: ChatTask, answer: ParsedOutput, conversation: list[dict[str, Any]],
                    episode_id: str, number: int) -> Verdict | None:
        """The verifier's verdict (None: the task has none) on attempt `number`, which answered
        `conversation`. Raises nothing for a failing webhook: that is a failed verdict."""
        if task.verifier is None:
            return None
        attempt = Attempt(content=answer.content, tool_calls=tuple(answer.tool_calls))
        context = TaskContext(tools=tuple(task.tools or ()), tool_choice=task.tool_choice,
                              messages=tuple(conversation), episode_id=episode_id, attempt_number=number)
        with telemetry.tracer.start_as_current_span("r3.verify", attributes={
                telemetry.EVALUATION_NAME: task.verifier.type}) as span:
            verdict = await verify(task.verifier, attempt, context, self.verifier_runtime)
            telemetry.record_verdict(span, verdict)
        return verdict


@dataclass
class Reflector:
    """Runs attempts, reflections and retries for chat tasks on one engine, through `ReflectRetry`."""

    engine: Engine
    verifier_runtime: VerifierRuntime
    reflection_max_tokens: int = 256
    core: ReflectRetry = field(init=False)

    def __post_init__(self) -> None:
        self.core = ReflectRetry(self.engine.tokenizer, self.verifier_runtime, self.engine.supports_json_schema,
                                 self.reflection_max_tokens)

    def finish(self, task: ChatTask, generation: Generation) -> Generated:
        """`generation`, finished, read as its answer. A forced call (`tool_choice` "required" or a
        named function) cut by max_tokens inside a further call is answered with the calls it
        completed (content None, finish_reason "stop", so "tool_calls" in the response): the cut call
        is dropped, since a forced call's answer is its calls."""
        parsed = self.core.answer(task, generation.prompt, generation.text, generation.reflecting)
        finish_reason = generation.finish_reason
        forced = task.tool_choice == "required" or isinstance(task.tool_choice, dict)
        if forced and finish_reason == "length" and parsed.tool_calls and not generation.reflecting:
            parsed, finish_reason = replace(parsed, content=None), "stop"
        result = GenerationResult(text=generation.text, tokens=generation.tokens,
                                  finish_reason=finish_reason, prompt_tokens=generation.prompt_length)
        return Generated(result, generation.prompt.assistant_prefix + result.text,
                    with_call_ids(parsed, generation.completion_id),
                    time.perf_counter() - generation.started, generation.completion_id)

    def begin(self, task: ChatTask, prompt: ChatPrompt, reflecting: bool = False, run: Run | None = None,
              params: SamplingParams | None = None) -> tuple[Generation, AsyncIterator[GenerationChunk]]:
        """A generation started from `prompt` (kept in `run`, if given) and the engine's chunks of it,
        which it keeps as they pass. An attempt samples as `ReflectRetry.attempt_params`; a reflection
        as `ReflectRetry.reflection_params` of `params` (default: the task's). The engine shortens
        max_tokens to what the context leaves, and raises `PromptTooLongError` when nothing is left."""
        params = (self.core.reflection_params(params or task.params) if reflecting
                  else self.core.attempt_params(task))
        generation_id = completion_id()
        span = telemetry.tracer.start_span("r3.engine.generate", attributes=telemetry.generation_attributes(
            task.model, task.adapter, params, generation_id, reflecting))
        generation = Generation(prompt, reflecting, generation_id, span=span)
        if run is not None:
            run.generation = generation
            run.reflection = generation if reflecting else run.reflection
        conversation = run.episode.id if run is not None else None
        return generation, generation.follow(self.engine.stream(prompt.for_engine, params, task.adapter, conversation))

    async def generate(self, task: ChatTask, prompt: ChatPrompt, reflecting: bool = False, run: Run | None = None,
                       params: SamplingParams | None = None) -> Generated:
        """An attempt at the task from `prompt`, or (`reflecting`) a reflection: shown the tools, never
        forced to call one. With `run`, the generation is kept there while it is made."""
        generation, chunks = self.begin(task, prompt, reflecting, run, params)
        async for _ in chunks:
            pass
        return self.finish(task, generation)

    async def judge(self, task: ChatTask, turn: Generated, conversation: list[dict[str, Any]], episode_id: str,
                    number: int) -> Verdict | None:
        """The verifier's verdict on an attempt; `conversation` is what the attempt answered."""
        return await self.core.judge(task, turn.parsed, conversation, episode_id, number)

    def _prompt_length(self, generation: Generation) -> int:
        """The prompt's length in tokens: as the engine reported it, else as encoded when the task was
        built; encoded here only for a later prompt cut off before the engine's first chunk."""
        if generation.prompt_length:
            return generation.prompt_length
        prompt = generation.prompt
        return len(prompt.token_ids if prompt.token_ids is not None else self.engine.encode(prompt.engine_input))

    @staticmethod
    def start(task: ChatTask, tenant: str | None) -> Run:
        """A new run of `task`: its episode, with no attempt yet."""
        episode = Episode(
            id=new_episode_id(), tenant=tenant, model=task.model, adapter=task.adapter, task_kind=task.task_kind,
            verifier=task.verifier.model_dump(mode="json", by_alias=True) if task.verifier else None,
            store_text=task.store_text, messages=task.messages if task.store_text else None,
            tools=task.tools if task.store_text else None, tool_choice=task.tool_choice,
            sampling=asdict(task.params),
        )
        return Run(task, episode)

    async def events(self, run: Run) -> AsyncIterator[RunEvent]:
        """`run` made, as the events a response is built from: attempt 1 starting (`AttemptStarted`,
        before any token is generated) and each of its chunks as the engine makes it (`Chunk`); then
        each attempt judged (`Judged`: attempt 1, then each retry with the reflection before it, while
        the verifier says no and retries are left). When it ends, `run.turns` and `run.episode` hold
        everything made. Cancelling the reader cancels the engine's request (`abandon` records it). Every
        generation is a turn of the conversation `run.episode.id`, ended with the run."""
        task, episode = run.task, run.episode
        try:
            attempt = telemetry.tracer.start_span("r3.attempt", attributes=telemetry.attempt_attributes(
                episode.id, task.adapter, 1))
            # Current only where nothing is yielded: the reader may take each event in a task of its own.
            with telemetry.ended(attempt):
                with telemetry.within(attempt):
                    generation, chunks = self.begin(task, self.core.first_prompt(task), run=run)
                yield AttemptStarted(generation)
                async for chunk in chunks:
                    yield Chunk(chunk)
                run.turns = [self.finish(task, generation)]
                with telemetry.within(attempt):
                    verdict = await self.judge(task, run.turns[0], task.messages, episode.id, 1)
            episode.attempts.append(_record(1, run.turns[0], verdict, None, task.store_text))
            yield Judged(1, run.turns[0], verdict, None)
            failures: list[FailedAttempt] = []
            while verdict is not None and verdict.failed and len(episode.attempts) <= task.max_retries:
                failures.append(FailedAttempt(run.turns[-1].message(), verdict.detail))
                number = len(episode.attempts) + 1
                try:
                    reflection, retry, verdict = await self.reflect_and_retry(task, failures, episode.id, number, run)
                except PromptTooLongError:
                    break  # the growing conversation outgrew the context: answer with the last attempt
                failures[-1] = replace(failures[-1], reflection=reflection.text)
                run.turns += [reflection, retry]
                episode.attempts.append(_record(number, retry, verdict, reflection, task.store_text))
                yield Judged(number, retry, verdict, reflection)
        finally:  # answered, cut short or abandoned: the engine need no longer hold its turns
            self.engine.end_conversation(episode.id)

    async def run(self, run: Run) -> Run:
        """The request's episode (`events`, read to the end): attempt 1, then reflect and retry while
        the verifier says no."""
        async for _ in self.events(run):
            pass
        return run

    async def reflect_and_retry(self, task: ChatTask, failures: list[FailedAttempt], episode_id: str,
                                number: int, run: Run | None = None,
                                reflection_params: SamplingParams | None = None) -> tuple[Generated, Generated, Verdict | None]:
        """Reflect on the last failure (still without its reflection), retry as attempt `number`,
        judge the retry. The reflection samples as `reflection_params` say (default: as the task).
        Raises `PromptTooLongError` when the conversation outgrew the context."""
        attributes = telemetry.attempt_attributes(episode_id, task.adapter, number)
        with telemetry.tracer.start_as_current_span("r3.reflection", attributes=attributes):
            reflection = await self.generate(task, self.core.reflection_prompt(task, failures), reflecting=True,
                                             run=run, params=reflection_params)
        reflected = [*failures[:-1], replace(failures[-1], reflection=reflection.text)]
        conversation, prompt = self.core.retry_prompt(task, reflected)
        with telemetry.tracer.start_as_current_span("r3.attempt", attributes=attributes):
            retry = await self.generate(task, prompt, run=run)
            return reflection, retry, await self.judge(task, retry, conversation, episode_id, number)

    async def retry_after_feedback(self, task: ChatTask, episode: Episode) -> tuple[AttemptRecord, list[Generated]]:
        """One reflect-retry round on an episode whose latest attempt the client reported failed."""
        number = len(episode.attempts) + 1
        reflection, retry, verdict = await self.reflect_and_retry(task, recorded_failures(episode), episode.id, number)
        return _record(number, retry, verdict, reflection, episode.store_text), [reflection, retry]

    def abandon(self, run: Run) -> None:
        """Record `run`, cut off because its client hung up: what was being made becomes its last
        attempt, as far as it got, with finish_reason "abandoned" (the trainer never learns from it)."""
        attempts, generation = run.episode.attempts, run.generation
        if generation is not None and attempts and attempts[-1].completion_id == generation.completion_id:
            attempts[-1].finish_reason = ABANDONED  # made and judged, but never answered
            return
        attempt = generation if generation is not None and not generation.reflecting else None
        reflection = run.reflection if len(attempts) > 0 else None  # attempt 1 follows no reflection
        record = AttemptRecord(
            number=len(attempts) + 1, completion_id=attempt.completion_id if attempt else completion_id(),
            finish_reason=ABANDONED,
            prompt_tokens=self._prompt_length(attempt) if attempt else 0,
            completion_tokens=len(attempt.tokens) if attempt else 0,
            latency_s=time.perf_counter() - attempt.started if attempt else 0.0,
            reflection_tokens=len(reflection.tokens) if reflection else 0,
        )
        if run.task.store_text:
            record.content = attempt.prompt.assistant_prefix + attempt.text if attempt else None
            record.token_ids = [t.token_id for t in attempt.tokens] if attempt else None
            record.logprobs = [t.logprob for t in attempt.tokens] if attempt else None
            record.reflection = reflection.text if reflection else None
        attempts.append(record)


def _record(number: int, turn: Generated, verdict: Verdict | None, reflection: Generated | None, store_text: bool) -> AttemptRecord:
    result = turn.result
    record = AttemptRecord(
        number=number, completion_id=turn.completion_id, finish_reason=result.finish_reason,
        prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens, latency_s=turn.latency_s,
        reflection_tokens=reflection.result.completion_tokens if reflection else 0,
    )
    if verdict is not None:
        usage = verdict.usage or JudgeUsage()
        record.success, record.detail, record.score = verdict.success, verdict.detail, verdict.score
        record.judge_calls, record.judge_prompt_tokens = usage.calls, usage.prompt_tokens
        record.judge_completion_tokens = usage.completion_tokens
    if store_text:
        record.content = turn.parsed.content
        record.tool_calls = openai_tool_calls(turn.parsed)
        record.token_ids = result.token_ids
        record.logprobs = [t.logprob for t in result.tokens]
        record.reflection = reflection.text if reflection else None
    return record

