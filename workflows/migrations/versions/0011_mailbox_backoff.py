"""mailbox backoff

When a mailbox's login is refused or throttled, intake and the IDLE watcher wait out one backoff (a
minute, doubling to half an hour). Its end is stored so that `status` and the digest can say until when,
and a restarted daemon keeps to it instead of trying again at once.

Revision ID: 0011_mailbox_backoff
Revises: 0010_sender_mail_caps
Create Date: 2026-12-06 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011_mailbox_backoff'
down_revision = '0010_sender_mail_caps'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('mailbox_state', schema=None) as batch_op:
        batch_op.add_column(sa.Column('backoff_until', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('mailbox_state', schema=None) as batch_op:
        batch_op.drop_column('backoff_until')
