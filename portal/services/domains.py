"""Email domains of an organization, and proving their ownership through DNS.

An organization's admin adds a domain and publishes ``trellis-verification=<token>`` as a TXT
record on it; Trellis then looks the record up itself (dnspython, against the configured
resolvers). Until then the domain routes nobody anywhere. Several organizations may claim the
same name while it is unverified, so nobody can block a domain by claiming it first; once one
of them proves it, claims by any other organization are refused and audited. Re-verification
(``trellis domain reverify``) suspends home-realm discovery for a domain whose record has
gone, and restores it when the record is back.

Every function takes the organization explicitly and only touches that organization's rows:
another organization's domain id is "not found", like an unknown one.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from portal import audit
from portal.db import Database, utcnow
from portal.errors import Conflict, NotFound, TrellisError
from portal.models import Domain, Organization
from portal.validation import normalize_domain

TXT_PREFIX = "trellis-verification="


class DnsLookupError(TrellisError):
    """The lookup itself failed (timeout, no server answered): nothing is known either way."""

    status = 503
    code = "dns_unavailable"


class DomainTaken(Conflict):
    code = "domain_taken"


@dataclass(frozen=True)
class DnsSettings:
    servers: tuple[tuple[str, int], ...] = ()  # empty: the system's resolvers
    timeout: float = 5.0


def dns_settings(config) -> DnsSettings:
    """The resolvers and timeout from the app's settings (``TRELLIS_DNS_*``)."""
    return DnsSettings(tuple(config.get("DNS_RESOLVERS") or ()),
                       float(config.get("DNS_TIMEOUT_SECONDS") or 5))


def txt_records(name: str, dns_settings: DnsSettings) -> list[str]:
    """The TXT strings published on ``name`` (several strings of one record joined, as RFC
    7208 does); an empty list when the name or the record does not exist."""
    import dns.exception
    import dns.nameserver
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=not dns_settings.servers)
    if dns_settings.servers:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(address, port)
                                for address, port in dns_settings.servers]
    resolver.timeout = resolver.lifetime = float(dns_settings.timeout)
    resolver.cache = None
    try:
        answer = resolver.resolve(name, "TXT", raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return []
    except dns.exception.Timeout:
        raise DnsLookupError(
            f"The DNS lookup for {name} timed out after {dns_settings.timeout:g} second"
            f"{'' if dns_settings.timeout == 1 else 's'}. "
            "Nothing was changed; try again in a few minutes.", code="dns_timeout") from None
    except (dns.resolver.NoNameservers, dns.exception.DNSException) as error:
        raise DnsLookupError(
            f"No DNS server gave an answer for {name}. Nothing was changed; try again in a "
            "few minutes.", detail=str(error)) from None
    if answer.rrset is None:
        return []
    return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer.rrset]


def record_value(domain: Domain) -> str:
    """What the organization publishes as the TXT record."""
    return f"{TXT_PREFIX}{domain.verification_token}"


def published(domain: Domain, records: list[str]) -> bool:
    expected = record_value(domain)
    return any(value.strip() == expected for value in records)


# -- reading -----------------------------------------------------------------------------

def list_for(session: Session, org: Organization) -> list[Domain]:
    return list(session.scalars(sa.select(Domain).where(Domain.organization_id == org.id)
                                .order_by(Domain.name)))


def get(session: Session, org: Organization, domain_id: int) -> Domain:
    found = session.scalar(sa.select(Domain).where(Domain.id == domain_id,
                                                   Domain.organization_id == org.id))
    if found is None:
        raise NotFound("There is no such domain in this organization.", code="unknown_domain")
    return found


def state(domain: Domain) -> str:
    if domain.verified and domain.suspended_at is not None:
        return "suspended"
    return "verified" if domain.verified else "pending"


def _owner_elsewhere(session: Session, org_id: int, name: str) -> Domain | None:
    return session.scalar(sa.select(Domain).where(Domain.verified_name == name,
                                                  Domain.organization_id != org_id))


def _refuse(session: Session, ctx: audit.Context, org_id: int, name: str, action: str,
            owner: Domain) -> DomainTaken:
    """Audit the refused claim in both organizations' trails (the claimant learns nothing
    about the owner), and build the error to raise once this is committed."""
    audit.record(session, ctx, action, outcome="failure", target=f"domain:{name}",
                 organization_id=org_id, reason="verified by another organization",
                 details={"domain": name})
    # The owner's trail names no one from the claimant's organization.
    anonymous = audit.Context(actor="another organization", request_id=ctx.request_id)
    audit.record(session, anonymous, "domain.claim_refused", outcome="failure",
                 target=f"domain:{name}", organization_id=owner.organization_id,
                 reason="another organization tried to claim this verified domain",
                 details={"domain": name})
    return DomainTaken(f"The domain {name} is already verified by another organization. "
                       "If it is yours, contact the platform's operators.")


# -- changing ----------------------------------------------------------------------------

def add(session: Session, ctx: audit.Context, org: Organization, name: str) -> Domain:
    """Claim a domain (unverified). Raises ``DomainTaken`` when another organization has
    verified it; ``add_audited`` records that refusal."""
    name = normalize_domain(name)
    if session.scalar(sa.select(Domain.id).where(Domain.organization_id == org.id,
                                                 Domain.name == name)) is not None:
        raise Conflict(f"{name} is already one of this organization's domains.",
                       code="duplicate_domain")
    if _owner_elsewhere(session, org.id, name) is not None:
        raise DomainTaken(f"The domain {name} is already verified by another organization. "
                          "If it is yours, contact the platform's operators.")
    domain = Domain(name=name, organization_id=org.id, verification_token=secrets.token_hex(16))
    session.add(domain)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"{name} is already one of this organization's domains.",
                       code="duplicate_domain") from None
    audit.record(session, ctx, "domain.add", target=f"domain:{name}", organization_id=org.id,
                 details={"domain": name})
    return domain


def add_audited(db: Database, ctx: audit.Context, org_id: int, name: str) -> int:
    """``add`` in its own transaction; a refused claim is audited in a second one (the first
    rolled back) before the refusal is raised."""
    try:
        with db.transaction() as tx:
            return add(tx, ctx, tx.get(Organization, org_id), name).id
    except DomainTaken:
        with db.transaction() as tx:
            clean = normalize_domain(name)
            owner = _owner_elsewhere(tx, org_id, clean)
            if owner is None:
                raise
            error = _refuse(tx, ctx, org_id, clean, "domain.add", owner)
        raise error from None


def remove(session: Session, ctx: audit.Context, org: Organization, domain_id: int) -> str:
    domain = get(session, org, domain_id)
    name, was = domain.name, state(domain)
    session.delete(domain)
    session.flush()
    audit.record(session, ctx, "domain.remove", target=f"domain:{name}",
                 organization_id=org.id, details={"domain": name, "state": was})
    return name


@dataclass
class CheckResult:
    domain_id: int
    name: str
    state: str
    ok: bool
    message: str
    error: TrellisError | None = None


def verify(db: Database, ctx: audit.Context, org_id: int, domain_id: int,
           dns_settings: DnsSettings,
           lookup: Callable[[str, DnsSettings], list[str]] = txt_records) -> CheckResult:
    """Look the TXT record up now. The outcome (found, missing, lookup failed, taken) is
    stored on the domain and audited, and committed whatever it is; the caller raises
    ``result.error`` afterwards when there is one."""
    with db.transaction() as tx:
        org = tx.get(Organization, org_id)
        domain = get(tx, org, domain_id)
        name = domain.name
    try:
        records, failure = lookup(name, dns_settings), None
    except DnsLookupError as error:
        records, failure = [], error
    with db.transaction() as tx:
        org = tx.get(Organization, org_id)
        domain = get(tx, org, domain_id)
        domain.last_checked_at = utcnow()
        if failure is not None:
            domain.last_check_error = failure.message[:300]
            audit.record(tx, ctx, "domain.verify", outcome="failure", target=f"domain:{name}",
                         organization_id=org_id, reason=failure.code,
                         details={"domain": name})
            return CheckResult(domain.id, name, state(domain), False, failure.message, failure)
        if not published(domain, records):
            message = (f"No TXT record {record_value(domain)} was found on {name}. Publish it "
                       "at your DNS provider; changes can take a while to appear.")
            domain.last_check_error = message[:300]
            audit.record(tx, ctx, "domain.verify", outcome="failure", target=f"domain:{name}",
                         organization_id=org_id, reason="record_missing",
                         details={"domain": name, "found": len(records)})
            return CheckResult(domain.id, name, state(domain), False, message,
                               Conflict(message, code="record_missing"))
        owner = _owner_elsewhere(tx, org_id, name)
        if owner is not None:
            error = _refuse(tx, ctx, org_id, name, "domain.verify", owner)
            domain.last_check_error = error.message[:300]
            return CheckResult(domain.id, name, state(domain), False, error.message, error)
        restored = domain.verified and domain.suspended_at is not None
        first = not domain.verified
        domain.verified, domain.verified_name, domain.suspended_at = True, name, None
        domain.verified_at = domain.verified_at if not first else utcnow()
        domain.last_check_error = ""
        try:
            tx.flush()
        except IntegrityError:  # another organization verified it a moment ago
            tx.rollback()
            message = (f"The domain {name} is already verified by another organization. "
                       "If it is yours, contact the platform's operators.")
            return CheckResult(domain_id, name, "pending", False, message,
                               DomainTaken(message))
        if first or restored:
            audit.record(tx, ctx, "domain.verify", target=f"domain:{name}",
                         organization_id=org_id,
                         details={"domain": name, "method": "dns", "restored": restored})
        return CheckResult(domain.id, name, "verified", True,
                           f"{name} is verified: sign-ins with this domain now reach your "
                           "organization.")


def verify_manually(session: Session, ctx: audit.Context, name: str,
                    slug: str | None = None) -> Domain:
    """An operator vouches for the domain; the audit event records who did."""
    name = normalize_domain(name)
    query = sa.select(Domain).where(Domain.name == name)
    if slug:
        query = query.join(Organization).where(Organization.slug == slug.lower())
    found = list(session.scalars(query))
    if not found:
        raise NotFound(f"The domain {name} has not been added to any organization"
                       f"{' ' + slug if slug else ''}.", code="unknown_domain")
    if len(found) > 1:
        raise Conflict(f"Several organizations claim {name}; name one with --org.",
                       code="ambiguous_domain")
    domain = found[0]
    owner = _owner_elsewhere(session, domain.organization_id, name)
    if owner is not None:
        raise DomainTaken(f"The domain {name} is already verified by another organization.")
    if not domain.verified or domain.suspended_at is not None:
        domain.verified, domain.verified_at = True, domain.verified_at or utcnow()
        domain.verified_name, domain.suspended_at = name, None
        session.flush()
        audit.record(session, ctx, "domain.verify", target=f"domain:{name}",
                     organization_id=domain.organization_id, details={"method": "manual"})
    return domain


# -- re-verification ---------------------------------------------------------------------

@dataclass
class ReverifySummary:
    checked: int = 0
    still_valid: int = 0
    suspended: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # lookups that gave no answer


def reverify_all(db: Database, ctx: audit.Context, dns_settings: DnsSettings,
                 lookup: Callable[[str, DnsSettings], list[str]] = txt_records,
                 checked_before: datetime | None = None) -> ReverifySummary:
    """Check every verified domain again, one transaction each. A domain whose record has
    gone is suspended for home-realm discovery (audited); one whose record is back is
    restored. A lookup that fails (timeout, no server) changes nothing: an outage of DNS
    must not switch an organization's sign-ins off. With ``checked_before``, only domains
    last checked before then (the worker's periodic pass)."""
    summary = ReverifySummary()
    query = sa.select(Domain.id).where(Domain.verified.is_(True)).order_by(Domain.id)
    if checked_before is not None:
        query = query.where(sa.or_(Domain.last_checked_at.is_(None),
                                   Domain.last_checked_at < checked_before))
    with db.sessions() as session:
        ids = list(session.scalars(query))
    for domain_id in ids:
        with db.transaction() as tx:
            domain = tx.get(Domain, domain_id, with_for_update=True)
            if domain is None or not domain.verified or (
                    checked_before is not None and domain.last_checked_at is not None
                    and domain.last_checked_at >= checked_before):
                continue  # gone, or another worker has just checked it
            summary.checked += 1
            try:
                records = lookup(domain.name, dns_settings)
            except DnsLookupError as error:
                domain.last_checked_at, domain.last_check_error = utcnow(), error.message[:300]
                summary.failed.append(domain.name)
                continue
            domain.last_checked_at = utcnow()
            if published(domain, records):
                domain.last_check_error = ""
                summary.still_valid += 1
                if domain.suspended_at is not None:
                    domain.suspended_at = None
                    summary.restored.append(domain.name)
                    audit.record(tx, ctx, "domain.restore", target=f"domain:{domain.name}",
                                 organization_id=domain.organization_id,
                                 details={"domain": domain.name})
                continue
            domain.last_check_error = (f"The TXT record {record_value(domain)} is no longer "
                                       "published.")
            if domain.suspended_at is None:
                domain.suspended_at = utcnow()
                summary.suspended.append(domain.name)
                audit.record(tx, ctx, "domain.suspend", target=f"domain:{domain.name}",
                             organization_id=domain.organization_id,
                             reason="verification record missing",
                             details={"domain": domain.name})
    return summary


def reverify_due(db: Database, ctx: audit.Context, dns_settings: DnsSettings,
                 every_hours: int) -> ReverifySummary:
    """The periodic pass: domains not checked for ``every_hours``. Cheap when none is due,
    so the worker calls it on every round."""
    return reverify_all(db, ctx, dns_settings,
                        checked_before=utcnow() - timedelta(hours=every_hours))
