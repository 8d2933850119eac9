"""A partial index over failed audit events by time: every sign-in counts the failures of
the last minutes (for its account and its client's address), which without it scanned every
recent sign-in.

Revision ID: 0021
Revises: 0014
Create Date: 2026-12-05 04:55:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0021'
down_revision = '0014'
branch_labels = None
depends_on = None

FAILURES = sa.text("outcome = 'failure'")


def upgrade() -> None:
    op.create_index('ix_audit_events_failures', 'audit_events', ['occurred_at'],
                    unique=False, sqlite_where=FAILURES, postgresql_where=FAILURES)


def downgrade() -> None:
    op.drop_index('ix_audit_events_failures', table_name='audit_events')
