"""The episode stream: how the trainer hears of new episodes (their ids; the rows are in the database).

With Redis: a stream (`XADD ... MAXLEN ~`) read through a consumer group. Each id is added at most
once, even when an announcement is retried after Redis failed halfway, because a Lua script sets a
per-episode marker and appends in one atomic step. Without Redis (the embedded default): an
in-process queue with the same interface.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

import redis.asyncio as redis
from redis.exceptions import ResponseError

STREAM_KEY = "r3:episodes"
TRAINER_GROUP = "trainer"
MARKER_TTL_S = 7 * 24 * 3600  # longer than any outage the catch-up could still be working through

# KEYS[1]: the stream. ARGV[1]: MAXLEN, ARGV[2]: marker TTL, ARGV[3..]: episode ids.
_ANNOUNCE_ONCE = """
local added = 0
for i = 3, #ARGV do
  if redis.call('SET', 'r3:announced:' .. ARGV[i], '1', 'NX', 'EX', ARGV[2]) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'episode_id', ARGV[i])
    added = added + 1
  end
end
return added
"""


class EpisodeStream(Protocol):
    async def announce(self, episode_ids: Sequence[str]) -> None: ...

    async def close(self) -> None: ...


class RedisEpisodeStream:
    def __init__(self, url: str, maxlen: int = 1_000_000, key: str = STREAM_KEY) -> None:
        self.client = redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        self.maxlen, self.key = maxlen, key
        self._script = self.client.register_script(_ANNOUNCE_ONCE)
        self._group_ready = False

    async def _ensure_group(self) -> None:
        # From id 0, so the trainer's group also receives what was added before it first looked.
        if self._group_ready:
            return
        try:
            await self.client.xgroup_create(self.key, TRAINER_GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._group_ready = True

    async def announce(self, episode_ids: Sequence[str]) -> None:
        if not episode_ids:
            return
        await self._ensure_group()
        await self._script(keys=[self.key], args=[self.maxlen, MARKER_TTL_S, *episode_ids])

    async def close(self) -> None:
        await self.client.aclose()


class InProcessEpisodeStream:
    """The embedded stand-in: ids go to a queue that an in-process trainer reads."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self._seen: set[str] = set()

    async def announce(self, episode_ids: Sequence[str]) -> None:
        for episode_id in episode_ids:
            if episode_id not in self._seen:
                self._seen.add(episode_id)
                self.queue.put_nowait(episode_id)

    async def close(self) -> None:
        return None
