"""Live canaries: a candidate serving a share of its scenario's traffic until a sequential test
decides; each episode records which side of a running canary served it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RUNNING = sa.text("state = 'running'")


def upgrade() -> None:
    op.create_table('canaries',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('scenario', sa.String(length=40), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('baseline', sa.String(length=64), nullable=True),
    sa.Column('fraction', sa.Float(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decided_by', sa.String(length=64), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('numbers', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.ForeignKeyConstraint(['scenario'], ['scenarios.name'], ),
    sa.ForeignKeyConstraint(['version'], ['adapter_versions.name'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('canaries', schema=None) as batch_op:
        batch_op.create_index('one_running_canary', ['scenario'], unique=True, postgresql_where=_RUNNING,
                              sqlite_where=_RUNNING)
    with op.batch_alter_table('episodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('canary', sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('episodes', schema=None) as batch_op:
        batch_op.drop_column('canary')
    with op.batch_alter_table('canaries', schema=None) as batch_op:
        batch_op.drop_index('one_running_canary', postgresql_where=_RUNNING, sqlite_where=_RUNNING)
    op.drop_table('canaries')
    op.execute("UPDATE adapter_versions SET status = 'rejected' WHERE status = 'canary'")
