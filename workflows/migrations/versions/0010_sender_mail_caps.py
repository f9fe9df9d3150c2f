"""sender mail caps

Counters of the mail sent per clock hour because of messages from unverified senders: per sender
address, per sender domain and for the whole agency (`[workflow.unverified_mail]`).

Revision ID: 0010_sender_mail_caps
Revises: 0009_reminder_token
Create Date: 2026-12-06 07:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010_sender_mail_caps'
down_revision = '0009_reminder_token'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'sender_mail_counts',
        sa.Column('agency', sa.String(length=32), nullable=False),
        sa.Column('scope', sa.String(length=8), nullable=False),
        sa.Column('key', sa.String(length=320), nullable=False),
        sa.Column('hour', sa.String(length=13), nullable=False),
        sa.Column('count', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('agency', 'scope', 'key', 'hour'),
    )


def downgrade() -> None:
    op.drop_table('sender_mail_counts')
