"""Identity assurance: how the person behind an account was proven, kept on the user as a
level (0-3) and the method that reached it.

- 0, no method: nothing proven (an account an operator created, for instance);
- 1, ``email``: control of the email address (a registration or invitation link);
- 2, ``idp`` or ``ldap``: a sign-in through the organization's own identity provider or
  directory, for an address in a domain the organization verified;
- 3, ``in_person`` or ``document``: an administrator checked the person face to face or
  an identity document.

Levels only go up by themselves: a later, weaker proof (a federated sign-in after an
in-person check) never lowers them; an administrator may set any level, audited. Policies
read it as ``r.sub.identity_level`` (ABAC), and the OpenID Provider puts it into ``acr``.
This module never imports Flask: services and the federation layer call it.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from portal import audit
from portal.db import utcnow
from portal.errors import InvalidRequest
from portal.models import User

LEVELS = {"": 0, "email": 1, "idp": 2, "ldap": 2, "in_person": 3, "document": 3}
ADMIN_METHODS = ("in_person", "document")
NAMES = {0: "none", 1: "email verified", 2: "organization identity provider",
         3: "verified by an administrator"}


def level_of(method: str) -> int:
    return LEVELS.get(method, 0)


def raise_to(session: Session, ctx: audit.Context, user: User, method: str,
             organization_id: int | None = None) -> bool:
    """Record a proof that happened in passing (a link used, a federated sign-in): the
    user's level rises to the method's, if it is higher, audited as
    ``user.identity_assurance``. Returns whether it rose."""
    level = level_of(method)
    if level <= (user.identity_level or 0):
        return False
    before = [user.identity_level or 0, user.identity_method or ""]
    user.identity_level, user.identity_method = level, method
    user.identity_verified_at = utcnow()
    audit.record(session, ctx, "user.identity_assurance", target=f"user:{user.email}",
                 organization_id=organization_id,
                 details={"before": before, "after": [level, method]})
    return True


def verify(session: Session, ctx: audit.Context, user: User, method: str, note: str,
           organization_id: int | None = None) -> None:
    """An administrator checked the person (in person, or from an identity document):
    level 3. ``note`` says how (which document, who checked) and goes into the audit
    trail only; the document itself is never stored."""
    if method not in ADMIN_METHODS:
        raise InvalidRequest("method", f"one of {', '.join(ADMIN_METHODS)}")
    note = (note or "").strip()
    if not note or len(note) > 300:
        raise InvalidRequest("note", "say how the identity was checked (at most 300 "
                                     "characters)")
    before = [user.identity_level or 0, user.identity_method or ""]
    user.identity_level, user.identity_method = level_of(method), method
    user.identity_verified_at = utcnow()
    audit.record(session, ctx, "user.identity_verify", target=f"user:{user.email}",
                 organization_id=organization_id, reason=note,
                 details={"before": before, "after": [user.identity_level, method]})
