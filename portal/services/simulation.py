"""Building a decision request the way the portal would, for explanations and simulations:
the subject as the portal sees it (user id, operator flag), the organization's status and
an assurance level in the context, and typed attribute values from ``key=value`` text."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from policies.engine import PLATFORM
from portal.errors import InvalidRequest, NotFound
from portal.models import Organization, User
from portal.services import organizations

MAX_ATTRIBUTES = 20


def subject(session: Session, who: str) -> tuple[User, dict[str, Any]]:
    """``who`` is an email or a user id."""
    who = (who or "").strip()
    query = sa.select(User).where(User.id == int(who)) if who.isdigit() else \
        sa.select(User).where(User.email == who.lower())
    user = session.scalar(query)
    if user is None:
        raise NotFound(f"There is no user {who!r}.", code="unknown_user")
    return user, {"id": str(user.id), "platform_operator": bool(user.is_operator)}


def organization(session: Session, slug: str) -> Organization | None:
    """The organization (None for the platform domain); unknown slugs raise ``NotFound``."""
    return None if slug == PLATFORM else organizations.get(session, slug)


def context(org: Organization | None, assurance: int = 1) -> dict[str, Any]:
    return {"org_status": org.status.value if org is not None else None,
            "assurance": assurance}


def attributes(pairs: list[str] | tuple[str, ...], field: str) -> dict[str, Any]:
    """``["amount=900", "owner_org=acme", "urgent=true"]`` -> typed values: JSON numbers,
    booleans, null and lists are read as such, anything else is text."""
    values: dict[str, Any] = {}
    pairs = [pair for pair in pairs if pair.strip()]
    if len(pairs) > MAX_ATTRIBUTES:
        raise InvalidRequest(field, f"at most {MAX_ATTRIBUTES} attributes")
    for pair in pairs:
        key, equals, raw = pair.partition("=")
        key = key.strip()
        if not equals or not key.isidentifier():
            raise InvalidRequest(field, f"{pair!r} is not name=value")
        raw = raw.strip()
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if isinstance(value, dict):
            value = raw
        values[key] = value
    return values
