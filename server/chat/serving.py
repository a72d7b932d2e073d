"""Serving a chat completion request (`OpenAIServingChat`, as vLLM's serving class is named): its
checks before anything starts (`prepare`), then its choices made by the reflect-retry core
(`Reflector.events`) on the adapter version the request pins, each recorded as one episode, and
answered whole (`full`) or as server-sent events (`stream`).

With `n` > 1 each choice is a task of its own (the seed of choice i is `seed + i`, as in vLLM),
generated concurrently, recorded as its own episode and reflected on by itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import cache
from typing import Any, TypeVar

import anyio
from pydantic import ValidationError

from r3 import telemetry
from r3.chat_format import ChatPrompt
from r3.engines.base import Engine
from r3.reflect_retry import ChatTask, Chunk, Generation, Reflector, Run, RunEvent
from r3.structured_output import GrammarTimeout, grammar_problem, grammar_tag, grammar_work
from server.chat.protocol import ChatCompletion, ChatCompletionRequest
from server.chat.responses import chat_completion, r3_info, usage_of
from server.chat.sse import ChoiceChunks, Wire
from server.adapters import Served
from server.deps import Services
from server.errors import APIError, clipped, param_path
from server.openai.serving import all_of, logit_bias_pairs, token_bytes
from server.openai.sse import interleaved
from server.protocol import now
from verifiers import VerifierNotAllowed, VerifierRuntime, VerifierSpec, admit, parse_spec, schema_problem
from verifiers.base import validation_message

T = TypeVar("T")


@dataclass(frozen=True)
class ChatRequest:
    """A checked chat request, ready to run: the task of each of its choices."""

    body: ChatCompletionRequest
    tenant: str | None
    choices: list[ChatTask]
    vocabulary: Sequence[bytes]  # the bytes of each token id, for logprobs (empty without them)
    scenario: str | None = None  # the caller's default scenario (its API key's), which `r3` means
    request_id: str | None = None  # x-request-id: places an unpinned request on its scenario's canary or not

    @property
    def verified(self) -> bool:
        return self.choices[0].verifier is not None


class OpenAIServingChat:
    """`POST /v1/chat/completions` over this server's services: `prepare` a request, then answer it
    `full` or `stream` it."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.reflector: Reflector = services.reflector
        self.engine: Engine = services.reflector.engine

    async def prepare(self, body: ChatCompletionRequest, tenant: str | None,
                      scenario: str | None = None, request_id: str | None = None) -> ChatRequest:
        """Checks everything the request asks for before any generation starts. Raises `UnknownModel`
        (404) for a model this server does not serve, and `APIError` (400) for what the request asks
        wrongly, and when it does not fit the context."""
        self.services.adapters.resolve(body.model, scenario)  # an unknown model is a 404 before anything starts
        task = await self._task(body)
        vocabulary = await token_bytes(self.engine) if body.logprobs else ()
        return ChatRequest(body, tenant, _choice_tasks(task, body.n), vocabulary, scenario, request_id)

    async def full(self, request: ChatRequest) -> ChatCompletion:
        """The whole response: every choice made (reflected on and retried while its verifier says no)
        and recorded."""
        body = request.body
        # every attempt on the version it started with
        async with self.services.adapters.pin(body.model, request.scenario, request.request_id) as served:
            runs = self._runs(request, served)
            async with self._recording(runs):
                await all_of(self.reflector.run(run) for run in runs)
        first, *others = runs
        return chat_completion(body.model, first.episode, first.turns, body.logprobs, request.vocabulary,
                               [(run.episode, run.turns) for run in others])

    async def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        """The response as SSE chunks (`server.chat.sse`), then, with `include_usage`, the usage chunk.
        Plain inference streams as the engine generates; a verified answer is judged (reflected on
        and retried) before anything is sent, and each choice's final answer then goes out whole."""
        async with self.services.adapters.pin(request.body.model, request.scenario, request.request_id) as served:
            runs = self._runs(request, served)
            if request.verified:
                async with self._recording(runs):
                    await all_of(self.reflector.run(run) for run in runs)
                wire = self._wire(request, runs[0].turns[-1].completion_id)
                for index, run in enumerate(runs):
                    for event in self._whole_choice(wire, index, run, len(runs) > 1):
                        yield event
            else:
                made = [self._recorded(run) for run in runs]
                # Each run's first event is its attempt starting, before any token: the response's id is choice 0's.
                started = [(await anext(events)).generation for events in made]
                wire = self._wire(request, started[0].completion_id)
                choices = [self._live_choice(wire, index, run, generation, events, len(runs) > 1)
                           for index, (run, generation, events) in enumerate(zip(runs, started, made))]
                async for event in interleaved(choices):
                    yield event
            if wire.include_usage:
                yield wire.event([], usage=usage_of(*(run.turns for run in runs)))

    def _runs(self, request: ChatRequest, served: Served) -> list[Run]:
        runs = [Reflector.start(replace(task, adapter=served.adapter), request.tenant) for task in request.choices]
        category = (request.body.metadata or {}).get("category")
        for run in runs:
            run.episode.scenario, run.episode.category, run.episode.canary = served.scenario, category, served.canary
        telemetry.describe_request(runs[0].episode, request.body.model)
        return runs

    @asynccontextmanager
    async def _recording(self, runs: list[Run]) -> AsyncIterator[None]:
        """Records each of `runs`' episodes once, when the block ends: as made, or, when it is cancelled
        or closed (its client hung up), as abandoned (`Reflector.abandon`), even though it is being cancelled."""
        started = time.perf_counter()
        try:
            yield
        except (asyncio.CancelledError, GeneratorExit):
            for run in runs:
                self.reflector.abandon(run)
            with anyio.CancelScope(shield=True):
                for run in runs:
                    await self.services.episode_log.save(run.episode)
            raise
        for run in runs:
            await self.services.episode_log.save(run.episode)
            self.services.metrics.observe(run.episode, time.perf_counter() - started)

    async def _recorded(self, run: Run) -> AsyncIterator[RunEvent]:
        """`run`'s events (`Reflector.events`), its episode recorded when they end (`_recording`)."""
        async with self._recording([run]):
            async for event in self.reflector.events(run):
                yield event

    def _wire(self, request: ChatRequest, completion_id: str) -> Wire:
        body = request.body
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return Wire(body.model, completion_id, now(), body.logprobs, include_usage, request.vocabulary)

    @staticmethod
    def _whole_choice(wire: Wire, index: int, run: Run, info_in_choice: bool) -> list[str]:
        """Choice `index`, made already: its final answer in one piece (any forced prefix included)."""
        final = run.turns[-1]
        chunks = ChoiceChunks(wire, index, final.completion_id, _offered(run.task), info_in_choice)
        return [*chunks.start(), *chunks.piece(final.text, final.result.tokens), *chunks.end(final, r3_info(run.episode))]

    @staticmethod
    async def _live_choice(wire: Wire, index: int, run: Run, generation: Generation, events: AsyncIterator[RunEvent],
                           info_in_choice: bool) -> AsyncIterator[str]:
        """Choice `index` as the engine makes it (attempt 1 of `generation`; there is no verifier to retry for)."""
        chunks = ChoiceChunks(wire, index, generation.completion_id, _offered(run.task), info_in_choice)
        for event in chunks.start(generation.prompt.assistant_prefix):
            yield event
        async for made in events:
            if isinstance(made, Chunk):
                for event in chunks.piece(made.chunk.text, made.chunk.tokens):
                    yield event
        for event in chunks.end(run.turns[-1], r3_info(run.episode)):
            yield event

    # ------------------------------------------------------------------ checks

    async def _task(self, body: ChatCompletionRequest) -> ChatTask:
        """The request's task, once everything it asks for is checked (the adapter is set when pinned);
        it carries its first attempt's prompt, rendered and encoded once here. Raises `APIError` (400)."""
        engine, settings = self.engine, self.services.settings
        body.refuse_unreadable()
        task = body.to_task(await self._checked_schemas(body))
        # A long prompt takes a second to tokenize: in a worker thread, the event loop serves others meanwhile.
        prompt = await asyncio.to_thread(self._first_prompt, task)
        prompt_tokens = len(prompt.token_ids)
        room = engine.max_model_len - prompt_tokens
        param, asked = body.asked_max_tokens
        if asked is not None and asked > room:
            raise APIError(400, f"{param} is {asked}, but the context of {engine.max_model_len} tokens leaves "
                           f"room for {room} after the {prompt_tokens}-token prompt",
                           param=param, code="context_length_exceeded")
        params = body.sampling_params(max_tokens=asked or min(settings.default_max_tokens, room),
                                      json_schema=body.response_schema(engine.supports_json_schema),
                                      logit_bias=logit_bias_pairs(body.logit_bias, engine))
        task = replace(task, params=params, prompt=prompt)
        await self._check_grammar(task)
        return task

    async def _checked_schemas(self, body: ChatCompletionRequest) -> VerifierSpec | None:
        """The request's verifier (`_verifier`), once its JSON Schemas are checked: refuses (400, naming
        the param) schemas that together are larger than `R3_MAX_SCHEMA_BYTES` as JSON, before any work
        on them, then one that is not a valid JSON Schema. Checking takes ~6 µs a byte, so it runs in the
        grammar threads (`grammar_work`), off the event loop."""
        schemas = body.schemas()
        limit = self.services.settings.max_schema_bytes
        total = 0
        for param, schema in schemas:
            total += len(json.dumps(schema, ensure_ascii=False, separators=(",", ":")).encode())
            if total > limit:
                raise APIError(400, f"{param}: the request's JSON Schemas take more than {limit} "
                               "bytes as JSON, this server's limit (R3_MAX_SCHEMA_BYTES)", param=param,
                               code="schema_too_large")
        for param, schema in schemas:
            if param != "verifier.schema" and (problem := await _schema_work(param, schema_problem, schema)):
                raise APIError(400, f"{param}: {problem}", param=param)
        # its schema checked as it is read
        return await _schema_work("verifier", _verifier, body, self.reflector.verifier_runtime)

    async def _check_grammar(self, task: ChatTask) -> None:
        """Refuses (400) a schema that no grammar can be built for, before the answer (or its stream)
        starts. The task's grammar is built here once and kept for its attempts."""
        if not self.engine.supports_json_schema:
            return
        for param, tag in (("response_format", grammar_tag(None, task.params.json_schema)),
                           ("tools", task.structural_tag)):
            if problem := await _schema_work(param, grammar_problem, tag):
                raise APIError(400, f"{param}: {problem}", param=param)

    def _first_prompt(self, task: ChatTask) -> ChatPrompt:
        """The first attempt's prompt, with its token ids. Raises `APIError` (400) when it leaves no room
        in the context; a prompt that cannot fit even at the most characters a token can stand for is
        refused without tokenizing it."""
        engine = self.engine
        prompt = self.reflector.core.attempt_prompt(task, task.messages)
        at_least = len(prompt.engine_input) // _most_characters_per_token(engine.tokenizer)
        if at_least >= engine.max_model_len:
            raise _too_long(f"at least {at_least}", engine.max_model_len)
        prompt = replace(prompt, token_ids=engine.encode(prompt.engine_input))
        if len(prompt.token_ids) >= engine.max_model_len:
            raise _too_long(str(len(prompt.token_ids)), engine.max_model_len)
        return prompt


def _choice_tasks(task: ChatTask, n: int) -> list[ChatTask]:
    """The task of each of `n` choices: the same but for the seed, `seed + i` (vLLM's rule)."""
    seed = task.params.seed
    return [task if i == 0 or seed is None else replace(task, params=replace(task.params, seed=seed + i))
            for i in range(n)]


def _offered(task: ChatTask) -> frozenset[str] | None:
    """The names a streamed answer's tool calls may have; None when tools are not parsed."""
    return task.tool_names if task.parses_tools else None


async def _schema_work(param: str, work: Callable[..., T], *args: Any) -> T:
    """`work(*args)` on `param`'s schema, in the grammar threads; 400 naming `param` if it takes too long."""
    try:
        return await grammar_work(work, *args)
    except GrammarTimeout as error:
        raise APIError(400, f"{param}: checking it {error}", param=param) from None


@cache
def _most_characters_per_token(tokenizer: Any) -> int:
    """An upper bound on the characters of text one token stands for: twice its longest written form
    (a token is written with at least as many characters as it stands for; twice, because a
    tokenizer's normalizer may shorten the text first, e.g. composing a letter and its accent)."""
    return 2 * max(len(token) for token in tokenizer.get_vocab())


def _too_long(size: str, context: int) -> APIError:
    return APIError(400, f"the messages take {size} tokens; this model's context is {context}",
                    param="messages", code="context_length_exceeded")


def _verifier(body: ChatCompletionRequest, runtime: VerifierRuntime) -> VerifierSpec | None:
    if body.verifier is None:
        return None
    try:
        spec = parse_spec(body.verifier)
    except ValidationError as error:
        first = max(error.errors(), key=lambda e: len(e.get("loc", ())))
        location = first.get("loc", ())
        # The location has the type tag of the spec (and of each grader nested in it), which the client's
        # param does not; without one, the type itself was wrong.
        if location:
            param = param_path(("body", "verifier", *location), {"verifier": body.verifier}, first.get("type"))
        else:
            param = "verifier.type" if first.get("type", "").startswith("union_tag") else "verifier"
        raise APIError(400, f"{clipped(param)}: {validation_message(first)}", param=param) from error
    try:
        admit(spec, runtime)  # the verifier type's own check (a webhook's host against the policy)
    except VerifierNotAllowed as error:
        raise APIError(400, str(error), param=error.param, code=error.code) from error
    return spec
