"""Policy: organizations' uploaded policy files; API key rotation with a grace period;
an index on users.is_operator (counted by every policy version check).

Revision ID: 0012
Revises: 0010
Create Date: 2026-12-05 01:25:00.781692
"""

from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_users_is_operator'), ['is_operator'], unique=False)
    op.create_table('org_policies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('organization_id', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('uploaded_by', sa.String(length=320), nullable=False),
    sa.Column('uploaded_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['organization_id'], ['organizations.id'], name=op.f('fk_org_policies_organization_id_organizations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_org_policies')),
    sa.UniqueConstraint('organization_id', name=op.f('uq_org_policies_organization_id'))
    )
    with op.batch_alter_table('api_clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('previous_key_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('previous_key_expires_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('rotated_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_api_clients_previous_key_hash'), ['previous_key_hash'])



def downgrade() -> None:
    with op.batch_alter_table('api_clients', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_api_clients_previous_key_hash'), type_='unique')
        batch_op.drop_column('rotated_at')
        batch_op.drop_column('previous_key_expires_at')
        batch_op.drop_column('previous_key_hash')

    op.drop_table('org_policies')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_users_is_operator'))
