"""OpenID Provider: pushed authorization requests (RFC 9126), and the redirect URIs the
periodic sector identifier check blocked.

Revision ID: 0019
Revises: 0020
"""

from alembic import op
import sqlalchemy as sa


revision = '0019'
down_revision = '0020'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('oauth_pushed_requests',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('handle_hash', sa.String(length=64), nullable=False),
    sa.Column('app_id', sa.Integer(), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['app_id'], ['oauth_apps.id'], name=op.f('fk_oauth_pushed_requests_app_id_oauth_apps'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oauth_pushed_requests')),
    sa.UniqueConstraint('handle_hash', name=op.f('uq_oauth_pushed_requests_handle_hash'))
    )
    with op.batch_alter_table('oauth_pushed_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_oauth_pushed_requests_app_id'), ['app_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_oauth_pushed_requests_expires_at'), ['expires_at'], unique=False)

    with op.batch_alter_table('oauth_apps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('blocked_redirect_uris', sa.JSON(), nullable=False,
                                      server_default='[]'))
        batch_op.add_column(sa.Column('sector_checked_at', sa.DateTime(timezone=True),
                                      nullable=True))
    # The server default only fills existing rows; the model supplies values from now on.
    with op.batch_alter_table('oauth_apps', schema=None) as batch_op:
        batch_op.alter_column('blocked_redirect_uris', existing_type=sa.JSON(),
                              server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('oauth_apps', schema=None) as batch_op:
        batch_op.drop_column('sector_checked_at')
        batch_op.drop_column('blocked_redirect_uris')
    with op.batch_alter_table('oauth_pushed_requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_oauth_pushed_requests_expires_at'))
        batch_op.drop_index(batch_op.f('ix_oauth_pushed_requests_app_id'))
    op.drop_table('oauth_pushed_requests')
