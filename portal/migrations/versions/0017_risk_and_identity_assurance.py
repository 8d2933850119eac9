"""Risk engine tuning and identity assurance: how often a known signal was seen (the sign-in
hour histogram), per-organization risk thresholds, indexes for the failure counts read at
every sign-in, and how each user's identity was proven.

Revision ID: 0017
Revises: 0018
Create Date: 2026-12-05 04:45:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0017'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index('ix_audit_events_target_failures', ['target', 'occurred_at'], unique=False, sqlite_where=sa.text("outcome = 'failure'"), postgresql_where=sa.text("outcome = 'failure'"))
        batch_op.create_index('ix_audit_events_ip_failures', ['ip', 'occurred_at'], unique=False, sqlite_where=sa.text("outcome = 'failure'"), postgresql_where=sa.text("outcome = 'failure'"))
    with op.batch_alter_table('known_signals', schema=None) as batch_op:
        batch_op.add_column(sa.Column('hits', sa.Integer(), server_default='1', nullable=False))
    with op.batch_alter_table('organizations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('risk_step_up_at', sa.SmallInteger(), nullable=True))
        batch_op.add_column(sa.Column('risk_deny_at', sa.SmallInteger(), nullable=True))
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('identity_level', sa.SmallInteger(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('identity_method', sa.String(length=16), server_default='', nullable=False))
        batch_op.add_column(sa.Column('identity_verified_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('identity_verified_at')
        batch_op.drop_column('identity_method')
        batch_op.drop_column('identity_level')
    with op.batch_alter_table('organizations', schema=None) as batch_op:
        batch_op.drop_column('risk_deny_at')
        batch_op.drop_column('risk_step_up_at')
    with op.batch_alter_table('known_signals', schema=None) as batch_op:
        batch_op.drop_column('hits')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_events_ip_failures')
        batch_op.drop_index('ix_audit_events_target_failures')
