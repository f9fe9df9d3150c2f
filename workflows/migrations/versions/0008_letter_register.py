"""letter register

The agency's register of outgoing letters (agenda surat keluar): every letter, rejection and incomplete-form
letters included, takes its number from here in the transaction that records it, so a year's numbers have no
gaps; the row keeps the hashes a verification page needs (the QR code in the signature names `doc_id`).

Revision ID: 0008_letter_register
Revises: 0007_outbox_after
Create Date: 2026-12-06 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008_letter_register'
down_revision = '0007_outbox_after'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'letters',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('agency', sa.String(length=32), nullable=False),
        sa.Column('year', sa.Integer(), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('number', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('request_id', sa.Integer(), nullable=True),
        sa.Column('doc_id', sa.String(length=32), nullable=False),
        sa.Column('hal', sa.String(length=255), nullable=True),
        sa.Column('addressee', sa.String(length=255), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('issued_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('content_sha256', sa.String(length=64), nullable=True),
        sa.Column('pdf_sha256', sa.String(length=64), nullable=True),
        sa.Column('signed', sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(['request_id'], ['requests.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('agency', 'year', 'seq'),
        sa.UniqueConstraint('doc_id'),
    )
    with op.batch_alter_table('letters', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_letters_request_id'), ['request_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('letters', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_letters_request_id'))
    op.drop_table('letters')
