"""outbox after

A mail may wait for another one to be sent first: the PIC's credential mail leaves only after the reply
letter went out (`outbox.after_id`, status "waiting"). Indexed: each recorded send looks for its waiters.

Revision ID: 0007_outbox_after
Revises: 0006
Create Date: 2026-12-06 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007_outbox_after'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('outbox', sa.Column('after_id', sa.Integer(), nullable=True))
    op.create_index('ix_outbox_after', 'outbox', ['after_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_outbox_after', table_name='outbox')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('after_id')
