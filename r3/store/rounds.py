"""Training rounds and the episodes they use: the only way the server and the trainer touch them.

A round is a row of `training_rounds` that goes through `RoundStatus`:

    requested ── an admin asked (`POST /admin/train`); the trainer starts the oldest one next
    running   ── the trainer is on it (a round due by schedule is born here, without a request)
    finished  ── trained, gated and decided (or skipped: too few failures, or no signal); its report kept
    failed    ── it raised, or the trainer running it died

A running round has an owner (the trainer on it) that marks it alive every R3_TRAIN_HEARTBEAT_S
and says how long it may stay silent (its R3_TRAIN_STALE_AFTER_S). A round silent for longer lost
its trainer: whoever asks for or starts a round next (`request`, `start`: the admin API, any
trainer, `r3 train --once`) marks it failed, saying so, and goes on.

Asking for a round while one is pending (requested, or running with a live owner) answers that one
instead of queueing another. A committed round marks the episodes it used in `EpisodeRow.trained_in`:
the name of the version it trained, `NO_SIGNAL` when its rollouts taught nothing, or `HELD_OUT` for
failures whose prompts the gate keeps to judge candidates on. Either way they are no longer
"untrained", so no later round picks them again. An episode a round cannot turn into a task (its
stored verifier is not valid) is set aside (`set_aside`) with the reason, for an admin, and never
picked again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from r3.episodes import Episode
from r3.store.models import DEFAULT_SCENARIO, AdapterVersion, EpisodeRow, SetAsideEpisode, TrainingRound, VersionStatus
from r3.store.sql import episode_of

# `trained_in` of a failure held out for the gate: judged on in every round, never trained on.
# Adapter versions are named r3-vN, so no version name can be mistaken for it.
HELD_OUT = "held-out"
# `trained_in` of a failure trained on in a round whose rollouts carried no signal (every reflection
# on it got the same reward): no version came of it, and picking it again would teach nothing again.
NO_SIGNAL = "no-signal"


class RoundStatus(StrEnum):
    """The `status` of a training round (stored as its string value)."""

    REQUESTED = "requested"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


PENDING = (RoundStatus.REQUESTED, RoundStatus.RUNNING)  # a round not yet decided
ENDED = (RoundStatus.FINISHED, RoundStatus.FAILED)


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
    owner: str | None = None  # the trainer that ran it
    heartbeat_at: datetime | None = None  # when its trainer last said it was alive
    scenario: str = DEFAULT_SCENARIO  # whose episodes it trains on and whose lineage it extends

    @classmethod
    def of(cls, row: TrainingRound) -> Round:
        return cls(row.id, RoundStatus(row.status), row.requested_by, row.requested_at, row.started_at,
                   row.finished_at, row.candidate, row.promoted, row.report, row.error, row.owner, row.heartbeat_at,
                   row.scenario)


@dataclass(frozen=True)
class SetAside:
    """An episode a round could not turn into a task, and why."""

    episode_id: str
    tenant: str | None
    round_id: int | None  # the round that set it aside
    reason: str
    at: datetime


def _replayable(first_success: bool, scenario: str) -> Select:
    """`scenario`'s episodes the trainer can use: a verifier it can run again, the text kept, this
    first verdict, not set aside."""
    set_aside = select(SetAsideEpisode.episode_id).where(SetAsideEpisode.episode_id == EpisodeRow.id).exists()
    return select(EpisodeRow).where(EpisodeRow.scenario == scenario, EpisodeRow.replayable, EpisodeRow.store_text,
                                    EpisodeRow.first_success.is_(first_success), ~set_aside)


def _untrained_failures(scenario: str) -> Select:
    # Matches the partial index `episodes_untrained_failures`.
    return _replayable(False, scenario).where(EpisodeRow.trained_in.is_(None))


class TrainingRounds:
    """Training rounds and the trainer's queries, over the database's `sessions`.

    Every method opens its own session (one transaction where it writes); database errors
    (SQLAlchemy's, or OSError when it cannot be reached) propagate."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    # ------------------------------------------------------------------ rounds

    async def request(self, requested_by: str = "admin", scenario: str = DEFAULT_SCENARIO) -> tuple[Round, bool]:
        """Ask for a round of `scenario`: (its newest pending round, False) if one is requested or
        running, else (a new requested round, True). Repeated asking never queues rounds behind one
        another; a running round whose trainer is gone is failed first (`fail_abandoned`), so it is not
        the answer."""
        async with self.sessions.begin() as session:
            await _fail_abandoned(session)
            pending = await session.scalar(select(TrainingRound).where(TrainingRound.status.in_(PENDING),
                                                                       TrainingRound.scenario == scenario)
                                           .order_by(TrainingRound.id.desc()).limit(1))
            if pending is not None:
                return Round.of(pending), False
            row = TrainingRound(status=RoundStatus.REQUESTED, requested_by=requested_by, scenario=scenario,
                                requested_at=datetime.now(UTC))
            session.add(row)
            await session.flush()
            return Round.of(row), True

    async def recent(self, limit: int, scenario: str | None = None) -> list[Round]:
        """The `limit` newest rounds (of `scenario`, or of all), newest first."""
        query = select(TrainingRound).order_by(TrainingRound.id.desc()).limit(limit)
        if scenario is not None:
            query = query.where(TrainingRound.scenario == scenario)
        async with self.sessions() as session:
            return [Round.of(row) for row in await session.scalars(query)]

    async def count_by_status(self) -> dict[RoundStatus, int]:
        """How many rounds are in each status; every status is a key (0 when none)."""
        async with self.sessions() as session:
            counts = dict((await session.execute(
                select(TrainingRound.status, func.count()).group_by(TrainingRound.status))).all())
        return {status: counts.get(status, 0) for status in RoundStatus}

    async def requested(self) -> list[str]:
        """The scenarios for which a round was asked for and has not started, oldest request first."""
        async with self.sessions() as session:
            rows = await session.execute(select(TrainingRound.scenario, func.min(TrainingRound.id))
                                         .where(TrainingRound.status == RoundStatus.REQUESTED)
                                         .group_by(TrainingRound.scenario))
            return [scenario for scenario, _ in sorted(rows.all(), key=lambda row: row[1])]

    async def start(self, requested_by: str, owner: str, stale_after_s: float,
                    scenario: str = DEFAULT_SCENARIO) -> int:
        """Make `scenario`'s oldest requested round running, or, when none was requested, a new running
        round `requested_by` asked for now; returns its id. `owner` runs it and marks it alive
        (`heartbeat`) at least every `stale_after_s` seconds, or it is presumed dead. Rounds whose
        trainer is gone are failed first (`fail_abandoned`)."""
        async with self.sessions.begin() as session:
            await _fail_abandoned(session)
            row = await session.scalar(select(TrainingRound).where(TrainingRound.status == RoundStatus.REQUESTED,
                                                                   TrainingRound.scenario == scenario)
                                       .order_by(TrainingRound.id).limit(1))
            if row is None:
                row = TrainingRound(status=RoundStatus.REQUESTED, requested_by=requested_by, scenario=scenario,
                                    requested_at=datetime.now(UTC))
                session.add(row)
            now = datetime.now(UTC)
            row.status, row.started_at = RoundStatus.RUNNING, now
            row.owner, row.heartbeat_at, row.stale_after_s = owner, now, stale_after_s
            await session.flush()
            return row.id

    async def heartbeat(self, round_id: int, owner: str) -> bool:
        """`owner` says round `round_id` is alive now. False when it is no longer that owner's running
        round (it was presumed dead and failed: the owner should give it up)."""
        async with self.sessions.begin() as session:
            result = await session.execute(
                update(TrainingRound).where(TrainingRound.id == round_id, TrainingRound.owner == owner,
                                            TrainingRound.status == RoundStatus.RUNNING)
                .values(heartbeat_at=datetime.now(UTC)))
            return result.rowcount == 1

    async def registered(self, round_id: int, candidate: str) -> None:
        """Round `round_id` registered version `candidate`: if the round dies before deciding it, the
        round that finds it abandoned marks the version failed."""
        async with self.sessions.begin() as session:
            await session.execute(update(TrainingRound).where(TrainingRound.id == round_id)
                                  .values(candidate=candidate))

    async def finish(self, round_id: int, report: dict[str, Any], candidate: str | None = None,
                     promoted: bool | None = None) -> None:
        """Round `round_id` is finished: its report, and the version it registered and whether that
        was promoted (None when it trained nothing). Raises LookupError if there is no such round, or
        if it already ended (e.g. failed as abandoned while its trainer was silent too long)."""
        async with self.sessions.begin() as session:
            row = await _round(session, round_id)
            if row.status in ENDED:
                raise LookupError(f"training round {round_id} already ended ({row.status}: {row.error})")
            row.status, row.finished_at, row.error = RoundStatus.FINISHED, datetime.now(UTC), None
            row.report, row.candidate, row.promoted = report, candidate, promoted

    async def fail(self, round_id: int, error: str) -> None:
        """Round `round_id` failed with `error`; its episodes stay untrained, and the version it
        registered, if any, is marked failed. A round that already ended keeps how it ended. Raises
        LookupError if there is no such round."""
        async with self.sessions.begin() as session:
            row = await _round(session, round_id)
            if row.status not in ENDED:
                await _fail(session, row, error)

    async def fail_abandoned(self) -> list[Round]:
        """Fail every running round whose trainer is gone (silent for longer than it said it might be),
        saying so; their episodes count as untrained again, and a version one registered without
        deciding it is marked failed. Returns those rounds."""
        async with self.sessions.begin() as session:
            return await _fail_abandoned(session)

    # ------------------------------------------------------------------ the episodes a round uses

    async def count_untrained_failures(self, scenario: str = DEFAULT_SCENARIO) -> int:
        """How many of `scenario`'s replayable first-attempt failures (text kept) no committed round has used."""
        async with self.sessions() as session:
            return await session.scalar(select(func.count()).select_from(_untrained_failures(scenario).subquery()))

    async def untrained_failures_by_scenario(self) -> dict[str, int]:
        """`count_untrained_failures` of every scenario that has any."""
        set_aside = select(SetAsideEpisode.episode_id).where(SetAsideEpisode.episode_id == EpisodeRow.id).exists()
        async with self.sessions() as session:
            rows = await session.execute(
                select(EpisodeRow.scenario, func.count())
                .where(EpisodeRow.replayable, EpisodeRow.store_text, EpisodeRow.first_success.is_(False),
                       EpisodeRow.trained_in.is_(None), ~set_aside)
                .group_by(EpisodeRow.scenario))
            return dict(rows.all())

    async def untrained_failures(self, limit: int, scenario: str = DEFAULT_SCENARIO) -> list[Episode]:
        """`scenario`'s `limit` newest replayable first-attempt failures (text kept) no committed round used."""
        return await self._episodes(_untrained_failures(scenario), limit)

    async def failures(self, limit: int, scenario: str = DEFAULT_SCENARIO) -> list[Episode]:
        """`scenario`'s `limit` newest replayable first-attempt failures (text kept), used or not: the
        gate's held-out set is drawn from all of them."""
        return await self._episodes(_replayable(False, scenario), limit)

    async def first_attempt_passes(self, limit: int, scenario: str = DEFAULT_SCENARIO) -> list[Episode]:
        """`scenario`'s `limit` newest replayable episodes (text kept) whose first attempt passed: the
        gate's regression (retained) set."""
        return await self._episodes(_replayable(True, scenario), limit)

    async def _episodes(self, query: Select, limit: int) -> list[Episode]:
        async with self.sessions() as session:
            rows = await session.scalars(query.order_by(EpisodeRow.created_at.desc()).limit(limit))
            return [episode_of(row) for row in rows]

    async def mark_used(self, version: str, trained: Sequence[str], held_out: Sequence[str]) -> None:
        """In one transaction: the episodes `trained` were trained on in `version` (or `NO_SIGNAL`), and
        the failures `held_out` are held out for the gate (`trained_in` = `HELD_OUT`). Unknown ids are
        ignored."""
        async with self.sessions.begin() as session:
            await session.execute(update(EpisodeRow).where(EpisodeRow.id.in_(trained)).values(trained_in=version))
            await session.execute(update(EpisodeRow).where(EpisodeRow.id.in_(held_out)).values(trained_in=HELD_OUT))

    # ------------------------------------------------------------------ episodes set aside

    async def set_aside(self, round_id: int | None, reasons: Mapping[str, str]) -> None:
        """Set aside the episodes `reasons` names (episode id -> why it cannot be a task), noting round
        `round_id`: no round picks them again. One already set aside keeps its first reason; unknown
        ids are ignored."""
        if not reasons:
            return
        async with self.sessions.begin() as session:
            known = set(await session.scalars(select(EpisodeRow.id).where(EpisodeRow.id.in_(reasons))))
            known -= set(await session.scalars(select(SetAsideEpisode.episode_id)
                                               .where(SetAsideEpisode.episode_id.in_(known))))
            now = datetime.now(UTC)
            session.add_all(SetAsideEpisode(episode_id=episode_id, round_id=round_id, reason=reasons[episode_id],
                                            at=now) for episode_id in sorted(known))

    async def set_aside_episodes(self, limit: int) -> list[SetAside]:
        """The `limit` episodes set aside most recently, newest first, with their tenant and why."""
        async with self.sessions() as session:
            rows = await session.execute(
                select(SetAsideEpisode, EpisodeRow.tenant).join(EpisodeRow, EpisodeRow.id == SetAsideEpisode.episode_id)
                .order_by(SetAsideEpisode.at.desc(), SetAsideEpisode.episode_id).limit(limit))
            return [SetAside(row.episode_id, tenant, row.round_id, row.reason, _aware(row.at)) for row, tenant in rows]


async def _round(session: AsyncSession, round_id: int) -> TrainingRound:
    row = await session.get(TrainingRound, round_id)
    if row is None:
        raise LookupError(f"no training round {round_id}")
    return row


async def _fail(session: AsyncSession, row: TrainingRound, error: str) -> None:
    """Fail `row` with `error`; a version it registered and did not decide is failed with it."""
    row.status, row.finished_at, row.error = RoundStatus.FAILED, datetime.now(UTC), error
    if row.candidate is not None:
        undecided = (VersionStatus.PENDING, VersionStatus.CANDIDATE)
        await session.execute(update(AdapterVersion).where(AdapterVersion.name == row.candidate,
                                                           AdapterVersion.status.in_(undecided))
                              .values(status=VersionStatus.FAILED))


async def _fail_abandoned(session: AsyncSession) -> list[Round]:
    now = datetime.now(UTC)
    abandoned = []
    for row in await session.scalars(select(TrainingRound).where(TrainingRound.status == RoundStatus.RUNNING)):
        if row.heartbeat_at is None or row.stale_after_s is None:
            # Started by a trainer from before heartbeats, which cannot run on this schema: it is gone.
            reason = "its trainer stopped: it never sent a heartbeat"
        elif now - _aware(row.heartbeat_at) > timedelta(seconds=row.stale_after_s):
            reason = (f"its trainer ({row.owner}) stopped: no heartbeat since {_aware(row.heartbeat_at).isoformat()}, "
                      f"more than the {row.stale_after_s:g} s it allowed itself")
        else:
            continue
        await _fail(session, row, f"{reason}; its episodes wait for the next round")
        abandoned.append(Round.of(row))
    return abandoned


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)  # SQLite gives back naive UTC
