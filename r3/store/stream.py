"""The episode stream: how the trainer hears of new episodes (their ids; the rows are in the database).

With Redis: a stream (`XADD ... MAXLEN ~`) that the server writes (`RedisEpisodeStream`, the
producer) and the trainer reads through the consumer group `trainer` (`RedisEpisodeConsumer`).
Each id is added at most once, even when an announcement is retried after Redis failed halfway,
because a Lua script sets a per-episode marker and appends in one atomic step. Both sides make sure
the group exists (created from id 0, so it also holds what was added before it), so a Redis that
came back empty (no persistence) gets it again whichever side speaks first. The stream only wakes
the trainer: the database says what is left to train on.

Without Redis (the embedded default): no stream (`NoEpisodeStream`). The trainer is a process of
its own (`r3 train`), so nothing in the server's process would read an in-process queue; it polls
the database instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Sequence
from typing import Protocol

import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError

log = logging.getLogger(__name__)

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
    """The server's side: announce new episodes to the trainer."""

    carries: bool  # False: a stream with no reader; the episode log does not query for what to announce

    async def announce(self, episode_ids: Sequence[str]) -> None:
        """Announce each id (at most once however often it is announced); raises if the stream failed."""
        ...

    async def close(self) -> None: ...


class EpisodeConsumer(Protocol):
    """The trainer's side: hear of new episodes, and acknowledge them once a committed round covered them.

    `received`: the entries read (or claimed) and not yet acknowledged, oldest first."""

    received: list[bytes]

    async def read(self, wait_s: float) -> int:
        """Wait up to `wait_s` seconds (0: not at all) for entries announced since the last read;
        they join `received`. Returns how many arrived (0 when the stream failed: logged, and
        `wait_s` waited, so the caller polls the database at that pace)."""
        ...

    async def claim_abandoned(self, idle_ms: int) -> None:
        """Take over the entries another consumer read and left unacknowledged for `idle_ms` (it
        died mid-round); they join `received`. A failure is logged."""
        ...

    async def acknowledge(self, entry_ids: Sequence[bytes]) -> None:
        """The entries `entry_ids` are covered by a committed round: done, and out of `received`.
        A failure is logged (they stay pending, and are claimed again)."""
        ...

    async def close(self) -> None: ...


class RedisEpisodeStream:
    """The producer: each announced id appended to the stream once (`_ANNOUNCE_ONCE`)."""

    carries = True

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


class RedisEpisodeConsumer:
    """One consumer of the group `trainer`: `consumer` names it (default: host and process id)."""

    def __init__(self, url: str, consumer: str | None = None, key: str = STREAM_KEY) -> None:
        # No socket timeout: a read blocks on the server for as long as it is asked to wait.
        self.client = redis.from_url(url)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.key = key
        self.received: list[bytes] = []

    async def _ensure_group(self) -> None:
        try:
            await self.client.xgroup_create(self.key, TRAINER_GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def read(self, wait_s: float) -> int:
        try:
            await self._ensure_group()
            answer = await self.client.xreadgroup(TRAINER_GROUP, self.consumer, {self.key: ">"}, count=1000,
                                                  block=int(wait_s * 1000) if wait_s else None)
        except RedisError as error:
            log.warning("reading the episode stream failed (%s); polling the database", error)
            await asyncio.sleep(wait_s)
            return 0
        entries = [entry_id for _, batch in answer or [] for entry_id, _ in batch]
        self.received += entries
        return len(entries)

    async def claim_abandoned(self, idle_ms: int) -> None:
        try:
            await self._ensure_group()
            start = "0-0"
            while True:
                start, entries, *_ = await self.client.xautoclaim(self.key, TRAINER_GROUP, self.consumer,
                                                                  min_idle_time=idle_ms, start_id=start, count=1000)
                self.received += [entry_id for entry_id, _ in entries]
                if start in (b"0-0", "0-0"):
                    return
        except RedisError as error:
            log.warning("claiming abandoned stream entries failed (%s)", error)

    async def acknowledge(self, entry_ids: Sequence[bytes]) -> None:
        if not entry_ids:
            return
        try:
            await self.client.xack(self.key, TRAINER_GROUP, *entry_ids)
        except RedisError as error:
            log.warning("acknowledging stream entries failed (%s); they will be claimed again", error)
            return
        done = set(entry_ids)
        self.received = [e for e in self.received if e not in done]

    async def close(self) -> None:
        await self.client.aclose()


class NoEpisodeStream:
    """The embedded default, without Redis: both sides of a stream that carries nothing. Announcing
    does nothing, and reading only waits: the trainer finds new episodes by polling the database."""

    carries = False

    def __init__(self) -> None:
        self.received: list[bytes] = []  # always empty

    async def announce(self, episode_ids: Sequence[str]) -> None:
        return None

    async def read(self, wait_s: float) -> int:
        await asyncio.sleep(wait_s)
        return 0

    async def claim_abandoned(self, idle_ms: int) -> None:
        return None

    async def acknowledge(self, entry_ids: Sequence[bytes]) -> None:
        return None

    async def close(self) -> None:
        return None
