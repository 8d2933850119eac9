"""The admin REST API: what an organization's admins do in the pages, for scripts and tools,
under ``/api/v1/orgs/<slug>/``. Described by the OpenAPI 3.1 document at
``/api/v1/openapi.json`` (built in ``portal.openapi`` from the same ``OPERATIONS`` table the
routes are registered from, so the two cannot drift apart).

Callers authenticate with an organization API token (``Authorization: Bearer trt_...``, made by
an owner, scoped, expiring; it acts for its creator and never beyond the creator's current
rights) or with an admin's browser session plus the ``X-CSRFToken`` header on changes. Every
call then passes the same policy check and the same organization-scoped services as the pages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request
from flask_login import current_user
from flask_wtf.csrf import CSRFError, validate_csrf
from wtforms import ValidationError as CsrfInvalid

from portal import assurance
from portal.db import utcnow
from portal.errors import InvalidRequest, NotFound, TrellisError, ValidationError
from portal.extensions import audit_context, csrf, db_session, services
from portal.models import Connection, Organization, User
from portal.permissions import ACCESS, authorize, subject_of
from portal.services import branding as branding_service
from portal.services import connections as connections_service
from portal.services import (
    custom_roles,
    identity_links,
    members,
    org_audit,
    org_tokens,
    organizations,
)
from portal.services import domains as domains_service

bp = Blueprint("adminapi", __name__, url_prefix="/api/v1/orgs/<slug>")
csrf.exempt(bp)  # checked below for session callers; token callers send no cookie


MAX_ID = 2**31 - 1  # ids and versions are 32-bit columns; larger numbers name nothing


class Unauthorized(TrellisError):
    status = 401


@dataclass(frozen=True)
class Operation:
    """One API operation: route, what it needs, and how it is described."""

    method: str
    path: str
    name: str
    summary: str
    scope: str
    action: str
    object_type: str
    body: dict[str, Any] | None = None
    response: str = "Ok"
    query: tuple[tuple[str, dict[str, Any]], ...] = ()  # documented query parameters


OPERATIONS: list[Operation] = []


def operation(method: str, path: str, summary: str, scope: str, action: str,
              object_type: str, body: dict[str, Any] | None = None,
              response: str = "Ok",
              query: tuple[tuple[str, dict[str, Any]], ...] = ()) -> Callable:
    """Register a route and its OpenAPI description from one place."""

    def decorate(view: Callable) -> Callable:
        op = Operation(method, path, view.__name__, summary, scope, action, object_type, body,
                       response, query)
        OPERATIONS.append(op)

        @wraps(view)
        def guarded(slug: str, **kwargs):
            subject = _authenticate(slug, op)
            authorize(action, object_type, slug, subject=subject)
            org = organizations.get(db_session(), slug)
            _refuse_nul()
            return view(org, **kwargs)

        setattr(guarded, ACCESS, f"require:{action}:{object_type}")
        bp.add_url_rule(path, view.__name__, guarded, methods=[method])
        return guarded
    return decorate


def _authenticate(slug: str, op: Operation) -> dict[str, Any]:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        token = org_tokens.authenticate(db_session(), header[7:].strip())
        if token is None:
            raise Unauthorized("The API token is unknown, expired or revoked.",
                               code="invalid_token")
        org = db_session().get(Organization, token.organization_id)
        if org.slug != slug:
            raise NotFound()  # a token never reveals other organizations
        if op.scope not in token.scopes:
            raise TrellisError(f"This token lacks the scope {op.scope}.", code="scope_missing",
                               status=403)
        creator = db_session().get(User, token.created_by_id)
        if creator is None or not creator.is_active:
            raise Unauthorized("The token's creator can no longer act.", code="invalid_token")
        _mark_used(token.id)
        g.api_actor = creator
        return subject_of(creator)
    if not current_user.is_authenticated:
        raise Unauthorized("Send an organization API token (Authorization: Bearer ...) or "
                           "sign in.", code="unauthenticated")
    if request.method not in ("GET", "HEAD"):
        try:
            validate_csrf(request.headers.get("X-CSRFToken", ""))
        except (CsrfInvalid, CSRFError):
            raise TrellisError("Send the page's CSRF token in the X-CSRFToken header.",
                               code="csrf_failed", status=400) from None
    g.api_actor = current_user._get_current_object()
    return subject_of(current_user)


def _refuse_nul() -> None:
    """No stored text contains NUL and PostgreSQL refuses it, so a body carrying one is
    answered 422 naming the field, after the ownership check (never a server error)."""
    def walk(value: Any, field: str) -> None:
        if isinstance(value, str) and "\x00" in value:
            raise InvalidRequest(field, "must not contain NUL characters")
        if isinstance(value, dict):
            for key, item in value.items():
                walk(key, field)
                walk(item, str(key) if field == "body" else field)
        elif isinstance(value, list):
            for item in value:
                walk(item, field)
    if request.is_json:
        walk(request.get_json(silent=True), "body")


def _mark_used(token_id: int) -> None:
    from portal.models import OrgApiToken
    with services().db.transaction() as tx:
        tx.query(OrgApiToken).filter_by(id=token_id).update({"last_used_at": utcnow()})


def _actor(org: Organization) -> members.Actor:
    user = g.api_actor
    return members.actor_for(services().policy, db_session(), org, user.id,
                             bool(user.is_operator))


def _known(org: Organization) -> list[str]:
    return members.known_roles(services().policy.files, db_session(), org)


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise InvalidRequest("body", "send a JSON object")
    return data


def _optional_body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidRequest("body", "send a JSON object or nothing")
    return data


def _string(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(key, "must be a non-empty string")
    return value


def _member_json(row: members.MemberRow) -> dict[str, Any]:
    return {"user_id": row.user_id, "email": row.email, "name": row.display_name,
            "status": row.status, "added_by": row.source, "roles": list(row.roles),
            "last_sign_in": row.last_login_at.isoformat() if row.last_login_at else None}


def _detail_json(org: Organization, user_id: int) -> dict[str, Any]:
    info = members.detail(db_session(), org, user_id)
    m = info["membership"]
    return {"user_id": user_id, "email": info["user"].email, "name": info["user"].display_name,
            "status": m.status.value, "added_by": m.source.value, "version": m.version,
            "roles": [{"role": role, "source": source} for role, source in info["grants"]],
            **_identity_json(info["user"])}


def _identity_json(user: User) -> dict[str, Any]:
    """How the person was proven (portal.assurance): it belongs to the person, so every
    organization they are a member of sees the same level."""
    verified = user.identity_verified_at
    return {"identity_level": user.identity_level or 0,
            "identity_method": user.identity_method or None,
            "identity_verified_at": verified.isoformat() if verified else None}


def _ctx():
    """Audited as the person the call acts for (a token's creator, or the signed-in admin)."""
    return audit_context().acting_as(g.api_actor.id, g.api_actor.email)


def _change(org: Organization, change) -> None:
    with services().db.transaction() as tx:
        change(tx, _ctx(), tx.get(Organization, org.id), _actor(org))


# -- members -----------------------------------------------------------------------------

MEMBER = {"type": "object", "required": ["user_id", "email", "status", "roles"], "properties": {
    "user_id": {"type": "integer"}, "email": {"type": "string"}, "name": {"type": "string"},
    "status": {"enum": ["active", "suspended"]}, "added_by": {"type": "string"},
    "roles": {"type": "array", "items": {"type": "string"}},
    "last_sign_in": {"type": ["string", "null"]}}}
MEMBER_PAGE = {"type": "object", "required": ["members", "total", "next_after"], "properties": {
    "members": {"type": "array", "items": MEMBER}, "total": {"type": "integer"},
    "total_exact": {"type": "boolean", "description": "false: more than total members match "
                    "the search or role filter (counting stops there)"},
    "next_after": {"type": ["string", "null"]}}}
MEMBER_DETAIL = {"type": "object", "required": ["user_id", "email", "status", "version",
                                                "roles"], "properties": {
    "user_id": {"type": "integer"}, "email": {"type": "string"}, "name": {"type": "string"},
    "status": {"enum": ["active", "suspended"]}, "added_by": {"type": "string"},
    "version": {"type": "integer"},
    "roles": {"type": "array", "items": {"type": "object", "properties": {
        "role": {"type": "string"}, "source": {"type": "string"}}}},
    "identity_level": {"type": "integer", "minimum": 0, "maximum": 3,
                       "description": "Identity assurance: 0 nothing proven, 1 email "
                                      "confirmed, 2 the organization's identity provider or "
                                      "directory, 3 checked by an administrator."},
    "identity_method": {"type": ["string", "null"],
                        "description": "How that level was reached (email, idp, ldap, "
                                       "in_person, document); null at level 0."},
    "identity_verified_at": {"type": ["string", "null"]}}}
VERSION = {"type": "object", "properties": {"version": {"type": "integer", "minimum": 0,
                                                      "maximum": MAX_ID}}}
ROLE = {"type": "object", "required": ["role"], "properties": {
    "role": {"type": "string"}, "version": {"type": "integer", "minimum": 0,
                                            "maximum": MAX_ID}}}


@operation("GET", "/members", "List members (search, filters, keyset pages).",
           "members:read", "read", "member", response="MemberPage")
def list_members(org: Organization):
    args = request.args
    page = members.list_members(db_session(), org, query=args.get("q", "")[:200],
                                status=args.get("status", ""), role=args.get("role", ""),
                                after=args.get("after") or None,
                                limit=min(_int_arg("limit", members.PAGE_SIZE), 500))
    return jsonify({"members": [_member_json(r) for r in page.rows], "total": page.total,
                    "total_exact": page.total_exact,
                    "next_after": page.next_after})


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name, "")
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_ID:
        raise InvalidRequest(name, f"must be an integer from 1 to {MAX_ID}")
    return int(raw)


@operation("GET", "/members/<int:user_id>", "One member of this organization.",
           "members:read", "read", "member", response="MemberDetail")
def get_member(org: Organization, user_id: int):
    return jsonify(_detail_json(org, user_id))


def _version(data: dict[str, Any]) -> int | None:
    version = data.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)
                                or not 0 <= version <= MAX_ID):
        raise InvalidRequest("version", "must be an integer")
    return version


@operation("POST", "/members/<int:user_id>/suspend", "Suspend a member; their sessions end.",
           "members:write", "manage", "member", body=VERSION, response="MemberDetail")
def suspend_member(org: Organization, user_id: int):
    version = _version(_optional_body())
    _change(org, lambda tx, ctx, o, actor: members.suspend(tx, ctx, o, actor, user_id, version))
    return jsonify(_detail_json(org, user_id))


@operation("POST", "/members/<int:user_id>/resume", "Resume a suspended member.",
           "members:write", "manage", "member", body=VERSION, response="MemberDetail")
def resume_member(org: Organization, user_id: int):
    version = _version(_optional_body())
    _change(org, lambda tx, ctx, o, actor: members.resume(tx, ctx, o, actor, user_id, version))
    return jsonify(_detail_json(org, user_id))


@operation("DELETE", "/members/<int:user_id>", "Remove a member from this organization.",
           "members:write", "manage", "member", response="Ok")
def remove_member(org: Organization, user_id: int):
    _change(org, lambda tx, ctx, o, actor: members.remove(tx, ctx, o, actor, user_id))
    return jsonify({"ok": True})


@operation("POST", "/members/<int:user_id>/roles", "Grant a role (only roles you hold).",
           "members:write", "grant", "role", body=ROLE, response="MemberDetail")
def grant_role(org: Organization, user_id: int):
    data = _body()
    role, version, known = _string(data, "role"), _version(data), _known(org)
    _change(org, lambda tx, ctx, o, actor: members.grant(tx, ctx, o, actor, user_id, role,
                                                         known, version))
    return jsonify(_detail_json(org, user_id))


IDENTITY_VERIFICATION = {"type": "object", "required": ["method", "note"], "properties": {
    "method": {"enum": list(assurance.ADMIN_METHODS),
               "description": "in_person: you met the person; document: you checked an "
                              "identity document."},
    "note": {"type": "string", "minLength": 1, "maxLength": 300,
             "description": "How (which document, who checked); kept in the audit trail "
                            "as the reason. The document itself is never stored."}}}


@operation("POST", "/members/<int:user_id>/identity-verification",
           "Record that you checked the member's identity in person or from a document "
           "(identity level 3).", "members:write", "manage", "member",
           body=IDENTITY_VERIFICATION, response="MemberDetail")
def verify_identity(org: Organization, user_id: int):
    """The member page's *Identity assurance* form for scripts: the same service, rules and
    audit event. An unknown method is a 400 ``unknown_method`` (like ``unknown_role``), not
    a shape error, so a script can tell a typo from a malformed body."""
    members.membership(db_session(), org, user_id)  # another organization's member: 404 first
    data = _body()
    method = data.get("method")
    if not isinstance(method, str) or not method:
        raise InvalidRequest("method", f"one of {', '.join(assurance.ADMIN_METHODS)}")
    if method not in assurance.ADMIN_METHODS:
        raise ValidationError(f"Unknown verification method {method[:40]!r}: use one of "
                              f"{', '.join(assurance.ADMIN_METHODS)}.", code="unknown_method",
                              extra={"field": "method",
                                     "allowed": list(assurance.ADMIN_METHODS)})
    note = data.get("note")
    if not isinstance(note, str):
        raise InvalidRequest("note", "say how the identity was checked (at most 300 "
                                     "characters)")
    _change(org, lambda tx, ctx, o, actor: members.verify_identity(tx, ctx, o, actor, user_id,
                                                                   method, note[:1000]))
    db_session().expire_all()
    return jsonify(_detail_json(org, user_id))


LINK = {"type": "object", "required": ["event_id"],
        "properties": {"event_id": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}}
LINK_REQUEST = {"type": "object", "properties": {
    "event_id": {"type": "integer"}, "connection_id": {"type": "integer"},
    "connection_name": {"type": "string"}, "subject": {"type": "string"},
    "at": {"type": "string"}}}


@operation("GET", "/members/<int:user_id>/link-requests",
           "Sign-ins refused because the member's account existed, not linked yet.",
           "members:read", "read", "member", response="LinkRequestList")
def list_link_requests(org: Organization, user_id: int):
    info = members.detail(db_session(), org, user_id)
    found = identity_links.pending(db_session(), org, user_id, info["user"].email)
    return jsonify({"link_requests": [
        {"event_id": r.event_id, "connection_id": r.connection_id,
         "connection_name": r.connection_name, "subject": r.subject,
         "at": r.at.isoformat()} for r in found]})


@operation("POST", "/members/<int:user_id>/links",
           "Link the identity of a refused sign-in (its event id) to the member.",
           "members:write", "manage", "member", body=LINK, response="MemberDetail")
def link_identity(org: Organization, user_id: int):
    members.membership(db_session(), org, user_id)
    event_id = _body().get("event_id")
    if not isinstance(event_id, int) or isinstance(event_id, bool) \
            or not 1 <= event_id <= MAX_ID:
        raise InvalidRequest("event_id", "send the id of the refused sign-in")
    _change(org, lambda tx, ctx, o, actor: identity_links.link(tx, ctx, o, actor, user_id,
                                                               event_id))
    return jsonify(_detail_json(org, user_id))


@operation("DELETE", "/members/<int:user_id>/roles/<role>", "Revoke a role granted by hand.",
           "members:write", "grant", "role", response="MemberDetail")
def revoke_role(org: Organization, user_id: int, role: str):
    _change(org, lambda tx, ctx, o, actor: members.revoke(tx, ctx, o, actor, user_id, role))
    return jsonify(_detail_json(org, user_id))


# -- invitations -------------------------------------------------------------------------

INVITATION = {"type": "object", "required": ["id", "email", "role", "expires_at"],
              "properties": {"id": {"type": "integer"}, "email": {"type": "string"},
                             "role": {"type": "string"}, "expires_at": {"type": "string"},
                             "link": {"type": "string"}}}
NEW_INVITATION = {"type": "object", "required": ["email"], "properties": {
    "email": {"type": "string", "format": "email"}, "role": {"type": "string"}}}


def _invitation_json(invitation, link: str | None = None) -> dict[str, Any]:
    data = {"id": invitation.id, "email": invitation.email, "role": invitation.role,
            "expires_at": invitation.expires_at.isoformat()}
    if link:
        data["link"] = link
    return data


def _link(token: str) -> str:
    from flask import url_for
    return url_for("invites.accept", token=token, _external=True)


def _mail_invitation(tx, invitation, token: str) -> None:
    """The invitation email, queued in the invitation's own transaction (the worker, or the
    development sink, delivers it); the answer still carries the link."""
    from portal.services import outbox
    actor = g.api_actor
    outbox.enqueue(tx, to=invitation.email, template="invitation",
                   org=tx.get(Organization, invitation.organization_id),
                   context={"link": _link(token), "inviter": actor.display_name or actor.email,
                            "role": invitation.role,
                            "expires": invitation.expires_at.strftime("%Y-%m-%d %H:%M")})


@operation("GET", "/invitations", "Invitations waiting to be accepted.",
           "invitations:write", "manage", "invitation", response="InvitationList")
def list_invitations(org: Organization):
    return jsonify({"invitations": [_invitation_json(i)
                                    for i in members.pending_invitations(db_session(), org)]})


@operation("POST", "/invitations", "Invite someone by email; the answer also carries the "
           "link, once.",
           "invitations:write", "manage", "invitation", body=NEW_INVITATION,
           response="Invitation")
def create_invitation(org: Organization):
    data = _body()
    email, role = _string(data, "email"), data.get("role", "member")
    if not isinstance(role, str):
        raise InvalidRequest("role", "must be a string")
    known = _known(org)
    with services().db.transaction() as tx:
        invitation, token = members.invite(tx, _ctx(), tx.get(Organization, org.id),
                                           _actor(org), email, role, known)
        _mail_invitation(tx, invitation, token)
        result = _invitation_json(invitation, _link(token))
    return jsonify(result), 201


@operation("POST", "/invitations/<int:invitation_id>/resend",
           "A new link and expiry for an invitation; the old link stops working.",
           "invitations:write", "manage", "invitation", response="Invitation")
def resend_invitation(org: Organization, invitation_id: int):
    with services().db.transaction() as tx:
        invitation, token = members.resend(tx, _ctx(), tx.get(Organization, org.id),
                                           invitation_id)
        _mail_invitation(tx, invitation, token)
        result = _invitation_json(invitation, _link(token))
    return jsonify(result)


@operation("DELETE", "/invitations/<int:invitation_id>", "Revoke an invitation.",
           "invitations:write", "manage", "invitation", response="Ok")
def revoke_invitation(org: Organization, invitation_id: int):
    with services().db.transaction() as tx:
        members.revoke_invitation(tx, _ctx(), tx.get(Organization, org.id),
                                  invitation_id)
    return jsonify({"ok": True})


# -- connections -------------------------------------------------------------------------

CONNECTION = {"type": "object", "required": ["id", "name", "protocol", "enabled"],
              "properties": {"id": {"type": "integer"}, "name": {"type": "string"},
                             "protocol": {"enum": ["oidc", "saml", "ldap"]},
                             "enabled": {"type": "boolean"}, "tested": {"type": "boolean"},
                             "group_roles": {"type": "object",
                                             "additionalProperties": {"type": "string"}},
                             "allowed_domains": {"type": "array",
                                                 "items": {"type": "string"}}}}
DOMAINS = {"type": "object", "required": ["allowed_domains"],
           "properties": {"allowed_domains": {"type": "array", "items": {"type": "string"}}}}


def _connection_json(row: Connection) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "protocol": row.protocol.value,
            "enabled": row.enabled, "tested": bool(row.settings.get("tested_at")),
            "group_roles": dict(row.group_roles or {}),
            "allowed_domains": list(row.settings.get("allowed_domains") or [])}


def _connection(org: Organization, connection_id: int) -> Connection:
    row = db_session().get(Connection, connection_id)
    if row is None or row.organization_id != org.id:
        raise NotFound("There is no such connection.", code="unknown_connection")
    return row


@operation("GET", "/connections", "This organization's single sign-on connections.",
           "connections:read", "read", "connection", response="ConnectionList")
def list_connections(org: Organization):
    import sqlalchemy as sa
    rows = db_session().scalars(sa.select(Connection).where(
        Connection.organization_id == org.id).order_by(Connection.id))
    return jsonify({"connections": [_connection_json(r) for r in rows]})


@operation("GET", "/connections/<int:connection_id>", "One connection.",
           "connections:read", "read", "connection", response="Connection")
def get_connection(org: Organization, connection_id: int):
    return jsonify(_connection_json(_connection(org, connection_id)))


def _set_enabled(org: Organization, connection_id: int, enabled: bool):
    _connection(org, connection_id)
    with services().db.transaction() as tx:
        connections_service.set_enabled(tx, _ctx(), connection_id, enabled,
                                        require_test=True)
    db_session().expire_all()
    return jsonify(_connection_json(_connection(org, connection_id)))


@operation("POST", "/connections/<int:connection_id>/enable",
           "Switch on (only after a passing test sign-in of the current settings).",
           "connections:write", "manage", "connection", response="Connection")
def enable_connection(org: Organization, connection_id: int):
    return _set_enabled(org, connection_id, True)


@operation("POST", "/connections/<int:connection_id>/disable", "Switch off.",
           "connections:write", "manage", "connection", response="Connection")
def disable_connection(org: Organization, connection_id: int):
    return _set_enabled(org, connection_id, False)


@operation("PUT", "/connections/<int:connection_id>/allowed-domains",
           "Let only these email domains sign in through the connection (empty: any).",
           "connections:write", "manage", "connection", body=DOMAINS, response="Connection")
def set_allowed_domains(org: Organization, connection_id: int):
    _connection(org, connection_id)
    domains = _body().get("allowed_domains")
    if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
        raise InvalidRequest("allowed_domains", "send a list of domain names")
    with services().db.transaction() as tx:
        connections_service.set_allowed_domains(tx, _ctx(), tx.get(Connection, connection_id),
                                                domains)
    db_session().expire_all()
    return jsonify(_connection_json(_connection(org, connection_id)))


# -- domains -----------------------------------------------------------------------------

DOMAIN = {"type": "object", "required": ["id", "name", "state", "txt_record"], "properties": {
    "id": {"type": "integer"}, "name": {"type": "string"},
    "state": {"enum": ["pending", "verified", "suspended"]},
    "txt_record": {"type": "string"}, "verified_at": {"type": ["string", "null"]},
    "last_checked_at": {"type": ["string", "null"]}, "last_check_error": {"type": "string"}}}
NEW_DOMAIN = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}


def _domain_json(row) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "state": domains_service.state(row),
            "txt_record": domains_service.record_value(row),
            "verified_at": row.verified_at.isoformat() if row.verified_at else None,
            "last_checked_at": row.last_checked_at.isoformat() if row.last_checked_at else None,
            "last_check_error": row.last_check_error or ""}


@operation("GET", "/domains", "This organization's domains and their TXT records.",
           "domains:read", "manage", "domain", response="DomainList")
def list_domains(org: Organization):
    return jsonify({"domains": [_domain_json(r)
                                for r in domains_service.list_for(db_session(), org)]})


@operation("POST", "/domains", "Add a domain; publish its txt_record, then verify it.",
           "domains:write", "manage", "domain", body=NEW_DOMAIN, response="Domain")
def add_domain(org: Organization):
    name = _string(_body(), "name")[:300]
    domain_id = domains_service.add_audited(services().db, _ctx(), org.id, name)
    return jsonify(_domain_json(domains_service.get(db_session(), org, domain_id))), 201


@operation("GET", "/domains/<int:domain_id>", "One domain.",
           "domains:read", "manage", "domain", response="Domain")
def get_domain(org: Organization, domain_id: int):
    return jsonify(_domain_json(domains_service.get(db_session(), org, domain_id)))


@operation("POST", "/domains/<int:domain_id>/verify",
           "Look the TXT record up now (a failed lookup answers 409 or 503 with the reason).",
           "domains:write", "manage", "domain", response="Domain")
def verify_domain(org: Organization, domain_id: int):
    result = domains_service.verify(services().db, _ctx(), org.id, domain_id,
                                    domains_service.dns_settings(current_app.config))
    if result.error is not None:
        raise result.error
    db_session().expire_all()
    return jsonify(_domain_json(domains_service.get(db_session(), org, domain_id)))


@operation("DELETE", "/domains/<int:domain_id>", "Remove a domain from this organization.",
           "domains:write", "manage", "domain", response="Ok")
def remove_domain(org: Organization, domain_id: int):
    with services().db.transaction() as tx:
        domains_service.remove(tx, _ctx(), tx.get(Organization, org.id), domain_id)
    return jsonify({"ok": True})


# -- audit trail -------------------------------------------------------------------------

AUDIT_EVENT = {"type": "object", "required": ["seq", "occurred_at", "action", "outcome"],
               "properties": {"seq": {"type": "integer"}, "occurred_at": {"type": "string"},
                              "actor": {"type": "string"}, "action": {"type": "string"},
                              "target": {"type": "string"}, "outcome": {"type": "string"},
                              "reason": {"type": "string"}, "ip": {"type": "string"},
                              "details": {"type": "object"}}}
AUDIT_QUERY = (("actor", {"type": "string", "maxLength": 200}),
               ("action", {"type": "string", "maxLength": 64}),
               ("from", {"type": "string", "format": "date"}),
               ("to", {"type": "string", "format": "date"}),
               ("before", {"type": "integer", "minimum": 1, "maximum": MAX_ID}),
               ("limit", {"type": "integer", "minimum": 1, "maximum": 500}))


@operation("GET", "/audit", "This organization's audit events, newest first (filters, keyset "
           "pages through next_before).", "audit:read", "read", "audit",
           response="AuditPage", query=AUDIT_QUERY)
def list_audit(org: Organization):
    filters = org_audit.parse_filters(request.args)
    before = _int_arg("before", 0) or None
    found = org_audit.page(db_session(), org, filters, before=before,
                           limit=min(_int_arg("limit", org_audit.PAGE_SIZE), 500))
    return jsonify({"events": [org_audit.as_dict(e) for e in found.events],
                    "next_before": found.next_before})


# -- custom roles ------------------------------------------------------------------------

CONDITIONS = {"type": "object", "description": "Per permission key, the conditions that narrow "
              "it (only those the permission offers).", "additionalProperties": {
                  "type": "object", "properties": {
                      "amount_max": {"type": "integer", "minimum": 0, "maximum": 10**12},
                      "own_org": {"type": "boolean"}, "mfa": {"type": "boolean"}}}}
ROLE_ROW = {"type": "object", "required": ["id", "name", "permissions", "held_by"],
            "properties": {"id": {"type": "integer"}, "name": {"type": "string"},
                           "description": {"type": "string"},
                           "permissions": {"type": "array", "items": {"type": "string"}},
                           "conditions": {"type": "object", "additionalProperties": {
                               "type": "object"}},
                           "held_by": {"type": "integer"}}}
NEW_ROLE = {"type": "object", "required": ["name", "permissions"], "properties": {
    "name": {"type": "string", "maxLength": 40}, "description": {"type": "string"},
    "permissions": {"type": "array", "items": {"type": "string"}},
    "conditions": CONDITIONS}}
CHANGE_ROLE = {"type": "object", "required": ["permissions"], "properties": {
    "description": {"type": "string"},
    "permissions": {"type": "array", "items": {"type": "string"}},
    "conditions": CONDITIONS}}
OFFER = {"type": "object", "properties": {
    "permission": {"type": "string"}, "label": {"type": "string"},
    "when": {"type": ["string", "null"]}, "amount_cap": {"type": ["integer", "null"]},
    "conditions": {"type": "array", "items": {"enum": ["own_org", "amount_max", "mfa"]}},
    "held": {"type": "boolean"}}}


def _role_json(org: Organization, row) -> dict[str, Any]:
    conditions = {}
    for entry in row.permissions:
        if len(entry) > 2:
            when = entry[2].get("when", "True")
            conditions[custom_roles.entry_key(entry)] = {
                "when": None if when == "True" else when, **custom_roles.refinements_of(entry)}
    return {"id": row.id, "name": row.name, "description": row.description,
            "permissions": [custom_roles.entry_key(e) for e in row.permissions],
            "conditions": conditions,
            "held_by": custom_roles.usage(db_session(), org, row.name).grants}


def _role_inputs(org: Organization) -> dict[str, Any]:
    user = g.api_actor
    subject = {"id": str(user.id), "platform_operator": bool(user.is_operator)}
    engine = services().policy
    return {"offered": custom_roles.catalogue(engine.files, org),
            "held": custom_roles.held_permissions(engine, subject, org),
            "operator": bool(user.is_operator)}


def _conditions(data: dict[str, Any]) -> dict[str, Any]:
    value = data.get("conditions", {})
    if not isinstance(value, dict):
        raise InvalidRequest("conditions", 'send an object such as {"purchase_order/approve'
                                           '@…": {"amount_max": 20000}}')
    return value


def _permission_list(data: dict[str, Any]) -> list[str]:
    value = data.get("permissions")
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise InvalidRequest("permissions", "send a list such as [\"member/read\"]")
    return value[:200]


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise InvalidRequest(key, "must be a string")
    return value


@operation("GET", "/roles", "Custom roles, and the permissions roles here can have.",
           "roles:read", "manage", "organization", response="RoleList")
def list_roles(org: Organization):
    inputs = _role_inputs(org)
    return jsonify({"roles": [_role_json(org, r)
                              for r in custom_roles.list_for(db_session(), org)],
                    "permissions": [
                        {"permission": o.key, "label": o.label,
                         "when": None if o.when == "True" else o.when,
                         "amount_cap": o.cap, "conditions": list(o.refinements),
                         "held": custom_roles.holds(inputs["held"],
                                                    [o.object, o.action, {"when": o.when}])}
                        for o in inputs["offered"]]})


@operation("POST", "/roles", "Create a custom role from permissions you hold.",
           "roles:write", "manage", "organization", body=NEW_ROLE, response="Role")
def create_role(org: Organization):
    from portal.views.org_admin import reserved_role_names
    data, inputs = _body(), _role_inputs(org)
    with services().db.transaction() as tx:
        row = custom_roles.create(tx, _ctx(), tx.get(Organization, org.id),
                                  name=_string(data, "name")[:100],
                                  description=_text(data, "description")[:1000],
                                  permissions=_permission_list(data),
                                  conditions=_conditions(data),
                                  built_in=reserved_role_names(org),
                                  actor_id=g.api_actor.id, **inputs)
        role_id = row.id
    return jsonify(_role_json(org, custom_roles.get(db_session(), org, role_id))), 201


@operation("GET", "/roles/<int:role_id>", "One custom role.",
           "roles:read", "manage", "organization", response="Role")
def get_role(org: Organization, role_id: int):
    return jsonify(_role_json(org, custom_roles.get(db_session(), org, role_id)))


@operation("PUT", "/roles/<int:role_id>", "Replace a custom role's permissions (and "
           "description); applies at once to everyone holding it.",
           "roles:write", "manage", "organization", body=CHANGE_ROLE, response="Role")
def update_role(org: Organization, role_id: int):
    custom_roles.get(db_session(), org, role_id)  # another organization's id: 404 first
    data, inputs = _body(), _role_inputs(org)
    with services().db.transaction() as tx:
        custom_roles.update(tx, _ctx(), tx.get(Organization, org.id), role_id,
                            description=_text(data, "description")[:1000],
                            permissions=_permission_list(data),
                            conditions=_conditions(data), **inputs)
    db_session().expire_all()
    return jsonify(_role_json(org, custom_roles.get(db_session(), org, role_id)))


@operation("DELETE", "/roles/<int:role_id>", "Delete a custom role; refused (409) while in "
           "use unless revoke=true, which revokes it from members and invitations too.",
           "roles:write", "manage", "organization", response="Ok",
           query=(("revoke", {"enum": ["true", "false"]}),))
def delete_role(org: Organization, role_id: int):
    revoke = request.args.get("revoke", "false")
    if revoke not in ("true", "false"):
        raise InvalidRequest("revoke", "must be true or false")
    inputs = _role_inputs(org)
    with services().db.transaction() as tx:
        custom_roles.delete(tx, _ctx(), tx.get(Organization, org.id), role_id,
                            held=inputs["held"], revoke=revoke == "true",
                            operator=inputs["operator"])
    return jsonify({"ok": True})


# -- branding ----------------------------------------------------------------------------

BRANDING = {"type": "object", "properties": {
    "primary_color": {"type": "string"}, "accent_color": {"type": "string"},
    "signin_text": {"type": "string"}, "footer_text": {"type": "string"},
    "logo_url": {"type": ["string", "null"]}}}
CHANGE_BRANDING = {"type": "object", "properties": {
    key: {"type": "string", "maxLength": 300} for key in branding_service.EDITABLE}}
LOGO_UPLOAD = {"type": "object", "required": ["image_base64"], "properties": {
    "image_base64": {"type": "string",
                     "description": "The PNG, JPEG or WebP file, base64-encoded."}}}


def _branding_json(org: Organization) -> dict[str, Any]:
    from flask import url_for
    values = dict(org.branding or {})
    logo = (url_for("branding.logo", slug=org.slug, v=values["logo"], _external=True)
            if values.get("logo") else values.get("logo_url"))
    return {**{key: values.get(key, "") for key in branding_service.EDITABLE},
            "logo_url": logo}


@operation("GET", "/branding", "Colours, texts and logo of the sign-in page and portal.",
           "branding:write", "manage", "branding", response="Branding")
def get_branding(org: Organization):
    return jsonify(_branding_json(org))


@operation("PUT", "/branding", "Replace colours and texts (fields left out are cleared; the "
           "logo stays).", "branding:write", "manage", "branding", body=CHANGE_BRANDING,
           response="Branding")
def set_branding(org: Organization):
    data = _body()
    with services().db.transaction() as tx:
        branding_service.update(tx, _ctx(), tx.get(Organization, org.id), data)
    db_session().expire_all()
    return jsonify(_branding_json(organizations.get(db_session(), org.slug)))


@operation("PUT", "/branding/logo", "Upload the logo: PNG, JPEG or WebP (sniffed from the "
           "bytes), at most 512 KiB.", "branding:write", "manage", "branding",
           body=LOGO_UPLOAD, response="Branding")
def set_logo(org: Organization):
    import base64
    import binascii
    encoded = _string(_body(), "image_base64")
    if len(encoded) > (branding_service.LOGO_MAX_BYTES * 4) // 3 + 8:
        raise InvalidRequest("image_base64", f"the image is larger than "
                                             f"{branding_service.LOGO_MAX_BYTES // 1024} KiB")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("image_base64", "is not base64") from None
    with services().db.transaction() as tx:
        branding_service.set_logo(tx, _ctx(), tx.get(Organization, org.id), data,
                                  base_url=current_app.config.get("BASE_URL")
                                  or request.url_root.rstrip("/"))
    db_session().expire_all()
    return jsonify(_branding_json(organizations.get(db_session(), org.slug)))


@operation("DELETE", "/branding/logo", "Remove the uploaded logo.", "branding:write",
           "manage", "branding", response="Branding")
def delete_logo(org: Organization):
    with services().db.transaction() as tx:
        branding_service.remove_logo(tx, _ctx(), tx.get(Organization, org.id))
    db_session().expire_all()
    return jsonify(_branding_json(organizations.get(db_session(), org.slug)))


# -- organization settings ---------------------------------------------------------------

REGISTRATION = {"type": "object", "required": ["mode", "verified_domains"], "properties": {
    "mode": {"enum": ["invite", "domains", "open"],
             "description": "invite: only invited people; domains: anyone with an address "
                            "at a verified domain; open: anyone."},
    "verified_domains": {"type": "array", "items": {"type": "string"}}}}
CHANGE_REGISTRATION = {"type": "object", "required": ["mode"], "properties": {
    "mode": {"enum": ["invite", "domains", "open"]}}}


def _registration_json(org: Organization) -> dict[str, Any]:
    from portal.services import registration
    return {"mode": org.registration.value,
            "verified_domains": registration.verified_domains(db_session(), org)}


@operation("GET", "/registration", "Who may sign up to this organization.",
           "settings:read", "manage", "organization", response="Registration")
def get_registration(org: Organization):
    return jsonify(_registration_json(org))


@operation("PUT", "/registration", "Set who may sign up: invite, domains or open.",
           "settings:write", "manage", "organization", body=CHANGE_REGISTRATION,
           response="Registration")
def set_registration(org: Organization):
    from portal.services import registration
    mode = _body().get("mode")
    if not isinstance(mode, str) or mode not in registration.MODES:
        raise InvalidRequest("mode", f"must be one of {', '.join(registration.MODES)}")
    with services().db.transaction() as tx:
        registration.set_mode(tx, _ctx(), org.slug, mode)
    db_session().expire_all()
    return jsonify(_registration_json(organizations.get(db_session(), org.slug)))


SCHEMAS = {"Ok": {"type": "object", "properties": {"ok": {"type": "boolean"}}},
           "MemberPage": MEMBER_PAGE, "MemberDetail": MEMBER_DETAIL, "Invitation": INVITATION,
           "InvitationList": {"type": "object", "required": ["invitations"], "properties": {
               "invitations": {"type": "array", "items": INVITATION}}},
           "Connection": CONNECTION,
           "LinkRequestList": {"type": "object", "required": ["link_requests"],
                               "properties": {"link_requests": {"type": "array",
                                                                "items": LINK_REQUEST}}},
           "ConnectionList": {"type": "object", "required": ["connections"], "properties": {
               "connections": {"type": "array", "items": CONNECTION}}},
           "Domain": DOMAIN,
           "Role": ROLE_ROW,
           "Branding": BRANDING,
           "Registration": REGISTRATION,
           "RoleList": {"type": "object", "required": ["roles", "permissions"], "properties": {
               "roles": {"type": "array", "items": ROLE_ROW},
               "permissions": {"type": "array", "items": OFFER}}},
           "AuditPage": {"type": "object", "required": ["events", "next_before"],
                         "properties": {"events": {"type": "array", "items": AUDIT_EVENT},
                                        "next_before": {"type": ["integer", "null"]}}},
           "DomainList": {"type": "object", "required": ["domains"], "properties": {
               "domains": {"type": "array", "items": DOMAIN}}}}
