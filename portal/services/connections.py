"""Identity-provider connections: creating them, sealing their secrets, and turning a row into
the plain settings a protocol adapter takes."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from federation.ldap import PRESETS, LdapSettings
from federation.oidc import ASYMMETRIC, OidcSettings
from portal import audit
from portal.crypto import SecretBox
from portal.errors import Conflict, NotFound, ValidationError
from portal.models import Connection, Protocol
from portal.services import organizations
from portal.validation import normalize_domain

OIDC_PRESETS: dict[str, dict[str, Any]] = {
    "oidc": {},
    "google": {"issuer": "https://accounts.google.com",
               "scopes": ["openid", "email", "profile"]},
    "oauth2": {"preset": "oauth2", "scopes": ["read:user", "user:email"], "subject_claim": "id",
               "claims": {"name": "name", "email": "email"}},
    "github": {"preset": "oauth2", "scopes": ["read:user", "user:email"], "subject_claim": "id",
               "authorization_endpoint": "https://github.com/login/oauth/authorize",
               "token_endpoint": "https://github.com/login/oauth/access_token",
               "userinfo_endpoint": "https://api.github.com/user", "issuer": "https://github.com",
               "claims": {"name": "name", "email": "email"}},
}
SETTING_KEYS = {"issuer", "client_id", "scopes", "algorithms", "claims", "group_claim",
                "leeway_seconds", "fetch_userinfo", "preset", "authorization_endpoint",
                "token_endpoint", "userinfo_endpoint", "subject_claim", "emails_verified"}


def create_oidc(session: Session, ctx: audit.Context, box: SecretBox, *, org_slug: str | None,
                name: str, client_id: str, client_secret: str, preset: str = "oidc",
                issuer: str = "", enabled: bool = False, jit_enabled: bool = True,
                default_role: str = "member", allow_any_domain: bool = False,
                group_roles: dict[str, str] | None = None,
                **settings: Any) -> Connection:
    if preset not in OIDC_PRESETS:
        raise ValidationError(f"Unknown preset {preset!r}; choose one of "
                              f"{', '.join(OIDC_PRESETS)}.", code="invalid_preset")
    values = {"preset": "oidc", **OIDC_PRESETS[preset], **_drop_empty(settings)}
    if issuer:
        values["issuer"] = issuer
    values["client_id"] = client_id
    _validate_oidc(values, client_secret)
    org = organizations.get(session, org_slug) if org_slug else None
    connection = Connection(organization_id=org.id if org else None, protocol=Protocol.OIDC,
                            name=name.strip()[:200], enabled=enabled, jit_enabled=jit_enabled,
                            default_role=default_role, allow_any_domain=allow_any_domain,
                            settings=values, group_roles=dict(group_roles or {}),
                            sealed_secrets=box.seal({"client_secret": client_secret}))
    session.add(connection)
    session.flush()
    audit.record(session, ctx, "connection.create", target=f"connection:{connection.id}",
                 organization_id=connection.organization_id,
                 details={"protocol": "oidc", "name": connection.name, "settings": values,
                          "group_roles": connection.group_roles, "enabled": enabled})
    return connection


def _drop_empty(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items()
            if k in SETTING_KEYS and v not in (None, "", (), {})}


def _validate_oidc(values: dict[str, Any], client_secret: str) -> None:
    if not values.get("client_id") or not client_secret:
        raise ValidationError("An OIDC connection needs a client id and a client secret.",
                              code="invalid_connection")
    if values.get("preset") == "oidc" and not values.get("issuer"):
        raise ValidationError("An OIDC connection needs the issuer URL.",
                              code="invalid_connection")
    bad = [a for a in values.get("algorithms", ["RS256"]) if a not in ASYMMETRIC]
    if bad:
        raise ValidationError(f"Only asymmetric signature algorithms are allowed, not "
                              f"{', '.join(bad)}.", code="invalid_connection")


DISCOVERY_SUFFIX = "/.well-known/openid-configuration"


def check_provider(preset: str, *, issuer: str = "", authorization_endpoint: str = "",
                   token_endpoint: str = "", userinfo_endpoint: str = "",
                   allow_insecure_loopback: bool) -> str:
    """Check a provider the way a sign-in will use it, before anything is stored, so a
    mistyped URL is a form error now and not a failed sign-in later. For ``oidc`` the
    discovery document is fetched (the issuer or its ``.well-known`` URL may be given, and
    the issuer is returned); for ``oauth2`` the three endpoints must be usable URLs. The
    fixed presets (``google``, ``github``) are not fetched."""
    from federation import http
    from federation.errors import FederationError
    from federation.oidc import OidcAdapter, OidcSettings
    issuer = issuer.strip()
    if issuer.endswith(DISCOVERY_SUFFIX):
        issuer = issuer[:-len(DISCOVERY_SUFFIX)]
    try:
        if preset == "oidc":
            if not issuer:
                raise ValidationError("An OIDC connection needs the issuer URL.",
                                      code="invalid_connection")
            OidcAdapter(discovery_ttl=0).metadata(OidcSettings(
                connection_id=0, client_id="", client_secret="", issuer=issuer,
                allow_insecure_loopback=allow_insecure_loopback))
        elif preset == "oauth2":
            for what, url in (("authorization endpoint", authorization_endpoint),
                              ("token endpoint", token_endpoint),
                              ("userinfo endpoint", userinfo_endpoint)):
                if not url.strip():
                    raise ValidationError(f"An OAuth2 connection needs the {what}.",
                                          code="invalid_connection")
                http.check_url(url.strip(), what=what,
                               allow_insecure_loopback=allow_insecure_loopback)
    except FederationError as error:
        where = f" at {issuer}{DISCOVERY_SUFFIX}" if preset == "oidc" else ""
        raise ValidationError(f"The identity provider's settings{where} could not be used: "
                              f"{error.detail or error.safe_message}.",
                              code="provider_unusable") from None
    return issuer


def get(session: Session, connection_id: int) -> Connection:
    connection = session.get(Connection, connection_id)
    if connection is None:
        raise NotFound("There is no such connection.", code="unknown_connection")
    return connection


def mark_tested(connection: Connection) -> None:
    """A test sign-in succeeded with the connection as it is now."""
    connection.settings = {**connection.settings, "tested_at": time.time()}


def mark_changed(connection: Connection) -> None:
    """The configuration changed: the last test no longer speaks for it."""
    connection.settings = {k: v for k, v in connection.settings.items() if k != "tested_at"}


MAX_ALLOWED_DOMAINS = 50


def set_allowed_domains(session: Session, ctx: audit.Context, connection: Connection,
                        domains: list[str]) -> list[str]:
    """Narrow the connection to these email domains (an empty list lifts the limit)."""
    names = sorted({normalize_domain(name) for name in domains if name.strip()})
    if len(names) > MAX_ALLOWED_DOMAINS:
        raise ValidationError(f"At most {MAX_ALLOWED_DOMAINS} allowed domains.",
                              code="too_many_domains")
    before = connection.settings.get("allowed_domains") or []
    connection.settings = {**connection.settings, "allowed_domains": names}
    mark_changed(connection)
    audit.record(session, ctx, "connection.update", target=f"connection:{connection.id}",
                 organization_id=connection.organization_id,
                 details={"allowed_domains": [before, names]})
    return names


def set_enabled(session: Session, ctx: audit.Context, connection_id: int,
                enabled: bool, require_test: bool = False) -> Connection:
    """``require_test``: organization admins may enable only a connection whose current
    configuration passed a test sign-in (operators may enable directly)."""
    connection = get(session, connection_id)
    if enabled and require_test and not connection.settings.get("tested_at"):
        raise Conflict("Run a successful test sign-in with this configuration before "
                       "enabling it.", code="untested_connection")
    connection.enabled = enabled
    audit.record(session, ctx, "connection.enable" if enabled else "connection.disable",
                 target=f"connection:{connection.id}",
                 organization_id=connection.organization_id)
    return connection


def set_client_secret(session: Session, ctx: audit.Context, box: SecretBox,
                      connection_id: int, client_secret: str) -> Connection:
    """Replace the secret in place: create the new one at the IdP first, then run this, then
    delete the old one at the IdP — no sign-in fails in between."""
    if not client_secret:
        raise ValidationError("The client secret cannot be empty.", code="invalid_connection")
    connection = get(session, connection_id)
    connection.sealed_secrets = box.seal({**box.open(connection.sealed_secrets),
                                          "client_secret": client_secret})
    mark_changed(connection)
    audit.record(session, ctx, "connection.secret", target=f"connection:{connection.id}",
                 organization_id=connection.organization_id)
    return connection


def oidc_settings(connection: Connection, box: SecretBox, *,
                  allow_insecure_loopback: bool) -> OidcSettings:
    values = dict(connection.settings)
    return OidcSettings(
        connection_id=connection.id, client_id=values["client_id"],
        client_secret=box.open(connection.sealed_secrets).get("client_secret", ""),
        issuer=values.get("issuer", ""), preset=values.get("preset", "oidc"),
        scopes=tuple(values.get("scopes") or ("openid", "email", "profile")),
        algorithms=tuple(values.get("algorithms") or ("RS256",)),
        claims=dict(values.get("claims") or {}),
        group_claim=values.get("group_claim") or "groups",
        leeway_seconds=int(values.get("leeway_seconds", 60)),
        fetch_userinfo=bool(values.get("fetch_userinfo", True)),
        allow_insecure_loopback=allow_insecure_loopback,
        authorization_endpoint=values.get("authorization_endpoint", ""),
        token_endpoint=values.get("token_endpoint", ""),
        userinfo_endpoint=values.get("userinfo_endpoint", ""),
        subject_claim=values.get("subject_claim", "sub"),
        emails_verified=bool(values.get("emails_verified", False)))


def rotate_secrets(session: Session, ctx: audit.Context, box: SecretBox) -> int:
    """Re-encrypt every sealed secret with the current key."""
    count = 0
    for connection in session.scalars(sa.select(Connection)):
        if connection.sealed_secrets:
            connection.sealed_secrets = box.rotate(connection.sealed_secrets)
            count += 1
    audit.record(session, ctx, "keys.rotate", details={"secrets_reencrypted": count})
    return count


# --- LDAP / Active Directory ---------------------------------------------------------------

LDAP_SETTING_KEYS = {"directory", "urls", "bind_dn", "user_base", "user_filter",
                     "login_attributes", "group_base", "group_filter", "group_member_attribute",
                     "group_name_attribute", "nested_groups", "attributes", "disabled_attribute",
                     "disabled_values", "start_tls", "allow_plain", "ca_cert_pem",
                     "connect_timeout", "read_timeout", "page_size", "emails_verified"}
LDAP_LIST_KEYS = {"urls", "login_attributes", "disabled_values"}


def create_ldap(session: Session, ctx: audit.Context, box: SecretBox, *, org_slug: str,
                name: str, bind_password: str, directory: str = "openldap",
                enabled: bool = False, jit_enabled: bool = True, default_role: str = "member",
                allow_any_domain: bool = False, group_roles: dict[str, str] | None = None,
                **settings: Any) -> Connection:
    """An organization's directory. The service account's password is sealed at rest;
    everything else is plain settings (shown in the audit trail)."""
    if directory not in PRESETS:
        raise ValidationError(f"Unknown directory kind {directory!r}; choose one of "
                              f"{', '.join(PRESETS)}.", code="invalid_connection")
    values = {**_ldap_defaults(directory), **{k: v for k, v in settings.items()
                                              if k in LDAP_SETTING_KEYS and
                                              v not in (None, "", (), [], {})}}
    values["directory"] = directory
    values["attributes"] = {**PRESETS[directory]["attributes"],
                            **(settings.get("attributes") or {})}
    for key in LDAP_LIST_KEYS:
        if key in values:
            values[key] = list(values[key])
    _validate_ldap(values, bind_password)
    org = organizations.get(session, org_slug)
    connection = Connection(organization_id=org.id, protocol=Protocol.LDAP,
                            name=name.strip()[:200], enabled=enabled, jit_enabled=jit_enabled,
                            default_role=default_role, allow_any_domain=allow_any_domain,
                            settings=values, group_roles=dict(group_roles or {}),
                            sealed_secrets=box.seal({"bind_password": bind_password}))
    session.add(connection)
    session.flush()
    audit.record(session, ctx, "connection.create", target=f"connection:{connection.id}",
                 organization_id=connection.organization_id,
                 details={"protocol": "ldap", "name": connection.name,
                          "settings": {k: v for k, v in values.items() if k != "ca_cert_pem"},
                          "insecure": _insecure(values), "group_roles": connection.group_roles,
                          "enabled": enabled})
    return connection


def _ldap_defaults(directory: str) -> dict[str, Any]:
    preset = PRESETS[directory]
    return {"user_filter": preset["user_filter"],
            "login_attributes": list(preset["login_attributes"]),
            "group_filter": preset["group_filter"],
            "group_member_attribute": preset["group_member_attribute"],
            "nested_groups": preset["nested_groups"], "start_tls": True, "allow_plain": False,
            "connect_timeout": 5, "read_timeout": 10, "page_size": 500}


def _insecure(values: dict[str, Any]) -> bool:
    return any(url.lower().startswith("ldap://") for url in values.get("urls", ())) and \
        not values.get("start_tls", True)


def _validate_ldap(values: dict[str, Any], bind_password: str) -> None:
    def bad(message: str) -> ValidationError:
        return ValidationError(message, code="invalid_connection")
    urls = values.get("urls") or []
    if not urls:
        raise bad("An LDAP connection needs at least one server URL (ldaps://host or "
                  "ldap://host with StartTLS).")
    for url in urls:
        if not url.lower().startswith(("ldap://", "ldaps://")) or len(url) > 300:
            raise bad(f"{url!r} is not an ldap:// or ldaps:// URL.")
    if _insecure(values) and not values.get("allow_plain"):
        raise bad("Plain LDAP sends passwords readable by anyone on the network: use ldaps:// "
                  "or StartTLS, or allow plain LDAP explicitly.")
    if not values.get("bind_dn") or not bind_password:
        raise bad("An LDAP connection needs the service account's DN and password.")
    if not values.get("user_base"):
        raise bad("An LDAP connection needs the base DN under which users are searched.")
    for key in ("user_filter", "group_filter"):
        text = values.get(key, "")
        if text and not (text.startswith("(") and text.endswith(")")):
            raise bad(f"The {key.replace('_', ' ')} must be an LDAP filter in parentheses.")
    if values.get("nested_groups") not in ("none", "recursive", "ad"):
        raise bad("Nested groups must be none, recursive or ad.")
    for key in ("connect_timeout", "read_timeout"):
        if not 0 < float(values.get(key, 1)) <= 120:
            raise bad(f"The {key.replace('_', ' ')} must be between 0 and 120 seconds.")
    if not 1 <= int(values.get("page_size", 500)) <= 5000:
        raise bad("The page size must be between 1 and 5000.")
    if not values.get("attributes", {}).get("subject"):
        raise bad("Map the stable id attribute (entryUUID or objectGUID).")


def ldap_settings(connection: Connection, box: SecretBox) -> LdapSettings:
    values = dict(connection.settings)
    directory = values.get("directory", "openldap")
    preset = PRESETS.get(directory, PRESETS["openldap"])
    return LdapSettings(
        connection_id=connection.id, urls=tuple(values.get("urls") or ()),
        bind_dn=values.get("bind_dn", ""),
        bind_password=box.open(connection.sealed_secrets).get("bind_password", ""),
        user_base=values.get("user_base", ""),
        user_filter=values.get("user_filter") or preset["user_filter"],
        login_attributes=tuple(values.get("login_attributes") or preset["login_attributes"]),
        group_base=values.get("group_base", ""),
        group_filter=values.get("group_filter") or preset["group_filter"],
        group_member_attribute=values.get("group_member_attribute") or "member",
        group_name_attribute=values.get("group_name_attribute") or "cn",
        nested_groups=values.get("nested_groups") or preset["nested_groups"],
        attributes={**preset["attributes"], **(values.get("attributes") or {})},
        disabled_attribute=values.get("disabled_attribute", ""),
        disabled_values=tuple(values.get("disabled_values") or ()),
        start_tls=bool(values.get("start_tls", True)),
        allow_plain=bool(values.get("allow_plain", False)),
        ca_cert_pem=values.get("ca_cert_pem", ""),
        connect_timeout=float(values.get("connect_timeout", 5)),
        read_timeout=float(values.get("read_timeout", 10)),
        page_size=int(values.get("page_size", 500)),
        emails_verified=bool(values.get("emails_verified", True)), directory=directory)


def set_bind_password(session: Session, ctx: audit.Context, box: SecretBox,
                      connection_id: int, password: str) -> Connection:
    if not password:
        raise ValidationError("The bind password cannot be empty.", code="invalid_connection")
    connection = get(session, connection_id)
    connection.sealed_secrets = box.seal({**box.open(connection.sealed_secrets),
                                          "bind_password": password})
    audit.record(session, ctx, "connection.secret", target=f"connection:{connection.id}",
                 organization_id=connection.organization_id)
    return connection
