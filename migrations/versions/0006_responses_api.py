"""OpenAI's Responses API: each episode made through `POST /v1/responses` keeps what its request asked
beyond its task (instructions, previous_response_id, metadata, text, ...) and its usage, which
`GET /v1/responses/{id}` answers with and `previous_response_id` continues from.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-14
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('episodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('responses_api', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()),
                                                                              'postgresql'), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('episodes', schema=None) as batch_op:
        batch_op.drop_column('responses_api')
