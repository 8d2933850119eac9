"""Anomaly detection: the EWMA baseline of each sign-in rate, for the platform and per
organization.

Revision ID: 0018
Revises: 0016
"""

from alembic import op
import sqlalchemy as sa


revision = '0018'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('anomaly_baselines',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('scope', sa.String(length=32), nullable=False),
    sa.Column('organization_id', sa.Integer(), nullable=True),
    sa.Column('metric', sa.String(length=32), nullable=False),
    sa.Column('mean', sa.Float(), nullable=False),
    sa.Column('variance', sa.Float(), nullable=False),
    sa.Column('samples', sa.Integer(), nullable=False),
    sa.Column('window_end', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], name=op.f('fk_anomaly_baselines_organization_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_anomaly_baselines')),
    sa.UniqueConstraint('scope', 'metric', name='uq_anomaly_baselines_scope_metric')
    )
    with op.batch_alter_table('anomaly_baselines', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_anomaly_baselines_organization_id'), ['organization_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('anomaly_baselines', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_anomaly_baselines_organization_id'))
    op.drop_table('anomaly_baselines')
