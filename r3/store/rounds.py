"""Training rounds and the episodes they use: the only way the server and the trainer touch them.

A round is a row of `training_rounds` that goes through `RoundStatus`:

    requested ── an admin asked (`POST /admin/train`); the trainer starts the oldest one next
    running   ── the trainer is on it (a round due by schedule is born here, without a request)
    finished  ── trained, gated and decided (or skipped: too few failures); its report kept
    failed    ── it raised, or the worker running it died (its successor marks it at start)

Asking for a round while one is pending (requested or running) answers that one instead of
queueing another. A committed round marks the episodes it used in `EpisodeRow.trained_in`: the
name of the version it trained, or `HELD_OUT` for failures whose prompts the gate keeps to judge
candidates on. Either way they are no longer "untrained", so no later round picks them again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from r3.episodes import Episode
from r3.store.models import EpisodeRow, TrainingRound
from r3.store.sql import episode_of

# `trained_in` of a failure held out for the gate: judged on in every round, never trained on.
# Adapter versions are named r3-vN, so no version name can be mistaken for it.
HELD_OUT = "held-out"


class RoundStatus(StrEnum):
    """The `status` of a training round (stored as its string value)."""

    REQUESTED = "requested"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


PENDING = (RoundStatus.REQUESTED, RoundStatus.RUNNING)  # a round not yet decided


@dataclass(frozen=True)
class Round:
    """One training round as stored: who asked, when it ran, what it made and decided."""

    id: int
    status: RoundStatus
    requested_by: str  # "admin", "cli", or why the trainer started it ("failures", "interval")
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    candidate: str | None  # the version it registered, if it trained
    promoted: bool | None
    report: dict[str, Any]  # the trainer's summary: counts, gate numbers, training numbers, or why skipped
    error: str | None  # why it failed

    @classmethod
    def of(cls, row: TrainingRound) -> Round:
        return cls(row.id, RoundStatus(row.status), row.requested_by, row.requested_at, row.started_at,
                   row.finished_at, row.candidate, row.promoted, row.report, row.error)


def _replayable(first_success: bool) -> Select:
    """Episodes the trainer can use: a verifier it can run again, the text kept, this first verdict."""
    return select(EpisodeRow).where(EpisodeRow.replayable, EpisodeRow.store_text,
                                    EpisodeRow.first_success.is_(first_success))


def _untrained_failures() -> Select:
    # Matches the partial index `episodes_untrained_failures`.
    return _replayable(False).where(EpisodeRow.trained_in.is_(None))


class TrainingRounds:
    """Training rounds and the trainer's queries, over the database's `sessions`.

    Every method opens its own session (one transaction where it writes); database errors
    (SQLAlchemy's, or OSError when it cannot be reached) propagate."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    # ------------------------------------------------------------------ rounds

    async def request(self, requested_by: str = "admin") -> tuple[Round, bool]:
        """Ask for a round: (the newest pending round, False) if one is requested or running, else
        (a new requested round, True). Repeated asking never queues rounds behind one another."""
        async with self.sessions.begin() as session:
            pending = await session.scalar(select(TrainingRound).where(TrainingRound.status.in_(PENDING))
                                           .order_by(TrainingRound.id.desc()).limit(1))
            if pending is not None:
                return Round.of(pending), False
            row = TrainingRound(status=RoundStatus.REQUESTED, requested_by=requested_by,
                                requested_at=datetime.now(UTC))
            session.add(row)
            await session.flush()
            return Round.of(row), True

    async def recent(self, limit: int) -> list[Round]:
        """The `limit` newest rounds, newest first."""
        async with self.sessions() as session:
            rows = await session.scalars(select(TrainingRound).order_by(TrainingRound.id.desc()).limit(limit))
            return [Round.of(row) for row in rows]

    async def count_by_status(self) -> dict[RoundStatus, int]:
        """How many rounds are in each status; every status is a key (0 when none)."""
        async with self.sessions() as session:
            counts = dict((await session.execute(
                select(TrainingRound.status, func.count()).group_by(TrainingRound.status))).all())
        return {status: counts.get(status, 0) for status in RoundStatus}

    async def requested(self) -> bool:
        """Whether a round was asked for and has not started."""
        async with self.sessions() as session:
            return await session.scalar(select(func.count()).select_from(TrainingRound)
                                        .where(TrainingRound.status == RoundStatus.REQUESTED)) > 0

    async def start(self, requested_by: str) -> int:
        """Make the oldest requested round running, or, when none was requested, a new running round
        `requested_by` asked for now; returns its id."""
        async with self.sessions.begin() as session:
            row = await session.scalar(select(TrainingRound).where(TrainingRound.status == RoundStatus.REQUESTED)
                                       .order_by(TrainingRound.id).limit(1))
            if row is None:
                row = TrainingRound(status=RoundStatus.REQUESTED, requested_by=requested_by,
                                    requested_at=datetime.now(UTC))
                session.add(row)
            row.status, row.started_at = RoundStatus.RUNNING, datetime.now(UTC)
            await session.flush()
            return row.id

    async def finish(self, round_id: int, report: dict[str, Any], candidate: str | None = None,
                     promoted: bool | None = None) -> None:
        """Round `round_id` is finished: its report, and the version it registered and whether that
        was promoted (None when it trained nothing). Raises LookupError if there is no such round."""
        await self._end(round_id, RoundStatus.FINISHED, report, candidate, promoted, None)

    async def fail(self, round_id: int, error: str) -> None:
        """Round `round_id` failed with `error`; its episodes stay untrained. Raises LookupError if
        there is no such round."""
        await self._end(round_id, RoundStatus.FAILED, {}, None, None, error)

    async def _end(self, round_id: int, status: RoundStatus, report: dict[str, Any], candidate: str | None,
                   promoted: bool | None, error: str | None) -> None:
        async with self.sessions.begin() as session:
            row = await session.get(TrainingRound, round_id)
            if row is None:
                raise LookupError(f"no training round {round_id}")
            row.status, row.finished_at, row.error = status, datetime.now(UTC), error
            row.report, row.candidate, row.promoted = report, candidate, promoted

    async def fail_abandoned(self, error: str) -> int:
        """Every running round failed with `error`: called by a worker at start, when no other worker
        runs, so those rounds' worker died. Their episodes count as untrained again. Returns how many."""
        async with self.sessions.begin() as session:
            result = await session.execute(update(TrainingRound).where(TrainingRound.status == RoundStatus.RUNNING)
                                           .values(status=RoundStatus.FAILED, finished_at=datetime.now(UTC),
                                                   error=error))
            return result.rowcount

    # ------------------------------------------------------------------ the episodes a round uses

    async def count_untrained_failures(self) -> int:
        """How many replayable first-attempt failures (text kept) no committed round has used."""
        async with self.sessions() as session:
            return await session.scalar(select(func.count()).select_from(_untrained_failures().subquery()))

    async def untrained_failures(self, limit: int) -> list[Episode]:
        """The `limit` newest replayable first-attempt failures (text kept) no committed round used."""
        return await self._episodes(_untrained_failures(), limit)

    async def failures(self, limit: int) -> list[Episode]:
        """The `limit` newest replayable first-attempt failures (text kept), used or not: the gate's
        held-out set is drawn from all of them."""
        return await self._episodes(_replayable(False), limit)

    async def first_attempt_passes(self, limit: int) -> list[Episode]:
        """The `limit` newest replayable episodes (text kept) whose first attempt passed: the gate's
        regression set."""
        return await self._episodes(_replayable(True), limit)

    async def _episodes(self, query: Select, limit: int) -> list[Episode]:
        async with self.sessions() as session:
            rows = await session.scalars(query.order_by(EpisodeRow.created_at.desc()).limit(limit))
            return [episode_of(row) for row in rows]

    async def mark_used(self, version: str, trained: Sequence[str], held_out: Sequence[str]) -> None:
        """In one transaction: the episodes `trained` were trained on in `version`, and the failures
        `held_out` are held out for the gate (`trained_in` = `HELD_OUT`). Unknown ids are ignored."""
        async with self.sessions.begin() as session:
            await session.execute(update(EpisodeRow).where(EpisodeRow.id.in_(trained)).values(trained_in=version))
            await session.execute(update(EpisodeRow).where(EpisodeRow.id.in_(held_out)).values(trained_in=HELD_OUT))
