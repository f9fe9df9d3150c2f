"""reminder token

A reminder carries one-tap answer links like the step mail it reminds of. A mailto: link opens a new mail
with no In-Reply-To, so what names the step is the token in its address; the step mail's token is stored
only as its hash, so each reminder is given a token of its own. Both are accepted while the step is open.

Revision ID: 0009_reminder_token
Revises: 0008_letter_register
Create Date: 2026-12-06 08:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009_reminder_token'
down_revision = '0008_letter_register'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('steps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reminder_token_hash', sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint('uq_steps_reminder_token_hash', ['reminder_token_hash'])


def downgrade() -> None:
    with op.batch_alter_table('steps', schema=None) as batch_op:
        batch_op.drop_constraint('uq_steps_reminder_token_hash', type_='unique')
        batch_op.drop_column('reminder_token_hash')
