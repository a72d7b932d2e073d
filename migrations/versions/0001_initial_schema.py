"""The initial schema: episodes, attempts, adapter versions, API keys, training rounds, admin actions.

Revision ID: 0001
Revises: 
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('adapter_versions',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('parent', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('metrics', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('episodes_used', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('promoted_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['parent'], ['adapter_versions.name'], ),
    sa.PrimaryKeyConstraint('name'),
    sa.UniqueConstraint('number')
    )
    with op.batch_alter_table('adapter_versions', schema=None) as batch_op:
        batch_op.create_index('one_active_adapter', ['status'], unique=True, postgresql_where=sa.text("status = 'active'"), sqlite_where=sa.text("status = 'active'"))

    op.create_table('api_keys',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key_hash')
    )
    op.create_table('episodes',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('tenant', sa.String(length=40), nullable=True),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('adapter', sa.String(length=64), nullable=True),
    sa.Column('task_kind', sa.String(length=32), nullable=False),
    sa.Column('verifier', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('replayable', sa.Boolean(), nullable=False),
    sa.Column('store_text', sa.Boolean(), nullable=False),
    sa.Column('messages', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('tools', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('tool_choice', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('sampling', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('attempt_count', sa.Integer(), nullable=False),
    sa.Column('first_success', sa.Boolean(), nullable=True),
    sa.Column('outcome', sa.Boolean(), nullable=True),
    sa.Column('announced', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('trained_in', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('episodes', schema=None) as batch_op:
        batch_op.create_index('episodes_created', ['created_at'], unique=False)
        batch_op.create_index('episodes_unannounced', ['created_at'], unique=False, postgresql_where=sa.text('NOT announced'), sqlite_where=sa.text('NOT announced'))
        batch_op.create_index('episodes_untrained_failures', ['created_at'], unique=False, postgresql_where=sa.text('replayable AND first_success = false AND trained_in IS NULL'), sqlite_where=sa.text('replayable AND first_success = 0 AND trained_in IS NULL'))
        batch_op.create_index(batch_op.f('ix_episodes_adapter'), ['adapter'], unique=False)
        batch_op.create_index(batch_op.f('ix_episodes_tenant'), ['tenant'], unique=False)

    op.create_table('attempts',
    sa.Column('episode_id', sa.String(length=40), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('completion_id', sa.String(length=64), nullable=False),
    sa.Column('finish_reason', sa.String(length=16), nullable=False),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('latency_s', sa.Float(), nullable=False),
    sa.Column('content', sa.Text(), nullable=True),
    sa.Column('tool_calls', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('token_ids', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('logprobs', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('reflection', sa.Text(), nullable=True),
    sa.Column('reflection_tokens', sa.Integer(), nullable=False),
    sa.Column('success', sa.Boolean(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('feedback_success', sa.Boolean(), nullable=True),
    sa.Column('feedback_detail', sa.Text(), nullable=True),
    sa.Column('feedback_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['episode_id'], ['episodes.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('episode_id', 'number'),
    sa.UniqueConstraint('completion_id')
    )


    op.create_table('training_rounds',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('requested_by', sa.String(length=64), nullable=False),
    sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('candidate', sa.String(length=64), nullable=True),
    sa.Column('promoted', sa.Boolean(), nullable=True),
    sa.Column('report', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('admin_actions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('from_version', sa.String(length=64), nullable=True),
    sa.Column('to_version', sa.String(length=64), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )


def downgrade() -> None:
    op.drop_table('admin_actions')
    op.drop_table('training_rounds')
    op.drop_table('attempts')
    with op.batch_alter_table('episodes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_episodes_tenant'))
        batch_op.drop_index(batch_op.f('ix_episodes_adapter'))
        batch_op.drop_index('episodes_untrained_failures', postgresql_where=sa.text('replayable AND first_success = false AND trained_in IS NULL'), sqlite_where=sa.text('replayable AND first_success = 0 AND trained_in IS NULL'))
        batch_op.drop_index('episodes_unannounced', postgresql_where=sa.text('NOT announced'), sqlite_where=sa.text('NOT announced'))
        batch_op.drop_index('episodes_created')

    op.drop_table('episodes')
    op.drop_table('api_keys')
    with op.batch_alter_table('adapter_versions', schema=None) as batch_op:
        batch_op.drop_index('one_active_adapter', postgresql_where=sa.text("status = 'active'"), sqlite_where=sa.text("status = 'active'"))

    op.drop_table('adapter_versions')
