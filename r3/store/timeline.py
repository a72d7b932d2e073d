"""Live numbers over time: episodes counted per adapter version and time bucket, in the database.

The operator's dashboard plots these. A plot whose buckets are whole minutes, hours or days on the
clock (every window of the dashboard's) is read from the rollups (`EpisodeRollup`: about as many
rows as buckets, however many episodes they hold); any other is counted over the episodes in SQL
(one grouped query for the counts, one for the latency). Either way no episode row leaves the
database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Float, Integer, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

from r3.store.live_stats import VersionStats, in_buckets, microseconds, rollup_columns, stats_columns
from r3.store.models import ROLLUP_WIDTHS, AttemptRow, EpisodeRollup, EpisodeRow


@dataclass(frozen=True)
class TimelinePoint:
    bucket: int  # 0 is the bucket that starts at `since`
    stats: VersionStats  # the episodes of one version created in that bucket
    seconds: float  # their attempts' generation time, added up

    @property
    def mean_latency_s(self) -> float | None:
        """Mean seconds per request, every attempt included."""
        return self.seconds / self.stats.requests if self.stats.requests else None


class _bucket_of(FunctionElement[int]):
    """The index of the `width`-second bucket after `since` (both in Unix seconds) a timestamp falls in."""

    type = Integer()
    inherit_cache = True


@compiles(_bucket_of, "postgresql")
def _bucket_postgres(element: _bucket_of, compiler: SQLCompiler, **kw) -> str:
    moment, since, width = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(FLOOR((EXTRACT(EPOCH FROM {moment}) - {since}) / {width}) AS INTEGER)"


@compiles(_bucket_of, "sqlite")
def _bucket_sqlite(element: _bucket_of, compiler: SQLCompiler, **kw) -> str:
    # julianday keeps the fraction of a second; CAST truncates, which is FLOOR for the moments at or
    # after `since` the query keeps (SQLite's FLOOR needs its optional math functions).
    moment, since, width = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(((julianday({moment}) - 2440587.5) * 86400.0 - {since}) / {width} AS INTEGER)"


def _bucket(since: datetime, bucket_s: float) -> ColumnElement[int]:
    return _bucket_of(EpisodeRow.created_at, func.cast(since.timestamp(), Float), func.cast(bucket_s, Float))


async def timeline(sessions: async_sessionmaker[AsyncSession], since: datetime, bucket_s: float,
                   buckets: int, scenario: str | None = None) -> list[TimelinePoint]:
    """Per version, the episodes (of `scenario`, or of all) of each of `buckets` buckets of `bucket_s`
    seconds from `since` (an aware datetime); buckets without episodes are left out. Ordered by
    bucket, then version."""
    since = since.astimezone(UTC)  # SQLite keeps timestamps as UTC text without an offset
    width = _rollup_width(since, bucket_s)
    if width is None:
        points = await _counted(sessions, since, bucket_s, buckets, scenario)
    else:
        points = await _rolled_up(sessions, microseconds(since) // 1_000_000, int(bucket_s), buckets, width, scenario)
    return sorted((p for p in points if 0 <= p.bucket < buckets), key=lambda p: (p.bucket, p.stats.version))


def _rollup_width(since: datetime, bucket_s: float) -> int | None:
    """The widest rollup bucket that both `since` and `bucket_s` are whole multiples of; None: none is."""
    step_us = float(bucket_s) * 1_000_000
    if not step_us.is_integer():
        return None
    return next((width for width in reversed(ROLLUP_WIDTHS) if int(step_us) % (width * 1_000_000) == 0
                 and microseconds(since) % (width * 1_000_000) == 0), None)


async def _rolled_up(sessions: async_sessionmaker[AsyncSession], since_s: int, bucket_s: int, buckets: int,
                     width: int, scenario: str | None) -> list[TimelinePoint]:
    """The timeline from the rollups of `width` seconds, which tile each bucket exactly."""
    rollup = EpisodeRollup
    bucket = ((rollup.bucket_start - since_s) // bucket_s).label("bucket")
    query = (select(bucket, rollup.adapter, *rollup_columns(), func.sum(rollup.latency_s))
             .where(in_buckets(width, since_s, since_s + bucket_s * buckets))
             .group_by(bucket, rollup.adapter).having(func.sum(rollup.requests) > 0))
    if scenario is not None:
        query = query.where(rollup.scenario == scenario)
    async with sessions() as session:
        rows = (await session.execute(query)).all()
    return [TimelinePoint(index, VersionStats.of(adapter, tuple(numbers[:-1])), numbers[-1] or 0.0)
            for index, adapter, *numbers in rows]


async def _counted(sessions: async_sessionmaker[AsyncSession], since: datetime, bucket_s: float, buckets: int,
                   scenario: str | None) -> list[TimelinePoint]:
    """The timeline counted over the episodes and their attempts."""
    until = datetime.fromtimestamp(since.timestamp() + bucket_s * buckets, since.tzinfo)
    window = (EpisodeRow.created_at >= since) & (EpisodeRow.created_at < until)
    if scenario is not None:
        window &= EpisodeRow.scenario == scenario
    bucket = _bucket(since, bucket_s).label("bucket")
    counts = (select(bucket, EpisodeRow.adapter, *stats_columns()).where(window)
              .group_by(bucket, EpisodeRow.adapter))
    seconds = (select(bucket, EpisodeRow.adapter, func.sum(AttemptRow.latency_s))
               .join(AttemptRow, AttemptRow.episode_id == EpisodeRow.id).where(window)
               .group_by(bucket, EpisodeRow.adapter))
    async with sessions() as session:
        count_rows = (await session.execute(counts)).all()
        latency = {(index, adapter): total or 0.0 for index, adapter, total in await session.execute(seconds)}
    return [TimelinePoint(index, VersionStats.of(adapter, tuple(numbers)), latency.get((index, adapter), 0.0))
            for index, adapter, *numbers in count_rows]


async def first_episode_at(sessions: async_sessionmaker[AsyncSession],
                           scenario: str | None = None) -> datetime | None:
    """When the oldest episode (of `scenario`, or of all) was created (aware, UTC), or None when there is none."""
    query = select(func.min(EpisodeRow.created_at))
    if scenario is not None:
        query = query.where(EpisodeRow.scenario == scenario)
    async with sessions() as session:
        first = await session.scalar(query)
    return None if first is None else first if first.tzinfo else first.replace(tzinfo=UTC)  # SQLite's are naive
