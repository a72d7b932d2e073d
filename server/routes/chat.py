"""`POST /v1/chat/completions`: validate, generate (reflecting and retrying when a verifier says no), respond."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import cache
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from r3.chat_format import render_prompt
from r3.engines.base import Engine, GenerationChunk, SamplingParams
from r3.reflect_retry import ChatTask, Generation, Reflector, Turn
from r3.settings import Settings
from server.adapters import AdapterManager
from server.auth import CheckedRoute, tenant
from server.completions import (
    answer_events,
    chat_completion,
    r3_info,
    sse_stream,
    unless_disconnected,
    usage_of,
)
from server.errors import APIError, ClientGone
from server.protocol import ChatCompletion, ChatCompletionRequest, R3Info, Usage
from verifiers import (
    VerifierSpec,
    WebhookNotAllowed,
    WebhookPolicy,
    WebhookSpec,
    parse_spec,
)

router = APIRouter(route_class=CheckedRoute)


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request,
                                 caller: str | None = Depends(tenant)) -> ChatCompletion | StreamingResponse:
    state = request.app.state
    adapters: AdapterManager = state.adapters
    reflector: Reflector = state.reflector
    adapters.resolve(body.model)  # an unknown model is a 404 before anything starts
    task = await build_task(state.engine, body, state.settings, reflector.webhook_policy)
    if body.stream and task.verifier is None:
        return StreamingResponse(sse_stream(_live_stream(state, task, body, caller)), media_type="text/event-stream")
    started = time.perf_counter()
    async with adapters.pin(body.model) as adapter:  # every attempt on the version the request started with
        run = Reflector.start(replace(task, adapter=adapter), caller)
        try:
            await unless_disconnected(request, reflector.run(run))
        except ClientGone:
            reflector.abandon(run)
            await state.store.save(run.episode)
            raise
    await state.store.save(run.episode)
    state.metrics.observe(run.episode, time.perf_counter() - started)
    if not body.stream:
        return chat_completion(body.model, run.episode, run.turns, body.logprobs)
    final = run.turns[-1]
    # Earlier attempts were judged before anything is sent; the final one goes out as one piece.
    replay = _one_piece(GenerationChunk(final.result.text, final.result.tokens, final.result.finish_reason))

    async def conclude() -> tuple[Turn, R3Info, Usage]:
        return final, r3_info(run.episode), usage_of(run.turns)

    events = answer_events(body.model, final.completion_id, replay, conclude, parses_tools=task.parses_tools,
                           logprobs=body.logprobs, include_usage=_include_usage(body))
    return StreamingResponse(sse_stream(events), media_type="text/event-stream")


async def _one_piece(chunk: GenerationChunk) -> AsyncIterator[GenerationChunk]:
    yield chunk


def _include_usage(body: ChatCompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


async def _live_stream(state, task: ChatTask, body: ChatCompletionRequest, caller: str | None) -> AsyncIterator[str]:
    """Plain inference, streamed as it is generated; the episode is recorded when it ends, or as
    abandoned when the client hangs up (Starlette then cancels this stream, and so the generation)."""
    reflector: Reflector = state.reflector
    async with state.adapters.pin(body.model) as adapter:
        run = Reflector.start(replace(task, adapter=adapter), caller)
        prompt = reflector.prompt(run.task, run.task.messages)
        generation = run.generation = Generation(prompt)

        async def conclude() -> tuple[Turn, R3Info, Usage]:
            await reflector.run(run, first=reflector.turn(run.task, generation))
            await state.store.save(run.episode)
            state.metrics.observe(run.episode, time.perf_counter() - generation.started)
            return run.turns[-1], r3_info(run.episode), usage_of(run.turns)

        chunks = reflector.engine.stream(prompt.engine_input, Reflector.constrained(run.task.params, prompt), adapter)
        try:
            async for event in answer_events(body.model, generation.completion_id, generation.follow(chunks), conclude,
                                             parses_tools=task.parses_tools, logprobs=body.logprobs,
                                             include_usage=_include_usage(body)):
                yield event
        except (asyncio.CancelledError, GeneratorExit):
            reflector.abandon(run)
            with anyio.CancelScope(shield=True):  # recorded even though this task is being cancelled
                await state.store.save(run.episode)
            raise


async def build_task(engine: Engine, body: ChatCompletionRequest, settings: Settings,
                     policy: WebhookPolicy) -> ChatTask:
    """Check everything a request asks for before any generation starts (the adapter is set when pinned).

    Raises `APIError` (400) for what the request asks wrongly, and when it does not fit the context."""
    tool_names = {tool.function.name for tool in body.tools or []}
    if body.tool_choice not in (None, "none", "auto") and not tool_names:
        raise APIError(400, "tool_choice needs tools", param="tool_choice")
    if hasattr(body.tool_choice, "function") and body.tool_choice.function.name not in tool_names:
        raise APIError(400, f"tool_choice names {body.tool_choice.function.name!r}, which is not in tools",
                       param="tool_choice")
    messages = [message.model_dump(exclude_none=True) for message in body.messages]
    tools = [tool.model_dump(exclude_none=True) for tool in body.tools] if body.tools else None
    tool_choice = body.tool_choice.model_dump() if hasattr(body.tool_choice, "model_dump") else body.tool_choice
    # A long prompt takes a second to tokenize: in a worker thread, the event loop serves others meanwhile.
    prompt_tokens = await asyncio.to_thread(_prompt_tokens, engine, messages, tools, tool_choice)
    room = engine.max_model_len - prompt_tokens
    asked = body.max_completion_tokens or body.max_tokens
    if asked is not None and asked > room:
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise APIError(400, f"{param} is {asked}, but the context of {engine.max_model_len} tokens leaves "
                       f"room for {room} after the {prompt_tokens}-token prompt",
                       param=param, code="context_length_exceeded")
    params = SamplingParams(max_tokens=asked or min(settings.default_max_tokens, room), temperature=body.temperature,
                            top_p=body.top_p, seed=body.seed, stop=body.stop_sequences,
                            top_logprobs=body.top_logprobs or 0, json_schema=_response_schema(body, engine))
    return ChatTask(model=body.model, adapter=None, messages=messages, tools=tools, tool_choice=tool_choice,
                    params=params, verifier=_verifier(body, policy), max_retries=body.reflect.max_retries,
                    store_text=body.store)


def _prompt_tokens(engine: Engine, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                   tool_choice: str | dict[str, Any] | None) -> int:
    """The rendered prompt's length in tokens. Raises `APIError` (400) when it leaves no room in the
    context; a prompt that cannot fit even at the most characters a token can stand for is refused
    without tokenizing it."""
    prompt = render_prompt(engine.tokenizer, messages, tools, tool_choice, json_constrained=engine.supports_json_schema)
    at_least = len(prompt.engine_input) // _most_characters_per_token(engine.tokenizer)
    if at_least >= engine.max_model_len:
        raise _too_long(f"at least {at_least}", engine.max_model_len)
    prompt_tokens = engine.count_tokens(prompt.engine_input)
    if prompt_tokens >= engine.max_model_len:
        raise _too_long(str(prompt_tokens), engine.max_model_len)
    return prompt_tokens


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
        raise APIError(400, f"response_format {response_format.type} needs an engine that constrains decoding "
                       "(R3_ENGINE=vllm); on this one, attach a json_schema verifier instead, and a failed answer "
                       "is reflected on and retried", param="response_format")
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
        raise APIError(400, f"{param}: {first.get('msg', 'invalid verifier')}", param=param) from error
    if isinstance(spec, WebhookSpec):
        try:
            spec.check(policy)
        except WebhookNotAllowed as error:
            raise APIError(400, str(error), param="verifier.url", code="webhook_not_allowed") from error
    return spec
