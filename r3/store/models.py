"""The database schema (SQLAlchemy 2, typed). Alembic's migrations in `migrations/` create it.

Postgres is the source of truth; the same schema runs on SQLite for the embedded default. JSON
columns are JSONB on Postgres.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# none_as_null: a Python None is SQL NULL, not the JSON value null, so "no text kept" is plain to see.
Json = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
Timestamp = DateTime(timezone=True)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: Json, list[Any]: Json, datetime: Timestamp}


DEFAULT_SCENARIO = "default"  # the lineage every server had before scenarios: `r3`, `r3-vN`, `r3@vN`


class Scenario(Base):
    """A workload with its own adapter lineage (`<name>-vN`), active version, training rounds, gate and
    stats, on the one base model. `training` overrides global training settings for it (`r3.scenarios`)."""

    __tablename__ = "scenarios"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    training: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the tenant id episodes carry
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the key; the key itself is never kept
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    # The scenario this key's requests serve when their `model` names none (`r3` or the served model id).
    default_scenario: Mapped[str | None] = mapped_column(ForeignKey("scenarios.name"))


class VersionStatus(StrEnum):
    """The status of an adapter version, stored as its string: `pending` while its files are written,
    then `candidate`, then `active` (promoted) or `rejected` (the gate said no, or its canary was
    aborted or gave up); with a live canary, a candidate the gate accepted is `canary` until its
    canary decides; an active version becomes `retired` when another replaces it; `failed`: its files
    could not be written, or its round failed before deciding it."""

    PENDING = "pending"
    CANDIDATE = "candidate"
    CANARY = "canary"  # serving a share of its scenario's traffic (`Canary`)
    ACTIVE = "active"  # at most one per scenario: the unique index below
    REJECTED = "rejected"
    RETIRED = "retired"
    FAILED = "failed"


class AdapterVersion(Base):
    __tablename__ = "adapter_versions"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)  # r3-vN or <scenario>-vN, never reused
    scenario: Mapped[str] = mapped_column(ForeignKey("scenarios.name"), server_default=DEFAULT_SCENARIO)
    number: Mapped[int] = mapped_column(Integer)  # N of the name: counted per scenario
    parent: Mapped[str | None] = mapped_column(ForeignKey("adapter_versions.name"))
    status: Mapped[str] = mapped_column(String(16))  # a `VersionStatus` value
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    episodes_used: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime]
    promoted_at: Mapped[datetime | None]

    __table_args__ = (
        Index("adapter_version_numbers", "scenario", "number", unique=True),
        # At most one active version per scenario: promotion flips it in one transaction.
        Index("one_active_adapter", "scenario", unique=True,
              postgresql_where=text(f"status = '{VersionStatus.ACTIVE}'"),
              sqlite_where=text(f"status = '{VersionStatus.ACTIVE}'")),
    )


class EpisodeRow(Base):
    __tablename__ = "episodes"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    created_at: Mapped[datetime]
    tenant: Mapped[str | None] = mapped_column(String(40), index=True)
    scenario: Mapped[str] = mapped_column(String(40), server_default=DEFAULT_SCENARIO)
    category: Mapped[str | None] = mapped_column(Text)  # the client's `metadata.category`: a task family
    # Which side of its scenario's live canary served it: True the canary, False the current version;
    # None when no canary ran, or the request pinned its version.
    canary: Mapped[bool | None] = mapped_column(Boolean)
    # A Responses API request's own fields and usage (`Episode.responses_api`); NULL for a chat completion.
    responses_api: Mapped[dict[str, Any] | None]
    model: Mapped[str] = mapped_column(String(200))
    adapter: Mapped[str | None] = mapped_column(String(64), index=True)
    task_kind: Mapped[str] = mapped_column(String(32))
    verifier: Mapped[dict[str, Any] | None]
    replayable: Mapped[bool] = mapped_column(Boolean)  # has a verifier the trainer can run again
    store_text: Mapped[bool] = mapped_column(Boolean)
    messages: Mapped[list[Any] | None]
    tools: Mapped[list[Any] | None]
    tool_choice: Mapped[Any | None] = mapped_column(Json)
    sampling: Mapped[dict[str, Any]] = mapped_column(default=dict)
    revision: Mapped[int] = mapped_column(Integer)
    attempt_count: Mapped[int] = mapped_column(Integer)
    first_success: Mapped[bool | None] = mapped_column(Boolean)
    outcome: Mapped[bool | None] = mapped_column(Boolean)
    # The first attempt's and the latest attempt's scores in [0, 1] (`AttemptRecord.graded`), as
    # first_success and outcome are their verdicts: what the stats' mean scores read.
    first_score: Mapped[float | None] = mapped_column(Float)
    outcome_score: Mapped[float | None] = mapped_column(Float)
    # Set once the Redis stream carries the id; a catch-up loop announces the rest.
    announced: Mapped[bool] = mapped_column(Boolean, server_default=false())
    # Set when a committed round used the episode: the version trained on it, or `rounds.HELD_OUT`.
    trained_in: Mapped[str | None] = mapped_column(String(64))

    attempts: Mapped[list[AttemptRow]] = relationship(
        back_populates="episode", order_by="AttemptRow.number", cascade="all, delete-orphan", lazy="selectin"
    )

    __table_args__ = (
        Index("episodes_created", "created_at"),
        # A scenario's episodes by time: its first episode (the overview's window), the partial
        # minutes at a stats window's ends (`r3.store.live_stats`), a canary's episodes, retention.
        Index("episodes_scenario_created", "scenario", "created_at"),
        # The trainer's query: a scenario's recent replayable first-attempt failures not yet trained on.
        Index("episodes_untrained_failures", "scenario", "created_at",
              postgresql_where=text("replayable AND first_success = false AND trained_in IS NULL"),
              sqlite_where=text("replayable AND first_success = 0 AND trained_in IS NULL")),
        Index("episodes_unannounced", "created_at",
              postgresql_where=text("NOT announced"), sqlite_where=text("NOT announced")),
    )


# The widths of the buckets `EpisodeRollup` keeps, in seconds: a minute, an hour, a day. Every episode
# is in one bucket of each; a window is read as whole days, then hours, then minutes at its ends.
ROLLUP_WIDTHS = (60, 3600, 86400)
BASE_ADAPTER = ""  # `EpisodeRollup.adapter` of the base model's episodes (a key column cannot be NULL)


class EpisodeRollup(Base):
    """The live numbers (`r3.store.live_stats.VersionStats`) of the episodes of one scenario and
    adapter created in one time bucket, kept as sums and counts so that buckets add up. Maintained
    by every write of episodes in the same transaction (`r3.store.rollups`): what the dashboard's
    overview, `/admin/stats` and the auto-rollback read instead of scanning `episodes`."""

    __tablename__ = "episode_rollups"

    scenario: Mapped[str] = mapped_column(String(40), primary_key=True)
    bucket_s: Mapped[int] = mapped_column(Integer, primary_key=True)  # one of ROLLUP_WIDTHS
    bucket_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # Unix seconds, a multiple of bucket_s
    adapter: Mapped[str] = mapped_column(String(64), primary_key=True)  # BASE_ADAPTER: the base model
    requests: Mapped[int] = mapped_column(Integer)
    judged: Mapped[int] = mapped_column(Integer)
    first_successes: Mapped[int] = mapped_column(Integer)
    reflected: Mapped[int] = mapped_column(Integer)
    rescued: Mapped[int] = mapped_column(Integer)
    successes: Mapped[int] = mapped_column(Integer)
    unjudged: Mapped[int] = mapped_column(Integer)
    first_scored: Mapped[int] = mapped_column(Integer)
    first_score_total: Mapped[float] = mapped_column(Float)
    retries_scored: Mapped[int] = mapped_column(Integer)
    retry_score_total: Mapped[float] = mapped_column(Float)
    scored: Mapped[int] = mapped_column(Integer)
    score_total: Mapped[float] = mapped_column(Float)
    latency_s: Mapped[float] = mapped_column(Float)  # the episodes' attempts' generation time, added up

    __table_args__ = (
        # Windows over every scenario (`/admin/stats`); one scenario's are the primary key's prefix.
        Index("episode_rollups_buckets", "bucket_s", "bucket_start"),
    )


class AttemptRow(Base):
    __tablename__ = "attempts"

    episode_id: Mapped[str] = mapped_column(ForeignKey("episodes.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    completion_id: Mapped[str] = mapped_column(String(64), unique=True)
    finish_reason: Mapped[str] = mapped_column(String(16))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    latency_s: Mapped[float] = mapped_column(Float)
    content: Mapped[str | None] = mapped_column(Text)
    tool_calls: Mapped[list[Any] | None]
    token_ids: Mapped[list[Any] | None]
    logprobs: Mapped[list[Any] | None]
    reflection: Mapped[str | None] = mapped_column(Text)
    reflection_tokens: Mapped[int] = mapped_column(Integer)
    success: Mapped[bool | None] = mapped_column(Boolean)
    detail: Mapped[str | None] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Float)
    judge_calls: Mapped[int] = mapped_column(Integer, server_default="0")
    judge_prompt_tokens: Mapped[int] = mapped_column(Integer, server_default="0")
    judge_completion_tokens: Mapped[int] = mapped_column(Integer, server_default="0")
    feedback_success: Mapped[bool | None] = mapped_column(Boolean)
    feedback_score: Mapped[float | None] = mapped_column(Float)
    feedback_detail: Mapped[str | None] = mapped_column(Text)
    feedback_at: Mapped[datetime | None]

    episode: Mapped[EpisodeRow] = relationship(back_populates="attempts")


class TrainingRound(Base):
    """One training round, from the moment it is asked for (by the schedule or an admin) to its decision."""

    __tablename__ = "training_rounds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scenario: Mapped[str] = mapped_column(String(40), server_default=DEFAULT_SCENARIO)  # trained on its episodes only
    status: Mapped[str] = mapped_column(String(16))  # a `rounds.RoundStatus` value
    requested_by: Mapped[str] = mapped_column(String(64))  # "admin", "cli", or why the trainer started it
    requested_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    candidate: Mapped[str | None] = mapped_column(String(64))
    promoted: Mapped[bool | None] = mapped_column(Boolean)
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    # The trainer running it (host, pid and a per-process id), when it last said it was alive, and how
    # long it may stay silent (its R3_TRAIN_STALE_AFTER_S): a running round silent for longer lost its
    # trainer. Kept with the round, so whoever finds it (a trainer, the server) judges it by its owner's word.
    owner: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None]
    stale_after_s: Mapped[float | None] = mapped_column(Float)


class SetAsideEpisode(Base):
    """An episode a training round could not turn into a task (its stored verifier or sampling is not
    valid): set aside with the reason, for an admin to look at, and never picked again."""

    __tablename__ = "set_aside_episodes"

    episode_id: Mapped[str] = mapped_column(ForeignKey("episodes.id", ondelete="CASCADE"), primary_key=True)
    round_id: Mapped[int | None] = mapped_column(ForeignKey("training_rounds.id", ondelete="SET NULL"))
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime]


class AdminAction(Base):
    """Every change an admin (or the auto-rollback) made: who, when, from what to what."""

    __tablename__ = "admin_actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(64))
    scenario: Mapped[str | None] = mapped_column(String(40))  # the lineage it changed (None: none, e.g. a logout)
    action: Mapped[str] = mapped_column(String(32))
    from_version: Mapped[str | None] = mapped_column(String(64))
    to_version: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)


class CanaryState(StrEnum):
    RUNNING = "running"
    PROMOTED = "promoted"  # its version is active
    ABORTED = "aborted"  # worse than the current version, or an admin stopped it: its version rejected
    GAVE_UP = "gave_up"  # undecided within its limits: the current version kept, its version rejected
    SUPERSEDED = "superseded"  # a newer candidate's canary replaced it


class Canary(Base):
    """A candidate serving a share of its scenario's unpinned traffic beside the current version until
    a sequential test on live outcomes decides (`r3.canary`). Its counts are the episodes' (`EpisodeRow.canary`)."""

    __tablename__ = "canaries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scenario: Mapped[str] = mapped_column(ForeignKey("scenarios.name"))
    version: Mapped[str] = mapped_column(ForeignKey("adapter_versions.name"))
    baseline: Mapped[str | None] = mapped_column(String(64))  # the version it is compared with (None: the base model)
    fraction: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16))  # a `CanaryState` value
    started_at: Mapped[datetime]
    decided_at: Mapped[datetime | None]
    decided_by: Mapped[str | None] = mapped_column(String(64))  # "canary" (the test), "admin", "trainer"
    reason: Mapped[str | None] = mapped_column(Text)
    numbers: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the test's last numbers (`r3.canary.Verdict`)

    __table_args__ = (
        Index("one_running_canary", "scenario", unique=True,
              postgresql_where=text(f"state = '{CanaryState.RUNNING}'"),
              sqlite_where=text(f"state = '{CanaryState.RUNNING}'")),
    )
