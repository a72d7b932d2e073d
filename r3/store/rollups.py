"""Keeping the rollups (`models.EpisodeRollup`) equal to the episodes they count.

An episode changes after it is first written: a retry's attempts are added, a client's feedback
arrives later (a new revision), retention deletes it. Each change moves the rollups by the
difference it makes, in the transaction that makes it: the changed episodes are tallied with their
rows locked, before and after (`tally`: `live_stats.stats_columns` grouped by scenario, adapter and
minute, with their attempts' generation time), and `apply` adds after − before to the minute, hour
and day rows each minute falls in. Tallying in SQL keeps one definition of what an episode counts
for; adding the difference makes a rewrite of the same revision (a journal replay) change nothing,
and an episode whose verdict a client's feedback flipped move from one count to the other. A batch's
new episodes (nothing counted them before) are counted from their rows in hand (`tally_rows`, the
same numbers, which the tests hold equal to `tally`'s): reading them back cost a query per batch
that scanned the table.

Why in the writer's transaction rather than a trigger: the store writes episodes in batches (a
tally before and after of those already stored, and one upsert of a few rollup rows per batch of
up to 500 episodes, where a row trigger would update the same rollup row once per episode), and it
works alike on SQLite and Postgres. The rollup rows every batch touches (the current minute, hour
and day) are locked from the batch's last statement to its commit only, and always in key order, so
writers on several servers queue on them briefly and never in a cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Insert, String, any_, bindparam, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import FunctionElement

from r3.store.live_stats import microseconds, stats_columns
from r3.store.models import BASE_ADAPTER, ROLLUP_WIDTHS, AttemptRow, EpisodeRollup, EpisodeRow

Key = tuple[str, str, int]  # (scenario, adapter or BASE_ADAPTER, the minute's start in Unix seconds)
# What `tally` counts per key: `stats_columns`' numbers, then the attempts' seconds.
NUMBERS = ("requests", "judged", "first_successes", "reflected", "rescued", "successes", "unjudged",
           "first_scored", "first_score_total", "retries_scored", "retry_score_total", "scored", "score_total",
           "latency_s")
_KEY = ("scenario", "bucket_s", "bucket_start", "adapter")  # the primary key, in its order


class minute_of(FunctionElement[int]):
    """The start (Unix seconds) of the minute a timestamp falls in, exactly."""

    type = BigInteger()
    inherit_cache = True


@compiles(minute_of, "postgresql")
def _minute_postgres(element: minute_of, compiler: SQLCompiler, **kw) -> str:
    (moment,) = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(FLOOR(EXTRACT(EPOCH FROM {moment}) / 60) AS BIGINT) * 60"  # EXTRACT is numeric: exact


@compiles(minute_of, "sqlite")
def _minute_sqlite(element: minute_of, compiler: SQLCompiler, **kw) -> str:
    # strftime('%s') reads the stored UTC text ('YYYY-MM-DD HH:MM:SS.ffffff', the first 19
    # characters: whole seconds) exactly; julianday's double would put a moment at a minute's very
    # start into the minute before.
    (moment,) = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(strftime('%s', substr({moment}, 1, 19)) AS INTEGER) / 60 * 60"


async def tally(connection: AsyncConnection, episode_ids: Sequence[str]) -> dict[Key, list[float]]:
    """What the stored episodes `episode_ids` add to the rollups, per (scenario, adapter, minute):
    `NUMBERS`. Their rows should be locked (or written) by the caller's transaction, so that the
    tally is still true when it commits."""
    if not episode_ids:
        return {}
    postgres = connection.dialect.name == "postgresql"
    seconds = (select(AttemptRow.episode_id, func.sum(AttemptRow.latency_s).label("seconds"))
               .where(among(AttemptRow.episode_id, episode_ids, postgres)).group_by(AttemptRow.episode_id).subquery())
    minute = minute_of(EpisodeRow.created_at).label("minute")
    query = (select(EpisodeRow.scenario, EpisodeRow.adapter, minute, *stats_columns(), func.sum(seconds.c.seconds))
             .select_from(EpisodeRow).outerjoin(seconds, seconds.c.episode_id == EpisodeRow.id)
             .where(among(EpisodeRow.id, episode_ids, postgres))
             .group_by(EpisodeRow.scenario, EpisodeRow.adapter, minute))
    return {(scenario, adapter or BASE_ADAPTER, minute): [number or 0 for number in numbers]
            for scenario, adapter, minute, *numbers in await connection.execute(query)}


def tally_rows(episodes: Iterable[Mapping[str, Any]], attempts: Iterable[Mapping[str, Any]]) -> dict[Key, list[float]]:
    """`tally` counted from rows in hand instead of read back: `episodes` as written
    (`r3.store.sql.episode_row`), `attempts` all of theirs (`attempt_row`), as for episodes the
    caller's transaction has just inserted. The numbers `stats_columns` defines in SQL, which
    `tests/store/test_store_rollups.py` holds this to; the minute is `minute_of`'s, exactly."""
    seconds: dict[str, float] = {}
    for attempt in attempts:
        seconds[attempt["episode_id"]] = seconds.get(attempt["episode_id"], 0) + attempt["latency_s"]
    tallied: dict[Key, list[float]] = {}
    for row in episodes:
        retried = row["attempt_count"] > 1
        first, outcome = row["first_success"], row["outcome"]
        first_score, score = row["first_score"], row["outcome_score"]
        numbers = (1, first is not None, bool(first), retried, retried and bool(outcome), bool(outcome),
                   row["verifier"] is not None and first is None, first_score is not None, first_score or 0,
                   retried and score is not None, score or 0 if retried else 0, score is not None, score or 0,
                   seconds.get(row["id"], 0))
        minute = microseconds(row["created_at"]) // 60_000_000 * 60
        _add_to(tallied, (row["scenario"], row["adapter"] or BASE_ADAPTER, minute), numbers)
    return tallied


def add(*tallies: Mapping[Key, Sequence[float]]) -> dict[Key, list[float]]:
    """The tallies of disjoint sets of episodes, together."""
    together: dict[Key, list[float]] = {}
    for tallied in tallies:
        for key, numbers in tallied.items():
            _add_to(together, key, numbers)
    return together


def _add_to(totals: dict[Key, list[float]], key: Key, numbers: Sequence[float]) -> None:
    total = totals.setdefault(key, [0] * len(NUMBERS))
    for i, number in enumerate(numbers):
        total[i] += number


async def apply(connection: AsyncConnection, before: Mapping[Key, Sequence[float]],
                after: Mapping[Key, Sequence[float]]) -> None:
    """Move the rollups by `after` − `before` (two `tally`s of the same episodes around a change), in
    the caller's transaction; a row left with no episode is deleted."""
    changes: dict[tuple[str, int, int, str], list[float]] = {}
    for sign, tallied in ((1, after), (-1, before)):
        for (scenario, adapter, minute), numbers in tallied.items():
            for width in ROLLUP_WIDTHS:
                change = changes.setdefault((scenario, width, minute // width * width, adapter), [0] * len(NUMBERS))
                for i, number in enumerate(numbers):
                    change[i] += sign * number
    rows = [dict(zip(_KEY, key)) | dict(zip(NUMBERS, numbers))
            for key, numbers in sorted(changes.items()) if any(numbers)]  # key order: no lock cycles
    if not rows:
        return
    await connection.execute(_upsert(connection.dialect.name), rows)
    if emptied := [{f"key_{k}": row[k] for k in _KEY} for row in rows if row["requests"] < 0]:
        table = EpisodeRollup.__table__
        await connection.execute(delete(table).where(*(table.c[k] == bindparam(f"key_{k}") for k in _KEY),
                                                     table.c.requests == 0), emptied)


def among(column: ColumnElement[str], ids: Sequence[str], postgres: bool) -> ColumnElement[bool]:
    """`column IN ids`; on Postgres `= ANY(array)`: one parameter, so one prepared statement for
    every batch size, where IN's list is rendered anew for each (a third of a batch's time)."""
    return column == any_(bindparam(None, list(ids), type_=postgresql.ARRAY(String))) if postgres else column.in_(ids)


@cache
def _upsert(dialect: str) -> Insert:
    """INSERT ... ON CONFLICT DO UPDATE adding each number to the row's, built once per dialect."""
    table = EpisodeRollup.__table__
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    return insert.on_conflict_do_update(index_elements=list(_KEY),
                                        set_={name: table.c[name] + insert.excluded[name] for name in NUMBERS})
