"""Organizations' own policy files, uploaded by operators.

An upload is checked against the policy files in force exactly as ``orgs/<slug>.csv`` would be
(every line, rules for this organization only, inherited roles that exist) and lint's checks
for unreachable rules; only text that passes is stored, so the policy in force never changes
to something broken. The rules add to the organization's template and to any
``orgs/<slug>.csv`` kept in the policy folder.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from sqlalchemy.orm import Session

from policies.errors import PolicyError
from policies.files import MAX_ORG_POLICY_BYTES, PolicyFiles, parse_org_policy
from policies.lint import lint
from portal import audit
from portal.db import Database, utcnow
from portal.errors import NotFound, ValidationError
from portal.models import Organization, OrgPolicy
from portal.services import organizations


class PolicyRefused(ValidationError):
    """The uploaded file does not load; ``detail`` names file, line and reason."""

    code = "policy_invalid"

    def __init__(self, detail: str) -> None:
        super().__init__(f"The policy was refused; the one in force stays: {detail}",
                         detail=detail)
        self.where = detail


def check(files: PolicyFiles, org: Organization, text: str) -> list[str]:
    """Raise ``PolicyRefused`` when the text cannot be this organization's policy; return the
    lint warnings about rules that load but never decide."""
    try:
        rules = parse_org_policy(files, org.slug, text)
    except PolicyError as error:
        raise PolicyRefused(error.detail) from None
    candidate = PolicyFiles(platform=files.platform, kinds=files.kinds,
                            orgs={**files.orgs, org.slug: [*files.orgs.get(org.slug, []),
                                                           *rules]},
                            line_numbers={**files.line_numbers,
                                          f"orgs/{org.slug}.csv": _numbers(text)})
    label = f"orgs/{org.slug}.csv"
    return [str(problem) for problem in lint(candidate, organizations={org.slug:
                                                                       org.kind.value})
            if problem.where.startswith(label + ":")]


def upload(session: Session, ctx: audit.Context, files: PolicyFiles, slug: str,
           text: str) -> tuple[OrgPolicy, list[str]]:
    """Store the organization's policy (replacing the previous upload); returns it and lint's
    warnings. A broken text raises ``PolicyRefused`` and nothing is stored."""
    org = organizations.get(session, slug)
    warnings = check(files, org, text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    policy = session.scalar(sa.select(OrgPolicy).where(OrgPolicy.organization_id == org.id))
    previous = policy.sha256 if policy else None
    if policy is None:
        policy = OrgPolicy(organization_id=org.id)
        session.add(policy)
    policy.text, policy.sha256 = text, digest
    policy.uploaded_by, policy.uploaded_at = ctx.actor or "", utcnow()
    session.flush()
    audit.record(session, ctx, "org_policy.upload", target=f"org:{org.slug}",
                 organization_id=org.id,
                 details={"sha256": digest, "previous_sha256": previous,
                          "rules": sum(1 for line in text.splitlines()
                                       if line.strip() and not line.strip().startswith("#")),
                          "warnings": warnings})
    return policy, warnings


MAX_BYTES = MAX_ORG_POLICY_BYTES  # larger uploads are refused with the reason


def upload_or_refuse(db: Database, ctx: audit.Context, files: PolicyFiles, slug: str,
                     text: str) -> list[str]:
    """Upload in one transaction; when refused, audit the refusal in another (the upload's
    was rolled back) and raise ``PolicyRefused``. Returns lint's warnings."""
    try:
        with db.transaction() as session:
            _, warnings = upload(session, ctx, files, slug, text)
    except PolicyRefused as refused:
        with db.transaction() as session:
            record_refusal(session, ctx, slug, text, refused.where)
        raise
    return warnings


def listing(session: Session) -> list[tuple[str, OrgPolicy]]:
    """(slug, uploaded policy) for every organization that has one, by slug."""
    return list(session.execute(sa.select(Organization.slug, OrgPolicy).join(
        OrgPolicy, OrgPolicy.organization_id == Organization.id).order_by(Organization.slug)))


def record_refusal(session: Session, ctx: audit.Context, slug: str, text: str,
                   detail: str) -> None:
    """Audit a refused upload (in its own transaction: the upload's was rolled back)."""
    org = session.scalar(sa.select(Organization).where(Organization.slug == slug))
    audit.record(session, ctx, "org_policy.upload", outcome="failure",
                 target=f"org:{slug}", organization_id=org.id if org else None,
                 reason="policy_invalid",
                 details={"problem": detail,
                          "sha256": hashlib.sha256(text.encode()).hexdigest()})


def remove(session: Session, ctx: audit.Context, slug: str) -> None:
    org = organizations.get(session, slug)
    policy = session.scalar(sa.select(OrgPolicy).where(OrgPolicy.organization_id == org.id))
    if policy is None:
        raise NotFound(f"{slug} has no uploaded policy.", code="no_org_policy")
    audit.record(session, ctx, "org_policy.remove", target=f"org:{slug}",
                 organization_id=org.id, details={"sha256": policy.sha256})
    session.delete(policy)
    session.flush()


def get(session: Session, slug: str) -> OrgPolicy | None:
    org = organizations.get(session, slug)
    return session.scalar(sa.select(OrgPolicy).where(OrgPolicy.organization_id == org.id))


def _numbers(text: str) -> list[int]:
    return [number for number, raw in enumerate(text.splitlines(), start=1)
            if raw.strip() and not raw.strip().startswith("#")]
