"""label index with status

The duplicate-label check of every new request (`agency, subdomain, status, requester`) was planned by
SQLite on ix_requests_open (agency, status): both indexes matched two equality columns, and without
statistics the planner took the first, so each new request walked every open request (EXPLAIN QUERY
PLAN). An index on (agency, subdomain, status) matches three and is chosen; it supersedes
ix_requests_subdomain.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21 14:00:00
"""

from __future__ import annotations

from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.create_index('ix_requests_label', ['agency', 'subdomain', 'status'], unique=False)
        batch_op.drop_index('ix_requests_subdomain')


def downgrade() -> None:
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.create_index('ix_requests_subdomain', ['agency', 'subdomain'], unique=False)
        batch_op.drop_index('ix_requests_label')
