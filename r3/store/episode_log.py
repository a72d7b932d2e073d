"""The episode log: recording episodes off the response path, losing none.

    record() ──► journal (local file, before the response goes out)
             └─► bounded buffer ──► writer: batched upsert into the database
    maintenance, every tick:
        rotate the journal; delete segments the database holds
        replay segments that skipped the buffer (database down, buffer full, previous process)
        announce unannounced ids on the stream (Redis down: they wait in the database, then catch up)

`record` never waits on the database or Redis and never drops: when the buffer is full or the
database is failing, the episode is only in the journal, and its segment is replayed later.
Episodes recorded but not yet in the database are still readable (`get`), for `/feedback`.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from dataclasses import dataclass

from r3.episodes import Episode, episode_from_dict, episode_to_dict
from r3.store.journal import Journal, Segment
from r3.store.sql import SqlEpisodeStore
from r3.store.stream import EpisodeStream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogSettings:
    buffer_size: int = 10_000
    batch_size: int = 500
    tick_s: float = 0.25  # how often the journal rotates and the stream catches up
    announce_batch: int = 1000
    readable_backlog: int = 100_000  # most unwritten episodes kept in memory for reads


class EpisodeLog:
    def __init__(self, store: SqlEpisodeStore, stream: EpisodeStream, journal: Journal,
                 settings: LogSettings = LogSettings()) -> None:
        self.store, self.stream, self.journal, self.settings = store, stream, journal, settings
        self._buffer: asyncio.Queue[tuple[Episode, Segment]] = asyncio.Queue(settings.buffer_size)
        self._unwritten: dict[str, Episode] = {}
        self._database_ok = True
        self._tasks: list[asyncio.Task] = []
        self._closing = False

    # ------------------------------------------------------------------ interface

    async def start(self) -> None:
        await self._maintain()  # replay what a previous process left in the journal
        self._tasks = [asyncio.create_task(self._write_forever(), name="episode-writer"),
                       asyncio.create_task(self._maintain_forever(), name="episode-maintenance")]

    def record(self, episode: Episode) -> None:
        """Make the episode durable locally and queue it for the database. Never blocks.

        The log keeps `episode` (raising its revision): the caller must not change it afterwards.
        """
        episode.revision += 1
        segment = self.journal.append(episode_to_dict(episode))
        if len(self._unwritten) < self.settings.readable_backlog or episode.id in self._unwritten:
            self._unwritten[episode.id] = episode
        if self._database_ok and not self._closing and not self._buffer.full():
            self._buffer.put_nowait((episode, segment))
        else:
            segment.needs_replay = True

    async def get(self, episode_id: str, tenant: str | None) -> Episode | None:
        episode = self._unwritten.get(episode_id)
        if episode is not None:
            return copy.deepcopy(episode) if episode.tenant == tenant else None
        return await self.store.get(episode_id, tenant)

    async def by_completion_id(self, completion_id: str, tenant: str | None) -> tuple[Episode, int] | None:
        for episode in self._unwritten.values():
            for attempt in episode.attempts:
                if attempt.completion_id == completion_id:
                    return (copy.deepcopy(episode), attempt.number) if episode.tenant == tenant else None
        return await self.store.by_completion_id(completion_id, tenant)

    async def save(self, episode: Episode) -> None:
        """`EpisodeStore.save`: the server records through the log."""
        self.record(episode)

    @property
    def backlog(self) -> int:
        """Episodes recorded but not yet confirmed in the database."""
        return sum(s.written - s.committed for s in self.journal.segments if not s.done)

    async def flush(self) -> None:
        """Wait until every recorded episode is in the database and announced (tests, shutdown)."""
        while True:
            await self._buffer.join()
            self.journal.rotate()
            await self._maintain()
            if not self.journal.pending() and self._database_ok:
                return
            await asyncio.sleep(self.settings.tick_s)

    async def close(self) -> None:
        """Graceful shutdown: write what the database takes; the journal keeps the rest for next start."""
        self._closing = True
        try:
            await asyncio.wait_for(self.flush(), timeout=10)
        except TimeoutError:
            log.warning("shutting down with %d episodes only in the journal; they are replayed at next start",
                        self.backlog)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.journal.close()
        await self.stream.close()

    # ------------------------------------------------------------------ the writer

    async def _write_forever(self) -> None:
        while True:
            batch = [await self._buffer.get()]
            while len(batch) < self.settings.batch_size and not self._buffer.empty():
                batch.append(self._buffer.get_nowait())
            try:
                await self.store.write([episode for episode, _ in batch])
            except Exception as error:  # noqa: BLE001 - any database failure: the journal keeps them
                self._database_failed(error)
                for _, segment in batch:
                    segment.needs_replay = True
            else:
                for episode, segment in batch:
                    segment.committed += 1
                    if self._unwritten.get(episode.id) is episode:
                        del self._unwritten[episode.id]
            finally:
                for _ in batch:
                    self._buffer.task_done()

    def _database_failed(self, error: Exception) -> None:
        if self._database_ok:
            log.warning("database write failed (%s); episodes wait in the journal", error)
        self._database_ok = False

    # ------------------------------------------------------------------ maintenance

    async def _maintain_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_s)
            try:
                await self._maintain()
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                log.exception("episode log maintenance failed")

    async def _maintain(self) -> None:
        if self.journal.current.written and (
                self.journal.current.needs_replay or self._buffer.empty()):
            self.journal.rotate()
        await self._replay()
        await self._announce()

    async def _replay(self) -> None:
        replayed_all = True
        for segment in self.journal.pending():
            if not segment.needs_replay:
                continue  # its entries are still on their way through the buffer
            records = Journal.read(segment)
            try:
                for start in range(0, len(records), self.settings.batch_size):
                    await self.store.write([episode_from_dict(r) for r in records[start:start + self.settings.batch_size]])
            except Exception as error:  # noqa: BLE001
                self._database_failed(error)
                replayed_all = False
                break
            for record in records:
                episode = self._unwritten.get(record["id"])
                if episode is not None and episode_to_dict(episode) == record:
                    del self._unwritten[record["id"]]
            segment.needs_replay = False
            segment.committed = segment.written
            log.info("replayed %d journaled episodes from %s", len(records), segment.path.name)
        for segment in [s for s in self.journal.segments if s.done]:
            self.journal.delete(segment)
        if replayed_all and not self._database_ok:
            log.info("database writes resumed")
            self._database_ok = True

    async def _announce(self) -> None:
        if not self._database_ok:
            return
        try:
            while ids := await self.store.unannounced(self.settings.announce_batch):
                await self.stream.announce(ids)
                await self.store.mark_announced(ids)
                if len(ids) < self.settings.announce_batch:
                    return
        except Exception as error:  # noqa: BLE001 - Redis or the database: the ids stay unannounced
            log.warning("announcing episodes failed (%s); retrying", error)
