"""SAML connections: creating them from metadata (URL or file) or by hand, keeping their IdP
metadata fresh without ever losing the last good copy, and turning a row into the plain
settings the SAML adapter takes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from federation import http
from federation.errors import FederationError
from federation.saml import MAX_CLOCK_SKEW, SamlSettings, SpKey
from federation.saml_metadata import IdpMetadata, check_certificate, parse_idp_metadata
from portal import audit
from portal.crypto import SecretBox
from portal.db import Database
from portal.errors import ValidationError
from portal.models import Connection, KeyState, Protocol
from portal.services import connections, locks, organizations, signing_keys

METADATA_MAX_BYTES = 1024 * 1024
OPTION_KEYS = {"name_id_format", "sign_requests", "want_encrypted", "allow_sha1", "clock_skew",
               "idp_initiated", "idp_initiated_targets", "emails_verified", "attributes",
               "requested_authn_context"}


def endpoints(base_url: str, connection_id: int) -> dict[str, str]:
    """The service provider's URLs for one connection; the metadata URL is its entity ID."""
    root = f"{base_url.rstrip('/')}/saml/{connection_id}"
    return {"entity_id": f"{root}/metadata", "acs": f"{root}/acs", "sls": f"{root}/sls"}


def create(session: Session, ctx: audit.Context, box: SecretBox, *, org_slug: str | None,
           name: str, metadata_url: str = "", metadata_xml: bytes | None = None,
           metadata_signing_cert: str = "", idp_entity_id: str = "", idp_sso_url: str = "",
           idp_slo_url: str = "", idp_certs: tuple[str, ...] = (), enabled: bool = False,
           jit_enabled: bool = True, default_role: str = "member",
           allow_any_domain: bool = False, group_roles: dict[str, str] | None = None,
           allow_insecure_loopback: bool = False, **options: Any) -> Connection:
    """A SAML connection from a metadata URL, an uploaded metadata file, or manual fields."""
    values = _options(options)
    if metadata_signing_cert:
        _check_cert(metadata_signing_cert)
        values["metadata_signing_cert"] = _cert_body(metadata_signing_cert)
    now = time.time()
    if metadata_url:
        http.check_url(metadata_url, allow_insecure_loopback=allow_insecure_loopback,
                       what="metadata URL")
        values["metadata_url"] = metadata_url
        metadata = _fetch(metadata_url, idp_entity_id, values.get("metadata_signing_cert"))
    elif metadata_xml is not None:
        metadata = _parse(metadata_xml, idp_entity_id, values.get("metadata_signing_cert"))
    else:
        metadata = _manual(idp_entity_id, idp_sso_url, idp_slo_url, idp_certs)
    values.update(_idp_fields(metadata))
    values["metadata"] = {"fetched_at": now, "refresh_at": metadata.refresh_at(now)
                          if metadata_url else None, "error": "", "error_at": None}
    org = organizations.get(session, org_slug) if org_slug else None
    connection = Connection(organization_id=org.id if org else None, protocol=Protocol.SAML,
                            name=name.strip()[:200], enabled=enabled, jit_enabled=jit_enabled,
                            default_role=default_role, allow_any_domain=allow_any_domain,
                            settings=values, group_roles=dict(group_roles or {}),
                            sealed_secrets="")
    session.add(connection)
    session.flush()
    signing_keys.ensure_active(session, ctx, box)
    audit.record(session, ctx, "connection.create", target=f"connection:{connection.id}",
                 organization_id=connection.organization_id,
                 details={"protocol": "saml", "name": connection.name,
                          "idp_entity_id": values["idp_entity_id"],
                          "certificates": len(values["idp_certs"]),
                          "source": "url" if metadata_url else
                          "file" if metadata_xml is not None else "manual",
                          "options": {k: values[k] for k in OPTION_KEYS if k in values},
                          "group_roles": connection.group_roles, "enabled": enabled})
    return connection


def _options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(options) - OPTION_KEYS
    if unknown:
        raise ValidationError(f"Unknown SAML option(s): {', '.join(sorted(unknown))}.",
                              code="invalid_connection")
    values = {k: v for k, v in options.items() if v is not None and v != ""}
    skew = values.get("clock_skew")
    if skew is not None and not 0 <= int(skew) <= MAX_CLOCK_SKEW:
        raise ValidationError(f"The clock skew must be between 0 and {MAX_CLOCK_SKEW} seconds.",
                              code="invalid_connection")
    for key in ("idp_initiated_targets", "requested_authn_context"):
        if key in values:
            values[key] = list(values[key])
    return values


def _fetch(url: str, entity_id: str, signing_cert: str | None) -> IdpMetadata:
    raw = http.fetch_bytes(url, what="SAML metadata", max_bytes=METADATA_MAX_BYTES)
    return _parse(raw, entity_id, signing_cert)


def _parse(xml: bytes, entity_id: str, signing_cert: str | None) -> IdpMetadata:
    try:
        return parse_idp_metadata(xml, entity_id or None, signing_cert or None)
    except FederationError as error:
        raise ValidationError(error.safe_message, code="metadata_invalid") from None


def _manual(entity_id: str, sso_url: str, slo_url: str, certs: tuple[str, ...]) -> IdpMetadata:
    if not entity_id or not sso_url or not certs:
        raise ValidationError("A SAML connection needs IdP metadata (a URL or a file), or the "
                              "IdP's entity ID, sign-in URL and signing certificate.",
                              code="invalid_connection")
    for cert in certs:
        _check_cert(cert)
    return IdpMetadata(entity_id=entity_id, sso_url=sso_url, slo_url=slo_url,
                       signing_certs=tuple(_cert_body(c) for c in certs))


def _check_cert(text: str) -> None:
    try:
        check_certificate(text.strip())
    except FederationError as error:
        raise ValidationError(error.safe_message, code="invalid_certificate") from None


def _cert_body(text: str) -> str:
    return "".join(line for line in text.strip().splitlines() if "-----" not in line).replace(
        " ", "")


def _idp_fields(metadata: IdpMetadata) -> dict[str, Any]:
    return {"idp_entity_id": metadata.entity_id, "idp_sso_url": metadata.sso_url,
            "idp_slo_url": metadata.slo_url, "idp_certs": list(metadata.signing_certs),
            "metadata_valid_until": metadata.valid_until}


def refresh_metadata(session: Session, ctx: audit.Context, connection: Connection, *,
                     now: float | None = None) -> bool:
    """Fetch the connection's metadata again. On failure the last good metadata stays in use,
    and the error is kept on the connection and audited. Returns whether it succeeded."""
    values = dict(connection.settings)
    url = values.get("metadata_url")
    if not url:
        raise ValidationError("This connection was not configured with a metadata URL.",
                              code="no_metadata_url")
    now = time.time() if now is None else now
    status = dict(values.get("metadata") or {})
    try:
        metadata = _fetch(url, values["idp_entity_id"], values.get("metadata_signing_cert"))
    except (ValidationError, FederationError) as error:
        detail = getattr(error, "detail", "") or error.message
        status.update(error=detail[:500], error_at=now, refresh_at=now + 300)
        connection.settings = {**values, "metadata": status}
        audit.record(session, ctx, "connection.metadata_refresh",
                     target=f"connection:{connection.id}",
                     organization_id=connection.organization_id, outcome="failure",
                     reason=getattr(error, "code", "metadata_invalid"),
                     details={"url": url, "error": detail[:500]})
        return False
    fields = _idp_fields(metadata)
    changes = {k: "changed" for k, v in fields.items() if values.get(k) != v}
    status.update(fetched_at=now, refresh_at=metadata.refresh_at(now), error="", error_at=None)
    connection.settings = {**values, **fields, "metadata": status}
    audit.record(session, ctx, "connection.metadata_refresh",
                 target=f"connection:{connection.id}",
                 organization_id=connection.organization_id,
                 details={"url": url, "changed": sorted(changes),
                          "certificates": len(metadata.signing_certs)})
    return True


def is_due(connection: Connection, now: float | None = None) -> bool:
    """Whether the connection's metadata comes from a URL and its refresh time has come
    (cacheDuration/validUntil after a good fetch, five minutes after a failed one)."""
    now = time.time() if now is None else now
    return bool(connection.settings.get("metadata_url")) and (
        connection.settings.get("metadata") or {}).get("refresh_at", 0) <= now


def due_for_refresh(session: Session, now: float | None = None) -> list[Connection]:
    """SAML connections, enabled or not, whose metadata is due: a disabled connection is
    kept current so that enabling it again does not start with a stale certificate."""
    rows = session.scalars(sa.select(Connection).where(Connection.protocol == Protocol.SAML)
                           .order_by(Connection.id))
    return [c for c in rows if is_due(c, now)]


@dataclass
class RefreshPass:
    """What one pass over the due connections did, in connection order."""
    refreshed: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # connection id → error kept on it
    busy: list[int] = field(default_factory=list)  # another process was refreshing it


def refresh_due(db: Database, ctx: audit.Context, now: float | None = None) -> RefreshPass:
    """Refresh every connection whose metadata is due (``trellis worker`` at each pass and
    ``trellis saml refresh-metadata --due``), each in its own transaction through
    ``refresh_metadata``, so a failure is kept on the connection and audited exactly as an
    explicit refresh's is, and the next connection is still tried. A lock per connection
    keeps two workers from fetching the same metadata at once; whoever gets it second finds
    the connection no longer due (its transaction starts after the first one committed) or
    skips it while the first is still fetching."""
    report = RefreshPass()
    with db.sessions() as session:
        ids = [c.id for c in due_for_refresh(session, now)]
    for connection_id in ids:
        try:
            with (locks.exclusive(db, f"saml-metadata:{connection_id}",
                                  "This connection's metadata is being refreshed."),
                  db.transaction() as tx):
                row = tx.get(Connection, connection_id)
                if row is None or not is_due(row, now):
                    continue  # deleted, or refreshed meanwhile by someone else
                if refresh_metadata(tx, ctx, row, now=now):
                    report.refreshed.append(connection_id)
                else:
                    report.failed[connection_id] = row.settings["metadata"]["error"]
        except locks.Busy:
            report.busy.append(connection_id)
    return report


def settings_for(session: Session, box: SecretBox, connection: Connection,
                 base_url: str) -> SamlSettings:
    values = connection.settings
    urls = endpoints(base_url, connection.id)
    pairs = signing_keys.key_pairs(session, box, signing_keys.SAML)
    usable = [SpKey(p.certificate, p.private_key) for p in pairs
              if p.state in (KeyState.ACTIVE, KeyState.PREVIOUS)]
    upcoming = [p.certificate for p in pairs if p.state == KeyState.NEXT]
    previous = [p.certificate for p in pairs if p.state == KeyState.PREVIOUS]
    attributes = {k: tuple(v) for k, v in (values.get("attributes") or {}).items()}
    return SamlSettings(
        connection_id=connection.id, idp_entity_id=values["idp_entity_id"],
        idp_sso_url=values["idp_sso_url"], idp_slo_url=values.get("idp_slo_url", ""),
        idp_certs=tuple(values["idp_certs"]), sp_entity_id=urls["entity_id"],
        acs_url=urls["acs"], slo_url=urls["sls"], sp_keys=tuple(usable),
        sp_next_cert=(upcoming or previous or [""])[0],
        name_id_format=values.get("name_id_format") or
        "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified",
        sign_requests=bool(values.get("sign_requests", False)),
        want_encrypted=bool(values.get("want_encrypted", False)),
        allow_sha1=bool(values.get("allow_sha1", False)),
        clock_skew=int(values.get("clock_skew", 120)),
        idp_initiated=bool(values.get("idp_initiated", False)),
        idp_initiated_targets=tuple(values.get("idp_initiated_targets") or ()),
        emails_verified=bool(values.get("emails_verified", True)),
        attributes=attributes,
        requested_authn_context=tuple(values.get("requested_authn_context") or ()))


def set_options(session: Session, ctx: audit.Context, connection: Connection,
                **options: Any) -> Connection:
    """Change SAML options (IdP-initiated sign-in, SHA-1, encryption, mapping, ...)."""
    values = _options(options)
    connection.settings = {**connection.settings, **values}
    connections.mark_changed(connection)
    audit.record(session, ctx, "connection.update", target=f"connection:{connection.id}",
                 organization_id=connection.organization_id, details={"options": values})
    return connection


def replace_metadata(session: Session, ctx: audit.Context, connection: Connection,
                     xml: bytes) -> Connection:
    """New IdP metadata uploaded by an admin (e.g. with the IdP's next certificate beside the
    current one, for a rollover without an outage)."""
    values = dict(connection.settings)
    metadata = _parse(xml, values["idp_entity_id"], values.get("metadata_signing_cert"))
    connection.settings = {**values, **_idp_fields(metadata)}
    connections.mark_changed(connection)
    audit.record(session, ctx, "connection.metadata_upload",
                 target=f"connection:{connection.id}",
                 organization_id=connection.organization_id,
                 details={"certificates": len(metadata.signing_certs)})
    return connection
