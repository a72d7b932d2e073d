"""Turning generations into OpenAI responses: a ChatCompletion, or its SSE chunk stream; and
running a request's generation only while its client waits for it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request
from starlette.types import Receive

from r3.engines.base import EngineError, GenerationChunk, TokenLogprob
from r3.episodes import AttemptRecord, Episode
from r3.reflect_retry import Turn
from server.errors import APIError, ClientGone
from server.protocol import (
    AttemptReport,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    ErrorDetail,
    ErrorResponse,
    FunctionCall,
    R3Info,
    ResponseMessage,
    TokenLogprobOut,
    ToolCallDelta,
    ToolCallOut,
    TopLogprob,
    Usage,
    now,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Called when a stream's last token is out: the answer as a turn, and the r3 account and usage to
# send with the final chunk.
Conclusion = Callable[[], Awaitable[tuple[Turn, R3Info, Usage]]]


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """`work`'s result, unless the client hangs up first: then `work` is cancelled (which cancels its
    engine requests), has finished cancelling, and `ClientGone` is raised."""
    task = asyncio.create_task(work)
    hangup = asyncio.create_task(_hangup(request.receive))
    try:
        await asyncio.wait((task, hangup), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server is stopping
        task.cancel()
        raise
    finally:
        hangup.cancel()
    if not task.done():
        task.cancel()
        await asyncio.wait((task,))
        raise ClientGone()
    return task.result()


async def _hangup(receive: Receive) -> None:
    """Returns when the client disconnects; the body is read by then, so nothing else can come."""
    while (await receive())["type"] != "http.disconnect":
        pass


def r3_info(episode: Episode) -> R3Info:
    return R3Info(
        episode_id=episode.id,
        adapter=episode.adapter or "base",
        reflected=len(episode.attempts) > 1,
        attempts=[AttemptReport(attempt=a.number, success=a.passed, detail=a.feedback.detail if a.feedback else a.detail,
                                reflection=a.reflection, finish_reason=a.finish_reason)
                  for a in episode.attempts],
    )


def usage_of(turns: list[Turn]) -> Usage:
    """Every token the request cost: all attempts and reflections, prompts included."""
    prompt = sum(turn.result.prompt_tokens for turn in turns)
    completion = sum(turn.result.completion_tokens for turn in turns)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def logprobs_out(tokens: list[TokenLogprob]) -> ChoiceLogprobs:
    def encoded(text: str) -> list[int]:
        return list(text.encode("utf-8"))

    return ChoiceLogprobs(content=[
        TokenLogprobOut(token=t.token, logprob=t.logprob, bytes=encoded(t.token),
                        top_logprobs=[TopLogprob(token=s, logprob=lp, bytes=encoded(s)) for s, lp in t.top])
        for t in tokens
    ])


def _finish_reason(turn: Turn) -> str:
    return "tool_calls" if turn.parsed.tool_calls and turn.result.finish_reason == "stop" else turn.result.finish_reason


def completion_of_attempt(episode: Episode, attempt: AttemptRecord) -> ChatCompletion:
    """A recorded attempt as the completion it was returned as (for repeated, idempotent /feedback)."""
    tool_calls = [ToolCallOut(id=c["id"], function=FunctionCall(**c["function"])) for c in attempt.tool_calls or []]
    finish = "tool_calls" if tool_calls and attempt.finish_reason == "stop" else attempt.finish_reason
    tokens = attempt.prompt_tokens + attempt.completion_tokens
    return ChatCompletion(
        id=attempt.completion_id, created=now(), model=episode.model,
        choices=[Choice(message=ResponseMessage(content=attempt.content, tool_calls=tool_calls or None),
                        finish_reason=finish)],
        usage=Usage(prompt_tokens=attempt.prompt_tokens, completion_tokens=attempt.completion_tokens, total_tokens=tokens),
        r3=r3_info(episode),
    )


def chat_completion(model: str, episode: Episode, turns: list[Turn], logprobs: bool) -> ChatCompletion:
    """The response to a request: its last attempt, with the cost and verdicts of all of them."""
    final = turns[-1]
    tool_calls = [ToolCallOut(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
                  for c in final.parsed.tool_calls] or None
    return ChatCompletion(
        id=final.completion_id,
        created=now(),
        model=model,
        choices=[Choice(
            message=ResponseMessage(content=final.parsed.content, tool_calls=tool_calls),
            finish_reason=_finish_reason(final),
            logprobs=logprobs_out(final.result.tokens) if logprobs else None,
        )],
        usage=usage_of(turns),
        r3=r3_info(episode),
    )


async def sse_stream(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """`events`, then `[DONE]`. The stream's 200 is sent before its first event, so a failure can
    only be told in the stream: any exception `events` raises ends it in an error event, then `[DONE]`."""
    try:
        async for event in events:
            yield event
    except Exception as error:  # noqa: BLE001 - whatever it was, the client must learn the stream failed
        yield _error_event(error)
    yield "data: [DONE]\n\n"


def _error_event(error: Exception) -> str:
    if isinstance(error, APIError | EngineError):
        message = str(error)
    else:
        log.error("a stream failed", exc_info=error)
        message = "internal server error"
    return f"data: {ErrorResponse(error=ErrorDetail(message=message, type='server_error')).model_dump_json()}\n\n"


async def answer_events(
    model: str,
    completion_id: str,
    pieces: AsyncIterator[GenerationChunk],
    conclude: Conclusion,
    *,
    parses_tools: bool,
    logprobs: bool,
    include_usage: bool,
) -> AsyncIterator[str]:
    """SSE chunks of one answer. With tools, the answer is held until it ends: a call is known only when whole."""
    created = now()

    def event(delta: Delta, finish: str | None = None, lp: ChoiceLogprobs | None = None, **extra) -> str:
        chunk = ChatCompletionChunk(id=completion_id, created=created, model=model,
                                    choices=[ChunkChoice(delta=delta, finish_reason=finish, logprobs=lp)], **extra)
        return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"

    yield event(Delta(role="assistant", content=""))
    async for piece in pieces:
        if not parses_tools and (piece.text or piece.tokens):
            yield event(Delta(content=piece.text), lp=logprobs_out(piece.tokens) if logprobs else None)
    turn, info, usage = await conclude()
    if parses_tools:
        if turn.parsed.content:
            yield event(Delta(content=turn.parsed.content), lp=logprobs_out(turn.result.tokens) if logprobs else None)
        if turn.parsed.tool_calls:
            yield event(Delta(tool_calls=[
                ToolCallDelta(index=i, id=c.id, type="function", function=FunctionCall(name=c.name, arguments=c.arguments))
                for i, c in enumerate(turn.parsed.tool_calls)
            ]))
    yield event(Delta(), finish=_finish_reason(turn), r3=info)
    if include_usage:
        chunk = ChatCompletionChunk(id=completion_id, created=created, model=model, choices=[], usage=usage)
        yield f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"
