"""OpenID Provider apps: sector identifier URI for pairwise subjects, access token
algorithm (RS256 or ES256).

Revision ID: 0015
Revises: 0011
"""

from alembic import op
import sqlalchemy as sa


revision = '0015'
down_revision = '0011'
branch_labels = None
depends_on = None

COLUMNS = [
    ('sector_identifier_uri', sa.String(length=500), ''),
    ('access_token_signed_response_alg', sa.String(length=16), 'RS256'),
]


def upgrade() -> None:
    with op.batch_alter_table('oauth_apps', schema=None) as batch_op:
        for name, type_, default in COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=False, server_default=default))
    # The server defaults only fill existing rows; the model supplies values from now on.
    with op.batch_alter_table('oauth_apps', schema=None) as batch_op:
        for name, type_, _default in COLUMNS:
            batch_op.alter_column(name, existing_type=type_, server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('oauth_apps', schema=None) as batch_op:
        for name, *_ in reversed(COLUMNS):
            batch_op.drop_column(name)
