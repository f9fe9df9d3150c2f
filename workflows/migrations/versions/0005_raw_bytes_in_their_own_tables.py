"""raw bytes in their own tables

SQLite rewrites a whole record on any UPDATE: an inbound letter or a queued mail kept in the row that
changes status was copied again, blob and all, with every change. The bytes move to
`inbound_raw` and `outbox_raw`, written once.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 13:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'inbound_raw',
        sa.Column('inbound_id', sa.Integer(), sa.ForeignKey('inbound.id', ondelete='CASCADE'), primary_key=True),
        sa.Column('raw', sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        'outbox_raw',
        sa.Column('outbox_id', sa.Integer(), sa.ForeignKey('outbox.id', ondelete='CASCADE'), primary_key=True),
        sa.Column('raw', sa.LargeBinary(), nullable=False),
    )
    op.execute("INSERT INTO inbound_raw (inbound_id, raw) SELECT id, raw FROM inbound")
    op.execute("INSERT INTO outbox_raw (outbox_id, raw) SELECT id, raw FROM outbox WHERE raw IS NOT NULL")
    with op.batch_alter_table('inbound', schema=None) as batch_op:
        batch_op.drop_column('raw')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('raw')


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('raw', sa.LargeBinary(), nullable=True))
    with op.batch_alter_table('inbound', schema=None) as batch_op:
        batch_op.add_column(sa.Column('raw', sa.LargeBinary(), nullable=True))
    op.execute("UPDATE inbound SET raw = (SELECT raw FROM inbound_raw WHERE inbound_id = inbound.id)")
    op.execute("UPDATE outbox SET raw = (SELECT raw FROM outbox_raw WHERE outbox_id = outbox.id)")
    op.drop_table('outbox_raw')
    op.drop_table('inbound_raw')
