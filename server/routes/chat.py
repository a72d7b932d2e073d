"""`POST /v1/chat/completions`: one OpenAI chat request → one engine generation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from r3.chat_format import ChatPrompt, ParsedOutput, parse_tool_calls, render_prompt
from r3.engines.base import Engine, EngineError, GenerationResult, SamplingParams, TokenLogprob
from server.errors import APIError
from server.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    ErrorDetail,
    ErrorResponse,
    FunctionCall,
    ResponseMessage,
    TokenLogprobOut,
    ToolCallDelta,
    ToolCallOut,
    TopLogprob,
    Usage,
    completion_id,
    now,
)

router = APIRouter()


@dataclass(frozen=True)
class PreparedRequest:
    """A validated request, rendered for the engine."""

    body: ChatCompletionRequest
    adapter: str | None
    prompt: ChatPrompt
    prompt_tokens: int
    params: SamplingParams

    @property
    def parses_tools(self) -> bool:
        return bool(self.body.tools) and self.body.tool_choice != "none"


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> ChatCompletion | StreamingResponse:
    engine: Engine = request.app.state.engine
    prepared = prepare(engine, body, request.app.state.settings.default_max_tokens)
    if body.stream:
        return StreamingResponse(_stream(engine, prepared), media_type="text/event-stream")
    result = await engine.generate(prepared.prompt.text + prepared.prompt.assistant_prefix,
                                   prepared.params, prepared.adapter)
    return completion_response(prepared, result)


def resolve_adapter(engine: Engine, model: str) -> str | None:
    if model == engine.model_id:
        return None
    if model in engine.adapters():
        return model
    raise APIError(404, f"the model {model!r} does not exist; GET /v1/models lists them",
                   type="not_found_error", param="model", code="model_not_found")


def prepare(engine: Engine, body: ChatCompletionRequest, default_max_tokens: int) -> PreparedRequest:
    adapter = resolve_adapter(engine, body.model)
    tool_names = {tool.function.name for tool in body.tools or []}
    if body.tool_choice not in (None, "none", "auto") and not tool_names:
        raise APIError(400, "tool_choice needs tools", param="tool_choice")
    if hasattr(body.tool_choice, "function") and body.tool_choice.function.name not in tool_names:
        raise APIError(400, f"tool_choice names {body.tool_choice.function.name!r}, which is not in tools",
                       param="tool_choice")
    prompt = render_prompt(
        engine.tokenizer,
        [message.model_dump(exclude_none=True) for message in body.messages],
        [tool.model_dump(exclude_none=True) for tool in body.tools] if body.tools else None,
        body.tool_choice.model_dump() if hasattr(body.tool_choice, "model_dump") else body.tool_choice,
    )
    prompt_tokens = engine.count_tokens(prompt.text + prompt.assistant_prefix)
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
    params = SamplingParams(
        max_tokens=asked or min(default_max_tokens, room),
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stop_sequences,
        top_logprobs=body.top_logprobs or 0,
    )
    return PreparedRequest(body, adapter, prompt, prompt_tokens, params)


def _logprobs(tokens: list[TokenLogprob]) -> ChoiceLogprobs:
    def encoded(text: str) -> list[int]:
        return list(text.encode("utf-8"))

    return ChoiceLogprobs(content=[
        TokenLogprobOut(token=t.token, logprob=t.logprob, bytes=encoded(t.token),
                        top_logprobs=[TopLogprob(token=s, logprob=lp, bytes=encoded(s)) for s, lp in t.top])
        for t in tokens
    ])


def _parsed(prepared: PreparedRequest, text: str) -> ParsedOutput:
    if prepared.parses_tools:
        return parse_tool_calls(text)
    return ParsedOutput(content=text, tool_calls=[])


def _tool_calls_out(parsed: ParsedOutput) -> list[ToolCallOut] | None:
    return [ToolCallOut(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
            for c in parsed.tool_calls] or None


def _usage(prepared: PreparedRequest, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prepared.prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prepared.prompt_tokens + completion_tokens)


def completion_response(prepared: PreparedRequest, result: GenerationResult) -> ChatCompletion:
    parsed = _parsed(prepared, prepared.prompt.assistant_prefix + result.text)
    finish = "tool_calls" if parsed.tool_calls and result.finish_reason == "stop" else result.finish_reason
    return ChatCompletion(
        id=completion_id(),
        created=now(),
        model=prepared.body.model,
        choices=[Choice(
            message=ResponseMessage(content=parsed.content, tool_calls=_tool_calls_out(parsed)),
            finish_reason=finish,
            logprobs=_logprobs(result.tokens) if prepared.body.logprobs else None,
        )],
        usage=_usage(prepared, result.completion_tokens),
    )


async def _stream(engine: Engine, prepared: PreparedRequest) -> AsyncIterator[str]:
    """SSE chunks. With tools, the answer is held until it ends: a call is known only when whole."""
    body = prepared.body
    chunk_id, created = completion_id(), now()

    def event(delta: Delta, finish: str | None = None, logprobs: ChoiceLogprobs | None = None) -> str:
        chunk = ChatCompletionChunk(id=chunk_id, created=created, model=body.model,
                                    choices=[ChunkChoice(delta=delta, finish_reason=finish, logprobs=logprobs)])
        return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"

    yield event(Delta(role="assistant", content=""))
    held, completion_tokens, finish = prepared.prompt.assistant_prefix, 0, "length"
    try:
        async for piece in engine.stream(prepared.prompt.text + prepared.prompt.assistant_prefix,
                                         prepared.params, prepared.adapter):
            completion_tokens += len(piece.tokens)
            finish = piece.finish_reason or finish
            if prepared.parses_tools:
                held += piece.text
            elif piece.text or piece.tokens:
                yield event(Delta(content=piece.text), logprobs=_logprobs(piece.tokens) if body.logprobs else None)
    except EngineError as error:
        detail = ErrorResponse(error=ErrorDetail(message=str(error), type="server_error"))
        yield f"data: {detail.model_dump_json()}\n\n"
        yield "data: [DONE]\n\n"
        return
    if prepared.parses_tools:
        parsed = parse_tool_calls(held)
        if parsed.content:
            yield event(Delta(content=parsed.content))
        if parsed.tool_calls:
            yield event(Delta(tool_calls=[
                ToolCallDelta(index=i, id=c.id, type="function", function=FunctionCall(name=c.name, arguments=c.arguments))
                for i, c in enumerate(parsed.tool_calls)
            ]))
            finish = "tool_calls" if finish == "stop" else finish
    yield event(Delta(), finish=finish)
    if body.stream_options and body.stream_options.include_usage:
        usage = ChatCompletionChunk(id=chunk_id, created=created, model=body.model, choices=[],
                                    usage=_usage(prepared, completion_tokens))
        yield f"data: {usage.model_dump_json(exclude_none=True)}\n\n"
    yield "data: [DONE]\n\n"

