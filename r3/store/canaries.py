"""Live canaries in the store: which candidate serves which share of its scenario's traffic, its
counts (read from the episodes, so every replica and restart sees the same), and its end.

A canary starts when the gate accepts a candidate in a scenario with a canary fraction
(`R3_CANARY_FRACTION`): the version becomes `canary` instead of `active`, compared with the version
active then (its baseline). It ends promoted (its version activated, in one transaction with the
canary's end, and only if the baseline is still active), aborted or given up (its version rejected),
or superseded by a newer candidate's canary. Every end is in the admin audit log with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from r3.canary import Arm, CanaryCounts, CanaryPolicy, Verdict, decide
from r3.settings import Settings
from r3.store.models import AdapterVersion, AdminAction, Canary, CanaryState, EpisodeRow, VersionStatus
from r3.store.registry import AdapterRegistry
from r3.store.scenarios import Scenarios, scenario_settings


@dataclass(frozen=True)
class CanaryInfo:
    id: int
    scenario: str
    version: str
    baseline: str | None
    fraction: float
    state: CanaryState
    started_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    reason: str | None
    numbers: dict[str, Any]

    @classmethod
    def of(cls, row: Canary) -> CanaryInfo:
        return cls(row.id, row.scenario, row.version, row.baseline, row.fraction, CanaryState(row.state),
                   _aware(row.started_at), _aware(row.decided_at) if row.decided_at else None, row.decided_by,
                   row.reason, dict(row.numbers))


class Canaries:
    """The canaries in the database (`Store.canaries`); promotion goes through `registry`."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], registry: AdapterRegistry,
                 scenarios: Scenarios) -> None:
        self.sessions, self.registry, self.scenarios = sessions, registry, scenarios

    async def verdict(self, canary: CanaryInfo, settings: Settings) -> Verdict:
        """The sequential test (`r3.canary.decide`) on `canary`'s outcomes now, under its scenario's
        `R3_CANARY_*` (the global `settings` with the scenario's overrides)."""
        scenario = await self.scenarios.get(canary.scenario)
        settings = scenario_settings(settings, scenario.training) if scenario else settings
        counts = await self.counts(canary)
        return decide(counts, policy(settings), (datetime.now(UTC) - canary.started_at).total_seconds())

    async def start(self, version: str, fraction: float, actor: str = "trainer") -> CanaryInfo:
        """Make candidate `version` its scenario's canary, serving `fraction` of its unpinned traffic,
        compared with the version active now. A canary already running there is superseded (its
        version rejected). Raises `LookupError` for a version that is not a whole candidate."""
        async with self.sessions.begin() as session:
            target = await session.get(AdapterVersion, version)
            if target is None or target.status != VersionStatus.CANDIDATE:
                raise LookupError(f"no candidate version named {version!r}")
            now = datetime.now(UTC)
            running = await session.scalar(select(Canary).where(Canary.scenario == target.scenario,
                                                                Canary.state == CanaryState.RUNNING))
            if running is not None:
                await _end(session, running, CanaryState.SUPERSEDED, actor, f"superseded by {version}", now)
            baseline = await session.scalar(select(AdapterVersion.name).where(
                AdapterVersion.scenario == target.scenario, AdapterVersion.status == VersionStatus.ACTIVE))
            target.status = VersionStatus.CANARY
            row = Canary(scenario=target.scenario, version=version, baseline=baseline, fraction=fraction,
                         state=CanaryState.RUNNING, started_at=now, numbers={})
            session.add(row)
            session.add(AdminAction(at=now, actor=actor, scenario=target.scenario, action="canary_start",
                                    from_version=baseline, to_version=version,
                                    reason=f"serving {fraction:g} of the scenario's unpinned requests"))
            await session.flush()
            info = CanaryInfo.of(row)
        await self.registry.publish(await self.registry.get(baseline) if baseline else None, target.scenario)
        return info

    async def running(self) -> list[CanaryInfo]:
        """Every running canary (one per scenario at most)."""
        async with self.sessions() as session:
            rows = await session.scalars(select(Canary).where(Canary.state == CanaryState.RUNNING))
            return [CanaryInfo.of(row) for row in rows]

    async def latest(self, scenario: str) -> CanaryInfo | None:
        """`scenario`'s running canary, else its last one; None if it never had one."""
        async with self.sessions() as session:
            row = await session.scalar(select(Canary).where(Canary.scenario == scenario)
                                       .order_by((Canary.state == CanaryState.RUNNING).desc(), Canary.id.desc())
                                       .limit(1))
            return CanaryInfo.of(row) if row is not None else None

    async def counts(self, canary: CanaryInfo) -> CanaryCounts:
        """The canary's outcomes so far, from its scenario's judged episodes since it started: each
        side's first-attempt scores and, on first attempts that failed, rescues (the final attempt passed)."""
        rescued = case((EpisodeRow.outcome.is_(True), 1.0), else_=0.0)
        failed = EpisodeRow.first_success.is_(False) & EpisodeRow.outcome.is_not(None)
        query = (select(EpisodeRow.canary, func.count(EpisodeRow.first_score), func.sum(EpisodeRow.first_score),
                        func.sum(EpisodeRow.first_score * EpisodeRow.first_score),
                        func.count().filter(failed), func.sum(rescued).filter(failed))
                 .where(EpisodeRow.scenario == canary.scenario, EpisodeRow.created_at >= canary.started_at,
                        EpisodeRow.canary.is_not(None), EpisodeRow.first_score.is_not(None))
                 .group_by(EpisodeRow.canary))
        async with self.sessions() as session:
            rows = {side: rest for side, *rest in (await session.execute(query)).all()}

        def arms(side: bool) -> tuple[Arm, Arm]:
            n, total, total_sq, failures, rescues = rows.get(side, (0, 0.0, 0.0, 0, 0.0))
            rescues = float(rescues or 0.0)
            return Arm(n, float(total or 0.0), float(total_sq or 0.0)), Arm(failures, rescues, rescues)

        (canary_first, canary_rescue), (current_first, current_rescue) = arms(True), arms(False)
        return CanaryCounts(canary_first, current_first, canary_rescue, current_rescue)

    async def record(self, canary_id: int, numbers: dict[str, Any]) -> None:
        """Keep the test's latest numbers with a running canary (for the admin API and the dashboard)."""
        async with self.sessions.begin() as session:
            await session.execute(update(Canary).where(Canary.id == canary_id, Canary.state == CanaryState.RUNNING)
                                  .values(numbers=numbers))

    async def promote(self, canary_id: int, actor: str, reason: str, numbers: dict[str, Any]) -> bool:
        """End a running canary by activating its version, if its baseline is still the active version
        (else it is aborted, saying so). Returns whether it was promoted; False also when it already
        ended (another replica decided first)."""
        async with self.sessions.begin() as session:
            row = await session.get(Canary, canary_id)
            if row is None or row.state != CanaryState.RUNNING:
                return False
            await _end(session, row, CanaryState.PROMOTED, actor, reason, datetime.now(UTC), numbers, keep=True)
        if await self.registry.activate(row.version, actor=actor, reason=f"canary: {reason}",
                                        expected_active=row.baseline, scenario=row.scenario):
            return True
        async with self.sessions.begin() as session:  # an admin changed the active version meanwhile
            row = await session.get(Canary, canary_id)
            row.state, row.reason = CanaryState.ABORTED, "the current version changed while the canary ran"
            await session.execute(update(AdapterVersion).where(AdapterVersion.name == row.version)
                                  .values(status=VersionStatus.REJECTED))
        return False

    async def end(self, canary_id: int, state: CanaryState, actor: str, reason: str,
                  numbers: dict[str, Any] | None = None) -> bool:
        """End a running canary as aborted or given up: its version rejected, the current one kept.
        Returns False when it already ended."""
        async with self.sessions.begin() as session:
            row = await session.get(Canary, canary_id)
            if row is None or row.state != CanaryState.RUNNING:
                return False
            await _end(session, row, state, actor, reason, datetime.now(UTC), numbers)
        await self.registry.publish(await self.registry.get(row.baseline) if row.baseline else None, row.scenario)
        return True


async def _end(session: AsyncSession, row: Canary, state: CanaryState, actor: str, reason: str, now: datetime,
               numbers: dict[str, Any] | None = None, keep: bool = False) -> None:
    """Mark `row` ended; unless `keep` (promotion: the registry activates it), its version is rejected."""
    row.state, row.decided_at, row.decided_by, row.reason = state, now, actor, reason
    if numbers is not None:
        row.numbers = numbers
    if not keep:
        await session.execute(update(AdapterVersion).where(AdapterVersion.name == row.version)
                              .values(status=VersionStatus.REJECTED))
    session.add(AdminAction(at=now, actor=actor, scenario=row.scenario, action=f"canary_{state}",
                            from_version=row.baseline, to_version=row.version, reason=reason))


def policy(settings: Settings) -> CanaryPolicy:
    """The canary test's policy from `R3_CANARY_*`."""
    return CanaryPolicy(margin=settings.canary_margin, alpha=settings.canary_alpha,
                        min_episodes=settings.canary_min_episodes, max_episodes=settings.canary_max_episodes,
                        max_s=settings.canary_max_s)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite gives back naive UTC
