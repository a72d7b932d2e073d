"""How each adapter version is doing with real traffic, from the episodes it served.

Counted in SQL, one grouped pass over `episodes` (`stats_columns`), so the numbers cost about the
same over a year of episodes as over an hour. Pass rates and mean scores stand side by side: a
verdict is a score in [0, 1] (`verifiers.Verdict.score`: 1.0 or 0.0 from a pass/fail check, graded
by an OpenAI-style grader or a model judge), and a client's feedback, where given, overrides both
(`AttemptRecord.passed`, `AttemptRecord.graded`). Scores are kept as sums and counts, not means, so
that buckets and windows add up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Float, Integer, case, func, select
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
    unjudged: int  # episodes with a verifier but no verdict on their first attempt (`stats_columns`)
    first_scored: int  # episodes whose first attempt has a score (the same as `judged` for what R3 writes)
    first_score_total: float  # those scores added up
    retries_scored: int  # episodes that went to a second attempt whose final attempt has a score
    retry_score_total: float
    scored: int  # episodes whose final attempt has a score
    score_total: float

    @classmethod
    def of(cls, version: str | None, numbers: tuple[Any, ...]) -> VersionStats:
        """From `version` (None: the base model) and a row of `stats_columns()`; SQL's NULL sum of no
        rows is 0."""
        return cls(version or "base", *(number or 0 for number in numbers))

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


async def version_stats(sessions: async_sessionmaker[AsyncSession], since: datetime | None = None,
                        until: datetime | None = None, scenario: str | None = None) -> dict[str, VersionStats]:
    """Each version's numbers over episodes created in [since, until) (of `scenario`, or of all; the
    base model's, under "base", are its scenario's alone only with `scenario`)."""
    query = select(EpisodeRow.adapter, *stats_columns()).group_by(EpisodeRow.adapter)
    if scenario is not None:
        query = query.where(EpisodeRow.scenario == scenario)
    if since is not None:
        query = query.where(EpisodeRow.created_at >= since)
    if until is not None:
        query = query.where(EpisodeRow.created_at < until)
    async with sessions() as session:
        rows = (await session.execute(query)).all()
    return {(adapter or "base"): VersionStats.of(adapter, tuple(numbers)) for adapter, *numbers in rows}
