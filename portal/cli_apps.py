"""``trellis app …`` and ``trellis keys rotate-signing``: the OpenID Provider's registry of
vendor apps and its token signing keys."""

from __future__ import annotations

import json
from pathlib import Path

import click

from portal.extensions import services


def register(main: click.Group, keys: click.Group, cli_context) -> None:
    @main.group("app")
    def app_group() -> None:
        """Vendor apps that sign their users in through Trellis (OAuth/OpenID clients)."""

    @app_group.command("create")
    @click.argument("name")
    @click.option("--redirect-uri", "redirect_uris", multiple=True,
                  help="An exact redirect URI (repeatable).")
    @click.option("--public", is_flag=True,
                  help="A browser or mobile app that cannot keep a secret (PKCE only).")
    @click.option("--auth-method", type=click.Choice(["client_secret_basic",
                                                      "client_secret_post",
                                                      "private_key_jwt"]),
                  help="How a confidential app authenticates (default client_secret_basic).")
    @click.option("--jwks-file", type=click.Path(exists=True, dir_okay=False),
                  help="The app's public JWK set, for private_key_jwt.")
    @click.option("--grant", "grants", multiple=True,
                  type=click.Choice(["authorization_code", "refresh_token",
                                     "client_credentials", "device_code"]),
                  help="An allowed grant (repeatable; default authorization_code and "
                       "refresh_token).")
    @click.option("--scope", "scopes", multiple=True,
                  help="An allowed scope (repeatable; default openid profile email org roles).")
    @click.option("--org", "orgs", multiple=True,
                  help="An organization whose members may use the app (repeatable).")
    @click.option("--access-token-seconds", type=int, default=600, show_default=True)
    @click.option("--refresh-token-seconds", type=int, default=30 * 86400, show_default=True)
    @click.option("--pre-approved", is_flag=True,
                  help="A first-party app: no consent page.")
    @click.option("--logo-url", default="", help="https URL of the logo on the consent page.")
    @click.option("--post-logout-redirect-uri", "logout_uris", multiple=True)
    @click.option("--backchannel-logout-uri", default="")
    @click.option("--frontchannel-logout-uri", default="",
                  help="Loaded in a hidden frame when the user signs out of Trellis.")
    @click.option("--initiate-login-uri", default="",
                  help="Where the portal's app tile sends members (starts the app's login).")
    @click.option("--id-token-alg", type=click.Choice(["RS256", "ES256"]), default="RS256",
                  show_default=True, help="How the app's ID tokens are signed.")
    @click.option("--pairwise", is_flag=True,
                  help="Give the app its own sub for each user (pairwise subject).")
    @click.option("--sector", default="",
                  help="Sector host for --pairwise (default: the redirect URIs' host).")
    @click.option("--sector-uri", default="",
                  help="Sector identifier URI for --pairwise: an https JSON document listing "
                       "every redirect URI; the sector is its host.")
    @click.option("--access-token-alg", type=click.Choice(["RS256", "ES256"]),
                  default="RS256", show_default=True,
                  help="How the app's access tokens are signed.")
    def app_create(name, redirect_uris, public, auth_method, jwks_file, grants, scopes, orgs,
                   access_token_seconds, refresh_token_seconds, pre_approved, logo_url,
                   logout_uris, backchannel_logout_uri, frontchannel_logout_uri,
                   initiate_login_uri, id_token_alg, pairwise, sector, sector_uri,
                   access_token_alg) -> None:
        """Register an app; a client secret is shown once and stored only as a hash."""
        from portal.services import apps
        jwks = json.loads(Path(jwks_file).read_text()) if jwks_file else {}
        spec = apps.AppSpec(
            name=name, redirect_uris=list(redirect_uris),
            client_type="public" if public else "confidential",
            auth_method=auth_method or "",
            grant_types=[apps.DEVICE_CODE if g == "device_code" else g for g in grants]
            or [apps.AUTHORIZATION_CODE, apps.REFRESH_TOKEN],
            scopes=list(scopes) or list(apps.DEFAULT_SCOPES), organizations=list(orgs),
            access_token_seconds=access_token_seconds,
            refresh_token_seconds=refresh_token_seconds, consent_required=not pre_approved,
            logo_url=logo_url, post_logout_redirect_uris=list(logout_uris),
            backchannel_logout_uri=backchannel_logout_uri, jwks=jwks,
            frontchannel_logout_uri=frontchannel_logout_uri,
            initiate_login_uri=initiate_login_uri, id_token_signed_response_alg=id_token_alg,
            subject_type="pairwise" if pairwise else "public", sector_identifier=sector,
            sector_identifier_uri=sector_uri, access_token_signed_response_alg=access_token_alg)
        from flask import current_app
        loopback = current_app.config["ENV"] != "production"
        with services().db.transaction() as session:
            app, secret = apps.create(session, cli_context(), spec,
                                      allow_insecure_loopback=loopback)
            click.echo(f"created app {app.name}")
            click.echo(f"client_id: {app.client_id}")
        if secret:
            click.echo(f"client_secret (shown once): {secret}")

    @app_group.command("list")
    def app_list() -> None:
        """List apps (secrets are never shown again)."""
        from portal.services import apps
        with services().db.sessions() as session:
            rows = apps.list_all(session)
            if not rows:
                click.echo("no apps")
            for row in rows:
                state = "enabled" if row.enabled else "disabled"
                click.echo("\t".join([
                    row.client_id, state, row.client_type.value, row.auth_method,
                    ",".join(row.organizations) or "-",
                    " ".join(row.grant_types), row.name]))

    @app_group.command("rotate-secret")
    @click.argument("client_id")
    @click.option("--grace-seconds", type=int, default=86_400, show_default=True,
                  help="How long the old secret keeps working (0: it stops at once).")
    def app_rotate_secret(client_id: str, grace_seconds: int) -> None:
        """Replace an app's secret; the old one keeps working for the grace period."""
        from portal.services import apps
        with services().db.transaction() as session:
            secret = apps.rotate_secret(session, cli_context(), client_id, grace_seconds)
        click.echo(f"client_secret (shown once): {secret}")

    @app_group.command("disable")
    @click.argument("client_id")
    def app_disable(client_id: str) -> None:
        """Disable an app: no new sign-ins or tokens, and its tokens stop working."""
        from portal.services import apps
        with services().db.transaction() as session:
            apps.set_enabled(session, cli_context(), client_id, False)
        click.echo(f"app {client_id} disabled")

    @app_group.command("enable")
    @click.argument("client_id")
    def app_enable(client_id: str) -> None:
        """Enable a disabled app again."""
        from portal.services import apps
        with services().db.transaction() as session:
            apps.set_enabled(session, cli_context(), client_id, True)
        click.echo(f"app {client_id} enabled")

    @keys.command("rotate-signing")
    @click.option("--force", is_flag=True,
                  help="Rotate even while the previous key still verifies live tokens.")
    @click.option("--alg", type=click.Choice(["RS256", "ES256"]),
                  help="Rotate only this ring (default: both).")
    def keys_rotate_signing(force: bool, alg: str | None) -> None:
        """Start signing tokens with the published next key and publish a new next key; the
        replaced key stays in the JWKS until its tokens have expired."""
        from portal.services import provider_keys
        s = services()
        with s.db.transaction() as session:
            done = provider_keys.rotate(session, cli_context(), s.secrets, force=force, alg=alg)
        for name, result in done.items():
            click.echo(f"{name}: signing with key {result['active']}; key "
                       f"{result['previous']} stays published until its tokens expire; next "
                       f"key {result['next']} published")
