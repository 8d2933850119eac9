"""The one permission check of the portal.

Every view declares who may reach it: ``@public`` (anyone), ``@signed_in`` (any signed-in
user, for pages about themselves), or ``@require(action, object_type, ...)``, which asks the
policy engine in the organization the URL names (or in the platform domain for operator
pages). A test walks the URL map and fails on any route without a declaration. No view checks
roles by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from flask import current_app, request, session, url_for
from flask_login import current_user, login_required

from policies.engine import PLATFORM
from portal import audit
from portal.errors import Forbidden, NotFound, StepUpRequired
from portal.extensions import db_session, services
from portal.models import Organization

ACCESS = "trellis_access"


def public(view: Callable) -> Callable:
    setattr(view, ACCESS, "public")
    return view


def signed_in(view: Callable) -> Callable:
    wrapped = login_required(view)
    setattr(wrapped, ACCESS, "signed_in")
    return wrapped


def require(action: str, object_type: str, *, org_arg: str | None = None,
            org_from: Callable[[dict[str, Any]], str] | None = None) -> Callable:
    """Allow the view only when the policy allows ``action`` on ``object_type`` in the
    organization named by the URL argument ``org_arg`` (or computed by ``org_from``), or in
    the platform domain when neither is given."""

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def checked(*args, **kwargs):
            org = (kwargs[org_arg] if org_arg else org_from(kwargs) if org_from else PLATFORM)
            authorize(action, object_type, org)
            return view(*args, **kwargs)

        wrapped = login_required(checked)
        setattr(wrapped, ACCESS, f"require:{action}:{object_type}")
        return wrapped

    return decorate


def authorize(action: str, object_type: str, org: str, obj: dict[str, Any] | None = None,
              subject: dict[str, Any] | None = None) -> None:
    """Raise unless the signed-in user (or ``subject``, for API tokens acting for their
    creator) may act. Outside their organizations users get the same 404 as for an
    organization that does not exist; members lacking a role get 403."""
    engine = services().policy
    subject, context = subject or current_subject(), request_context(org)
    target = {"type": object_type, **(obj or {})}
    decision = engine.decide(subject, org, target, action, context)
    decisions = services().decisions
    if decisions.enabled and decisions.wants(decision.allowed):
        from flask import g
        decisions.add(g.get("request_id", ""), subject, org, target, action, context, decision,
                      "portal")
    if decision.allowed:
        if action not in READ_ACTIONS:
            require_recent_second_factor(f"{action} {object_type} in {org}")
        return
    if context["org_status"] == "suspended" and engine.decide(
            subject, org, {"type": "organization"}, "read", {**context, "org_status": None}
    ).allowed:
        raise Forbidden("This organization is suspended. Contact the platform's operators.",
                        code="org_suspended")
    if org != PLATFORM and not engine.decide(subject, org, {"type": "organization"}, "read",
                                             context).allowed:
        raise NotFound()
    raise Forbidden(detail=f"{action} {object_type} in {org}: {decision.reason} "
                           f"{decision.rule or ''}")


def current_subject() -> dict[str, Any]:
    return subject_of(current_user)


def subject_of(user) -> dict[str, Any]:
    """The policy subject of a user: id, operator flag, and how their identity was proven
    (``identity_level`` 0-3, see portal.assurance), read from the already loaded user."""
    return {"id": str(user.id), "platform_operator": bool(user.is_operator),
            "identity_level": int(user.identity_level or 0)}


def request_context(org: str) -> dict[str, Any]:
    status = None
    if org != PLATFORM:
        found = db_session().query(Organization.status).filter_by(slug=org).scalar()
        status = found.value if found is not None else None
    return {"org_status": status, "assurance": session.get("assurance", 1)}


# Step-up: changes made through a browser session (not an API token) by a user who has a
# second factor need that factor used within the last few minutes. Reading never does.
READ_ACTIONS = frozenset({"read", "open", "test", "simulate"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def require_recent_second_factor(what: str) -> None:
    """Raise ``StepUpRequired`` when this request changes something with a browser session
    whose second factor is older than ``MFA_STEP_UP_MINUTES`` (or was never used). Requests
    authenticated by an API token, safe methods, and users without a second factor pass."""
    if request.method in SAFE_METHODS or not current_user.is_authenticated:
        return
    if request.headers.get("Authorization", "").startswith("Bearer "):
        return  # an API token acts; it has no second factor to show
    if time.time() - session.get("mfa_at", 0) <= current_app.config["MFA_STEP_UP_MINUTES"] * 60:
        return
    from portal.services import mfa
    if not mfa.has_second_factor(db_session(), current_user.id):
        return
    from portal.extensions import audit_context
    with services().db.transaction() as tx:
        audit.record(tx, audit_context(), "auth.step_up", outcome="failure",
                     reason="step_up_required", target=f"user:{current_user.email}",
                     details={"wanted": what, "endpoint": request.endpoint or ""})
    raise StepUpRequired(redirect_to=url_for("mfa.step_up", next=_page_to_return_to()))


def recent_second_factor(view: Callable) -> Callable:
    """For changes that are not decided by the policy engine (a user's own security
    settings): the same step-up as for sensitive ``@require`` actions."""

    @wraps(view)
    def checked(*args, **kwargs):
        require_recent_second_factor(request.endpoint or "")
        return view(*args, **kwargs)

    return checked


def _page_to_return_to() -> str:
    """After the step-up the user goes back to the page the form was on (a POST cannot be
    replayed): the same-site referrer's path, else the home page."""
    referrer = urlsplit(request.referrer or "")
    if referrer.netloc and referrer.netloc != request.host:
        return "/"
    path = referrer.path + (f"?{referrer.query}" if referrer.query else "")
    return path if path.startswith("/") else "/"
