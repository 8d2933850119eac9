"""Directory sync: make an organization's members follow its LDAP or Active Directory.

One run reads every group once (to know who is in which group, nested groups included), then
streams the users page by page. Each page is one transaction: it creates the users that are
new, updates names, emails and roles that changed, and suspends users the directory marks as
disabled, with one audit event per change. A page either lands whole or not at all. After the
last page, users linked to this connection whom the directory no longer lists are suspended
(never deleted) and their sessions end; this step runs only when every page was read, so a
run that failed half-way never suspends anyone it simply did not reach. Running again picks
up where a failed run stopped: pages already done come out unchanged.

What a run never touches: local passwords, roles granted by hand or by another connection,
users linked to other connections, memberships in other organizations, and users an admin
suspended (only users the sync itself suspended are resumed when they come back).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from federation import provisioning
from federation.errors import FederationError
from federation.ldap import (
    DirectoryEntry,
    LdapAdapter,
    LdapSettings,
    close_quietly,
    decode_raw,
    map_entry,
)
from portal import audit
from portal.crypto import SecretBox
from portal.db import Database, utcnow
from portal.errors import TrellisError, ValidationError
from portal.models import (
    AuthSession,
    Connection,
    Domain,
    FederatedIdentity,
    Membership,
    MembershipSource,
    MembershipStatus,
    Protocol,
    RoleGrant,
    User,
    UserStatus,
)
from portal.services import locks

MAX_ERROR_ROWS = 200

USERS = User.__table__
LINKS = FederatedIdentity.__table__
MEMBERS = Membership.__table__
GRANTS = RoleGrant.__table__


@dataclass
class SyncSummary:
    entries: int = 0
    created: int = 0
    updated: int = 0
    suspended: int = 0
    unchanged: int = 0
    errors: int = 0
    error_rows: list[tuple[str, str]] = field(default_factory=list)
    batches: int = 0
    complete: bool = False
    failure: str = ""
    dry_run: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"entries": self.entries, "created": self.created, "updated": self.updated,
                "suspended": self.suspended, "unchanged": self.unchanged,
                "errors": self.errors, "batches": self.batches, "complete": self.complete,
                "failure": self.failure, "dry_run": self.dry_run,
                "seconds": round(self.seconds, 2)}

    def error(self, dn: str, reason: str) -> None:
        self.errors += 1
        if len(self.error_rows) < MAX_ERROR_ROWS:
            self.error_rows.append((dn, reason))


class SyncFailed(TrellisError):
    status = 503
    code = "sync_failed"


def _dn(dn: str) -> str:
    """Cheap DN normalization: the same server spells the same DN the same way, up to case
    and spaces after separators."""
    return ",".join(part.strip() for part in dn.lower().split(","))


class GroupIndex:
    """Which groups each user is in (nested groups followed), built from one read of every
    group. Holds group names and one small set per user, never the user entries."""

    def __init__(self, settings: LdapSettings) -> None:
        self.nested = settings.nested_groups != "none"
        self.names: dict[str, str] = {}
        self.members: dict[str, list[str]] = {}
        self.user_groups: dict[str, frozenset[str]] = {}
        self.parents: dict[str, set[str]] = {}
        self._closure: dict[str, frozenset[str]] = {}
        self._named: dict[frozenset[str], tuple[str, ...]] = {}
        self.name_attribute = settings.group_name_attribute
        self.member_attribute = settings.group_member_attribute

    def add_page(self, page: list[tuple[str, dict[str, list[bytes]]]]) -> None:
        for dn, raw in page:
            key = _dn(dn)
            values = decode_raw(raw)
            name = next((v[0] for k, v in values.items()
                         if k.lower() == self.name_attribute.lower() and v), "")
            self.names[key] = name
            self.members[key] = [_dn(m) for k, v in values.items()
                                 if k.lower() == self.member_attribute.lower() for m in v]

    def finish(self) -> None:
        direct: dict[str, set[str]] = {}
        for group, members in self.members.items():
            for member in members:
                if member in self.names:
                    self.parents.setdefault(member, set()).add(group)
                else:
                    direct.setdefault(member, set()).add(group)
        self.members.clear()
        shared: dict[frozenset[str], frozenset[str]] = {}  # users mostly share a few group sets
        self.user_groups = {user: shared.setdefault(frozenset(groups), frozenset(groups))
                            for user, groups in direct.items()}

    def _ancestors(self, group: str) -> frozenset[str]:
        if group in self._closure:
            return self._closure[group]
        seen, stack = {group}, [group]
        while stack:
            for parent in self.parents.get(stack.pop(), ()):
                if parent not in seen:  # cycles end here
                    seen.add(parent)
                    stack.append(parent)
        self._closure[group] = frozenset(seen)
        return self._closure[group]

    def groups_of(self, dn: str) -> tuple[str, ...]:
        direct = self.user_groups.get(_dn(dn), frozenset())
        if direct not in self._named:
            groups: set[str] = set()
            for group in direct:
                groups |= self._ancestors(group) if self.nested else {group}
            self._named[direct] = tuple(sorted({self.names[g] for g in groups} - {""}))
        return self._named[direct]


@dataclass
class _Context:
    connection: Connection
    settings: LdapSettings
    org_id: int
    source: str
    verified_domains: set[str]
    audit_ctx: audit.Context
    dry_run: bool
    summary: SyncSummary
    seen: set[str] = field(default_factory=set)
    emails_taken: set[str] = field(default_factory=set)  # this page's (a dry run: all)


def run(db: Database, ctx: audit.Context, adapter: LdapAdapter, box: SecretBox,
        connection_id: int, *, dry_run: bool = False,
        progress: Callable[[SyncSummary], None] | None = None) -> SyncSummary:
    """One sync run. Returns its summary; a run the directory broke off is recorded as
    failed (the pages already done stay done) and raises ``SyncFailed``. A run that would
    write while another one of the same connection is writing raises ``locks.Busy``
    (a scheduled run can outlast its interval); dry runs write nothing and need no lock."""
    if dry_run:
        return _run(db, ctx, adapter, box, connection_id, dry_run, progress)
    with locks.exclusive(db, f"ldap-sync:{connection_id}",
                         f"A sync of connection {connection_id} is already running; this "
                         "one did not start. Wait for it to finish."):
        return _run(db, ctx, adapter, box, connection_id, dry_run, progress)


def _run(db: Database, ctx: audit.Context, adapter: LdapAdapter, box: SecretBox,
         connection_id: int, dry_run: bool,
         progress: Callable[[SyncSummary], None] | None) -> SyncSummary:
    started = time.monotonic()
    summary = SyncSummary(dry_run=dry_run)
    with db.sessions() as session:
        connection = session.get(Connection, connection_id)
        if connection is None or connection.protocol != Protocol.LDAP:
            raise ValidationError(f"Connection {connection_id} is not an LDAP connection.",
                                  code="usage")
        session.expunge(connection)
        from portal.services import connections
        settings = connections.ldap_settings(connection, box)
        domains = set(session.scalars(sa.select(Domain.name).where(
            Domain.organization_id == connection.organization_id,
            Domain.verified.is_(True))))
    run_ctx = _Context(connection, settings, connection.organization_id,
                       provisioning.role_source(connection), domains, ctx, dry_run, summary)
    try:
        service = adapter.service_connection(settings)
        try:
            index = GroupIndex(settings)
            for page in adapter.iter_groups(service, settings):
                index.add_page(page)
            index.finish()
            for page in adapter.iter_users(service, settings):
                _sync_page(db, run_ctx, index, page)
                summary.batches += 1
                if progress:
                    progress(summary)
        finally:
            close_quietly(service)
        _suspend_missing(db, run_ctx)
        summary.complete = True
    except FederationError as error:
        summary.failure = f"{error.code}: {error.detail or error.safe_message}"
    except Exception as error:  # recorded, then re-raised for the caller's error handling
        summary.failure = f"{type(error).__name__}: {str(error)[:200]}"
        _record_run(db, run_ctx, started)
        raise
    _record_run(db, run_ctx, started)
    if not summary.complete:
        raise SyncFailed(f"The sync stopped: {summary.failure}. Pages already done were "
                         "saved; run it again to go on.")
    return summary


def _record_run(db: Database, run_ctx: _Context, started: float) -> None:
    summary = run_ctx.summary
    summary.seconds = time.monotonic() - started
    with db.transaction() as tx:
        audit.record(tx, run_ctx.audit_ctx, "ldap.sync", target=f"connection:"
                     f"{run_ctx.connection.id}", organization_id=run_ctx.org_id,
                     outcome="success" if summary.complete else "failure",
                     reason=summary.failure[:400],
                     details={**summary.as_dict(),
                              "error_rows": [list(row) for row in summary.error_rows[:20]]})


def _sync_page(db: Database, run_ctx: _Context, index: GroupIndex,
               page: list[tuple[str, dict[str, list[bytes]]]]) -> None:
    summary, settings = run_ctx.summary, run_ctx.settings
    entries: dict[str, DirectoryEntry] = {}
    for dn, raw in page:
        summary.entries += 1
        entry = map_entry(settings, dn, decode_raw(raw), index.groups_of(dn))
        if entry.identity is None or entry.problem:
            summary.error(dn, entry.problem)
            if entry.identity is not None:
                run_ctx.seen.add(entry.identity.subject)  # known but incomplete: not gone
            continue
        subject = entry.identity.subject
        if subject in entries or subject in run_ctx.seen:
            summary.error(dn, f"the stable id {subject} appears twice")
            continue
        run_ctx.seen.add(subject)
        entries[subject] = entry
    if not entries:
        return
    with db.transaction() as tx:
        changes = _plan_page(tx, run_ctx, entries)
        if not run_ctx.dry_run:  # a dry run plans the same changes and writes none
            _write(tx, run_ctx, changes)
    if not run_ctx.dry_run:
        run_ctx.emails_taken.clear()  # written now: the next page's queries see them


@dataclass
class _Changes:
    create: list[DirectoryEntry] = field(default_factory=list)
    user_updates: list[dict[str, Any]] = field(default_factory=list)
    suspend: list[int] = field(default_factory=list)
    resume: list[int] = field(default_factory=list)
    add_memberships: list[int] = field(default_factory=list)
    grant: list[tuple[int, str]] = field(default_factory=list)
    revoke: list[tuple[int, str]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


def _plan_page(tx: Session, run_ctx: _Context, entries: dict[str, DirectoryEntry]) -> _Changes:
    org_id, source = run_ctx.org_id, run_ctx.source
    changes = _Changes()
    linked = {row.subject: row for row in tx.execute(
        sa.select(LINKS.c.subject, USERS.c.id, USERS.c.email, USERS.c.display_name,
                  USERS.c.status).join(USERS, USERS.c.id == LINKS.c.user_id)
        .where(LINKS.c.connection_id == run_ctx.connection.id,
               LINKS.c.subject.in_(list(entries))))}
    user_ids = [row.id for row in linked.values()]
    memberships = {row.user_id: row.status for row in tx.execute(
        sa.select(MEMBERS.c.user_id, MEMBERS.c.status).where(
            MEMBERS.c.organization_id == org_id, MEMBERS.c.user_id.in_(user_ids)))}
    roles: dict[int, set[str]] = {}
    for row in tx.execute(sa.select(GRANTS.c.user_id, GRANTS.c.role).where(
            GRANTS.c.organization_id == org_id, GRANTS.c.source == source,
            GRANTS.c.user_id.in_(user_ids))):
        roles.setdefault(row.user_id, set()).add(row.role)
    new_emails = [e.identity.email for s, e in entries.items() if s not in linked]
    taken = set(tx.scalars(sa.select(USERS.c.email).where(USERS.c.email.in_(new_emails)))) \
        if new_emails else set()
    for subject, entry in entries.items():
        row = linked.get(subject)
        if row is None:
            _plan_create(run_ctx, entry, taken, changes)
        else:
            _plan_update(tx, run_ctx, entry, row, memberships.get(row.id),
                         roles.get(row.id, set()), changes)
    return changes


def _plan_create(run_ctx: _Context, entry: DirectoryEntry, taken: set[str],
                 changes: _Changes) -> None:
    summary, identity = run_ctx.summary, entry.identity
    if entry.disabled:
        summary.unchanged += 1  # disabled and never provisioned: nothing to do
        return
    email = identity.email
    domain = email.rpartition("@")[2]
    if not run_ctx.connection.allow_any_domain and domain not in run_ctx.verified_domains:
        summary.error(entry.dn, f"the email domain {domain} is not verified for the "
                      "organization")
        return
    if email in taken or email in run_ctx.emails_taken:
        summary.error(entry.dn, f"an account with the email {email} already exists "
                      "(not linked automatically; link it by signing in)")
        return
    run_ctx.emails_taken.add(email)
    changes.create.append(entry)
    summary.created += 1


def _plan_update(tx: Session, run_ctx: _Context, entry: DirectoryEntry, row: Any,
                 membership: MembershipStatus | None, current_roles: set[str],
                 changes: _Changes) -> None:
    summary, identity = run_ctx.summary, entry.identity
    status = UserStatus(row.status)
    details: dict[str, Any] = {}
    if status == UserStatus.DELETED:
        summary.unchanged += 1
        return
    if entry.disabled:
        if status == UserStatus.ACTIVE:
            changes.suspend.append(row.id)
            changes.events.append(_event(run_ctx, "ldap.sync.suspend", row.email,
                                         {"reason": "disabled in the directory",
                                          "dn": entry.dn}))
            summary.suspended += 1
        else:
            summary.unchanged += 1
        return
    update: dict[str, Any] = {}
    name = provisioning._display_name(identity)
    if name and name != row.display_name:
        update["display_name"] = name
        details["display_name"] = [row.display_name, name]
    if identity.email != row.email:
        clash = tx.scalar(sa.select(USERS.c.id).where(USERS.c.email == identity.email))
        if clash is None and identity.email not in run_ctx.emails_taken:
            update["email"] = identity.email
            details["email"] = [row.email, identity.email]
            run_ctx.emails_taken.add(identity.email)
        else:
            summary.error(entry.dn, f"the new email {identity.email} belongs to another "
                          "account; kept " + row.email)
    if status == UserStatus.SUSPENDED and membership == MembershipStatus.SUSPENDED:
        changes.resume.append(row.id)  # suspended by a sync: back in the directory
        details["resumed"] = True
    if membership is None:
        changes.add_memberships.append(row.id)
        details["membership"] = "added"
    wanted = provisioning.mapped_roles(run_ctx.connection, identity)
    added, removed = wanted - current_roles, current_roles - wanted
    changes.grant += [(row.id, role) for role in sorted(added)]
    changes.revoke += [(row.id, role) for role in sorted(removed)]
    if added or removed:
        details["roles"] = {"added": sorted(added), "removed": sorted(removed)}
    if update:
        changes.user_updates.append({"user_id": row.id, **update})
    if details:
        changes.events.append(_event(run_ctx, "ldap.sync.update", update.get("email",
                                                                             row.email),
                                     details))
        summary.updated += 1
    else:
        summary.unchanged += 1


def _event(run_ctx: _Context, action: str, email: str, details: dict[str, Any]) -> dict:
    return {"action": action, "target": f"user:{email}", "organization_id": run_ctx.org_id,
            "details": {**details, "connection": run_ctx.connection.id}}


def _write(tx: Session, run_ctx: _Context, changes: _Changes) -> None:
    org_id, source, now = run_ctx.org_id, run_ctx.source, utcnow()
    if changes.create:
        created = tx.execute(sa.insert(USERS).returning(USERS.c.id, USERS.c.email), [
            {"email": e.identity.email, "display_name": provisioning._display_name(e.identity),
             "status": UserStatus.ACTIVE, "password_hash": None, "is_operator": False,
             "created_at": now} for e in changes.create]).all()
        ids = {row.email: row.id for row in created}
        tx.execute(sa.insert(LINKS), [
            {"connection_id": run_ctx.connection.id, "subject": e.identity.subject,
             "user_id": ids[e.identity.email], "created_at": now} for e in changes.create])
        changes.add_memberships += [ids[e.identity.email] for e in changes.create]
        for entry in changes.create:
            roles = sorted(provisioning.mapped_roles(run_ctx.connection, entry.identity))
            changes.grant += [(ids[entry.identity.email], role) for role in roles]
            changes.events.append(_event(run_ctx, "ldap.sync.create", entry.identity.email, {
                "subject": entry.identity.subject, "dn": entry.dn, "roles": roles}))
    if changes.user_updates:
        statement = sa.update(USERS).where(USERS.c.id == sa.bindparam("user_id"))
        for keys in ({"display_name"}, {"email"}, {"display_name", "email"}):
            rows = [u for u in changes.user_updates if set(u) - {"user_id"} == keys]
            if rows:
                tx.execute(statement.values({k: sa.bindparam(k) for k in keys}), rows)
    if changes.add_memberships:
        tx.execute(sa.insert(MEMBERS), [
            {"user_id": uid, "organization_id": org_id, "status": MembershipStatus.ACTIVE,
             "source": MembershipSource.LDAP, "created_at": now, "updated_at": now}
            for uid in changes.add_memberships])
    _set_status(tx, org_id, changes.suspend, UserStatus.SUSPENDED, MembershipStatus.SUSPENDED)
    _set_status(tx, org_id, changes.resume, UserStatus.ACTIVE, MembershipStatus.ACTIVE)
    if changes.suspend:
        tx.execute(sa.update(AuthSession).where(AuthSession.user_id.in_(changes.suspend),
                                                AuthSession.revoked_at.is_(None))
                   .values(revoked_at=now))
    if changes.grant:
        tx.execute(sa.insert(GRANTS), [
            {"user_id": uid, "organization_id": org_id, "role": role, "source": source,
             "created_at": now} for uid, role in changes.grant])
    for uid, role in changes.revoke:
        tx.execute(sa.delete(GRANTS).where(GRANTS.c.user_id == uid,
                                           GRANTS.c.organization_id == org_id,
                                           GRANTS.c.role == role, GRANTS.c.source == source))
    audit.record_many(tx, run_ctx.audit_ctx, changes.events)


def _set_status(tx: Session, org_id: int, user_ids: list[int], user_status: UserStatus,
                membership_status: MembershipStatus) -> None:
    if not user_ids:
        return
    tx.execute(sa.update(USERS).where(USERS.c.id.in_(user_ids)).values(status=user_status))
    tx.execute(sa.update(MEMBERS).where(MEMBERS.c.user_id.in_(user_ids),
                                        MEMBERS.c.organization_id == org_id)
               .values(status=membership_status, updated_at=utcnow()))


def _suspend_missing(db: Database, run_ctx: _Context) -> None:
    """Users of this connection the directory no longer lists: suspended, sessions ended."""
    summary = run_ctx.summary
    if not run_ctx.seen:
        summary.error("(directory)", "no user entries were found; nobody was suspended "
                      "(check the user base and filter)")
        return
    with db.sessions() as session:
        missing = [(row.id, row.email, row.subject) for row in session.execute(
            sa.select(USERS.c.id, USERS.c.email, LINKS.c.subject)
            .join(LINKS, LINKS.c.user_id == USERS.c.id)
            .where(LINKS.c.connection_id == run_ctx.connection.id,
                   USERS.c.status == UserStatus.ACTIVE))
            if row.subject not in run_ctx.seen]
    size = max(1, run_ctx.settings.page_size)
    for start in range(0, len(missing), size):
        chunk = missing[start:start + size]
        summary.suspended += len(chunk)
        if run_ctx.dry_run:
            continue
        changes = _Changes(suspend=[uid for uid, _email, _subject in chunk], events=[
            _event(run_ctx, "ldap.sync.suspend", email, {"reason": "gone from the directory",
                                                        "subject": subject})
            for _uid, email, subject in chunk])
        with db.transaction() as tx:
            _write(tx, run_ctx, changes)


# -- the schedule ----------------------------------------------------------------------------

def set_schedule(session: Session, ctx: audit.Context, connection: Connection,
                 minutes: int) -> None:
    """Let ``trellis worker`` sync this connection every ``minutes`` (0: never)."""
    if connection.protocol != Protocol.LDAP:
        raise ValidationError(f"Connection {connection.id} is not an LDAP connection.",
                              code="usage")
    if not 0 <= minutes <= 7 * 24 * 60:
        raise ValidationError("Give the interval in minutes, from 0 (off) to one week.",
                              code="invalid_schedule")
    before = int(connection.settings.get("sync_every_minutes") or 0)
    connection.settings = {**connection.settings, "sync_every_minutes": minutes}
    audit.record(session, ctx, "connection.update", target=f"connection:{connection.id}",
                 organization_id=connection.organization_id,
                 details={"sync_every_minutes": [before, minutes]})


def claim_due(db: Database, now: float | None = None) -> list[int]:
    """Enabled LDAP connections whose scheduled sync is due, each marked as started so that
    another worker passing by does not start it too (the sync's own lock is the guard that
    really counts)."""
    now = time.time() if now is None else now
    due = []
    with db.transaction() as tx:
        for connection in tx.scalars(sa.select(Connection).where(
                Connection.protocol == Protocol.LDAP, Connection.enabled.is_(True))):
            every = int(connection.settings.get("sync_every_minutes") or 0)
            last = float(connection.settings.get("sync_started_at") or 0)
            if every and now - last >= every * 60:
                connection.settings = {**connection.settings, "sync_started_at": now}
                due.append(connection.id)
    return due
