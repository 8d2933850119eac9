"""Demo organizations and users for ``make run``. Never loaded in production."""

from __future__ import annotations

import sqlalchemy as sa

from portal import audit
from portal.db import Database
from portal.models import Organization
from portal.passwords import Passwords
from portal.services import organizations, users

ORGS = (
    {"slug": "acme", "name": "Acme Supplies", "kind": "partner", "domain": "acme.test",
     "branding": {"primary_color": "#0b6e4f", "footer_text": "Acme Supplies · partner portal"}},
    {"slug": "globex", "name": "Globex Logistics", "kind": "vendor", "domain": "globex.test",
     "branding": {"primary_color": "#6b2fb3", "footer_text": "Globex Logistics"}},
)
USERS = (
    {"email": "operator@trellis.test", "password": "operator-demo-pass",
     "display_name": "Olga Operator", "org": None, "operator": True},
    {"email": "alice@acme.test", "password": "alice-demo-pass",
     "display_name": "Alice Acme", "org": "acme", "operator": False},
    {"email": "bob@globex.test", "password": "bob-demo-pass",
     "display_name": "Bob Globex", "org": "globex", "operator": False},
)


def seed(db: Database, passwords: Passwords, ctx: audit.Context) -> bool:
    """Create the demo data once; return False when it is already there."""
    with db.transaction() as session:
        if session.scalar(sa.select(Organization.id).where(Organization.slug == "acme")):
            return False
        for org in ORGS:
            organizations.create(session, ctx, slug=org["slug"], name=org["name"],
                                 kind=org["kind"], branding=org["branding"])
            organizations.add_domain(session, ctx, org["slug"], org["domain"])
            organizations.verify_domain_manually(session, ctx, org["domain"])
        # Anyone with an @acme.test address may sign up, to try registration and /dev/mail.
        from portal.services import registration
        registration.set_mode(session, ctx, "acme", "domains")
        for user in USERS:
            users.create(session, ctx, passwords, email=user["email"],
                         password=user["password"], display_name=user["display_name"],
                         org_slug=user["org"], operator=user["operator"])
    return True


def describe() -> str:
    lines = ["  Demo sign-ins:"]
    for user in USERS:
        role = "operator" if user["operator"] else f"member of {user['org']}"
        lines.append(f"    {user['email']:<24} {user['password']:<20} ({role})")
    lines.append("  Sign up with any @acme.test address at /o/acme/register; the mail Trellis")
    lines.append("  would send (confirmation and reset links) is shown at /dev/mail.")
    return "\n".join(lines) + "\n"
