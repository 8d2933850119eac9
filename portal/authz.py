"""Connects the policy engine to Trellis's database: grants from ``role_grants`` (and
``member`` for every active membership), platform roles from operator accounts,
organization kinds, uploaded organization policies (``org_policies``), and a version per
organization that changes with every grant, revocation, membership, operator, kind or policy
change, so every worker notices within the engine's version check interval.

``watch_changes`` is the fast path on top: every committed transaction that touched role
grants, memberships, organizations, operator flags or uploaded policies invalidates those
organizations in this process at once, and — with Redis — in every other worker.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session
from sqlalchemy.sql import visitors

from policies import PolicyEngine, Sources
from policies.engine import PLATFORM
from portal.db import Database
from portal.models import (
    CustomRole,
    Membership,
    MembershipStatus,
    Organization,
    OrgPolicy,
    RoleGrant,
    User,
)

log = logging.getLogger("trellis.policy")

# Every active member holds "member"; other roles come from explicit grants.
GRANTS = sa.union(
    sa.select(RoleGrant.user_id, RoleGrant.role).join(Organization)
    .where(Organization.slug == sa.bindparam("slug")),
    sa.select(Membership.user_id, sa.literal("member")).join(Organization)
    .where(Organization.slug == sa.bindparam("slug"),
           Membership.status == MembershipStatus.ACTIVE))
VERSION = sa.select(
    sa.select(sa.func.count(RoleGrant.id)).join(Organization)
    .where(Organization.slug == sa.bindparam("slug")).scalar_subquery(),
    sa.select(sa.func.coalesce(sa.func.max(RoleGrant.id), 0)).join(Organization)
    .where(Organization.slug == sa.bindparam("slug")).scalar_subquery(),
    sa.select(sa.func.coalesce(sa.func.max(Membership.updated_at), None)).join(Organization)
    .where(Organization.slug == sa.bindparam("slug")).scalar_subquery(),
    sa.select(sa.func.count(Membership.id)).join(Organization)
    .where(Organization.slug == sa.bindparam("slug")).scalar_subquery(),
    sa.select(sa.func.coalesce(sa.func.sum(User.id), 0)).where(User.is_operator.is_(True))
    .scalar_subquery(),
    sa.select(Organization.kind).where(Organization.slug == sa.bindparam("slug"))
    .scalar_subquery(),
    sa.select(OrgPolicy.sha256).join(Organization)
    .where(Organization.slug == sa.bindparam("slug")).scalar_subquery(),
    sa.select(sa.func.count(CustomRole.id)).join(Organization)
    .where(Organization.slug == sa.bindparam("slug")).scalar_subquery(),
    sa.select(sa.func.max(CustomRole.updated_at)).join(Organization)
    .where(Organization.slug == sa.bindparam("slug")).scalar_subquery())
CUSTOM_ROLES = sa.select(CustomRole.name, CustomRole.permissions).join(Organization).where(
    Organization.slug == sa.bindparam("slug")).order_by(CustomRole.name)
ORG_POLICY = sa.select(OrgPolicy.text).join(Organization).where(
    Organization.slug == sa.bindparam("slug"))
KIND = sa.select(Organization.kind).where(Organization.slug == sa.bindparam("slug"))
OPERATORS = sa.select(User.id).where(User.is_operator.is_(True))


def database_sources(db: Database) -> Sources:
    def grants(slug: str) -> list[tuple[str, str]]:
        with db.engine.connect() as connection:
            return [(str(user), role) for user, role in connection.execute(GRANTS,
                                                                           {"slug": slug})]

    def platform_roles() -> list[tuple[str, str]]:
        with db.engine.connect() as connection:
            return [(str(user), "platform_operator") for (user,) in
                    connection.execute(OPERATORS)]

    def org_kind(slug: str) -> str | None:
        if slug == PLATFORM:
            return "platform"  # platform rules only, platform roles only
        with db.engine.connect() as connection:
            kind = connection.execute(KIND, {"slug": slug}).scalar()
        return kind.value if kind is not None else None

    def version(slug: str) -> int:
        """The same number in every worker and after restarts, for the same data."""
        with db.engine.connect() as connection:
            row = connection.execute(VERSION, {"slug": slug}).one()
        digest = hashlib.sha256("|".join(str(value) for value in row).encode()).digest()
        return int.from_bytes(digest[:6], "big")

    def org_policy(slug: str) -> str | None:
        if slug == PLATFORM:
            return None
        with db.engine.connect() as connection:
            return connection.execute(ORG_POLICY, {"slug": slug}).scalar()

    def load(slug: str):
        """Everything an organization's enforcer is built from, over one connection."""
        if slug == PLATFORM:
            return "platform", [], platform_roles(), None
        with db.engine.connect() as connection:
            kind = connection.execute(KIND, {"slug": slug}).scalar()
            if kind is None:
                return None, [], [], None
            grants = [(str(user), role) for user, role in
                      connection.execute(GRANTS, {"slug": slug})]
            operators = [(str(user), "platform_operator") for (user,) in
                         connection.execute(OPERATORS)]
            text = connection.execute(ORG_POLICY, {"slug": slug}).scalar()
        return kind.value, grants, operators, text

    def custom_rules(slug: str) -> list[list[str]]:
        """Each permission of each custom role, as an allow in this organization only: the
        template rule's condition it was composed from, and the owner's refinements (the
        engine checks the first and composes the second)."""
        if slug == PLATFORM:
            return []
        with db.engine.connect() as connection:
            rows = connection.execute(CUSTOM_ROLES, {"slug": slug}).all()
        result = []
        for name, permissions in rows:
            for entry in permissions:
                if len(entry) > 2:  # [object, action, {"when": ..., refinements}]
                    refinements = {k: v for k, v in entry[2].items() if k != "when"}
                    result.append(["p", name, slug, entry[0], entry[1],
                                   entry[2].get("when", "True"), "allow",
                                   json.dumps(refinements)])
                else:
                    result.append(["p", name, slug, entry[0], entry[1], "True", "allow"])
        return result

    return Sources(grants=grants, platform_roles=platform_roles, org_kind=org_kind,
                   version=version, org_policy=org_policy, load=load,
                   custom_rules=custom_rules)


def create_engine(folder: Path, db: Database, redis_url: str = "",
                  channel: str | None = None) -> PolicyEngine:
    """The engine of one app (or CLI run), kept in step with changes committed through
    ``db``; with ``redis_url``, changes reach the other workers over Redis pub/sub on
    ``channel`` (default: one per Redis database number, since pub/sub ignores databases)."""
    engine = PolicyEngine(folder, database_sources(db), redis_url=redis_url or None,
                          redis_channel=channel or (redis_channel(redis_url)
                                                    if redis_url else None))
    watch_changes(db, engine)
    return engine


def redis_channel(redis_url: str) -> str:
    """``trellis:policy:invalidate:<database number>``: deployments sharing one Redis server
    on different database numbers do not hear each other."""
    from urllib.parse import urlsplit

    from policies.notify import CHANNEL
    path = urlsplit(redis_url).path.strip("/") or "0"
    return f"{CHANNEL}:{path}"


def explanation_dict(explanation) -> dict:
    """An ``Explanation`` as plain data, for the API, the CLI and the simulation page."""
    decision = explanation.decision
    return {"allowed": decision.allowed,
            "matched_rule": list(decision.rule) if decision.rule else None,
            "rule_source": explanation.where or None,
            "reason": decision.reason or None, "policy_version": decision.version,
            "roles": list(explanation.roles), "platform_roles": list(explanation.platform_roles),
            "chain": list(explanation.chain),
            "chains": [list(path) for path in explanation.chains],
            "matched_rules": [{"rule": list(m.rule), "effect": m.rule[5],
                               "source": m.where or None, "chain": list(m.chain),
                               "decided": m.decided} for m in explanation.matched]}


def describe(explanation) -> list[str]:
    """An explanation as lines a person reads: the decision, the deciding rule with where it
    is written and how the subject holds its role, then the other rules that matched."""
    decision = explanation.decision
    lines = [f"{'ALLOW' if decision.allowed else 'DENY'}"
             + (f" ({decision.reason})" if decision.reason else "")]
    if decision.rule:
        lines.append(f"  decided by: {', '.join(decision.rule)}"
                     + (f"  [{explanation.where}]" if explanation.where else ""))
        lines.append(f"  role chain: {_chain_text(explanation.chain)}")
    for match in explanation.matched:
        if match.decided:
            continue
        note = "overridden by the deny" if not decision.allowed and \
            match.rule[5] == "allow" else "also matched"
        lines.append(f"  {note}: {', '.join(match.rule)}"
                     + (f"  [{match.where}]" if match.where else "")
                     + f"  via {_chain_text(match.chain)}")
    lines.append("  roles held: " + (", ".join(explanation.roles) or "none")
                 + (f"; platform: {', '.join(explanation.platform_roles)}"
                    if explanation.platform_roles else ""))
    for path in explanation.chains:
        lines.append(f"    {_chain_text(path)}")
    lines.append(f"  policy version: {decision.version}")
    return lines


def _chain_text(chain) -> str:
    if not chain:
        return "none"
    if tuple(chain) == ("*",):
        return "everyone (*)"
    return " -> ".join(chain)


# -- invalidation on commit ------------------------------------------------------------------

CHANGES = "trellis_policy_changes"  # session.info key: organization ids, slugs, or ALL
ALL = "*"
_BY_ORG_ID = (RoleGrant, Membership, OrgPolicy, CustomRole)
_TABLES = {model.__tablename__ for model in _BY_ORG_ID}


def watch_changes(db: Database, engine: PolicyEngine) -> None:
    """Invalidate the organizations a committed transaction of ``db`` changed."""
    sessions = db.sessions

    @event.listens_for(sessions, "after_flush")
    def collect(session: Session, _context) -> None:
        changes = session.info.setdefault(CHANGES, set())
        dirty = [item for item in session.dirty if session.is_modified(item)]
        for item in (*session.new, *dirty, *session.deleted):
            if isinstance(item, _BY_ORG_ID):
                changes.add(("id", item.organization_id))
            elif isinstance(item, Organization):
                changes.add(("slug", item.slug))
            elif isinstance(item, User) and _operator_changed(session, item):
                changes.add(ALL)  # platform roles apply in every organization

    @event.listens_for(sessions, "do_orm_execute")
    def bulk(state) -> None:
        """Bulk statements, ORM or Core (``sa.delete(RoleGrant).where(...)``, the directory
        sync's and CSV import's inserts into ``memberships``): the organizations they name
        in their WHERE clause or parameters, or every organization when they name none."""
        if not (state.is_delete or state.is_update or state.is_insert):
            return
        table = getattr(state.statement, "table", None)
        if getattr(table, "name", None) not in _TABLES:
            return
        ids = _organization_ids(state.statement, state.parameters)
        changes = state.session.info.setdefault(CHANGES, set())
        changes.update(("id", org_id) for org_id in ids) if ids else changes.add(ALL)

    @event.listens_for(sessions, "after_commit")
    def publish(session: Session) -> None:
        changes = session.info.pop(CHANGES, None)
        if changes:
            _invalidate(db, engine, changes)

    @event.listens_for(sessions, "after_transaction_end")
    def forget(session: Session, transaction) -> None:
        if transaction.parent is None:  # the whole transaction is over (rolled back too)
            session.info.pop(CHANGES, None)


def _operator_changed(session: Session, user: User) -> bool:
    """A new or removed operator, or an operator flag that flipped (ordinary users signing up
    or changing their name leave every organization's cache alone)."""
    if user in session.new or user in session.deleted:
        return bool(user.is_operator)
    history = sa.inspect(user).attrs.is_operator.history
    before = bool(history.deleted[0]) if history.deleted else bool(history.unchanged and
                                                                   history.unchanged[0])
    after = bool(history.added[0]) if history.added else before
    return before != after


def _organization_ids(statement, parameters) -> set[int]:
    """Organization ids a bulk statement pins: ``organization_id == value`` or ``IN (...)``
    in its WHERE clause, or ``organization_id`` in every row of its parameters. Empty when
    it pins none (the caller then invalidates every organization)."""
    rows = parameters if isinstance(parameters, list) else [parameters] if parameters else []
    if rows and all(isinstance(row, dict) and "organization_id" in row for row in rows):
        return {row["organization_id"] for row in rows}
    where = getattr(statement, "whereclause", None)
    if where is None:
        return set()
    for node in visitors.iterate(where):
        if not isinstance(node, sa.sql.elements.BinaryExpression) or \
                getattr(node.left, "key", None) != "organization_id" or \
                not isinstance(node.right, sa.sql.elements.BindParameter):
            continue
        value = node.right.effective_value
        if node.operator is sa.sql.operators.eq and value is not None:
            return {value}
        if node.operator is sa.sql.operators.in_op and value:
            return set(value)
    return set()


def _invalidate(db: Database, engine: PolicyEngine, changes: set) -> None:
    if ALL in changes:
        engine.invalidate()
        return
    slugs = {value for kind, value in changes if kind == "slug"}
    ids = {value for kind, value in changes if kind == "id" and value is not None}
    if ids:
        try:
            with db.engine.connect() as connection:
                slugs.update(connection.scalars(sa.select(Organization.slug).where(
                    Organization.id.in_(ids))))
        except sa.exc.SQLAlchemyError as exc:  # the version check still catches it
            log.warning("cannot name the organizations a change touched: %s", exc)
            return
    for slug in sorted(slugs):
        engine.invalidate(slug)
