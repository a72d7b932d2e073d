"""The request-level work both OpenAI surfaces do around a generation: following the client (a
request's work stops when it hangs up), running a request's choices together, and the checks of a
request that need the model (its vocabulary)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from fastapi import Request
from starlette.types import Receive

from r3.engines.base import Engine
from r3.engines.token_bytes import vocabulary_bytes
from server.errors import APIError, ClientGone

T = TypeVar("T")


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


def logit_bias_pairs(bias: dict[int, float] | None, engine: Engine) -> tuple[tuple[int, float], ...]:
    """A request's `logit_bias` (`server.protocol.LogitBias`) as the engine takes it: (token id, bias)
    pairs. Raises `APIError` (400) for an id outside this model's vocabulary."""
    vocabulary = len(engine.tokenizer)
    if outside := [token for token in bias or {} if token >= vocabulary]:
        raise APIError(400, f"logit_bias names token {outside[0]}; this model's vocabulary has {vocabulary} tokens",
                       param="logit_bias")
    return tuple((bias or {}).items())


async def token_bytes(engine: Engine) -> Sequence[bytes]:
    """The bytes of each token id of the engine's vocabulary, for logprobs (read off the event loop)."""
    return await asyncio.to_thread(vocabulary_bytes, engine.tokenizer)
