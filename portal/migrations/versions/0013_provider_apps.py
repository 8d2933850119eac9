"""OpenID Provider apps: secret rotation with a grace period, initiate-login URI for the
portal's tiles, ID token algorithm, pairwise subjects, front-channel logout.

Revision ID: 0013
Revises: 0012
"""

from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

COLUMNS = [
    ('previous_secret_hash', sa.String(length=64), None, True),
    ('previous_secret_expires_at', sa.DateTime(timezone=True), None, True),
    ('initiate_login_uri', sa.String(length=500), '', False),
    ('id_token_signed_response_alg', sa.String(length=16), 'RS256', False),
    ('subject_type', sa.String(length=16), 'public', False),
    ('sector_identifier', sa.String(length=255), '', False),
    ('pairwise_salt', sa.String(length=64), '', False),
    ('frontchannel_logout_uri', sa.String(length=500), '', False),
]


def upgrade() -> None:
    with op.batch_alter_table('oauth_apps', schema=None) as batch_op:
        for name, type_, default, nullable in COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=nullable,
                                          server_default=default))
    # The server defaults only fill existing rows; the model supplies values from now on.
    with op.batch_alter_table('oauth_apps', schema=None) as batch_op:
        for name, type_, default, _nullable in COLUMNS:
            if default is not None:
                batch_op.alter_column(name, existing_type=type_, server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('oauth_apps', schema=None) as batch_op:
        for name, *_ in reversed(COLUMNS):
            batch_op.drop_column(name)
