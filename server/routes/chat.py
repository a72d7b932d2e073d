"""`POST /v1/chat/completions`: validate, generate (reflecting and retrying when a verifier says no), respond.

With `n` > 1 each choice is a task of its own (the seed of choice i is `seed + i`, as in vLLM),
generated concurrently, recorded as its own episode and reflected on by itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from functools import cache
from typing import Any, TypeVar

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from r3.chat_format import ChatPrompt
from r3.engines.base import Engine, GenerationChunk, SamplingParams
from r3.engines.token_bytes import vocabulary_bytes
from r3.reflect_retry import ChatTask, Generated, Generation, Reflector, Run
from r3.settings import Settings
from r3.structured_output import GrammarTimeout, grammar_problem, grammar_tag, grammar_work
from server.adapters import AdapterManager
from server.auth import CheckedRoute, tenant
from server.completions import (
    Wire,
    all_of,
    chat_completion,
    choice_events,
    logit_bias_pairs,
    r3_info,
    response_events,
    streamed,
    unless_disconnected,
    usage_of,
)
from server.deps import ServicesDep
from server.errors import APIError, ClientGone, clipped, ignore_unknown_fields, shown
from server.protocol import (
    UNREADABLE_PARTS,
    ChatCompletion,
    ChatCompletionRequest,
    NamedToolChoice,
    R3Info,
    Tool,
    Usage,
    now,
)
from verifiers import (
    VerifierSpec,
    WebhookNotAllowed,
    WebhookPolicy,
    WebhookSpec,
    parse_spec,
    schema_problem,
)
from verifiers.base import validation_message

T = TypeVar("T")
router = APIRouter(route_class=CheckedRoute)


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request, state: ServicesDep,
                                 caller: str | None = Depends(tenant)) -> ChatCompletion | StreamingResponse:
    ignore_unknown_fields(request, body, state.settings.strict_request_fields)
    adapters: AdapterManager = state.adapters
    reflector: Reflector = state.reflector
    adapters.resolve(body.model)  # an unknown model is a 404 before anything starts
    task = await unless_disconnected(request, build_task(reflector, body, state.settings))  # its checks stop with the client
    tasks = _choice_tasks(task, body.n)
    vocabulary = await _token_bytes(state.engine) if body.logprobs else ()
    if body.stream and task.verifier is None:
        return await streamed(_live_stream(state, tasks, body, caller, vocabulary))
    started = time.perf_counter()
    async with adapters.pin(body.model) as adapter:  # every attempt on the version the request started with
        runs = [Reflector.start(replace(choice, adapter=adapter), caller) for choice in tasks]
        try:
            await unless_disconnected(request, all_of(reflector.run(run) for run in runs))
        except ClientGone:
            for run in runs:
                reflector.abandon(run)
                await state.store.save(run.episode)
            raise
    for run in runs:
        await state.store.save(run.episode)
        state.metrics.observe(run.episode, time.perf_counter() - started)
    first, *others = runs
    if not body.stream:
        return chat_completion(body.model, first.episode, first.turns, body.logprobs, vocabulary,
                               [(run.episode, run.turns) for run in others])
    # Earlier attempts were judged before anything is sent; each final one goes out as one piece.
    wire = _wire(body, first.turns[-1].completion_id, vocabulary)

    def replayed(index: int, run: Run) -> AsyncIterator[str]:
        final = run.turns[-1]

        async def conclude() -> tuple[Generated, R3Info, Usage]:
            return final, r3_info(run.episode), usage_of(run.turns)

        return choice_events(wire, index, final.completion_id, _one_piece(final), conclude, _offered(run.task),
                             info_in_choice=len(runs) > 1)

    events = response_events(wire, [replayed(i, run) for i, run in enumerate(runs)],
                             lambda: usage_of(*(run.turns for run in runs)))
    return await streamed(events)


def _choice_tasks(task: ChatTask, n: int) -> list[ChatTask]:
    """The task of each of `n` choices: the same but for the seed, `seed + i` (vLLM's rule)."""
    seed = task.params.seed
    return [task if i == 0 or seed is None else replace(task, params=replace(task.params, seed=seed + i))
            for i in range(n)]


async def _token_bytes(engine: Engine) -> Sequence[bytes]:
    """The bytes of each token id of the engine's vocabulary (read once, off the event loop)."""
    return await asyncio.to_thread(vocabulary_bytes, engine.tokenizer)


def _wire(body: ChatCompletionRequest, completion_id: str, vocabulary: Sequence[bytes]) -> Wire:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return Wire(body.model, completion_id, now(), body.logprobs, include_usage, vocabulary)


def _offered(task: ChatTask) -> frozenset[str] | None:
    """The names a streamed answer's tool calls may have; None when tools are not parsed."""
    return task.tool_names if task.parses_tools else None


async def _one_piece(turn: Generated) -> AsyncIterator[GenerationChunk]:
    yield GenerationChunk(turn.text, turn.result.tokens, turn.result.finish_reason)  # any forced prefix included


async def _live_stream(state, tasks: list[ChatTask], body: ChatCompletionRequest, caller: str | None,
                       vocabulary: Sequence[bytes]) -> AsyncIterator[str]:
    """Plain inference, streamed as it is generated; each choice's episode is recorded when it ends,
    or as abandoned when the client hangs up (Starlette then cancels this stream, and so the generations)."""
    reflector: Reflector = state.reflector
    async with state.adapters.pin(body.model) as adapter:
        runs = [Reflector.start(replace(task, adapter=adapter), caller) for task in tasks]
        streams = [reflector.stream(run) for run in runs]
        wire = _wire(body, streams[0][0].completion_id, vocabulary)
        choices = [_live_choice(state, wire, index, run, stream, info_in_choice=len(runs) > 1)
                   for index, (run, stream) in enumerate(zip(runs, streams))]
        async for event in response_events(wire, choices, lambda: usage_of(*(run.turns for run in runs))):
            yield event


async def _live_choice(state, wire: Wire, index: int, run: Run,
                       stream: tuple[Generation, AsyncIterator[GenerationChunk]],
                       info_in_choice: bool) -> AsyncIterator[str]:
    """One choice of a live stream (`Reflector.stream`): its chunks as the engine makes them; its
    episode recorded at the end."""
    generation, chunks = stream

    async def conclude() -> tuple[Generated, R3Info, Usage]:
        await state.store.save(run.episode)
        state.metrics.observe(run.episode, time.perf_counter() - generation.started)
        return run.turns[-1], r3_info(run.episode), usage_of(run.turns)

    try:
        async for event in choice_events(wire, index, generation.completion_id, chunks, conclude,
                                         _offered(run.task), generation.prompt.assistant_prefix, info_in_choice):
            yield event
    except (asyncio.CancelledError, GeneratorExit):
        state.reflector.abandon(run)
        with anyio.CancelScope(shield=True):  # recorded even though this task is being cancelled
            await state.store.save(run.episode)
        raise


async def build_task(reflector: Reflector, body: ChatCompletionRequest, settings: Settings) -> ChatTask:
    """Check everything a request asks for before any generation starts (the adapter is set when pinned).
    The task carries its first attempt's prompt, rendered and encoded once here.

    Raises `APIError` (400) for what the request asks wrongly, and when it does not fit the context."""
    engine = reflector.engine
    _refuse_what_the_model_cannot_read(body)
    verifier = await _checked_schemas(body, settings, reflector.webhook_policy)
    tools, tool_choice = _tools_and_choice(body)
    messages = [_message(message.model_dump(exclude_none=True)) for message in body.messages]
    task = ChatTask(model=body.model, adapter=None, messages=messages, tools=tools, tool_choice=tool_choice,
                    params=SamplingParams(), max_retries=body.reflect.max_retries, store_text=body.store)
    # A long prompt takes a second to tokenize: in a worker thread, the event loop serves others meanwhile.
    prompt = await asyncio.to_thread(_first_prompt, reflector, task)
    prompt_tokens = len(prompt.token_ids)
    room = engine.max_model_len - prompt_tokens
    asked = body.max_completion_tokens or body.max_tokens
    if asked is not None and asked > room:
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise APIError(400, f"{param} is {asked}, but the context of {engine.max_model_len} tokens leaves "
                       f"room for {room} after the {prompt_tokens}-token prompt",
                       param=param, code="context_length_exceeded")
    schema = _response_schema(body, engine)
    params = SamplingParams(max_tokens=asked or min(settings.default_max_tokens, room), temperature=body.temperature,
                            top_p=body.top_p, seed=body.seed, stop=body.stop_sequences,
                            top_logprobs=body.top_logprobs or 0, json_schema=schema,
                            logit_bias=logit_bias_pairs(body.logit_bias, engine),
                            presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                            parallel_tool_calls=body.parallel_tool_calls)
    task = replace(task, params=params, prompt=prompt, verifier=verifier)
    await _check_grammar(engine, task)
    return task


def _refuse_what_the_model_cannot_read(body: ChatCompletionRequest) -> None:
    """Refuses (400, code `unsupported_value`, naming it) what OpenAI defines but R3's models cannot
    take: image, audio and file parts, and custom (free-text) tools, their calls and choice."""
    for i, message in enumerate(body.messages):
        parts = message.content if isinstance(message.content, list) else []
        if unreadable := [j for j, part in enumerate(parts) if part.type in UNREADABLE_PARTS]:
            where = f"messages.{i}.content.{unreadable[0]}"
            raise APIError(400, f"{where}: {parts[unreadable[0]].type} parts are not supported: this model reads text "
                           "only", param=where, code="unsupported_value")
        if custom := [j for j, call in enumerate(getattr(message, "tool_calls", None) or []) if call.type == "custom"]:
            where = f"messages.{i}.tool_calls.{custom[0]}"
            raise APIError(400, f"{where}: custom tool calls are not supported: R3 offers its models function "
                           "tools only", param=where, code="unsupported_value")
    if custom := [i for i, tool in enumerate(body.tools or []) if tool.type == "custom"]:
        raise APIError(400, f"tools.{custom[0]}: custom tools are not supported: R3 offers its models function "
                       "tools only", param=f"tools.{custom[0]}", code="unsupported_value")
    if getattr(body.tool_choice, "type", None) == "custom":
        raise APIError(400, "tool_choice: custom tools are not supported: R3 offers its models function tools only",
                       param="tool_choice", code="unsupported_value")


def _message(message: dict[str, Any]) -> dict[str, Any]:
    """A message as the conversation holds it: OpenAI's deprecated function forms read as the tool
    forms that replaced them (a call's id is its function's name, which is how a result names it),
    and what an assistant said in refusing (a refusal part, or `refusal` without content) as its text."""
    if message["role"] == "function":
        return {"role": "tool", "tool_call_id": message["name"], "content": message.get("content") or ""}
    if call := message.pop("function_call", None):
        message["tool_calls"] = [*message.get("tool_calls", []),
                                 {"id": call["name"], "type": "function", "function": call}]
    if isinstance(message.get("content"), list):
        message["content"] = [{"type": "text", "text": part["refusal"]} if part["type"] == "refusal" else part
                              for part in message["content"]]
    if "content" not in message and "refusal" in message:
        message["content"] = message["refusal"]
    return message


def _tools_and_choice(body: ChatCompletionRequest) -> tuple[list[dict[str, Any]] | None, str | dict[str, Any] | None]:
    """The tools the model is offered and the `tool_choice` it answers under, as plain JSON (the
    deprecated `functions` and `function_call` are read as them). With `allowed_tools`, only the
    allowed tools are offered, under its mode. Raises `APIError` (400) for a choice that names no
    offered tool."""
    offered = body.tools or [Tool(type="function", function=function) for function in body.functions or []]
    tools = {tool.function.name: tool.model_dump(exclude_none=True) for tool in offered}
    choice = body.tool_choice
    if body.function_call is not None:
        choice = body.function_call if isinstance(body.function_call, str) else NamedToolChoice(
            type="function", function=body.function_call)
    if choice not in (None, "none", "auto") and not tools:
        raise APIError(400, "tool_choice needs tools", param="tool_choice")
    named = [choice.function.name] if hasattr(choice, "function") else []
    if hasattr(choice, "allowed_tools"):
        named = [allowed.function.name for allowed in choice.allowed_tools.tools]
    if unknown := [name for name in named if name not in tools]:
        raise APIError(400, f"tool_choice names {shown(unknown[0])}, which is not in tools", param="tool_choice")
    if hasattr(choice, "allowed_tools"):
        return [tools[name] for name in dict.fromkeys(named)], choice.allowed_tools.mode
    return list(tools.values()) or None, choice.model_dump() if hasattr(choice, "model_dump") else choice


async def _checked_schemas(body: ChatCompletionRequest, settings: Settings, policy: WebhookPolicy) -> VerifierSpec | None:
    """The request's verifier (`_verifier`), once its JSON Schemas are checked: refuses (400, naming
    the param) schemas that together are larger than `R3_MAX_SCHEMA_BYTES` as JSON, before any work
    on them, then one that is not a valid JSON Schema. Checking takes ~6 µs a byte, so it runs in the
    grammar threads (`grammar_work`), off the event loop."""
    schemas = _schemas(body)
    total = 0
    for param, schema in schemas:
        total += len(json.dumps(schema, ensure_ascii=False, separators=(",", ":")).encode())
        if total > settings.max_schema_bytes:
            raise APIError(400, f"{param}: the request's JSON Schemas take more than {settings.max_schema_bytes} "
                           "bytes as JSON, this server's limit (R3_MAX_SCHEMA_BYTES)", param=param,
                           code="schema_too_large")
    for param, schema in schemas:
        if param != "verifier.schema" and (problem := await _schema_work(param, schema_problem, schema)):
            raise APIError(400, f"{param}: {problem}", param=param)
    return await _schema_work("verifier", _verifier, body, policy)  # its schema checked as it is read


def _schemas(body: ChatCompletionRequest) -> list[tuple[str, Any]]:
    """Each JSON Schema the request carries, with its param."""
    schemas = [(f"tools.{i}.function.parameters", tool.function.parameters) for i, tool in enumerate(body.tools or [])
               if getattr(tool, "function", None) is not None and tool.function.parameters is not None]
    schemas += [(f"functions.{i}.parameters", function.parameters) for i, function in enumerate(body.functions or [])
                if function.parameters is not None]
    if body.response_format is not None and body.response_format.json_schema is not None:
        schemas.append(("response_format.json_schema.schema", body.response_format.json_schema.schema_))
    if body.verifier is not None and body.verifier.get("type") == "json_schema" and "schema" in body.verifier:
        schemas.append(("verifier.schema", body.verifier["schema"]))
    return schemas


async def _schema_work(param: str, work: Callable[..., T], *args: Any) -> T:
    """`work(*args)` on `param`'s schema, in the grammar threads; 400 naming `param` if it takes too long."""
    try:
        return await grammar_work(work, *args)
    except GrammarTimeout as error:
        raise APIError(400, f"{param}: checking it {error}", param=param) from None


async def _check_grammar(engine: Engine, task: ChatTask) -> None:
    """Refuses (400) a schema that no grammar can be built for, before the answer (or its stream)
    starts. The task's grammar is built here once and kept for its attempts."""
    if not engine.supports_json_schema:
        return
    for param, tag in (("response_format", grammar_tag(None, task.params.json_schema)), ("tools", task.structural_tag)):
        if problem := await _schema_work(param, grammar_problem, tag):
            raise APIError(400, f"{param}: {problem}", param=param)


def _first_prompt(reflector: Reflector, task: ChatTask) -> ChatPrompt:
    """The first attempt's prompt, with its token ids. Raises `APIError` (400) when it leaves no room
    in the context; a prompt that cannot fit even at the most characters a token can stand for is
    refused without tokenizing it."""
    engine = reflector.engine
    prompt = reflector.core.attempt_prompt(task, task.messages)
    at_least = len(prompt.engine_input) // _most_characters_per_token(engine.tokenizer)
    if at_least >= engine.max_model_len:
        raise _too_long(f"at least {at_least}", engine.max_model_len)
    prompt = replace(prompt, token_ids=engine.encode(prompt.engine_input))
    if len(prompt.token_ids) >= engine.max_model_len:
        raise _too_long(str(len(prompt.token_ids)), engine.max_model_len)
    return prompt


@cache
def _most_characters_per_token(tokenizer: Any) -> int:
    """An upper bound on the characters of text one token stands for: twice its longest written form
    (a token is written with at least as many characters as it stands for; twice, because a
    tokenizer's normalizer may shorten the text first, e.g. composing a letter and its accent)."""
    return 2 * max(len(token) for token in tokenizer.get_vocab())


def _too_long(size: str, context: int) -> APIError:
    return APIError(400, f"the messages take {size} tokens; this model's context is {context}",
                    param="messages", code="context_length_exceeded")


def _response_schema(body: ChatCompletionRequest, engine: Engine) -> dict | None:
    """The JSON schema `response_format` holds the answer to, on an engine that can enforce it."""
    response_format = body.response_format
    if response_format is None or response_format.type == "text":
        return None
    if not engine.supports_json_schema:
        raise APIError(400, f"response_format {response_format.type} needs an engine that constrains decoding; "
                       "on this one, attach a json_schema verifier instead, and a failed answer is reflected on "
                       "and retried", param="response_format")
    if response_format.type == "json_object":
        return {"type": "object"}
    return response_format.json_schema.schema_


def _verifier(body: ChatCompletionRequest, policy: WebhookPolicy) -> VerifierSpec | None:
    if body.verifier is None:
        return None
    try:
        spec = parse_spec(body.verifier)
    except ValidationError as error:
        first = max(error.errors(), key=lambda e: len(e.get("loc", ())))
        location = [str(part) for part in first.get("loc", ())]
        # The location starts with the spec's type tag; without one, the type itself was wrong.
        field = location[1:] if location else (["type"] if first.get("type", "").startswith("union_tag") else [])
        param = ".".join(["verifier", *field])
        raise APIError(400, f"{clipped(param)}: {validation_message(first)}", param=param) from error
    if isinstance(spec, WebhookSpec):
        try:
            spec.check(policy)
        except WebhookNotAllowed as error:
            raise APIError(400, str(error), param="verifier.url", code="webhook_not_allowed") from error
    return spec
