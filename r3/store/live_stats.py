"""How each adapter version is doing with real traffic, from the episodes it served."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Integer, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from r3.store.models import EpisodeRow


@dataclass(frozen=True)
class VersionStats:
    version: str  # "base" or the adapter's name
    requests: int
    judged: int  # episodes with a verdict on their first attempt
    first_successes: int
    reflected: int  # episodes that went to a second attempt
    rescued: int  # of those, the ones whose final attempt passed
    successes: int  # episodes whose final verdict is a pass

    @property
    def first_attempt_success(self) -> float | None:
        return self.first_successes / self.judged if self.judged else None

    @property
    def second_attempt_success(self) -> float | None:
        return self.rescued / self.reflected if self.reflected else None

    @property
    def success(self) -> float | None:
        return self.successes / self.judged if self.judged else None


def stats_columns() -> tuple[ColumnElement[int], ...]:
    """SQL aggregates over `EpisodeRow`, in the order of `VersionStats`' counts (requests … successes)."""
    def count(condition: ColumnElement[bool]) -> ColumnElement[int]:
        return func.sum(case((condition, 1), else_=0)).cast(Integer)

    return (
        func.count(),
        count(EpisodeRow.first_success.is_not(None)),
        count(EpisodeRow.first_success.is_(True)),
        count(EpisodeRow.attempt_count > 1),
        count((EpisodeRow.attempt_count > 1) & EpisodeRow.outcome.is_(True)),
        count(EpisodeRow.outcome.is_(True)),
    )


async def version_stats(sessions: async_sessionmaker[AsyncSession], since: datetime | None = None,
                        until: datetime | None = None) -> dict[str, VersionStats]:
    query = select(EpisodeRow.adapter, *stats_columns()).group_by(EpisodeRow.adapter)
    if since is not None:
        query = query.where(EpisodeRow.created_at >= since)
    if until is not None:
        query = query.where(EpisodeRow.created_at < until)
    async with sessions() as session:
        rows = (await session.execute(query)).all()
    return {(adapter or "base"): VersionStats(adapter or "base", *(value or 0 for value in numbers))
            for adapter, *numbers in rows}
