"""Server-sent events, as OpenAI streams a response: each event a `data: <json>` line, `[DONE]` last.

A stream's first event is made before its 200 and headers are sent (`streamed`), so whatever fails
until then fails as the unstreamed request does; a failure after that is told in the stream, as
an error event before `[DONE]` (`sse_stream`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import StreamingResponse

from r3.engines.base import EngineError
from server.errors import APIError
from server.openai.serving import unless_disconnected
from server.protocol import ErrorDetail, ErrorResponse

log = logging.getLogger(__name__)


async def streamed(request: Request, events: AsyncIterator[str],
                   framing: Callable[[AsyncIterator[str]], AsyncIterator[str]] | None = None) -> StreamingResponse:
    """The response streaming `events` as server-sent events, its first event made before it is
    returned (while the client is followed: if it hangs up, `events` is cancelled and `ClientGone`
    raised). Whatever fails until then (an adapter version that cannot be loaded, a verified answer's
    generation, ...) raises here, before the 200 and its headers are sent, so a stream fails with the
    status and error object the unstreamed request gets. `framing` ends the stream and tells a later
    failure in it: `sse_stream`'s (the completions APIs'), or a surface's own (the Responses API's)."""
    async def first_event() -> str | None:
        return await anext(events, None)

    first = await unless_disconnected(request, first_event())
    return StreamingResponse((framing or sse_stream)(_resumed(first, events)), media_type="text/event-stream")


async def _resumed(first: str | None, events: AsyncIterator[str]) -> AsyncIterator[str]:
    if first is not None:
        yield first
    async for event in events:
        yield event


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
    message = failure_message(error)
    return f"data: {ErrorResponse(error=ErrorDetail(message=message, type='server_error')).model_dump_json()}\n\n"


def failure_message(error: Exception) -> str:
    """What a client is told of `error`, which ended its stream after the 200: what went wrong with
    the request or the engine, or (anything else, logged with its traceback) "internal server error"."""
    if isinstance(error, APIError | EngineError):
        return str(error)
    log.error("a stream failed", exc_info=error)
    return "internal server error"


async def interleaved(streams: list[AsyncIterator[str]]) -> AsyncIterator[str]:
    """The events of every one of `streams` as they come (the choices of one response). The first
    failure ends it (raised here, the other streams closed); so does closing it."""
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
