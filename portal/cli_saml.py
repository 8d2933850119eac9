"""``trellis saml``: SAML connections, their IdP metadata, and the service provider's keys."""

from __future__ import annotations

from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext

from portal.errors import TrellisError
from portal.extensions import services


@click.group()
def saml() -> None:
    """SAML 2.0 connections, IdP metadata refresh, service provider keys."""


def _context():
    from portal.cli import cli_context
    return cli_context()


def _pairs(items, option, shape):
    from portal.cli import _pairs as pairs
    return pairs(items, option, shape)


@saml.command("create")
@click.argument("org_slug")
@click.option("--name", required=True, help="Shown on the sign-in button.")
@click.option("--metadata-url", default="", help="HTTPS URL of the IdP's metadata (refreshed).")
@click.option("--metadata-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The IdP's metadata as a file.")
@click.option("--metadata-signing-cert", type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path),
              help="Certificate that must have signed the metadata.")
@click.option("--entity-id", default="", help="The IdP's entity ID (manual setup, or to pick "
                                              "one IdP from an aggregate).")
@click.option("--sso-url", default="", help="Manual setup: the IdP's HTTP-Redirect sign-in URL.")
@click.option("--slo-url", default="", help="Manual setup: the IdP's HTTP-Redirect logout URL.")
@click.option("--cert", "certs", multiple=True, type=click.Path(exists=True, dir_okay=False,
                                                                path_type=Path),
              help="Manual setup: an IdP signing certificate (PEM; repeatable for rollover).")
@click.option("--group-role", "group_roles", multiple=True, metavar="GROUP=ROLE",
              help="Map an IdP group to an organization role (repeatable).")
@click.option("--attribute", "attribute_map", multiple=True, metavar="FIELD=NAME",
              help="Read FIELD (email, given_name, family_name, display_name, groups) from the "
                   "attribute NAME (friendly name or URI; repeatable).")
@click.option("--default-role", default="member", show_default=True)
@click.option("--allow-any-domain", is_flag=True,
              help="Accept emails outside the organization's verified domains.")
@click.option("--no-jit", is_flag=True, help="Only users who already exist may sign in.")
@click.option("--want-encrypted", is_flag=True, help="Refuse assertions that are not encrypted.")
@click.option("--sign-requests", is_flag=True, help="Sign AuthnRequests.")
@click.option("--enable", is_flag=True, help="Enable now (default: after a test sign-in).")
@with_appcontext
def saml_create(org_slug, name, metadata_url, metadata_file, metadata_signing_cert, entity_id,
                sso_url, slo_url, certs, group_roles, attribute_map, default_role,
                allow_any_domain, no_jit, want_encrypted, sign_requests, enable) -> None:
    """Create a SAML connection for ORG_SLUG from metadata (URL or file) or manual fields."""
    from portal.services import saml as saml_connections
    attributes = {k: [v] for k, v in _pairs(attribute_map, "--attribute", "FIELD=NAME").items()}
    s = services()
    with s.db.transaction() as session:
        created = saml_connections.create(
            session, _context(), s.secrets, org_slug=org_slug, name=name,
            metadata_url=metadata_url,
            metadata_xml=metadata_file.read_bytes() if metadata_file else None,
            metadata_signing_cert=metadata_signing_cert.read_text()
            if metadata_signing_cert else "",
            idp_entity_id=entity_id, idp_sso_url=sso_url, idp_slo_url=slo_url,
            idp_certs=tuple(path.read_text() for path in certs), enabled=enable,
            jit_enabled=not no_jit, default_role=default_role,
            allow_any_domain=allow_any_domain,
            group_roles=_pairs(group_roles, "--group-role", "GROUP=ROLE"),
            allow_insecure_loopback=current_app.config["ENV"] != "production",
            attributes=attributes or None, want_encrypted=want_encrypted or None,
            sign_requests=sign_requests or None)
        state = "enabled" if created.enabled else "disabled until you enable it"
        click.echo(f"created SAML connection {created.id} ({created.name}), {state}")
        _echo_endpoints(created.id)


def _echo_endpoints(connection_id: int) -> None:
    from portal.services.saml import endpoints
    base = current_app.config["BASE_URL"]
    if not base:
        click.echo("set TRELLIS_BASE_URL to print the URLs to give the identity provider")
        return
    for label, url in endpoints(base, connection_id).items():
        click.echo(f"  {label.replace('_', ' ')}: {url}")


@saml.command("set")
@click.argument("connection_id", type=int)
@click.option("--idp-initiated/--no-idp-initiated", default=None,
              help="Accept unsolicited (IdP-initiated) sign-ins.")
@click.option("--idp-initiated-target", "targets", multiple=True,
              help="A local path an IdP-initiated sign-in may land on (repeatable).")
@click.option("--allow-sha1/--no-allow-sha1", default=None,
              help="Accept SHA-1 signatures (weak; only for IdPs that cannot do better).")
@click.option("--want-encrypted/--no-want-encrypted", default=None)
@click.option("--sign-requests/--no-sign-requests", default=None)
@click.option("--clock-skew", type=int, default=None, help="Seconds of clock skew (0-300).")
@with_appcontext
def saml_set(connection_id, idp_initiated, targets, allow_sha1, want_encrypted, sign_requests,
             clock_skew) -> None:
    """Change the options of a SAML connection."""
    from portal.services import connections
    from portal.services import saml as saml_connections
    options = {"idp_initiated": idp_initiated, "allow_sha1": allow_sha1,
               "want_encrypted": want_encrypted, "sign_requests": sign_requests,
               "clock_skew": clock_skew, "idp_initiated_targets": list(targets) or None}
    with services().db.transaction() as session:
        row = connections.get(session, connection_id)
        saml_connections.set_options(session, _context(), row, **options)
        if row.settings.get("allow_sha1"):
            click.echo("warning: SHA-1 is accepted for this connection (weak)")
        click.echo(f"connection {row.id} updated")


@saml.command("refresh-metadata")
@click.argument("connection_id", type=int, required=False)
@click.option("--due", is_flag=True, help="Every connection whose metadata is due (for cron).")
@with_appcontext
def saml_refresh_metadata(connection_id: int | None, due: bool) -> None:
    """Fetch IdP metadata again; the last good copy stays in use when a fetch fails."""
    from portal.services import connections
    from portal.services import saml as saml_connections
    if bool(connection_id) == due:
        raise TrellisError("Name a connection or pass --due (not both).", code="usage")
    s = services()
    if due:
        report = saml_connections.refresh_due(s.db, _context())
    else:
        report = saml_connections.RefreshPass()
        with s.db.transaction() as session:
            row = connections.get(session, connection_id)
            if saml_connections.refresh_metadata(session, _context(), row):
                report.refreshed.append(connection_id)
            else:
                report.failed[connection_id] = row.settings["metadata"]["error"]
    for line, _failure in refresh_report_lines(report):
        click.echo(line)
    if due and not (report.refreshed or report.failed or report.busy):
        click.echo("no metadata is due")
    if report.failed:
        raise SystemExit(1)


def refresh_report_lines(report) -> list[tuple[str, bool]]:
    """One line per connection a metadata refresh touched, and whether it is a failure
    (the command and the worker say the same thing)."""
    lines = [(f"connection {each}: metadata refreshed", False) for each in report.refreshed]
    lines += [(f"connection {each}: refresh failed, last good metadata kept: {error}", True)
              for each, error in report.failed.items()]
    lines += [(f"connection {each}: metadata refresh already under way elsewhere", False)
              for each in report.busy]
    return lines


@saml.group("keys")
def saml_keys() -> None:
    """The service provider's signing and decryption keys (rollover without an outage)."""


@saml_keys.command("list")
@with_appcontext
def saml_keys_list() -> None:
    import sqlalchemy as sa

    from portal.models import SigningKey
    with services().db.sessions() as session:
        rows = session.scalars(sa.select(SigningKey).where(SigningKey.purpose == "saml")
                               .order_by(SigningKey.id)).all()
        for row in rows:
            click.echo(f"{row.id}\t{row.state.value}\tvalid until {row.not_after:%Y-%m-%d}")
        if not rows:
            click.echo("no keys yet (one is made with the first SAML connection)")


@saml_keys.command("generate")
@with_appcontext
def saml_keys_generate() -> None:
    """Step 1: publish a next key in every connection's SP metadata."""
    from portal.services import signing_keys
    s = services()
    with s.db.transaction() as session:
        signing_keys.ensure_active(session, _context(), s.secrets)
        key = signing_keys.generate(session, _context(), s.secrets)
        click.echo(f"key {key.id} published as next; once the IdPs have refreshed the SP "
                   f"metadata, run: trellis saml keys activate {key.id}")


@saml_keys.command("activate")
@click.argument("key_id", type=int)
@with_appcontext
def saml_keys_activate(key_id: int) -> None:
    """Step 2: the next key signs; the old one stays published and keeps decrypting."""
    from portal.services import signing_keys
    with services().db.transaction() as session:
        key = signing_keys.activate(session, _context(), key_id)
        click.echo(f"key {key.id} is active; retire the previous key once no IdP uses it")


@saml_keys.command("retire")
@click.argument("key_id", type=int)
@with_appcontext
def saml_keys_retire(key_id: int) -> None:
    """Step 3: stop publishing and using a replaced key."""
    from portal.services import signing_keys
    with services().db.transaction() as session:
        key = signing_keys.retire(session, _context(), key_id)
        click.echo(f"key {key.id} retired")
