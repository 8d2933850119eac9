"""Self-registration: who may sign up where, and the sign-up itself."""

from __future__ import annotations

from sqlalchemy.orm import Session

from portal import audit
from portal.models import Organization, RegistrationMode
from portal.services import organizations


def set_mode(session: Session, ctx: audit.Context, slug: str, mode: str) -> Organization:
    """Set who may create an account in this organization."""
    org = organizations.get(session, slug)
    previous = org.registration.value
    org.registration = RegistrationMode(mode)
    audit.record(session, ctx, "org.registration", target=f"org:{slug}",
                 organization_id=org.id, details={"from": previous, "to": mode})
    return org
