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

Only a failure that is the database's (unreachable, shutting down, out of resources, its schema or
permissions wrong: `_the_databases`) means "wait and retry": the episodes stay in the journal. Any
other failed write (a constraint, a value the driver cannot send, an episode too deep to encode, …)
is split until the episode that causes it is alone, and that one is set aside in the journal's
`rejected.jsonl` with the reason (as is a journal line that is no longer an episode), counted in
`rejected`, while the rest are written: one bad episode never holds back the ones after it, at run
time or when a journal is replayed at start.
A process that was still shutting down when this one started leaves its journal later: the
maintenance loop adopts such journals now and then.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from dataclasses import dataclass

from r3 import telemetry
from r3.episodes import Episode, episode_from_dict, episode_to_dict
from r3.store.errors import is_unavailable, sqlstate
from r3.store.journal import Journal, Segment
from r3.store.sql import SqlEpisodeStore
from r3.store.stream import EpisodeStream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogSettings:
    # Episodes queued for the writer. Those are held for reads anyway (`readable_backlog`): a burst the
    # database takes a while to catch up with is written from memory, where an overflow would be
    # read back from the journal and its whole segment written again.
    buffer_size: int = 100_000
    batch_size: int = 500
    tick_s: float = 0.25  # how often the journal rotates and the stream catches up
    announce_batch: int = 1000
    readable_backlog: int = 100_000  # most unwritten episodes kept in memory for reads
    close_timeout_s: float = 10.0  # how long a graceful close waits for the database
    adopt_s: float = 10.0  # how often to look for journals that processes which died since our start left


class EpisodeLog:
    def __init__(self, store: SqlEpisodeStore, stream: EpisodeStream, journal: Journal,
                 settings: LogSettings = LogSettings()) -> None:
        self.store, self.stream, self.journal, self.settings = store, stream, journal, settings
        self._buffer: asyncio.Queue[tuple[Episode, Segment]] = asyncio.Queue(settings.buffer_size)
        self._unwritten: dict[str, Episode] = {}
        self._database_ok = True
        self._stream_ok = True
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self.rejected = 0  # episodes (or journal lines) set aside since the start, for an operator
        # One maintenance pass at a time (the loop's, and flush's when a caller waits).
        self._maintaining = asyncio.Lock()

    # ------------------------------------------------------------------ interface

    async def start(self) -> None:
        await self._maintain()  # replay what a previous process left in the journal
        self._tasks = [asyncio.create_task(self._write_forever(), name="episode-writer"),
                       asyncio.create_task(self._maintain_forever(), name="episode-maintenance")]

    def record(self, episode: Episode) -> None:
        """Make the episode durable locally and queue it for the database. Never blocks; raises
        `JournalUnavailable` when the journal cannot be written (`unrecordable` says so beforehand).

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

    def unrecordable(self) -> str | None:
        """Why an episode recorded now would be refused (the journal's disk is full or read-only), or
        None: ask before generating what is to be recorded. Clears by itself once the disk takes
        writes again."""
        return self.journal.problem()

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
        """Record `episode` (new, or a later version of one): the server records through the log. Its
        request's trace shows it as `r3.episode.write` (the journal's write; the database's is batched later)."""
        with telemetry.tracer.start_as_current_span("r3.episode.write", attributes={
                **telemetry.episode_attributes(episode), "r3.episode.attempts": len(episode.attempts)}):
            self.record(episode)

    @property
    def backlog(self) -> int:
        """Episodes recorded but not yet confirmed in the database."""
        return sum(s.written - s.committed for s in self.journal.segments if not s.done)

    async def flush(self) -> None:
        """Wait until every recorded episode is in the database (tests, shutdown); their announcement
        is tried too, and when Redis is down it is left to the catch-up (the database remembers)."""
        while True:
            await self._buffer.join()
            await self._maintain(rotate=True)
            if not self.journal.pending() and self._database_ok:
                return
            await asyncio.sleep(self.settings.tick_s)

    async def close(self) -> None:
        """Graceful shutdown: write what the database takes; the journal keeps the rest for next start."""
        self._closing = True
        try:
            await asyncio.wait_for(self.flush(), timeout=self.settings.close_timeout_s)
        except TimeoutError:
            log.warning("shutting down with %d episodes only in the journal; they are replayed at next start",
                        self.backlog)
        except Exception:  # noqa: BLE001 - still stop the tasks and close the journal
            log.exception("flushing the episode log failed; the journal keeps what was not written")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.journal.close()  # the stream is its opener's (the store's) to close

    # ------------------------------------------------------------------ the writer

    async def _write_forever(self) -> None:
        while True:
            batch = [await self._buffer.get()]
            while len(batch) < self.settings.batch_size and not self._buffer.empty():
                batch.append(self._buffer.get_nowait())
            try:
                await self._write([episode for episode, _ in batch])
            except Exception as error:  # noqa: BLE001 - the database is down: the journal keeps them
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

    async def _write(self, episodes: list[Episode]) -> None:
        """Write episodes; raises only when the database is at fault (`_the_databases`, or it does
        not answer a ping).

        Any other failure is blamed on the rows: halve the batch until the episode the database
        refuses is alone, try it once more, then set it aside instead of letting it block every
        episode after it.
        """
        try:
            await self.store.write(episodes)
            return
        except Exception as error:  # noqa: BLE001 - classified below: the database's, or the rows'
            await self._raise_if_the_databases(error)
        if len(episodes) > 1:
            middle = len(episodes) // 2
            await self._write(episodes[:middle])
            await self._write(episodes[middle:])
            return
        try:
            await self.store.write(episodes)
        except Exception as error:  # noqa: BLE001
            await self._raise_if_the_databases(error)
            self._reject(_record_of(episodes[0]), error)

    async def _raise_if_the_databases(self, error: Exception) -> None:
        if _the_databases(error) or not await self._database_answers():
            raise error

    async def _database_answers(self) -> bool:
        try:
            await self.store.ping()
        except Exception:  # noqa: BLE001
            return False
        return True

    def _reject(self, record: object, error: BaseException | str) -> None:
        episode_id = record.get("id") if isinstance(record, dict) else None
        reason = error if isinstance(error, str) else _describe(error)
        log.error("the database refuses episode %s (%s); it is set aside in %s", episode_id, reason,
                  self.journal.root / "rejected.jsonl")
        self.journal.reject(record, reason)
        self.rejected += 1

    def _database_failed(self, error: Exception) -> None:
        if self._database_ok:
            log.warning("database write failed (%s); episodes wait in the journal", _describe(error))
        self._database_ok = False

    # ------------------------------------------------------------------ maintenance

    async def _maintain_forever(self) -> None:
        adopted_at = time.monotonic()
        while True:
            await asyncio.sleep(self.settings.tick_s)
            try:
                if time.monotonic() - adopted_at >= self.settings.adopt_s:
                    adopted_at = time.monotonic()
                    if count := self.journal.adopt():
                        log.info("adopted %d journal segments a stopped process left", count)
                await self._maintain()
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                log.exception("episode log maintenance failed")

    async def _maintain(self, rotate: bool = False) -> None:
        async with self._maintaining:
            if self.journal.current.written and (
                    rotate or self.journal.current.needs_replay or self._buffer.empty()):
                self.journal.rotate()
            await self._replay()
            await self._announce()

    async def _replay(self) -> None:
        replayed_all = True
        for segment in self.journal.pending():
            if not segment.needs_replay:
                continue  # its entries are still on their way through the buffer
            records, torn = Journal.read(segment)
            episodes, unreadable = [], [(line, "not JSON (or nested too deep to read)") for line in torn]
            for record in records:
                try:
                    episodes.append(episode_from_dict(record))
                except Exception as error:  # noqa: BLE001 - e.g. written by a version with other fields
                    unreadable.append((record, error))
            try:
                for start in range(0, len(episodes), self.settings.batch_size):
                    await self._write(episodes[start:start + self.settings.batch_size])
            except Exception as error:  # noqa: BLE001
                self._database_failed(error)
                replayed_all = False
                break
            for record, error in unreadable:
                self._reject(record, error)
            for record in records:
                episode = self._unwritten.get(record.get("id")) if isinstance(record, dict) else None
                # The same revision is the same record (compared by value, an episode nested deep
                # enough to be refused would also be too deep to compare).
                if episode is not None and episode.revision == record.get("revision"):
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
        # Without a stream (the embedded default) nobody reads announcements: asking the database
        # for unannounced ids every tick would be work for nothing.
        if not self._database_ok or not self.stream.carries:
            return
        try:
            while True:
                async with self.store.claim_unannounced(self.settings.announce_batch) as ids:
                    await self.stream.announce(ids)
                if ids and not self._stream_ok:
                    log.info("announcing episodes resumed")
                    self._stream_ok = True
                if len(ids) < self.settings.announce_batch:
                    break
        except Exception as error:  # noqa: BLE001 - Redis or the database: the ids stay unannounced
            if self._stream_ok:  # once per outage, not every tick
                log.warning("announcing episodes failed (%s); they wait in the database, retrying",
                            _describe(error))
            self._stream_ok = False


# SQLSTATE classes that put the fault on the database rather than on the rows, besides those of a
# database that cannot serve now (`r3.store.errors.is_unavailable`): syntax or access rule, i.e. the
# schema or the permissions (42), invalid catalog or schema name (3D, 3F), internal error (XX). The
# rows' classes are chiefly 22 (data) and 23 (constraints).
_SCHEMA_SQLSTATE_CLASSES = frozenset({"42", "3D", "3F", "XX"})


def _the_databases(error: BaseException) -> bool:
    """Whether a failed write is the database's fault (wait and retry), not its rows' (set them aside):
    the database cannot serve now, or its schema or permissions are wrong. Everything else (a
    constraint, a value the driver cannot bind or encode, a `RecursionError` from an episode nested
    too deep) is the rows'."""
    state = sqlstate(error)
    return is_unavailable(error) or (state is not None and state[:2] in _SCHEMA_SQLSTATE_CLASSES)


def _record_of(episode: Episode) -> object:
    """The episode as a rejected-file record; its id alone if it cannot even be turned into one."""
    try:
        return episode_to_dict(episode)
    except Exception:  # noqa: BLE001 - setting aside must not fail: the reason says what happened
        return {"id": episode.id}


def _describe(error: BaseException) -> str:
    """The error without the statement's parameters, which SQLAlchemy puts in its message: those are
    the episode's text, which must not reach the log."""
    original = getattr(error, "orig", None)
    return f"{type(error).__name__}: {original if original is not None else error}"
