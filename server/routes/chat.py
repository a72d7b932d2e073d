"""`POST /v1/chat/completions`: validate, generate (reflecting and retrying when a verifier says no), respond."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from r3.chat_format import render_prompt
from r3.engines.base import Engine, GenerationChunk, GenerationResult, SamplingParams
from r3.reflect_retry import ChatTask, Reflector, Turn, completion_id
from r3.settings import Settings
from server.adapters import AdapterManager
from server.auth import tenant
from server.completions import chat_completion, r3_info, sse_stream, usage_of
from server.errors import APIError
from server.protocol import ChatCompletion, ChatCompletionRequest
from verifiers import (
    VerifierSpec,
    WebhookNotAllowed,
    WebhookPolicy,
    WebhookSpec,
    parse_spec,
)

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request,
                                 caller: str | None = Depends(tenant)) -> ChatCompletion | StreamingResponse:
    state = request.app.state
    adapters: AdapterManager = state.adapters
    adapters.resolve(body.model)  # an unknown model is a 404 before anything starts
    task = build_task(state.engine, body, state.settings, state.reflector.webhook_policy)
    if body.stream and task.verifier is None:
        return StreamingResponse(_live_stream(state, task, body, caller), media_type="text/event-stream")
    started = time.perf_counter()
    async with adapters.pin(body.model) as adapter:  # every attempt on the version the request started with
        episode, turns = await state.reflector.run(replace(task, adapter=adapter), tenant=caller)
    await state.store.save(episode)
    state.metrics.observe(episode, time.perf_counter() - started)
    if not body.stream:
        return chat_completion(body.model, episode, turns, body.logprobs)
    final = turns[-1]
    # Earlier attempts were judged before anything is sent; the final one goes out as one piece.
    replay = _one_piece(GenerationChunk(final.result.text, final.result.tokens, final.result.finish_reason))

    async def conclude(_: Turn):
        return r3_info(episode), usage_of(turns)

    return StreamingResponse(
        sse_stream(body.model, final.completion_id, replay, lambda *_: final, conclude, parses_tools=task.parses_tools,
                   logprobs=body.logprobs, include_usage=_include_usage(body)),
        media_type="text/event-stream",
    )


async def _one_piece(chunk: GenerationChunk) -> AsyncIterator[GenerationChunk]:
    yield chunk


def _include_usage(body: ChatCompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


async def _live_stream(state, task: ChatTask, body: ChatCompletionRequest, caller: str | None) -> AsyncIterator[str]:
    """Plain inference, streamed as it is generated; the episode is recorded when it ends."""
    reflector: Reflector = state.reflector
    async with state.adapters.pin(body.model) as adapter:
        task = replace(task, adapter=adapter)
        prompt = reflector.prompt(task, task.messages)
        started = time.perf_counter()
        stream_id = completion_id()

        def assemble(text, tokens, finish) -> Turn:
            result = GenerationResult(text=text, tokens=tokens, finish_reason=finish,
                                      prompt_tokens=reflector.engine.count_tokens(prompt.engine_input))
            return Reflector.turn(task, prompt.assistant_prefix, result, time.perf_counter() - started,
                                  completion=stream_id)

        async def conclude(turn: Turn):
            episode, turns = await reflector.run(task, tenant=caller, first=turn)
            await state.store.save(episode)
            state.metrics.observe(episode, time.perf_counter() - started)
            return r3_info(episode), usage_of(turns)

        generation = reflector.engine.stream(prompt.engine_input, Reflector.constrained(task.params, prompt), task.adapter)
        async for event in sse_stream(body.model, stream_id, generation,
                                      assemble, conclude, parses_tools=task.parses_tools, logprobs=body.logprobs,
                                      include_usage=_include_usage(body)):
            yield event


def build_task(engine: Engine, body: ChatCompletionRequest, settings: Settings, policy: WebhookPolicy) -> ChatTask:
    """Check everything a request asks for before any generation starts (the adapter is set when pinned)."""
    tool_names = {tool.function.name for tool in body.tools or []}
    if body.tool_choice not in (None, "none", "auto") and not tool_names:
        raise APIError(400, "tool_choice needs tools", param="tool_choice")
    if hasattr(body.tool_choice, "function") and body.tool_choice.function.name not in tool_names:
        raise APIError(400, f"tool_choice names {body.tool_choice.function.name!r}, which is not in tools",
                       param="tool_choice")
    messages = [message.model_dump(exclude_none=True) for message in body.messages]
    tools = [tool.model_dump(exclude_none=True) for tool in body.tools] if body.tools else None
    tool_choice = body.tool_choice.model_dump() if hasattr(body.tool_choice, "model_dump") else body.tool_choice
    prompt = render_prompt(engine.tokenizer, messages, tools, tool_choice, json_constrained=engine.supports_json_schema)
    prompt_tokens = engine.count_tokens(prompt.engine_input)
    room = engine.max_model_len - prompt_tokens
    if room < 1:
        raise APIError(400, f"the messages take {prompt_tokens} tokens; this model's context is "
                       f"{engine.max_model_len}", param="messages", code="context_length_exceeded")
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
