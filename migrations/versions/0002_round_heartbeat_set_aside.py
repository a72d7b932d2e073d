"""Training rounds have an owner and a heartbeat; episodes a round could not use are set aside.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('training_rounds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('owner', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('stale_after_s', sa.Float(), nullable=True))

    op.create_table('set_aside_episodes',
    sa.Column('episode_id', sa.String(length=40), nullable=False),
    sa.Column('round_id', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['episode_id'], ['episodes.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['round_id'], ['training_rounds.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('episode_id')
    )


def downgrade() -> None:
    op.drop_table('set_aside_episodes')
    with op.batch_alter_table('training_rounds', schema=None) as batch_op:
        batch_op.drop_column('stale_after_s')
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('owner')
