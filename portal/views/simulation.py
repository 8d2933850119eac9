"""The policy simulator shared by the operators' page and each organization's admin pages:
pick a user, an object with attributes, an action and a context, and see the decision with
the rule that made it, where that rule is written, and the role chain behind it.

A simulation changes nothing and asks the same engine the portal and the decision API ask.
Organization admins may only pick members of their own organization.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import request

from portal.authz import explanation_dict
from portal.errors import InvalidRequest, NotFound, TrellisError
from portal.extensions import db_session, services
from portal.models import Membership, Organization
from portal.services import simulation

FIELDS = ("user", "org", "object_type", "object", "action", "context", "assurance")


def form_values(org: str | None = None) -> dict[str, str]:
    values = {name: request.form.get(name, "")[:2000] for name in FIELDS}
    values["assurance"] = values["assurance"] or "1"
    if org is not None:
        values["org"] = org
    return values


def simulate(values: dict[str, str], members_of: Organization | None = None
             ) -> tuple[dict[str, Any] | None, str | None]:
    """(explanation, None) or (None, a message for the form)."""
    try:
        return _simulate(values, members_of), None
    except TrellisError as error:  # InvalidRequest's message names the field
        return None, error.message


def _simulate(values: dict[str, str], members_of: Organization | None) -> dict[str, Any]:
    session = db_session()
    for name in ("user", "org", "object_type", "action"):
        if not values[name].strip():
            raise InvalidRequest(name, "is required")
    if values["assurance"] not in ("1", "2"):
        raise InvalidRequest("assurance", "must be 1 (password) or 2 (MFA)")
    if members_of is not None:
        user, subject = _member(session, values["user"], members_of)
    else:
        user, subject = simulation.subject(session, values["user"])
    org = simulation.organization(session, values["org"].strip())
    context = {**simulation.context(org, int(values["assurance"])),
               **simulation.attributes(values["context"].splitlines(), "context")}
    obj = {**simulation.attributes(values["object"].splitlines(), "object"),
           "type": values["object_type"].strip()}
    slug = org.slug if org is not None else values["org"].strip()
    explanation = services().policy.explain(subject, slug, obj, values["action"].strip(),
                                            context)
    result = explanation_dict(explanation)
    # People read emails, not ids: the chains start with the user's email.
    for chain in (result["chain"], *result["chains"],
                  *(match["chain"] for match in result["matched_rules"])):
        if chain and chain[0] == subject["id"]:
            chain[0] = user.email
    result.update(user=user.email, org=slug, object=obj, context=context,
                  action=values["action"].strip())
    return result


def _member(session, who: str, org: Organization):
    """Only the organization's own members: anyone else reads as unknown, so the page tells
    nothing about users of other organizations."""
    try:
        user, subject = simulation.subject(session, who)
    except NotFound:
        user = None
    if user is None or session.scalar(sa.select(Membership.id).where(
            Membership.user_id == user.id, Membership.organization_id == org.id)) is None:
        raise InvalidRequest("user", f"is not a member of {org.name}")
    return user, subject
