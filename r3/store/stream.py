"""The episode stream: how the trainer hears of new episodes (their ids; the rows are in the database).

With Redis: a stream (`XADD ... MAXLEN ~`) read through a consumer group. Each id is added at most
once, even when an announcement is retried after Redis failed halfway, because a Lua script sets a
per-episode marker and appends in one atomic step. The same script makes sure the trainer's group
exists, so a Redis that came back empty (no persistence) gets it again. Without Redis (the embedded
default): an in-process queue with the same interface.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

import redis.asyncio as redis

STREAM_KEY = "r3:episodes"
TRAINER_GROUP = "trainer"
MARKER_TTL_S = 7 * 24 * 3600  # longer than any outage the catch-up could still be working through

# KEYS[1]: the stream. ARGV[1]: MAXLEN, ARGV[2]: marker TTL, ARGV[3]: the group, ARGV[4..]: episode ids.
# The group is created from id 0 (so it also receives what was added before it existed); BUSYGROUP,
# the usual answer, is ignored.
_ANNOUNCE_ONCE = """
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[3], '0', 'MKSTREAM')
local added = 0
for i = 4, #ARGV do
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

    async def announce(self, episode_ids: Sequence[str]) -> None:
        if not episode_ids:
            return
        await self._script(keys=[self.key], args=[self.maxlen, MARKER_TTL_S, TRAINER_GROUP, *episode_ids])

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
