"""Verdicts are scores: each attempt's score in [0, 1], the client's feedback score, model-judge cost;
each episode's first and latest scores (what the stats' mean scores read).

Existing rows are given the score their pass/fail verdict means (1.0 or 0.0; none where unjudged).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _score_of(verdict: str) -> str:
    return f"CASE WHEN {verdict} THEN 1.0 WHEN NOT {verdict} THEN 0.0 END"


def upgrade() -> None:
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('score', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('judge_calls', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('judge_prompt_tokens', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('judge_completion_tokens', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('feedback_score', sa.Float(), nullable=True))
    with op.batch_alter_table('episodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('first_score', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('outcome_score', sa.Float(), nullable=True))
    op.execute(f"UPDATE attempts SET score = {_score_of('success')}, "
               f"feedback_score = {_score_of('feedback_success')}")
    op.execute(f"UPDATE episodes SET first_score = {_score_of('first_success')}, "
               f"outcome_score = {_score_of('outcome')}")


def downgrade() -> None:
    with op.batch_alter_table('episodes', schema=None) as batch_op:
        batch_op.drop_column('outcome_score')
        batch_op.drop_column('first_score')
    with op.batch_alter_table('attempts', schema=None) as batch_op:
        batch_op.drop_column('feedback_score')
        batch_op.drop_column('judge_completion_tokens')
        batch_op.drop_column('judge_prompt_tokens')
        batch_op.drop_column('judge_calls')
        batch_op.drop_column('score')
