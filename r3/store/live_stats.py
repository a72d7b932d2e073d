"""How each adapter version is doing with real traffic, from the episodes it served.

Pass rates and mean scores stand side by side: a verdict is a score in [0, 1]
(`verifiers.Verdict.score`: 1.0 or 0.0 from a pass/fail check, graded by an OpenAI-style grader or
a model judge), and a client's feedback, where given, overrides both (`AttemptRecord.passed`,
`AttemptRecord.graded`). Scores are kept as sums and counts, not means, so that buckets and windows
add up.

What an episode adds is defined once, in SQL (`stats_columns`). Writes keep those sums per scenario,
adapter and minute, hour and day (`EpisodeRollup`, maintained by `r3.store.rollups`), so a window
is read as whole days, hours and minutes from the rollups (`covering`) plus, where it starts or
ends inside a minute, one grouped pass over those partial minutes' episodes (`counted`): the cost
follows the window's length in buckets, not the number of episodes (a year: at most 365 days, 46
hours and 118 minutes of rows per version).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Float, Integer, and_, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from r3.store.models import ROLLUP_WIDTHS, EpisodeRollup, EpisodeRow

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class VersionStats:
    version: str  # "base" or the adapter's name
    requests: int
    judged: int  # episodes with a verdict on their first attempt
    first_successes: int
    reflected: int  # episodes that went to a second attempt
    rescued: int  # of those, the ones whose final attempt passed
    successes: int  # episodes whose final verdict is a pass
    unjudged: int  # episodes with a verifier but no verdict on their first attempt (`stats_columns`)
    first_scored: int  # episodes whose first attempt has a score (the same as `judged` for what R3 writes)
    first_score_total: float  # those scores added up
    retries_scored: int  # episodes that went to a second attempt whose final attempt has a score
    retry_score_total: float
    scored: int  # episodes whose final attempt has a score
    score_total: float

    @classmethod
    def of(cls, version: str | None, numbers: tuple[Any, ...]) -> VersionStats:
        """From `version` (None or `models.BASE_ADAPTER`: the base model) and a row of `stats_columns()` or
        `rollup_columns()`; SQL's NULL sum of no rows is 0."""
        return cls(version or "base", *(number or 0 for number in numbers))

    def plus(self, other: VersionStats) -> VersionStats:
        """The numbers of both sets of episodes (of one version) together."""
        return VersionStats(self.version, *(a + b for a, b in zip(astuple(self)[1:], astuple(other)[1:])))

    @property
    def first_attempt_success(self) -> float | None:
        return self.first_successes / self.judged if self.judged else None

    @property
    def second_attempt_success(self) -> float | None:
        return self.rescued / self.reflected if self.reflected else None

    @property
    def success(self) -> float | None:
        return self.successes / self.judged if self.judged else None

    @property
    def first_attempt_score(self) -> float | None:
        """The mean score of first attempts, in [0, 1]."""
        return self.first_score_total / self.first_scored if self.first_scored else None

    @property
    def second_attempt_score(self) -> float | None:
        """The mean final score of the episodes that went to a second attempt (the retry's, or the
        last retry's), in [0, 1]."""
        return self.retry_score_total / self.retries_scored if self.retries_scored else None

    @property
    def score(self) -> float | None:
        """The mean final score, in [0, 1]."""
        return self.score_total / self.scored if self.scored else None


def stats_columns() -> tuple[ColumnElement[Any], ...]:
    """SQL aggregates over `EpisodeRow` alone, in the order of `VersionStats`' numbers (requests …
    score_total).

    An episode is *unjudged* when it has a verifier but its first attempt has no verdict, neither
    the verifier's nor the client's (`first_success` is NULL): the verifier's judge could give none
    (`verifiers.Verdict.unjudged`: a model judge down, timed out or unreadable), or, more rarely, the
    client hung up before the first attempt was judged, which the episode's row cannot tell apart
    from the first (the attempt's can, `AttemptRecord.unjudged`: `/metrics` and the episode pages
    call only a judge's failure unjudged). Telling them apart here would look up each episode's first
    attempt, and Postgres, costing that lookup for every row, compiles the query (JIT) at 5 times
    the cost of counting (100,000 episodes: 280 ms, not 55)."""
    def count(condition: ColumnElement[bool]) -> ColumnElement[int]:
        return func.sum(case((condition, 1), else_=0)).cast(Integer)

    def total(score: ColumnElement[float | None]) -> ColumnElement[float]:
        return func.sum(score).cast(Float)

    retried = EpisodeRow.attempt_count > 1
    return (
        func.count(),
        count(EpisodeRow.first_success.is_not(None)),
        count(EpisodeRow.first_success.is_(True)),
        count(retried),
        count(retried & EpisodeRow.outcome.is_(True)),
        count(EpisodeRow.outcome.is_(True)),
        count(EpisodeRow.verifier.is_not(None) & EpisodeRow.first_success.is_(None)),
        func.count(EpisodeRow.first_score),
        total(EpisodeRow.first_score),
        count(retried & EpisodeRow.outcome_score.is_not(None)),
        total(case((retried, EpisodeRow.outcome_score))),
        func.count(EpisodeRow.outcome_score),
        total(EpisodeRow.outcome_score),
    )


def rollup_columns() -> tuple[ColumnElement[Any], ...]:
    """`stats_columns`' numbers added up over `EpisodeRollup` rows, in the same order."""
    r = EpisodeRollup
    return (func.sum(r.requests), func.sum(r.judged), func.sum(r.first_successes), func.sum(r.reflected),
            func.sum(r.rescued), func.sum(r.successes), func.sum(r.unjudged), func.sum(r.first_scored),
            func.sum(r.first_score_total), func.sum(r.retries_scored), func.sum(r.retry_score_total),
            func.sum(r.scored), func.sum(r.score_total))


def microseconds(moment: datetime) -> int:
    """An aware datetime as integer microseconds since the Unix epoch (exact, unlike `timestamp()`)."""
    return (moment - EPOCH) // _MICROSECOND


def moment(us: int) -> datetime:
    return EPOCH + us * _MICROSECOND


Span = tuple[int | None, int | None]  # [start, end) in Unix microseconds; None: unbounded


def covering(start: int | None, end: int | None,
             widths: Sequence[int] = ROLLUP_WIDTHS) -> tuple[list[tuple[int, int | None, int | None]], list[Span]]:
    """[start, end) (Unix microseconds; None: unbounded) as (whole buckets: `(width_s, first start,
    end)` per width, starts in seconds, the widest in the middle; the spans left at the ends, each
    shorter than the narrowest width). Every moment of [start, end) is in exactly one of them."""
    if start is not None and end is not None and start >= end:
        return [], []
    if not widths:
        return [], [(start, end)]
    width_us = widths[-1] * 1_000_000
    first = None if start is None else -(-start // width_us) * width_us  # rounded up to the width
    last = None if end is None else end // width_us * width_us  # rounded down
    if first is not None and last is not None and first >= last:
        return covering(start, end, widths[:-1])
    wholes = [(widths[-1], None if first is None else first // 1_000_000, None if last is None else last // 1_000_000)]
    spans: list[Span] = []
    for part in ([] if start is None else [(start, first)]) + ([] if end is None else [(last, end)]):
        part_wholes, part_spans = covering(*part, widths[:-1])
        wholes += part_wholes
        spans += part_spans
    return wholes, spans


def in_buckets(width: int, first: int | None, end: int | None) -> ColumnElement[bool]:
    """The rollup rows of `width` seconds starting in [first, end) (Unix seconds; None: unbounded)."""
    condition = EpisodeRollup.bucket_s == width
    if first is not None:
        condition &= EpisodeRollup.bucket_start >= first
    if end is not None:
        condition &= EpisodeRollup.bucket_start < end
    return condition


def in_spans(spans: Sequence[Span]) -> ColumnElement[bool]:
    """The episodes created in any of `spans`."""
    def within(start: int | None, end: int | None) -> ColumnElement[bool]:
        bounds = ([] if start is None else [EpisodeRow.created_at >= moment(start)]) + (
            [] if end is None else [EpisodeRow.created_at < moment(end)])
        return and_(*bounds)

    return or_(*(within(*span) for span in spans))


async def counted(session: AsyncSession, spans: Sequence[Span], scenario: str | None) -> dict[str, VersionStats]:
    """Each version's numbers counted over the episodes themselves, those created in `spans` (of
    `scenario`, or of all): one grouped pass (`stats_columns`)."""
    query = select(EpisodeRow.adapter, *stats_columns()).where(in_spans(spans)).group_by(EpisodeRow.adapter)
    if scenario is not None:
        query = query.where(EpisodeRow.scenario == scenario)
    rows = (await session.execute(query)).all()
    return {(adapter or "base"): VersionStats.of(adapter, tuple(numbers)) for adapter, *numbers in rows}


async def version_stats(sessions: async_sessionmaker[AsyncSession], since: datetime | None = None,
                        until: datetime | None = None, scenario: str | None = None) -> dict[str, VersionStats]:
    """Each version's numbers over episodes created in [since, until) (aware datetimes; None:
    unbounded), of `scenario` or of all (the base model's, under "base", are its scenario's alone
    only with `scenario`): the same numbers as one grouped pass over those episodes (`counted`),
    read from the rollups where the window covers whole buckets (`covering`). A version with no
    episodes there is left out."""
    wholes, spans = covering(None if since is None else microseconds(since),
                             None if until is None else microseconds(until))
    found: dict[str, VersionStats] = {}
    async with sessions() as session:
        if wholes:
            query = (select(EpisodeRollup.adapter, *rollup_columns())
                     .where(or_(*(in_buckets(*whole) for whole in wholes)))
                     .group_by(EpisodeRollup.adapter).having(func.sum(EpisodeRollup.requests) > 0))
            if scenario is not None:
                query = query.where(EpisodeRollup.scenario == scenario)
            for adapter, *numbers in await session.execute(query):
                stats = VersionStats.of(adapter, tuple(numbers))
                found[stats.version] = stats
        if spans:
            for version, stats in (await counted(session, spans, scenario)).items():
                found[version] = found[version].plus(stats) if version in found else stats
    return found
