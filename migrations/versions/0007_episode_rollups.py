"""Episode rollups: the live numbers per scenario, adapter and minute, hour and day, kept as episodes are
written (`r3.store.rollups`), so that the dashboard and `/admin/stats` no longer scan `episodes`;
and an index of each scenario's episodes by time. The rollups of the episodes already stored are
counted here, once, as `r3.store.live_stats.stats_columns` counts them.

On Postgres the index is built inside the migration's transaction, which holds writes to `episodes`
for as long (a few seconds per million episodes): migrate while the servers are stopped, as for
any migration.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-15
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NUMBERS = ("requests, judged, first_successes, reflected, rescued, successes, unjudged, first_scored, "
            "first_score_total, retries_scored, retry_score_total, scored, score_total, latency_s")
# Each episode's numbers, as `stats_columns` (at this revision) counts them.
_COUNTED = """
    count(*),
    sum(CASE WHEN e.first_success IS NOT NULL THEN 1 ELSE 0 END),
    sum(CASE WHEN e.first_success IS TRUE THEN 1 ELSE 0 END),
    sum(CASE WHEN e.attempt_count > 1 THEN 1 ELSE 0 END),
    sum(CASE WHEN e.attempt_count > 1 AND e.outcome IS TRUE THEN 1 ELSE 0 END),
    sum(CASE WHEN e.outcome IS TRUE THEN 1 ELSE 0 END),
    sum(CASE WHEN e.verifier IS NOT NULL AND e.first_success IS NULL THEN 1 ELSE 0 END),
    count(e.first_score),
    coalesce(sum(e.first_score), 0),
    sum(CASE WHEN e.attempt_count > 1 AND e.outcome_score IS NOT NULL THEN 1 ELSE 0 END),
    coalesce(sum(CASE WHEN e.attempt_count > 1 THEN e.outcome_score END), 0),
    count(e.outcome_score),
    coalesce(sum(e.outcome_score), 0),
    coalesce(sum(a.seconds), 0)"""
# The start of a timestamp's minute in Unix seconds, exactly (SQLite keeps UTC text).
_MINUTE = {"postgresql": "CAST(FLOOR(EXTRACT(EPOCH FROM e.created_at) / 60) AS BIGINT) * 60",
           "sqlite": "CAST(strftime('%s', substr(e.created_at, 1, 19)) AS INTEGER) / 60 * 60"}


def upgrade() -> None:
    op.create_table('episode_rollups',
    sa.Column('scenario', sa.String(length=40), nullable=False),
    sa.Column('bucket_s', sa.Integer(), nullable=False),
    sa.Column('bucket_start', sa.BigInteger(), nullable=False),
    sa.Column('adapter', sa.String(length=64), nullable=False),
    sa.Column('requests', sa.Integer(), nullable=False),
    sa.Column('judged', sa.Integer(), nullable=False),
    sa.Column('first_successes', sa.Integer(), nullable=False),
    sa.Column('reflected', sa.Integer(), nullable=False),
    sa.Column('rescued', sa.Integer(), nullable=False),
    sa.Column('successes', sa.Integer(), nullable=False),
    sa.Column('unjudged', sa.Integer(), nullable=False),
    sa.Column('first_scored', sa.Integer(), nullable=False),
    sa.Column('first_score_total', sa.Float(), nullable=False),
    sa.Column('retries_scored', sa.Integer(), nullable=False),
    sa.Column('retry_score_total', sa.Float(), nullable=False),
    sa.Column('scored', sa.Integer(), nullable=False),
    sa.Column('score_total', sa.Float(), nullable=False),
    sa.Column('latency_s', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('scenario', 'bucket_s', 'bucket_start', 'adapter')
    )
    with op.batch_alter_table('episode_rollups', schema=None) as batch_op:
        batch_op.create_index('episode_rollups_buckets', ['bucket_s', 'bucket_start'], unique=False)
    with op.batch_alter_table('episodes', schema=None) as batch_op:
        batch_op.create_index('episodes_scenario_created', ['scenario', 'created_at'], unique=False)

    minute = _MINUTE[op.get_bind().dialect.name]
    op.execute(f"""
        INSERT INTO episode_rollups (scenario, bucket_s, bucket_start, adapter, {_NUMBERS})
        SELECT e.scenario, 60, {minute}, coalesce(e.adapter, ''), {_COUNTED}
        FROM episodes e
        LEFT JOIN (SELECT episode_id, sum(latency_s) AS seconds FROM attempts GROUP BY episode_id) a
               ON a.episode_id = e.id
        GROUP BY e.scenario, {minute}, coalesce(e.adapter, '')""")
    sums = ", ".join(f"sum({name})" for name in _NUMBERS.split(", "))
    for narrower, width in ((60, 3600), (3600, 86400)):
        op.execute(f"""
            INSERT INTO episode_rollups (scenario, bucket_s, bucket_start, adapter, {_NUMBERS})
            SELECT scenario, {width}, bucket_start / {width} * {width}, adapter, {sums}
            FROM episode_rollups WHERE bucket_s = {narrower}
            GROUP BY scenario, bucket_start / {width} * {width}, adapter""")


def downgrade() -> None:
    with op.batch_alter_table('episodes', schema=None) as batch_op:
        batch_op.drop_index('episodes_scenario_created')
    with op.batch_alter_table('episode_rollups', schema=None) as batch_op:
        batch_op.drop_index('episode_rollups_buckets')
    op.drop_table('episode_rollups')
