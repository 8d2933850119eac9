"""Erasure: deletion requests with a grace period on users, and the audit chain's second
format, in which personal fields are covered through a salted digest so that erasing a
person does not break the chain.

Existing events are re-chained in the new format. The old chain is checked first and its
head (sequence, hash, and the first problem found, if any) is kept in ``audit_head`` so that
copies exported before the upgrade (SIEM, audit exports) can still be reconciled. The
downgrade re-chains in the first format over the values as they are then.

Revision ID: 0016
Revises: 0019
Create Date: 2026-12-05 04:40:00
"""

import hashlib
import json
import os
from datetime import UTC

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0019'
branch_labels = None
depends_on = None

GENESIS = "0" * 64
V1_FIELDS = ("seq", "occurred_at", "actor_id", "actor", "organization_id", "action",
             "target", "outcome", "reason", "ip", "user_agent", "request_id", "details")
V2_FIELDS = ("seq", "occurred_at", "actor_id", "organization_id", "action", "outcome",
             "request_id", "personal_digest")
PERSONAL = ("actor", "target", "reason", "ip", "user_agent", "details")

events = sa.table(
    "audit_events", sa.column("id", sa.Integer), sa.column("seq", sa.BigInteger),
    sa.column("occurred_at", sa.DateTime(timezone=True)), sa.column("actor_id", sa.Integer),
    *[sa.column(name, sa.String) for name in ("actor", "action", "target", "outcome",
                                                "reason", "ip", "user_agent", "request_id",
                                                "prev_hash", "hash", "personal_digest",
                                                "personal_salt")],
    sa.column("organization_id", sa.Integer), sa.column("details", sa.JSON))
head = sa.table("audit_head", sa.column("id", sa.Integer), sa.column("last_seq", sa.BigInteger),
                sa.column("last_hash", sa.String), sa.column("legacy_seq", sa.BigInteger),
                sa.column("legacy_hash", sa.String), sa.column("legacy_problem", sa.String))


def _dump(data) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def _fields(row, names) -> dict:
    data = {name: row[name] for name in names}
    when = row["occurred_at"]
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    data["occurred_at"] = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return data


def _hash(prev: str, row, names) -> str:
    return hashlib.sha256((prev + _dump(_fields(row, names))).encode()).hexdigest()


def _rows(bind):
    last = 0
    while True:
        batch = bind.execute(sa.select(events).where(events.c.seq > last)
                             .order_by(events.c.seq).limit(1000)).mappings().all()
        if not batch:
            return
        yield from batch
        last = batch[-1]["seq"]


def upgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('erase_after', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('erased_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_users_erase_after'), ['erase_after'],
                              unique=False)
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('personal_digest', sa.String(length=64), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('personal_salt', sa.String(length=32), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('pseudonymized_at', sa.DateTime(timezone=True),
                                      nullable=True))
    with op.batch_alter_table('audit_head', schema=None) as batch_op:
        batch_op.add_column(sa.Column('legacy_seq', sa.BigInteger(), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('legacy_hash', sa.String(length=64), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('legacy_problem', sa.String(length=200), nullable=False,
                                      server_default=''))
    bind = op.get_bind()
    old_prev, new_prev, problem, expected, last_seq = GENESIS, GENESIS, "", 1, 0
    for row in _rows(bind):
        if not problem:
            if row["seq"] != expected or row["prev_hash"] != old_prev:
                problem = f"event {row['seq']} does not follow event {expected - 1}"
            elif _hash(old_prev, row, V1_FIELDS) != row["hash"]:
                problem = f"event {row['seq']} was altered"
        old_prev, expected, last_seq = row["hash"], row["seq"] + 1, row["seq"]
        salt = os.urandom(16).hex()
        personal = _dump({name: row[name] for name in PERSONAL})
        digest = hashlib.sha256((salt + personal).encode()).hexdigest()
        values = dict(row) | {"personal_digest": digest}
        new_hash = _hash(new_prev, values, V2_FIELDS)
        bind.execute(sa.update(events).where(events.c.id == row["id"]).values(
            personal_salt=salt, personal_digest=digest, prev_hash=new_prev, hash=new_hash))
        new_prev = new_hash
    if last_seq:
        bind.execute(sa.update(head).where(head.c.id == 1).values(
            last_hash=new_prev, legacy_seq=last_seq, legacy_hash=old_prev,
            legacy_problem=problem[:200]))


def downgrade() -> None:
    bind = op.get_bind()
    prev, last_seq = GENESIS, 0
    for row in _rows(bind):
        new_hash = _hash(prev, row, V1_FIELDS)
        bind.execute(sa.update(events).where(events.c.id == row["id"]).values(
            prev_hash=prev, hash=new_hash))
        prev, last_seq = new_hash, row["seq"]
    if last_seq:
        bind.execute(sa.update(head).where(head.c.id == 1).values(last_hash=prev))
    with op.batch_alter_table('audit_head', schema=None) as batch_op:
        batch_op.drop_column('legacy_problem')
        batch_op.drop_column('legacy_hash')
        batch_op.drop_column('legacy_seq')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_column('pseudonymized_at')
        batch_op.drop_column('personal_salt')
        batch_op.drop_column('personal_digest')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_users_erase_after'))
        batch_op.drop_column('erased_at')
        batch_op.drop_column('erase_after')
