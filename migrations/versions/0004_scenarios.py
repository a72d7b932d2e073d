"""Scenarios: one adapter lineage per workload. The lineage every server had so far becomes the
scenario `default`: its versions keep their names (`r3-vN`), and its episodes, rounds and audit
entries are the default scenario's.

Version numbers count per scenario, and "at most one active version" holds per scenario. Episodes
keep the client's task family (`metadata.category`) for the gate's retained set; an API key may
name the scenario its requests serve by default.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
_ACTIVE = sa.text("status = 'active'")
_UNTRAINED = {"postgresql_where": sa.text('replayable AND first_success = false AND trained_in IS NULL'),
              "sqlite_where": sa.text('replayable AND first_success = 0 AND trained_in IS NULL')}
# 0001 left the unique constraint on `number` unnamed: reflected under this name on SQLite, where a
# batch operation rebuilds the table; Postgres named it itself.
_NAMING = {"uq": "%(table_name)s_%(column_0_name)s_key"}


def upgrade() -> None:
    op.create_table('scenarios',
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('training', _JSON, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.execute("INSERT INTO scenarios (name, description, training, created_at) "
               "VALUES ('default', '', '{}', CURRENT_TIMESTAMP)")

    with op.batch_alter_table('adapter_versions', schema=None, naming_convention=_NAMING) as batch_op:
        batch_op.add_column(sa.Column('scenario', sa.String(length=40), server_default='default', nullable=False))
        batch_op.drop_constraint('adapter_versions_number_key', type_='unique')
        batch_op.drop_index('one_active_adapter', postgresql_where=_ACTIVE, sqlite_where=_ACTIVE)
        batch_op.create_index('one_active_adapter', ['scenario'], unique=True, postgresql_where=_ACTIVE,
                              sqlite_where=_ACTIVE)
        batch_op.create_index('adapter_version_numbers', ['scenario', 'number'], unique=True)
        batch_op.create_foreign_key('adapter_versions_scenario_fkey', 'scenarios', ['scenario'], ['name'])

    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('default_scenario', sa.String(length=40), nullable=True))
        batch_op.create_foreign_key('api_keys_default_scenario_fkey', 'scenarios', ['default_scenario'], ['name'])

    with op.batch_alter_table('episodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scenario', sa.String(length=40), server_default='default', nullable=False))
        batch_op.add_column(sa.Column('category', sa.Text(), nullable=True))
        batch_op.drop_index('episodes_untrained_failures', **_UNTRAINED)
        batch_op.create_index('episodes_untrained_failures', ['scenario', 'created_at'], unique=False, **_UNTRAINED)

    with op.batch_alter_table('training_rounds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scenario', sa.String(length=40), server_default='default', nullable=False))

    with op.batch_alter_table('admin_actions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scenario', sa.String(length=40), nullable=True))
    op.execute("UPDATE admin_actions SET scenario = 'default' WHERE action = 'activate'")


def downgrade() -> None:
    with op.batch_alter_table('admin_actions', schema=None) as batch_op:
        batch_op.drop_column('scenario')
    with op.batch_alter_table('training_rounds', schema=None) as batch_op:
        batch_op.drop_column('scenario')
    with op.batch_alter_table('episodes', schema=None) as batch_op:
        batch_op.drop_index('episodes_untrained_failures', **_UNTRAINED)
        batch_op.create_index('episodes_untrained_failures', ['created_at'], unique=False, **_UNTRAINED)
        batch_op.drop_column('category')
        batch_op.drop_column('scenario')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_constraint('api_keys_default_scenario_fkey', type_='foreignkey')
        batch_op.drop_column('default_scenario')
    # Only the default scenario's versions fit the schema before scenarios.
    op.execute("DELETE FROM adapter_versions WHERE scenario <> 'default'")
    with op.batch_alter_table('adapter_versions', schema=None) as batch_op:
        batch_op.drop_constraint('adapter_versions_scenario_fkey', type_='foreignkey')
        batch_op.drop_index('adapter_version_numbers')
        batch_op.drop_index('one_active_adapter', postgresql_where=_ACTIVE, sqlite_where=_ACTIVE)
        batch_op.create_index('one_active_adapter', ['status'], unique=True, postgresql_where=_ACTIVE,
                              sqlite_where=_ACTIVE)
        batch_op.drop_column('scenario')
        batch_op.create_unique_constraint('adapter_versions_number_key', ['number'])
    op.drop_table('scenarios')
