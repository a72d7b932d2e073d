"""Turning generations into OpenAI responses: a ChatCompletion, or its SSE chunk stream; and
running a request's generation only while its client waits for it.

A streamed answer sends its content as it is generated and, when tools are offered, its tool calls
as vLLM does: a call's id and name as soon as its opening is recognised, then its arguments in
pieces (`r3.tool_call_stream`). Every chunk carries `finish_reason` and `logprobs`, null until they
have a value; with `n` > 1 the choices' chunks interleave, each with its `index`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive

from r3.chat_format import call_id
from r3.engines.base import Engine, EngineError, GenerationChunk, TokenLogprob
from r3.engines.token_bytes import own_bytes, token_name
from r3.episodes import AttemptRecord, Episode
from r3.reflect_retry import Generated
from r3.tool_call_stream import ArgumentsPiece, CallStart, ContentPiece, Event, ToolCallStream
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
    FunctionCallDelta,
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
Conclusion = Callable[[], Awaitable[tuple[Generated, R3Info, Usage]]]
# One choice of a response: its episode and the turns that made it (the last is the answer).
Answer = tuple[Episode, list[Generated]]


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


async def all_of(works: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """The results of `works`, run concurrently. If one raises, the others are cancelled (and have
    finished cancelling) before its exception is raised; so they are if this is cancelled."""
    tasks = [asyncio.ensure_future(work) for work in works]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def r3_info(episode: Episode) -> R3Info:
    return R3Info(
        episode_id=episode.id,
        adapter=episode.adapter or "base",
        reflected=len(episode.attempts) > 1,
        attempts=[AttemptReport(attempt=a.number, success=a.passed, detail=a.feedback.detail if a.feedback else a.detail,
                                reflection=a.reflection, finish_reason=a.finish_reason)
                  for a in episode.attempts],
    )


def usage_of(*choices: Sequence[Generated]) -> Usage:
    """Every token a request cost, given each choice's turns (attempts and reflections, the first
    one's first): the request's prompt once, as OpenAI counts it (every choice's first attempt reads
    that one prompt), each later turn's own prompt, and every turn's generated tokens."""
    first = choices[0][0].result.prompt_tokens
    prompt = first + sum(turn.result.prompt_tokens for turns in choices for turn in turns[1:])
    completion = sum(turn.result.completion_tokens for turns in choices for turn in turns)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def logprobs_out(tokens: list[TokenLogprob], vocabulary: Sequence[bytes] = ()) -> ChoiceLogprobs:
    """OpenAI's logprobs of `tokens`. Each token, and each of its alternatives, has its own `bytes`,
    from `vocabulary` (the bytes of each token id, `r3.engines.token_bytes`), so the bytes of the
    pieces of a character rejoin into it, and is named as OpenAI names it (`token_name`:
    `bytes:\\xe3\\x81` for such a piece)."""
    def named(token: TokenLogprob) -> dict[str, Any]:
        raw = own_bytes(vocabulary, token.token_id, token.token)
        return {"token": token_name(raw), "logprob": token.logprob, "bytes": list(raw)}

    return ChoiceLogprobs(content=[TokenLogprobOut(**named(t), top_logprobs=[TopLogprob(**named(a)) for a in t.top])
                                   for t in tokens])


def _finish_reason(turn: Generated) -> str:
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


def chat_completion(model: str, episode: Episode, turns: list[Generated], logprobs: bool,
                    vocabulary: Sequence[bytes] = (), more: Sequence[Answer] = ()) -> ChatCompletion:
    """The response to a request: its last attempt, with the cost and verdicts of all of them; with
    `more` (the other choices of `n`), one choice each, each with its own `r3`."""
    answers = [(episode, turns), *more]

    def choice(index: int, answer: Answer) -> Choice:
        final = answer[1][-1]
        tool_calls = [ToolCallOut(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
                      for c in final.parsed.tool_calls] or None
        return Choice(index=index, message=ResponseMessage(content=final.parsed.content, tool_calls=tool_calls),
                      finish_reason=_finish_reason(final),
                      logprobs=logprobs_out(final.result.tokens, vocabulary) if logprobs else None,
                      r3=r3_info(answer[0]) if more else None)

    return ChatCompletion(id=turns[-1].completion_id, created=now(), model=model,
                          choices=[choice(index, answer) for index, answer in enumerate(answers)],
                          usage=usage_of(*(answer_turns for _, answer_turns in answers)),
                          r3=r3_info(episode))


async def streamed(events: AsyncIterator[str]) -> StreamingResponse:
    """The response streaming `events` as server-sent events, its first event made before it is
    returned: whatever fails until then (an adapter version that cannot be loaded, ...) raises here,
    before the 200 and its headers are sent, so a stream fails with the status and error object the
    unstreamed request gets. A failure after that is told in the stream (`sse_stream`)."""
    first = await anext(events, None)
    return StreamingResponse(sse_stream(_resumed(first, events)), media_type="text/event-stream")


async def _resumed(first: str | None, events: AsyncIterator[str]) -> AsyncIterator[str]:
    if first is not None:
        yield first
    async for event in events:
        yield event


def logit_bias_pairs(bias: dict[int, float] | None, engine: Engine) -> tuple[tuple[int, float], ...]:
    """A request's `logit_bias` (`server.protocol.LogitBias`) as the engine takes it: (token id, bias)
    pairs. Raises `APIError` (400) for an id outside this model's vocabulary."""
    vocabulary = len(engine.tokenizer)
    if outside := [token for token in bias or {} if token >= vocabulary]:
        raise APIError(400, f"logit_bias names token {outside[0]}; this model's vocabulary has {vocabulary} tokens",
                       param="logit_bias")
    return tuple((bias or {}).items())


async def sse_stream(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """`events`, then `[DONE]`. Once the stream's 200 is sent (`streamed`), a failure can only be
    told in the stream: any exception `events` raises ends it in an error event, then `[DONE]`."""
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


@dataclass(frozen=True)
class Wire:
    """What every chunk of one streamed response shares."""

    model: str
    completion_id: str
    created: int
    logprobs: bool
    include_usage: bool
    vocabulary: Sequence[bytes] = ()  # the bytes of each token id, for logprobs

    def event(self, choices: list[ChunkChoice], usage: Usage | None = None, r3: R3Info | None = None) -> str:
        chunk = ChatCompletionChunk(id=self.completion_id, created=self.created, model=self.model, choices=choices,
                                    usage=usage, r3=r3)
        return chunk.sse(self.include_usage)


async def response_events(wire: Wire, choices: list[AsyncIterator[str]], usage: Callable[[], Usage]) -> AsyncIterator[str]:
    """The chunks of every choice (`choice_events`), interleaved as they come; then, with
    `include_usage`, the usage chunk (`usage()`: the whole request's, once every choice is done)."""
    async for event in interleaved(choices):
        yield event
    if wire.include_usage:
        yield wire.event([], usage=usage())


async def choice_events(wire: Wire, index: int, completion_id: str, pieces: AsyncIterator[GenerationChunk],
                        conclude: Conclusion, offered_tools: frozenset[str] | None, prefix: str = "",
                        info_in_choice: bool = False) -> AsyncIterator[str]:
    """SSE chunks of choice `index` (whose answer has `completion_id`, which names its tool calls): its
    role; its content and tool calls (of `offered_tools`; None: tools are not parsed) as they are
    generated after `prefix`, each chunk with the logprobs of the tokens since the last one; its
    finish, with the r3 account (in the choice with `info_in_choice`, for n > 1)."""
    unsent: list[TokenLogprob] = []

    def chunk(delta: Delta, finish: str | None = None, info: R3Info | None = None) -> str:
        lp = logprobs_out(unsent, wire.vocabulary) if wire.logprobs and unsent else None
        unsent.clear()
        choice = ChunkChoice(index=index, delta=delta, finish_reason=finish, logprobs=lp,
                             r3=info if info_in_choice else None)
        return wire.event([choice], r3=None if info_in_choice else info)

    yield chunk(Delta(role="assistant", content=""))
    calls = ToolCallStream(offered_tools) if offered_tools is not None else None
    for event in calls.feed(prefix) if calls else []:
        yield chunk(_delta(event, completion_id))
    async for piece in pieces:
        unsent += piece.tokens
        events = calls.feed(piece.text) if calls else [ContentPiece(piece.text)] if piece.text or piece.tokens else []
        for event in events:
            yield chunk(_delta(event, completion_id))
    turn, info, _ = await conclude()
    if calls:
        for event in calls.finish(turn.parsed):
            yield chunk(_delta(event, completion_id))
    yield chunk(Delta(), finish=_finish_reason(turn), info=info)


def _delta(event: Event, completion_id: str) -> Delta:
    if isinstance(event, ContentPiece):
        return Delta(content=event.text)
    if isinstance(event, CallStart):
        return Delta(tool_calls=[ToolCallDelta(index=event.index, id=call_id(completion_id, event.index),
                                               type="function",
                                               function=FunctionCallDelta(name=event.name, arguments=""))])
    assert isinstance(event, ArgumentsPiece)
    return Delta(tool_calls=[ToolCallDelta(index=event.index, function=FunctionCallDelta(arguments=event.text))])


async def interleaved(streams: list[AsyncIterator[str]]) -> AsyncIterator[str]:
    """The events of every one of `streams` as they come. The first failure ends it (raised here,
    the other streams closed); so does closing it."""
    if len(streams) == 1:
        async for event in streams[0]:
            yield event
        return
    queue: asyncio.Queue[tuple[str | None, BaseException | None]] = asyncio.Queue()

    async def pump(stream: AsyncIterator[str]) -> None:
        try:
            async for event in stream:
                await queue.put((event, None))
            await queue.put((None, None))
        except Exception as error:  # noqa: BLE001 - handed to the reader, which raises it
            await queue.put((None, error))

    tasks = [asyncio.create_task(pump(stream)) for stream in streams]
    try:
        for _ in streams:
            while (item := await queue.get())[0] is not None:
                yield item[0]
            if item[1] is not None:
                raise item[1]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
