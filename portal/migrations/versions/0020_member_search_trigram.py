"""Member search: trigram indexes on users' lowercased email and display name (PostgreSQL
only), so the admin list's ``%search%`` no longer scans every user. SQLite keeps its plain
scan: it has no trigram indexes, and its databases are small.

Revision ID: 0020
Revises: 0021
"""

from alembic import op
import sqlalchemy as sa


revision = '0020'
down_revision = '0021'
branch_labels = None
depends_on = None

INDEXES = (('ix_users_email_trgm', 'email'), ('ix_users_display_name_trgm', 'display_name'))


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != 'postgresql':
        return
    available = bind.execute(sa.text(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")).scalar()
    if not available:  # the contrib package is missing: search works, by a scan
        print("pg_trgm is not installed on this server: member search stays a scan")
        return
    # pg_trgm is a trusted extension (PostgreSQL 13+): the database's owner may create it.
    op.execute('CREATE EXTENSION IF NOT EXISTS pg_trgm')
    for name, column in INDEXES:
        op.execute(f'CREATE INDEX IF NOT EXISTS {name} ON users '
                   f'USING gin (lower({column}) gin_trgm_ops)')


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    for name, _column in INDEXES:
        op.execute(f'DROP INDEX IF EXISTS {name}')
    # The extension stays: other schemas of the database may use it.
