"""The connection form, shared by the operators' page (``/admin/connections/new``) and an
organization's own SSO page (``/o/<slug>/admin/connections/new``): one reading of the posted
fields, one check of the identity provider before anything is written, one creation through
the services, and one answer to "what do I give my identity provider"."""

from __future__ import annotations

from typing import Any

from flask import current_app, url_for
from werkzeug.datastructures import FileStorage, MultiDict

from federation.errors import FederationError
from portal.errors import ValidationError
from portal.extensions import audit_context, services
from portal.models import Connection, Protocol
from portal.services import connections as connections_service
from portal.services import saml as saml_connections

# The kinds of connection the form offers, and how the form names them.
KINDS = {
    "saml": "SAML 2.0 (Entra ID, ADFS, Okta, Shibboleth, Google Workspace)",
    "oidc": "OpenID Connect",
    "google": "Google (Sign in with Google)",
    "oauth2": "OAuth2 with a user-info endpoint (GitHub-style)",
}
ORG_KINDS = ("saml", "oidc")  # what an organization's own admins set up
OPERATOR_ORG_KINDS = ("oidc", "google", "oauth2", "saml")
PLATFORM_KINDS = ("oidc", "google", "oauth2")  # SAML needs an organization to provision into


def choices(kinds: tuple[str, ...]) -> list[tuple[str, str]]:
    """(value, label) pairs for the form's kind radios."""
    return [(kind, KINDS[kind]) for kind in kinds]


def loopback_allowed() -> bool:
    """Plain HTTP to a loopback identity provider, outside production only."""
    return current_app.config["ENV"] != "production"


def create_from_form(form: MultiDict, upload: FileStorage | None, *, org_slug: str | None,
                     default_name: str, kinds: tuple[str, ...],
                     group_roles: dict[str, str] | None = None) -> int:
    """Create a switched-off connection from the posted form; returns its id. Every check
    that can fail (fields, the provider's discovery document or metadata) runs before the
    row is written, and the row and its audit event are one transaction: a refused form
    stores nothing."""
    kind = form.get("protocol", "")
    if kind not in kinds:
        raise ValidationError("Choose the kind of connection: " + ", ".join(
            KINDS[k] for k in kinds) + ".", code="invalid_protocol")
    s, ctx, loopback = services(), audit_context(), loopback_allowed()
    name = form.get("name", "").strip() or default_name
    mapping = dict(group_roles or {})
    if kind == "saml":
        xml = upload.read(saml_connections.METADATA_MAX_BYTES + 1) if upload else None
        url = form.get("metadata_url", "").strip()
        try:
            with s.db.transaction() as tx:
                return saml_connections.create(
                    tx, ctx, s.secrets, org_slug=org_slug, name=name, metadata_url=url,
                    metadata_xml=xml or None, group_roles=mapping,
                    allow_insecure_loopback=loopback).id
        except FederationError as error:  # the metadata URL: not HTTPS, down, too large
            raise ValidationError(f"The metadata at {url} could not be used: "
                                  f"{error.detail or error.safe_message}.",
                                  code="metadata_unusable") from None
    client_id, secret = form.get("client_id", "").strip(), form.get("client_secret", "")
    if not client_id or not secret:
        raise ValidationError("Give the client ID and the client secret that the identity "
                              "provider issued for Trellis.", code="invalid_connection")
    options: dict[str, Any] = {}
    if kind == "oidc":
        options = {"issuer": "", "group_claim": form.get("group_claim", "").strip(),
                   "scopes": ("openid", "email", "profile",
                              *extra_scopes(form.get("scopes", "")))}
    elif kind == "oauth2":
        options = {key: form.get(key, "").strip() for key in (
            "authorization_endpoint", "token_endpoint", "userinfo_endpoint")}
        options |= {"subject_claim": form.get("subject_claim", "").strip() or "id",
                    "emails_verified": form.get("emails_verified") == "1"}
        scopes = oauth2_scopes(form.get("oauth2_scopes", ""))
        if scopes:
            options["scopes"] = scopes
    issuer = connections_service.check_provider(
        kind, issuer=form.get("issuer", ""), allow_insecure_loopback=loopback,
        **{k: v for k, v in options.items() if k.endswith("_endpoint")})
    if kind == "oidc":
        options["issuer"] = issuer
    with s.db.transaction() as tx:
        return connections_service.create_oidc(
            tx, ctx, s.secrets, org_slug=org_slug, name=name, client_id=client_id,
            client_secret=secret, preset=kind, group_roles=mapping, **options).id


def extra_scopes(text: str) -> list[str]:
    """Scopes beyond ``openid email profile`` (e.g. ``groups``, which some providers need
    before they send groups at all), each a valid OAuth scope token (RFC 6749 3.3)."""
    found = [scope for scope in _scope_tokens(text) if scope not in ("openid", "email",
                                                                      "profile")]
    return list(dict.fromkeys(found))


def oauth2_scopes(text: str) -> list[str]:
    """An OAuth2 provider's own scopes (``read:user user:email``); empty: the preset's."""
    return list(dict.fromkeys(_scope_tokens(text)))


def _scope_tokens(text: str) -> list[str]:
    found = text.replace(",", " ").split()
    if len(found) > 10 or any(ch in scope for scope in found for ch in '"\\'):
        raise ValidationError("Give at most ten extra scopes, separated by spaces, without "
                              "quotes or backslashes.", code="invalid_scopes")
    return found


def give_values(row: Connection) -> dict[str, str]:
    """What the identity provider's admin enters on their side: the redirect URI for OIDC
    and OAuth2, the entity ID, ACS and logout URLs (and the SP metadata) for SAML."""
    if row.protocol == Protocol.SAML:
        from portal.views.saml import base_url
        return saml_connections.endpoints(base_url(), row.id)
    return {"redirect_uri": url_for("sso.oidc_callback", connection_id=row.id,
                                    _external=True)}
