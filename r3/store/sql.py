"""Episodes in the database: batched upserts, reads scoped to a tenant, the trainer's queries."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

import orjson
from sqlalchemy import JSON, Insert, Select, Table, Text, bindparam, cast, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from r3.episodes import AttemptRecord, Episode, Feedback
from r3.store import fast_json, rollups
from r3.store.models import AttemptRow, EpisodeRow

# Columns the server owns; `announced` and `trained_in` belong to the stream and the trainer.
_EPISODE_UPDATES = ("revision", "attempt_count", "first_success", "outcome", "first_score", "outcome_score")
# An attempt never changes once made, except that feedback arrives.
_ATTEMPT_UPDATES = ("feedback_success", "feedback_score", "feedback_detail", "feedback_at")
# What a write sets: `episode_row`'s and `attempt_row`'s keys.
_EPISODE_COLUMNS = tuple(c.name for c in EpisodeRow.__table__.columns if c.name not in ("announced", "trained_in"))
_ATTEMPT_COLUMNS = tuple(c.name for c in AttemptRow.__table__.columns)


# Spelled as the partial index `episodes_unannounced` is (`WHERE NOT announced`): SQLAlchemy renders
# `announced IS false` (or `= 0` on SQLite), which neither planner matches to that index, so the
# catch-up query, run every tick, would scan the whole table.
UNANNOUNCED = text("NOT episodes.announced")


def unannounced_query(limit: int) -> Select:
    return select(EpisodeRow.id).where(UNANNOUNCED).order_by(EpisodeRow.created_at).limit(limit)


_SURROGATE = re.compile("[\ud800-\udfff]")
# The columns that can hold text (token ids and logprobs are numbers: walking them would cost more
# than the rest of the row).
_EPISODE_TEXT = ("id", "tenant", "scenario", "category", "model", "adapter", "task_kind", "verifier", "messages", "tools", "tool_choice",
                 "sampling", "responses_api")
_ATTEMPT_TEXT = ("completion_id", "finish_reason", "content", "tool_calls", "reflection", "detail",
                 "feedback_detail")


def storable(value: Any, postgres: bool) -> Any:
    """`value` with the text a database refuses replaced by U+FFFD: lone surrogates (not UTF-8,
    refused by both), and on Postgres NUL, which neither `text` nor `jsonb` can hold. Without this,
    one such character in a prompt or an output would make its episode unwritable."""
    if isinstance(value, str):
        if postgres and "\x00" in value:
            value = value.replace("\x00", "\ufffd")
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                value = _SURROGATE.sub("\ufffd", value)
        return value
    if isinstance(value, dict):
        return {storable(k, postgres): storable(v, postgres) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v, postgres) for v in value]
    return value


def _json_text(value: Any) -> str | None:
    """`value` as the JSON text Postgres' jsonb takes (None: NULL). orjson's text, unless orjson
    cannot write it (a lone surrogate, an integer beyond 64 bits) or it holds a NUL (`\\u0000`, which
    jsonb refuses): then `storable`'s copy through `fast_json`. Checking the text is a search, where
    walking every value with `storable` first costs as much as encoding it."""
    if value is None:
        return None
    try:
        encoded = orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return fast_json.dumps(storable(value, True))
    return fast_json.dumps(storable(value, True)) if "\\u0000" in encoded else encoded


def _storable_row(row: dict[str, Any], table: Table, columns: tuple[str, ...], postgres: bool) -> dict[str, Any]:
    """`row` (of `table`) with `columns`' text made storable (`storable`); on Postgres its JSON
    columns as text (`_json_text`), which the batch's statements cast to jsonb (`_upserts`)."""
    json = _json_columns(table) if postgres else ()
    for column in columns:
        if column not in json:
            row[column] = storable(row[column], postgres)
    for column in json:
        row[column] = _json_text(row[column])
    return row


@cache
def _json_columns(table: Table) -> tuple[str, ...]:
    return tuple(column.name for column in table.columns if isinstance(column.type, JSON))


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _seconds(moment: datetime) -> float:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def episode_row(episode: Episode) -> dict[str, Any]:
    first, latest = (episode.attempts[0], episode.attempts[-1]) if episode.attempts else (None, None)
    return dict(
        id=episode.id, created_at=_time(episode.created_at), tenant=episode.tenant, scenario=episode.scenario,
        category=episode.category, canary=episode.canary, responses_api=episode.responses_api, model=episode.model,
        adapter=episode.adapter, task_kind=episode.task_kind, verifier=episode.verifier,
        replayable=episode.replayable, store_text=episode.store_text, messages=episode.messages,
        tools=episode.tools, tool_choice=episode.tool_choice, sampling=episode.sampling,
        revision=episode.revision, attempt_count=len(episode.attempts),
        first_success=first.passed if first else None, outcome=latest.passed if latest else None,
        first_score=first.graded if first else None, outcome_score=latest.graded if latest else None,
    )


def attempt_row(episode_id: str, attempt: AttemptRecord) -> dict[str, Any]:
    feedback = attempt.feedback
    return dict(
        episode_id=episode_id, number=attempt.number, completion_id=attempt.completion_id,
        finish_reason=attempt.finish_reason, prompt_tokens=attempt.prompt_tokens,
        completion_tokens=attempt.completion_tokens, latency_s=attempt.latency_s, content=attempt.content,
        tool_calls=attempt.tool_calls, token_ids=attempt.token_ids, logprobs=attempt.logprobs,
        reflection=attempt.reflection, reflection_tokens=attempt.reflection_tokens, success=attempt.success,
        detail=attempt.detail, score=attempt.score, judge_calls=attempt.judge_calls,
        judge_prompt_tokens=attempt.judge_prompt_tokens, judge_completion_tokens=attempt.judge_completion_tokens,
        feedback_success=feedback.success if feedback else None, feedback_score=feedback.score if feedback else None,
        feedback_detail=feedback.detail if feedback else None,
        feedback_at=_time(feedback.received_at) if feedback else None,
    )


def episode_of(row: EpisodeRow) -> Episode:
    attempts = [
        AttemptRecord(
            number=a.number, completion_id=a.completion_id, finish_reason=a.finish_reason,
            prompt_tokens=a.prompt_tokens, completion_tokens=a.completion_tokens, latency_s=a.latency_s,
            content=a.content, tool_calls=a.tool_calls, token_ids=a.token_ids, logprobs=a.logprobs,
            reflection=a.reflection, reflection_tokens=a.reflection_tokens, success=a.success, detail=a.detail,
            score=a.score, judge_calls=a.judge_calls, judge_prompt_tokens=a.judge_prompt_tokens,
            judge_completion_tokens=a.judge_completion_tokens,
            feedback=Feedback(a.feedback_success, a.feedback_detail, _seconds(a.feedback_at), a.feedback_score)
            if a.feedback_success is not None else None,
        )
        for a in row.attempts
    ]
    return Episode(
        id=row.id, tenant=row.tenant, scenario=row.scenario, category=row.category, canary=row.canary, model=row.model,
        adapter=row.adapter, task_kind=row.task_kind, responses_api=row.responses_api,
        verifier=row.verifier, store_text=row.store_text, messages=row.messages, tools=row.tools,
        tool_choice=row.tool_choice, sampling=row.sampling, attempts=attempts, created_at=_seconds(row.created_at),
        revision=row.revision,
    )


@dataclass(frozen=True)
class EpisodeFilter:
    since: datetime | None = None
    until: datetime | None = None
    outcome: bool | None = None
    adapter: str | None = None
    task_kind: str | None = None
    tenant: str | None = None
    scenario: str | None = None


def _filtered(query: Select, where: EpisodeFilter) -> Select:
    """`query` narrowed to the episodes `where` admits (`since` inclusive, `until` exclusive; adapter
    "base": the base model's)."""
    if where.since is not None:
        query = query.where(EpisodeRow.created_at >= where.since)
    if where.until is not None:
        query = query.where(EpisodeRow.created_at < where.until)
    if where.outcome is not None:
        query = query.where(EpisodeRow.outcome.is_(where.outcome))
    if where.adapter is not None:
        base = where.adapter == "base"
        query = query.where(EpisodeRow.adapter.is_(None) if base else EpisodeRow.adapter == where.adapter)
    if where.task_kind is not None:
        query = query.where(EpisodeRow.task_kind == where.task_kind)
    if where.tenant is not None:
        query = query.where(EpisodeRow.tenant == where.tenant)
    if where.scenario is not None:
        query = query.where(EpisodeRow.scenario == where.scenario)
    return query


def _insert(table: Table, columns: Sequence[str], postgres: bool) -> Insert:
    """An INSERT of a batch's rows of `table`. On Postgres from one array per column (`unnest`,
    `_parameters`): one set of parameters whatever the batch's size, which asyncpg encodes in C,
    where an executemany's rows each pass through SQLAlchemy's parameter processing (a third of the
    episode log's CPU per episode, profiled). On SQLite an executemany of the rows."""
    if not postgres:
        return sqlite.insert(table)
    json = _json_columns(table)
    arrays = [bindparam(name, type_=postgresql.ARRAY(Text() if name in json else table.c[name].type))
              for name in columns]
    rows = func.unnest(*arrays).table_valued(*columns).render_derived()
    return postgresql.insert(table).from_select(
        columns, select(*(cast(rows.c[name], postgresql.JSONB) if name in json else rows.c[name] for name in columns)))


def _parameters(rows: list[dict[str, Any]], columns: Sequence[str],
                postgres: bool) -> list[dict[str, Any]] | dict[str, list[Any]]:
    """`rows` as `_insert`'s statement takes them: on Postgres one list per column, else the rows."""
    return {name: [row[name] for row in rows] for name in columns} if postgres else rows


@cache
def _upserts(dialect: str) -> tuple[Insert, Insert, Insert]:
    """For episodes an INSERT that skips those already stored (returning the ids it inserted) and an
    INSERT ... ON CONFLICT DO UPDATE, for attempts the latter (`_insert`); built once per dialect."""
    postgres = dialect == "postgresql"
    episode_table, attempt_table = EpisodeRow.__table__, AttemptRow.__table__
    new_episodes = (_insert(episode_table, _EPISODE_COLUMNS, postgres)
                    .on_conflict_do_nothing(index_elements=["id"]).returning(EpisodeRow.id))
    episodes = _insert(episode_table, _EPISODE_COLUMNS, postgres)
    episodes = episodes.on_conflict_do_update(
        index_elements=["id"], set_={c: episodes.excluded[c] for c in _EPISODE_UPDATES},
        where=episode_table.c.revision < episodes.excluded.revision)
    attempts = _insert(attempt_table, _ATTEMPT_COLUMNS, postgres)
    attempts = attempts.on_conflict_do_update(
        index_elements=["episode_id", "number"], set_={c: attempts.excluded[c] for c in _ATTEMPT_UPDATES},
        where=attempts.excluded.feedback_success.is_not(None) & attempt_table.c.feedback_success.is_(None))
    return new_episodes, episodes, attempts


class SqlEpisodeStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def write(self, episodes: Sequence[Episode]) -> None:
        """Insert or update episodes with all their attempts, and the rollups by what that changed
        (`r3.store.rollups`), in one transaction.

        Idempotent, and a copy older than the stored one (a lower `revision`) changes nothing, so
        replaying a journal after newer writes is harmless. New episodes are inserted first; those
        already stored (another revision, or written by another server meanwhile) are locked and
        tallied before they are updated. Rows are taken in id order, so two writers never wait on
        each other in a cycle.
        """
        latest: dict[str, Episode] = {}
        for episode in episodes:
            if episode.id not in latest or episode.revision >= latest[episode.id].revision:
                latest[episode.id] = episode
        ids = sorted(latest)
        async with self.sessions.begin() as session:
            dialect = session.bind.dialect.name
            postgres = dialect == "postgresql"
            episode_table, attempt_table = EpisodeRow.__table__, AttemptRow.__table__
            episode_rows = [_storable_row(episode_row(latest[i]), episode_table, _EPISODE_TEXT, postgres) for i in ids]
            attempt_rows = [_storable_row(attempt_row(i, a), attempt_table, _ATTEMPT_TEXT, postgres)
                            for i in ids for a in latest[i].attempts]
            new_episodes, episodes_upsert, attempts_upsert = _upserts(dialect)
            connection = await session.connection()
            inserted = set((await connection.execute(
                new_episodes, _parameters(episode_rows, _EPISODE_COLUMNS, postgres))).scalars())
            stored = [row for row in episode_rows if row["id"] not in inserted]
            stored_ids = [row["id"] for row in stored]
            before = {}
            if stored:
                await connection.execute(select(EpisodeRow.id).where(EpisodeRow.id.in_(stored_ids))
                                         .order_by(EpisodeRow.id).with_for_update())
                before = await rollups.tally(connection, stored_ids)
                # One cached statement (executemany, or arrays): a multi-row VALUES would be compiled anew per batch.
                await connection.execute(episodes_upsert, _parameters(stored, _EPISODE_COLUMNS, postgres))
            if attempt_rows:
                await connection.execute(attempts_upsert, _parameters(attempt_rows, _ATTEMPT_COLUMNS, postgres))
            # The new episodes counted from their rows (nothing counted them before, and their
            # attempts are all in this batch); those already stored read back, as they now are.
            after = rollups.tally_rows((row for row in episode_rows if row["id"] in inserted),
                                       (row for row in attempt_rows if row["episode_id"] in inserted))
            await rollups.apply(connection, before, rollups.add(after, await rollups.tally(connection, stored_ids)))

    async def get(self, episode_id: str, tenant: str | None) -> Episode | None:
        async with self.sessions() as session:
            row = await session.get(EpisodeRow, episode_id)
            return episode_of(row) if row is not None and row.tenant == tenant else None

    async def get_any(self, episode_id: str) -> Episode | None:
        """An episode whoever made it (admin reads)."""
        async with self.sessions() as session:
            row = await session.get(EpisodeRow, episode_id)
            return episode_of(row) if row is not None else None

    async def by_completion_id(self, completion_id: str, tenant: str | None) -> tuple[Episode, int] | None:
        async with self.sessions() as session:
            attempt = await session.scalar(select(AttemptRow).where(AttemptRow.completion_id == completion_id))
            if attempt is None:
                return None
            number = attempt.number
            row = await session.get(EpisodeRow, attempt.episode_id)
            return (episode_of(row), number) if row.tenant == tenant else None

    async def list(self, where: EpisodeFilter, limit: int, after: tuple[datetime, str] | None = None) -> list[Episode]:
        """Newest first; `after` is the (created_at, id) of the last episode of the previous page."""
        query: Select = select(EpisodeRow).order_by(EpisodeRow.created_at.desc(), EpisodeRow.id.desc()).limit(limit)
        query = _filtered(query, where)
        if after is not None:
            created, episode_id = after
            query = query.where((EpisodeRow.created_at < created)
                                | ((EpisodeRow.created_at == created) & (EpisodeRow.id < episode_id)))
        async with self.sessions() as session:
            return [episode_of(row) for row in await session.scalars(query)]

    async def count(self, where: EpisodeFilter) -> int:
        """How many episodes `list` pages through for `where`."""
        async with self.sessions() as session:
            return await session.scalar(_filtered(select(func.count()).select_from(EpisodeRow), where))

    async def ping(self) -> None:
        """Raise unless the database answers (tells "the database is down" from "it refused this row")."""
        async with self.sessions() as session:
            await session.execute(select(1))

    @asynccontextmanager
    async def claim_unannounced(self, limit: int) -> AsyncIterator[list[str]]:
        """Up to `limit` ids of episodes not yet announced, oldest first, held by this caller until
        the block ends, and marked announced if it ends without an exception (else they stay
        unannounced, for the next try).

        Rows another server holds are skipped (`SKIP LOCKED`): servers catching up at once share
        the episodes, where each used to announce and mark every one, waiting on the others' row
        locks and re-checking each row once they were released. Never waiting on a lock, a claim
        cannot deadlock with `write`; a `write` of a new revision of a held episode waits until
        the block ends (the stream's call, at most its timeout).
        """
        async with self.sessions.begin() as session:
            ids = list(await session.scalars(unannounced_query(limit).with_for_update(skip_locked=True)))
            yield ids
            if ids:
                postgres = session.bind.dialect.name == "postgresql"
                await session.execute(update(EpisodeRow).where(rollups.among(EpisodeRow.id, ids, postgres))
                                      .values(announced=True))
