"""The ``trellis`` command: database, organizations, domains, users, audit, demo, serve.

Every error is one line on stderr with a non-zero exit code; the detail goes to the log.
Every change is audited with the operating-system user as the actor.
"""

from __future__ import annotations

import getpass
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path

import click
import sqlalchemy.exc
from flask import current_app
from flask.cli import FlaskGroup, with_appcontext

from policies import PolicyError
from portal import audit
from portal.config import ConfigError
from portal.errors import TrellisError
from portal.extensions import services


class TrellisGroup(FlaskGroup):
    """Turns every failure into one plain line instead of a traceback."""

    HIDDEN = frozenset({"limiter"})  # flask-limiter's own maintenance commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in super().list_commands(ctx) if name not in self.HIDDEN]

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TrellisError as exc:
            _fail(exc.message)
        except PolicyError as exc:
            _fail(f"{exc.safe_message} {exc.detail}".strip())
        except ConfigError as exc:
            _fail(f"configuration: {exc}")
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except sqlalchemy.exc.OperationalError as exc:
            first_line = str(exc.orig or exc).splitlines()[0]
            _fail(f"the database could not be used ({first_line}); check DATABASE_URL, and "
                  "run `trellis db upgrade` if its schema is behind")
        except BrokenPipeError:  # e.g. `trellis audit export | head`
            sys.stderr.close()
            sys.exit(0)
        except Exception as exc:
            reference = secrets.token_hex(6)
            where = _log_detail(reference, exc)
            _fail(f"unexpected failure ({type(exc).__name__}); details under reference "
                  f"{reference} in {where}")


def _log_detail(reference: str, exc: Exception) -> str:
    """The traceback goes to a file, never to the operator's terminal."""
    import traceback

    from portal.config import load_settings
    try:
        folder = Path(load_settings()["INSTANCE_PATH"])
    except ConfigError:
        folder = Path("instance")
    path = folder / "cli-errors.log"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write(f"--- {datetime.now(UTC).isoformat()} reference {reference}\n")
            handle.write("".join(traceback.format_exception(exc)))
    except OSError:
        return "no log (the instance folder is not writable)"
    return str(path)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _create_app():
    from portal import create_app
    try:
        return create_app()
    except ConfigError as exc:
        _fail(f"configuration: {exc}")


@click.group(cls=TrellisGroup, create_app=_create_app, add_default_commands=False,
             add_version_option=False, load_dotenv=False)
def main() -> None:
    """Trellis partner portal and identity federation broker."""


# Flask's --app, --env-file and --debug do not apply: the app and its settings come from
# create_app() and the environment.
main.params = [param for param in main.params if param.name not in ("app", "env_file", "debug")]


def cli_context() -> audit.Context:
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return audit.Context(actor=f"cli:{who}", request_id=f"cli-{secrets.token_hex(6)}")


# --- database ---------------------------------------------------------------------------

@main.group()
def db() -> None:
    """Database schema migrations."""


@db.command("upgrade")
@click.argument("revision", default="head")
@with_appcontext
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: the latest)."""
    from portal import migrate
    migrate.upgrade(current_app.config["DATABASE_URL"], revision)
    click.echo(f"database at {revision}")


@db.command("downgrade")
@click.argument("revision")
@with_appcontext
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION (``base`` empties the schema)."""
    from portal import migrate
    migrate.downgrade(current_app.config["DATABASE_URL"], revision)
    click.echo(f"database at {revision}")


@db.command("current")
@with_appcontext
def db_current() -> None:
    """Show the database's revision and the code's."""
    from portal import migrate
    with services().db.engine.connect() as connection:
        revision = migrate.current_revision(connection)
    click.echo(f"database: {revision or 'empty'}  code: {migrate.head_revision()}")


# --- organizations and domains ----------------------------------------------------------

@main.group()
def org() -> None:
    """Organizations."""


@org.command("create")
@click.argument("slug")
@click.option("--name", required=True, help="Display name.")
@click.option("--kind", type=click.Choice(["partner", "vendor", "internal"]), default="partner",
              show_default=True)
@click.option("--primary-color", help="Branding colour, e.g. #0b6e4f.")
@click.option("--logo-url", help="https:// URL of the logo image.")
@click.option("--footer-text", help="Text shown at the foot of every page.")
@with_appcontext
def org_create(slug, name, kind, primary_color, logo_url, footer_text) -> None:
    """Create an organization."""
    from portal.services import organizations
    branding = {"primary_color": primary_color, "logo_url": logo_url, "footer_text": footer_text}
    with services().db.transaction() as session:
        created = organizations.create(session, cli_context(), slug=slug, name=name, kind=kind,
                                       branding=branding)
        click.echo(f"created organization {created.slug} ({created.name})")


@org.command("list")
@with_appcontext
def org_list() -> None:
    """List organizations."""
    from portal.services import organizations
    with services().db.sessions() as session:
        rows = organizations.list_all(session)
        if not rows:
            click.echo("no organizations")
        for item in rows:
            click.echo(f"{item.slug}\t{item.kind.value}\t{item.status.value}\t{item.name}")


@org.command("show")
@click.argument("slug")
@with_appcontext
def org_show(slug: str) -> None:
    """Show one organization with its domains and member count."""
    from portal.services import organizations, users
    with services().db.sessions() as session:
        item = organizations.get(session, slug)
        members = users.list_users(session, slug)
        click.echo(f"slug:     {item.slug}\nname:     {item.name}\nkind:     {item.kind.value}\n"
                   f"status:   {item.status.value}\nmembers:  {len(members)}")
        for key, value in sorted(item.branding.items()):
            click.echo(f"branding: {key} = {value}")
        for domain in item.domains:
            state = ("verified, suspended (its TXT record is gone)"
                     if domain.verified and domain.suspended_at is not None
                     else "verified" if domain.verified
                     else f"unverified (token {domain.verification_token})")
            click.echo(f"domain:   {domain.name} {state}")


@org.command("suspend")
@click.argument("slug")
@click.option("--reason", default="", help="Recorded in the audit trail.")
def org_suspend(slug: str, reason: str) -> None:
    """Suspend an organization: its policy denies everything to everyone but operators."""
    _set_org_status(slug, "suspended", reason)


@org.command("resume")
@click.argument("slug")
def org_resume(slug: str) -> None:
    """Lift an organization's suspension."""
    _set_org_status(slug, "active", "")


def _set_org_status(slug: str, status: str, reason: str) -> None:
    from portal.services import organizations
    with services().db.transaction() as session:
        changed = organizations.set_status(session, cli_context(), slug, status, reason)
        click.echo(f"organization {changed.slug} is {changed.status.value}")
    services().policy.invalidate(slug)


@org.command("mfa-policy")
@click.argument("slug")
@click.argument("policy", type=click.Choice(["off", "admins", "all", "risk"]))
@with_appcontext
def org_mfa_policy(slug: str, policy: str) -> None:
    """Require a second factor of nobody, of the organization's admins, or of all members."""
    from portal.services import mfa, organizations
    with services().db.transaction() as session:
        item = organizations.get(session, slug)
        mfa.set_policy(session, cli_context(), item, policy)
        click.echo(f"MFA policy of {item.slug}: {policy}")


@org.command("risk-thresholds")
@click.argument("slug")
@click.option("--step-up", default="", help="Score (1-100) from which the second factor is "
              "asked under the risk policy; empty: the platform's default.")
@click.option("--deny", default="", help="Score (1-101) from which members without a second "
              "factor are stopped; 101: never; empty: the platform's default.")
@with_appcontext
def org_risk_thresholds(slug: str, step_up: str, deny: str) -> None:
    """Set an organization's own risk thresholds (both options empty: the defaults)."""
    from flask import current_app

    from portal.services import mfa, organizations
    config = current_app.config
    defaults = (config["RISK_STEP_UP_AT"], config["RISK_DENY_AT"])
    with services().db.transaction() as session:
        item = organizations.get(session, slug)
        mfa.set_risk_thresholds(session, cli_context(), item, step_up, deny, defaults)
        click.echo(f"risk thresholds of {item.slug}: step-up from "
                   f"{item.risk_step_up_at or defaults[0]}, deny from "
                   f"{item.risk_deny_at or defaults[1]}")


@org.command("branding")
@click.argument("slug")
@click.option("--primary-color", help="Branding colour, e.g. #0b6e4f.")
@click.option("--logo-url", help="https:// URL of the logo image.")
@click.option("--footer-text", help="Text shown at the foot of every page.")
def org_branding(slug, primary_color, logo_url, footer_text) -> None:
    """Replace an organization's branding (options left out are cleared)."""
    from portal.services import organizations
    with services().db.transaction() as session:
        changed = organizations.update_branding(session, cli_context(), slug, {
            "primary_color": primary_color, "logo_url": logo_url, "footer_text": footer_text})
        click.echo(f"branding of {changed.slug}: " + (", ".join(
            f"{k}={v}" for k, v in sorted(changed.branding.items())) or "none"))


@main.group()
def role() -> None:
    """Organization roles granted by hand (roles from an identity provider follow it)."""


@role.command("grant")
@click.argument("email")
@click.argument("slug")
@click.argument("role_name")
def role_grant(email: str, slug: str, role_name: str) -> None:
    """Grant ROLE_NAME in organization SLUG to the user EMAIL."""
    from portal.services import roles
    known = services().policy.files.roles() | {"member"}
    user, org, changed = _change_role(email, slug, lambda session, user, org: roles.grant_manually(
        session, cli_context(), user, org, role_name, known))
    click.echo(f"{user.email} {'now holds' if changed else 'already holds'} {role_name} "
               f"in {org.slug}")


@role.command("revoke")
@click.argument("email")
@click.argument("slug")
@click.argument("role_name")
def role_revoke(email: str, slug: str, role_name: str) -> None:
    """Revoke a role granted by hand."""
    from portal.services import roles
    user, org, changed = _change_role(email, slug, lambda session, user, org: roles.revoke_manually(
        session, cli_context(), user, org, role_name))
    if not changed:
        raise TrellisError(f"{user.email} holds no hand-granted {role_name} in {org.slug}.",
                           code="not_granted")
    click.echo(f"revoked {role_name} from {user.email} in {org.slug}")


def _change_role(email: str, slug: str, change):
    """Run one grant change in a transaction; the policy engine sees it at once."""
    from portal.services import organizations, users
    s = services()
    with s.db.transaction() as session:
        user = users.get_by_email(session, email)
        org = organizations.get(session, slug)
        changed = change(session, user, org)
    s.policy.invalidate(slug)
    return user, org, changed


@role.command("list")
@click.argument("slug")
def role_list(slug: str) -> None:
    """List the role grants of an organization, with where each came from."""
    import sqlalchemy as sa

    from portal.models import RoleGrant, User
    from portal.services import organizations
    with services().db.sessions() as session:
        org = organizations.get(session, slug)
        rows = session.execute(sa.select(User.email, RoleGrant.role, RoleGrant.source)
                               .join(User, User.id == RoleGrant.user_id)
                               .where(RoleGrant.organization_id == org.id)
                               .order_by(User.email, RoleGrant.role)).all()
    if not rows:
        click.echo("no role grants (every active member holds member)")
    for email, role_name, source in rows:
        click.echo(f"{email}\t{role_name}\t{source}")


@main.group()
def domain() -> None:
    """Email domains of organizations (used to route sign-ins)."""


@domain.command("add")
@click.argument("slug")
@click.argument("name")
@with_appcontext
def domain_add(slug: str, name: str) -> None:
    """Claim domain NAME for organization SLUG (unverified until verified)."""
    from portal.services import organizations
    with services().db.transaction() as session:
        added = organizations.add_domain(session, cli_context(), slug, name)
        click.echo(f"added {added.name} to {slug}; verification token {added.verification_token}")


@domain.command("verify")
@click.argument("name")
@click.option("--org", "slug", help="The organization whose claim to verify (when several "
              "organizations claim NAME).")
@click.option("--manual", is_flag=True, help="Mark verified on the operator's word (audited), "
              "without the DNS check.")
@with_appcontext
def domain_verify(name: str, slug: str | None, manual: bool) -> None:
    """Verify a domain: look its TXT record up now (or --manual)."""
    from portal.services import domains, organizations
    if manual:
        with services().db.transaction() as session:
            verified = organizations.verify_domain_manually(session, cli_context(), name, slug)
            click.echo(f"{verified.name} is verified")
        return
    with services().db.sessions() as session:
        found = _claimed_domain(session, name, slug)
        org_id, domain_id = found.organization_id, found.id
    result = domains.verify(services().db, cli_context(), org_id, domain_id,
                            domains.dns_settings(current_app.config))
    if result.error is not None:
        raise result.error
    click.echo(f"{result.name} is verified")


def _claimed_domain(session, name: str, slug: str | None):
    import sqlalchemy as sa

    from portal.models import Domain, Organization
    from portal.validation import normalize_domain
    query = sa.select(Domain).where(Domain.name == normalize_domain(name))
    if slug:
        query = query.join(Organization).where(Organization.slug == slug.lower())
    found = list(session.scalars(query))
    if len(found) != 1:
        raise TrellisError(f"The domain {name} has not been added to any organization."
                           if not found else
                           f"Several organizations claim {name}; name one with --org.",
                           code="unknown_domain")
    return found[0]


@domain.command("reverify")
@with_appcontext
def domain_reverify() -> None:
    """Look up every verified domain's TXT record again; suspend home-realm discovery for
    those whose record is gone, restore those whose record is back (run it from cron)."""
    from portal.services import domains
    summary = domains.reverify_all(services().db, cli_context(),
                                   domains.dns_settings(current_app.config))
    click.echo(f"checked {summary.checked}: {summary.still_valid} still verified, "
               f"{len(summary.suspended)} suspended, {len(summary.restored)} restored, "
               f"{len(summary.failed)} without an answer")
    for name in summary.suspended:
        click.echo(f"suspended {name}: its verification record is gone")
    for name in summary.restored:
        click.echo(f"restored {name}")
    for name in summary.failed:
        click.echo(f"no answer for {name} (left as it was)")
    if summary.failed:
        sys.exit(2)


# --- users ------------------------------------------------------------------------------

def _read_password(password_stdin: bool, no_password: bool) -> str | None:
    if no_password:
        return None
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


@main.group()
def user() -> None:
    """User accounts."""


@user.command("create")
@click.argument("email")
@click.option("--name", "display_name", default="", help="Display name.")
@click.option("--org", "org_slug", help="Make the user a member of this organization.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--no-password", is_flag=True, help="No local password (federated sign-in only).")
@with_appcontext
def user_create(email, display_name, org_slug, password_stdin, no_password) -> None:
    """Create a user."""
    _create_user(email, display_name, org_slug, _read_password(password_stdin, no_password),
                 operator=False)


@user.command("list")
@click.option("--org", "org_slug", help="Only members of this organization.")
@with_appcontext
def user_list(org_slug: str | None) -> None:
    """List users."""
    from portal.services import users
    with services().db.sessions() as session:
        rows = users.list_users(session, org_slug)
        if not rows:
            click.echo("no users")
        for item in rows:
            orgs = ",".join(m.organization.slug for m in item.memberships) or "-"
            role = "operator" if item.is_operator else "user"
            click.echo(f"{item.email}\t{item.status.value}\t{role}\t{orgs}")


@user.command("suspend")
@click.argument("email")
@click.option("--reason", default="", help="Recorded in the audit trail.")
@with_appcontext
def user_suspend(email: str, reason: str) -> None:
    """Suspend a user and end all their sessions."""
    from portal.services import users
    with services().db.transaction() as session:
        suspended = users.suspend(session, cli_context(), email, reason)
        click.echo(f"suspended {suspended.email}")


@user.command("unlock")
@click.argument("email")
@click.option("--reason", default="", help="Recorded in the audit trail.")
@with_appcontext
def user_unlock(email: str, reason: str) -> None:
    """Give back an account that was locked ("this wasn't me") or suspended, once its owner
    is known to be in control; they then choose a new password with a reset link."""
    from portal.services import takeover
    with services().db.transaction() as session:
        row = takeover.unlock(session, cli_context(), email, reason)
        click.echo(f"unlocked {row.email}")


@user.command("mfa-reset")
@click.argument("email")
@click.option("--reason", default="", help="Recorded in the audit trail.")
@with_appcontext
def user_mfa_reset(email: str, reason: str) -> None:
    """Remove every second factor and recovery code of a user who lost them (after checking
    who they are). They set up a new one at their next sign-in if a policy requires it."""
    from portal.services import mfa, users
    with services().db.transaction() as session:
        row = users.get_by_email(session, email)
        removed = mfa.reset(session, cli_context(), row, reason)
        click.echo(f"{row.email}: removed {removed} second factor(s) and the recovery codes")


@user.command("verify-identity")
@click.argument("email")
@click.option("--method", required=True, type=click.Choice(["in_person", "document"]),
              help="How the person was checked.")
@click.option("--note", required=True, help="Which document or who checked; audited.")
@with_appcontext
def user_verify_identity(email: str, method: str, note: str) -> None:
    """Record that an operator checked the person behind an account (identity assurance
    level 3: policies see r.sub.identity_level, apps see acr urn:trellis:loa:3)."""
    from portal import assurance
    from portal.services import users
    with services().db.transaction() as session:
        row = users.get_by_email(session, email)
        assurance.verify(session, cli_context(), row, method, note)
        click.echo(f"{row.email}: identity level {row.identity_level} ({method})")


@main.group()
def admin() -> None:
    """Platform operators."""


@admin.command("create")
@click.argument("email")
@click.option("--name", "display_name", default="", help="Display name.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@with_appcontext
def admin_create(email, display_name, password_stdin) -> None:
    """Create a platform operator."""
    _create_user(email, display_name, None, _read_password(password_stdin, False), operator=True)


def _create_user(email, display_name, org_slug, password, *, operator: bool) -> None:
    from portal.services import users
    s = services()
    with s.db.transaction() as session:
        created = users.create(session, cli_context(), s.passwords, email=email,
                               password=password, display_name=display_name,
                               org_slug=org_slug, operator=operator)
        kind = "operator" if operator else "user"
        click.echo(f"created {kind} {created.email}")


# --- connections and keys -----------------------------------------------------------------

@main.group()
def connection() -> None:
    """Identity-provider connections (single sign-on)."""


@connection.command("create-oidc")
@click.argument("org_slug", required=False)
@click.option("--platform", is_flag=True, help="No organization: a social/BYOI sign-in.")
@click.option("--name", required=True, help="Shown on the sign-in button.")
@click.option("--preset", type=click.Choice(["oidc", "google", "oauth2", "github"]),
              default="oidc", show_default=True)
@click.option("--issuer", default="", help="Issuer URL (its discovery document is fetched).")
@click.option("--client-id", required=True)
@click.option("--client-secret-stdin", is_flag=True, required=True,
              help="Read the client secret from standard input (never from the command line).")
@click.option("--scope", "scopes", multiple=True, help="Scope to request (repeatable).")
@click.option("--group-claim", default="", help="Claim that lists the user's groups.")
@click.option("--claim", "claim_map", multiple=True, metavar="FIELD=CLAIM",
              help="Read FIELD (email, email_verified, given_name, family_name, name) from "
                   "another claim (repeatable).")
@click.option("--group-role", "group_roles", multiple=True, metavar="GROUP=ROLE",
              help="Map an IdP group to an organization role (repeatable).")
@click.option("--default-role", default="member", show_default=True)
@click.option("--allow-any-domain", is_flag=True,
              help="Accept emails outside the organization's verified domains.")
@click.option("--no-jit", is_flag=True, help="Only users who already exist may sign in.")
@click.option("--enable", is_flag=True, help="Enable now (default: after a test sign-in).")
@click.option("--authorization-endpoint", default="", help="oauth2 preset only.")
@click.option("--token-endpoint", default="", help="oauth2 preset only.")
@click.option("--userinfo-endpoint", default="", help="oauth2 preset only.")
@with_appcontext
def connection_create_oidc(org_slug, platform, name, preset, issuer, client_id,
                           client_secret_stdin, scopes, group_claim, claim_map, group_roles,
                           default_role,
                           allow_any_domain, no_jit, enable, authorization_endpoint,
                           token_endpoint, userinfo_endpoint) -> None:
    """Create an OpenID Connect connection for ORG_SLUG (or --platform)."""
    from portal.services import connections
    if bool(org_slug) == bool(platform):
        raise TrellisError("Name an organization or pass --platform (not both).",
                           code="usage")
    mapping = _pairs(group_roles, "--group-role", "GROUP=ROLE")
    claims = _pairs(claim_map, "--claim", "FIELD=CLAIM")
    unknown = set(claims) - {"email", "email_verified", "given_name", "family_name", "name"}
    if unknown:
        raise TrellisError(f"--claim cannot map {', '.join(sorted(unknown))}.", code="usage")
    secret = sys.stdin.readline().rstrip("\n")
    s = services()
    with s.db.transaction() as session:
        created = connections.create_oidc(
            session, cli_context(), s.secrets, org_slug=org_slug, name=name,
            client_id=client_id, client_secret=secret, preset=preset, issuer=issuer,
            enabled=enable, jit_enabled=not no_jit, default_role=default_role,
            allow_any_domain=allow_any_domain, group_roles=mapping,
            scopes=tuple(scopes), group_claim=group_claim, claims=claims,
            authorization_endpoint=authorization_endpoint, token_endpoint=token_endpoint,
            userinfo_endpoint=userinfo_endpoint)
        state = "enabled" if created.enabled else "disabled until you enable it"
        click.echo(f"created connection {created.id} ({created.name}), {state}")


@connection.command("create-ldap")
@click.argument("org_slug")
@click.option("--name", required=True, help="Shown to operators (users see a password form).")
@click.option("--directory", type=click.Choice(["openldap", "ad"]), default="openldap",
              show_default=True, help="Defaults for filters, attributes and nested groups.")
@click.option("--url", "urls", multiple=True, required=True,
              help="ldaps://host[:port] or ldap://host[:port] (StartTLS); repeat for failover.")
@click.option("--bind-dn", required=True, help="The service account that searches.")
@click.option("--bind-password-stdin", is_flag=True, required=True,
              help="Read the service account's password from standard input.")
@click.option("--user-base", required=True, help="Base DN under which users are searched.")
@click.option("--user-filter", default="", help="LDAP filter that selects user entries.")
@click.option("--login-attribute", "login_attributes", multiple=True,
              help="Attribute the typed name is matched against (repeatable).")
@click.option("--group-base", default="", help="Base DN of groups (none: no groups).")
@click.option("--group-filter", default="")
@click.option("--nested-groups", type=click.Choice(["none", "recursive", "ad"]), default=None,
              help="How nested groups are followed (default: recursive; ad for AD).")
@click.option("--attribute", "attribute_map", multiple=True, metavar="FIELD=ATTRIBUTE",
              help="Read FIELD (subject, username, email, given_name, family_name, "
                   "display_name) from ATTRIBUTE (repeatable).")
@click.option("--disabled-attribute", default="",
              help="Entries holding one of --disabled-value in it count as disabled.")
@click.option("--disabled-value", "disabled_values", multiple=True)
@click.option("--ca-cert", type=click.File("r"), default=None,
              help="PEM file of the CA that signed the directory's certificate.")
@click.option("--no-starttls", is_flag=True, help="Do not use StartTLS on ldap:// URLs.")
@click.option("--allow-plain", is_flag=True,
              help="Allow plain LDAP without TLS (insecure: passwords cross the network).")
@click.option("--connect-timeout", type=float, default=5, show_default=True)
@click.option("--read-timeout", type=float, default=10, show_default=True)
@click.option("--page-size", type=int, default=500, show_default=True)
@click.option("--group-role", "group_roles", multiple=True, metavar="GROUP=ROLE",
              help="Map a directory group (its cn) to an organization role (repeatable).")
@click.option("--default-role", default="member", show_default=True)
@click.option("--allow-any-domain", is_flag=True,
              help="Accept emails outside the organization's verified domains.")
@click.option("--no-jit", is_flag=True, help="Only users who already exist may sign in.")
@click.option("--enable", is_flag=True, help="Enable now (default: after a test).")
@with_appcontext
def connection_create_ldap(org_slug, name, directory, urls, bind_dn, bind_password_stdin,
                           user_base, user_filter, login_attributes, group_base, group_filter,
                           nested_groups, attribute_map, disabled_attribute, disabled_values,
                           ca_cert, no_starttls, allow_plain, connect_timeout, read_timeout,
                           page_size, group_roles, default_role, allow_any_domain, no_jit,
                           enable) -> None:
    """Create an LDAP or Active Directory connection for ORG_SLUG."""
    from federation.ldap import MAPPED_FIELDS
    from portal.services import connections
    attributes = _pairs(attribute_map, "--attribute", "FIELD=ATTRIBUTE")
    unknown = set(attributes) - set(MAPPED_FIELDS)
    if unknown:
        raise TrellisError(f"--attribute cannot map {', '.join(sorted(unknown))}.",
                           code="usage")
    password = sys.stdin.readline().rstrip("\n")
    s = services()
    with s.db.transaction() as session:
        created = connections.create_ldap(
            session, cli_context(), s.secrets, org_slug=org_slug, name=name,
            bind_password=password, directory=directory, enabled=enable,
            jit_enabled=not no_jit, default_role=default_role,
            allow_any_domain=allow_any_domain,
            group_roles=_pairs(group_roles, "--group-role", "GROUP=ROLE"), urls=urls,
            bind_dn=bind_dn, user_base=user_base, user_filter=user_filter,
            login_attributes=login_attributes, group_base=group_base,
            group_filter=group_filter, nested_groups=nested_groups, attributes=attributes,
            disabled_attribute=disabled_attribute, disabled_values=disabled_values,
            ca_cert_pem=ca_cert.read() if ca_cert else "", start_tls=not no_starttls,
            allow_plain=allow_plain, connect_timeout=connect_timeout,
            read_timeout=read_timeout, page_size=page_size)
        state = "enabled" if created.enabled else "disabled until you enable it"
        click.echo(f"created connection {created.id} ({created.name}), {state}")
        if connections._insecure(created.settings):
            click.echo("warning: plain LDAP without TLS: passwords cross the network "
                       "readable by anyone on the path", err=True)


@connection.command("set-bind-password")
@click.argument("connection_id", type=int)
@click.option("--bind-password-stdin", is_flag=True, required=True,
              help="Read the new service-account password from standard input.")
@with_appcontext
def connection_set_bind_password(connection_id: int, bind_password_stdin: bool) -> None:
    """Replace an LDAP connection's service-account password."""
    from portal.services import connections
    password = sys.stdin.readline().rstrip("\n")
    s = services()
    with s.db.transaction() as session:
        row = connections.set_bind_password(session, cli_context(), s.secrets, connection_id,
                                            password)
        click.echo(f"connection {row.id}: bind password replaced")


def _pairs(items: tuple[str, ...], option: str, shape: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key or not value:
            raise TrellisError(f"{option} takes {shape}, not {item!r}.", code="usage")
        pairs[key] = value
    return pairs


@connection.command("set-secret")
@click.argument("connection_id", type=int)
@click.option("--client-secret-stdin", is_flag=True, required=True,
              help="Read the new client secret from standard input.")
@with_appcontext
def connection_set_secret(connection_id: int, client_secret_stdin: bool) -> None:
    """Replace a connection's client secret (rotation without an outage)."""
    from portal.services import connections
    secret = sys.stdin.readline().rstrip("\n")
    s = services()
    with s.db.transaction() as session:
        row = connections.set_client_secret(session, cli_context(), s.secrets, connection_id,
                                            secret)
        click.echo(f"connection {row.id}: client secret replaced")


@connection.command("set-domains")
@click.argument("connection_id", type=int)
@click.argument("domains", nargs=-1)
@with_appcontext
def connection_set_domains(connection_id: int, domains: tuple[str, ...]) -> None:
    """Let only these email DOMAINS sign in through a connection (none: lift the limit)."""
    from portal.services import connections
    with services().db.transaction() as session:
        row = connections.get(session, connection_id)
        names = connections.set_allowed_domains(session, cli_context(), row, list(domains))
        click.echo(f"connection {row.id}: "
                   + (f"allowed domains {', '.join(names)}" if names else "any domain"))


@connection.command("trust-idp-mfa")
@click.argument("connection_id", type=int)
@click.argument("trust", type=click.Choice(["on", "off"]))
@with_appcontext
def connection_trust_idp_mfa(connection_id: int, trust: str) -> None:
    """Accept the identity provider's multi-factor sign-ins instead of Trellis's code."""
    from portal.services import connections, mfa
    with services().db.transaction() as session:
        row = connections.get(session, connection_id)
        mfa.set_idp_mfa_trust(session, cli_context(), row, trust == "on")
        state = "trusted" if trust == "on" else "not trusted"
        click.echo(f"connection {row.id}: the identity provider's multi-factor is {state}")


@connection.command("list")
@with_appcontext
def connection_list() -> None:
    """List connections."""
    import sqlalchemy as sa

    from portal.models import Connection
    with services().db.sessions() as session:
        rows = session.scalars(sa.select(Connection).order_by(Connection.id)).all()
        if not rows:
            click.echo("no connections")
        for row in rows:
            owner = row.organization.slug if row.organization else "(platform)"
            state = "enabled" if row.enabled else "disabled"
            click.echo(f"{row.id}\t{owner}\t{row.protocol.value}\t{state}\t{row.name}")


@connection.command("enable")
@click.argument("connection_id", type=int)
@with_appcontext
def connection_enable(connection_id: int) -> None:
    """Enable a connection."""
    _set_enabled(connection_id, True)


@connection.command("disable")
@click.argument("connection_id", type=int)
@with_appcontext
def connection_disable(connection_id: int) -> None:
    """Disable a connection (its users can no longer sign in through it)."""
    _set_enabled(connection_id, False)


def _set_enabled(connection_id: int, enabled: bool) -> None:
    from portal.services import connections
    with services().db.transaction() as session:
        row = connections.set_enabled(session, cli_context(), connection_id, enabled)
        click.echo(f"connection {row.id} {'enabled' if enabled else 'disabled'}")


@main.group()
def ldap() -> None:
    """LDAP and Active Directory connections: test and sync."""


def _ldap_connection(session, connection_id: int):
    from portal.models import Protocol
    from portal.services import connections
    row = connections.get(session, connection_id)
    if row.protocol != Protocol.LDAP:
        raise TrellisError(f"Connection {connection_id} is not an LDAP connection.",
                           code="usage")
    return row


@ldap.command("test")
@click.argument("connection_id", type=int)
@click.option("--user", "sample_login", default="", help="Map this user as the sample.")
@with_appcontext
def ldap_test(connection_id: int, sample_login: str) -> None:
    """Bind with the service account, count users and groups, map a sample user."""
    from federation import provisioning
    from portal.services import connections
    s = services()
    with s.db.sessions() as session:
        row = _ldap_connection(session, connection_id)
        settings = connections.ldap_settings(row, s.secrets)
        report = s.ldap.test(settings, sample_login)
        roles = sorted(provisioning.mapped_roles(row, report.sample)) if report.sample else []
    with s.db.transaction() as session:
        audit.record(session, cli_context(), "connection.test",
                     target=f"connection:{connection_id}", organization_id=row.organization_id,
                     outcome="success" if report.ok else "failure",
                     reason=report.error.code if report.error else "",
                     details={"users": report.users, "groups": report.groups,
                              "sample": report.sample_dn})
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if report.error is not None:
        _fail(f"{report.error.code}: {report.error.detail or report.error.safe_message}")
    click.echo(f"service bind ok on {report.server} (TLS: {report.tls})")
    click.echo(f"users: {report.users:,}\tgroups: {report.groups:,}")
    if report.sample is not None:
        sample = report.sample
        click.echo(f"sample: {report.sample_dn}")
        click.echo(f"  id {sample.subject}, email {sample.email or '(missing)'}, "
                   f"name {sample.display_name or '-'}")
        click.echo(f"  groups: {', '.join(sample.groups) or '-'}; roles: "
                   f"{', '.join(roles) or '-'}")


@ldap.command("schedule")
@click.argument("connection_id", type=int)
@click.argument("minutes", type=int)
@with_appcontext
def ldap_schedule(connection_id: int, minutes: int) -> None:
    """Have `trellis worker` sync the connection every MINUTES (0: only by hand)."""
    from portal.services import ldap_sync as sync
    with services().db.transaction() as session:
        sync.set_schedule(session, cli_context(), _ldap_connection(session, connection_id),
                          minutes)
    click.echo(f"connection {connection_id}: " + (
        f"synced by trellis worker every {minutes} minutes" if minutes else
        "synced only by hand"))


@ldap.command("sync")
@click.argument("connection_id", type=int)
@click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
@click.option("--quiet", is_flag=True, help="No progress lines, only the summary.")
@with_appcontext
def ldap_sync(connection_id: int, dry_run: bool, quiet: bool) -> None:
    """Sync a directory's users and groups into its organization.

    Creates new users, updates names, emails and group roles, suspends users who are
    disabled in or gone from the directory (never deletes; their sessions end). Safe to run
    again at any time; `trellis ldap schedule` has `trellis worker` run it on a schedule. A
    run with no changes in the directory changes nothing. Exit code 1 when the run did not
    finish (the pages already done stay done; running again goes on)."""
    from portal.services import ldap_sync as sync
    from portal.services import locks
    s = services()
    with s.db.sessions() as session:
        _ldap_connection(session, connection_id)

    def progress(summary) -> None:
        if not quiet:
            click.echo(f"  {summary.entries:,} entries: {summary.created:,} created, "
                       f"{summary.updated:,} updated, {summary.suspended:,} suspended, "
                       f"{summary.unchanged:,} unchanged, {summary.errors:,} errors", err=True)

    try:
        summary = sync.run(s.db, cli_context(), s.ldap, s.secrets, connection_id,
                           dry_run=dry_run, progress=progress)
    except (sync.SyncFailed, locks.Busy) as failed:
        _fail(failed.message)
    for dn, reason in summary.error_rows:
        click.echo(f"error: {dn}: {reason}", err=True)
    if summary.errors > len(summary.error_rows):
        click.echo(f"error: … and {summary.errors - len(summary.error_rows):,} more",
                   err=True)
    prefix = "dry run, nothing changed: would have " if dry_run else ""
    click.echo(f"{prefix}{summary.entries:,} entries in {summary.seconds:.1f} s: "
               f"{summary.created:,} created, {summary.updated:,} updated, "
               f"{summary.suspended:,} suspended, {summary.unchanged:,} unchanged, "
               f"{summary.errors:,} errors")


@main.group()
def keys() -> None:
    """Encryption keys for secrets at rest."""


@keys.command("generate", with_appcontext=False)
def keys_generate() -> None:
    """Print a new key for TRELLIS_ENCRYPTION_KEYS."""
    from portal.crypto import generate_key
    click.echo(generate_key())


@keys.command("rotate")
@with_appcontext
def keys_rotate() -> None:
    """Re-encrypt every stored secret with the first key of TRELLIS_ENCRYPTION_KEYS."""
    from portal.services import connections
    s = services()
    with s.db.transaction() as session:
        count = connections.rotate_secrets(session, cli_context(), s.secrets)
    click.echo(f"re-encrypted {count} secret{'s' if count != 1 else ''} with the current key")


from portal.cli_apps import register as _register_apps  # noqa: E402

_register_apps(main, keys, lambda: cli_context())

from portal.cli_mail import register as _register_mail  # noqa: E402

_register_mail(main, lambda: cli_context())

from portal.cli_siem import register as _register_siem  # noqa: E402

_register_siem(main, lambda: cli_context())


@main.group("api-client")
def api_client() -> None:
    """Vendor apps calling the decision API with an API key."""


@api_client.command("create")
@click.argument("name")
@click.option("--org", "orgs", multiple=True, required=True,
              help="An organization the app may ask about (repeatable).")
@with_appcontext
def api_client_create(name: str, orgs: tuple[str, ...]) -> None:
    """Create an API key; it is shown once and stored only as a hash."""
    from portal.services import api_clients
    with services().db.transaction() as session:
        client, key = api_clients.create(session, cli_context(), name, list(orgs))
        click.echo(f"created API client {client.id} ({client.name}) for "
                   f"{', '.join(client.organizations)}")
    click.echo(f"key (shown once): {key}")


@api_client.command("list")
def api_client_list() -> None:
    """List API clients (keys are never shown again)."""
    from portal.db import utcnow
    from portal.services import api_clients
    with services().db.sessions() as session:
        rows = api_clients.list_all(session)
        if not rows:
            click.echo("no API clients")
        for row in rows:
            state = "enabled" if row.enabled else "disabled"
            if row.previous_key_expires_at and row.previous_key_expires_at > utcnow():
                state += f" (previous key until {row.previous_key_expires_at:%Y-%m-%d %H:%M})"
            click.echo(f"{row.id}\t{row.key_prefix}…\t{state}\t{','.join(row.organizations)}"
                       f"\t{row.name}")


@api_client.command("disable")
@click.argument("client_id", type=int)
def api_client_disable(client_id: int) -> None:
    """Disable an API client: its key stops working within 5 seconds."""
    from portal.services import api_clients
    with services().db.transaction() as session:
        api_clients.set_enabled(session, cli_context(), client_id, False)
    click.echo(f"API client {client_id} disabled")


@api_client.command("rotate")
@click.argument("client_id", type=int)
@click.option("--grace-hours", type=float, default=24.0, show_default=True,
              help="How long the current key keeps working (0: it stops at once).")
def api_client_rotate(client_id: int, grace_hours: float) -> None:
    """Give an API client a new key; the old one works for the grace period, then stops."""
    from datetime import timedelta

    from portal.services import api_clients
    with services().db.transaction() as session:
        client, key = api_clients.rotate(session, cli_context(), client_id,
                                         timedelta(hours=grace_hours))
        until = client.previous_key_expires_at
    click.echo(f"new key for API client {client_id} (shown once): {key}")
    click.echo(f"the previous key works until {until:%Y-%m-%d %H:%M:%S} UTC" if until else
               "the previous key stopped working (within 5 seconds)")


@api_client.command("revoke-previous")
@click.argument("client_id", type=int)
def api_client_revoke_previous(client_id: int) -> None:
    """End a rotation's grace period now: only the newest key works."""
    from portal.services import api_clients
    with services().db.transaction() as session:
        api_clients.revoke_previous(session, cli_context(), client_id)
    click.echo(f"the previous key of API client {client_id} stopped working (within 5 "
               "seconds)")


# --- policy -----------------------------------------------------------------------------

@main.group()
def policy() -> None:
    """Authorization policy files."""


@policy.command("lint")
@with_appcontext
def policy_lint() -> None:
    """Check the policy files and the uploaded organization policies: rules that can never
    decide, rules and files naming organizations that do not exist, granted roles no rule
    gives anything. Exits 1 when there is a problem."""
    import sqlalchemy as sa

    from policies.files import PolicyFiles, load_policy_files, parse_org_policy
    from policies.lint import lint
    from portal.models import Organization, OrgPolicy, RoleGrant
    files = load_policy_files(Path(current_app.config["POLICY_DIR"]))
    with services().db.sessions() as session:
        granted = set(session.scalars(sa.select(RoleGrant.role).distinct()))
        kinds = {slug: kind.value for slug, kind in session.execute(
            sa.select(Organization.slug, Organization.kind))}
        uploads = list(session.execute(sa.select(Organization.slug, OrgPolicy.text).join(
            OrgPolicy, OrgPolicy.organization_id == Organization.id)))
    problems = []
    orgs, numbers = dict(files.orgs), dict(files.line_numbers)
    for slug, text in uploads:
        try:
            rules = parse_org_policy(files, slug, text)
        except PolicyError as error:
            problems.append(f"uploaded policy of {slug}: {error.detail}")
            continue
        label = f"orgs/{slug}.csv"
        numbers[label] = [*numbers.get(label, []), *(
            n for n, raw in enumerate(text.splitlines(), start=1)
            if raw.strip() and not raw.strip().startswith("#"))]
        orgs[slug] = [*orgs.get(slug, []), *rules]
    merged = PolicyFiles(platform=files.platform, kinds=files.kinds, orgs=orgs,
                         fingerprint=files.fingerprint, line_numbers=numbers)
    problems += [str(problem) for problem in lint(
        merged, organizations=kinds, granted_roles=granted | {"platform_operator"})]
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)
    if problems:
        sys.exit(1)
    defined = files.roles() | {"member"}
    click.echo(f"policy {files.fingerprint}: {len(defined)} roles, "
               f"{len(files.orgs)} organization files, {len(uploads)} uploaded organization "
               "policies, no problems")


@policy.command("test")
@click.argument("tables", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@with_appcontext
def policy_test(tables: tuple[str, ...]) -> None:
    """Run decision tables (default: the policy folder's tests/*.yaml)."""
    from policies.decision_tables import run_tables
    folder = Path(current_app.config["POLICY_DIR"])
    paths = [Path(t) for t in tables] or sorted((folder / "tests").glob("*.yaml"))
    results = run_tables(folder, paths)
    failed = [r for r in results if not r.passed]
    for result in failed:
        rule = ", ".join(result.rule) if result.rule else result.reason
        click.echo(f"FAIL {result.file}: {result.name}: expected {result.expected}, got "
                   f"{result.got} ({rule})")
    click.echo(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if failed:
        sys.exit(1)


@policy.command("explain")
@click.argument("who")
@click.argument("slug")
@click.argument("object_type")
@click.argument("action")
@click.option("--object", "object_attrs", multiple=True, metavar="NAME=VALUE",
              help="An attribute of the object, e.g. amount=900 (repeatable).")
@click.option("--subject", "subject_attrs", multiple=True, metavar="NAME=VALUE",
              help="An extra attribute of the subject (repeatable).")
@click.option("--context", "context_attrs", multiple=True, metavar="NAME=VALUE",
              help="A context attribute, e.g. assurance=2 (repeatable; org_status and "
                   "assurance=1 are filled in as the portal does).")
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON.")
@with_appcontext
def policy_explain(who, slug, object_type, action, object_attrs, subject_attrs,
                   context_attrs, as_json) -> None:
    """Decide and explain: may WHO (email or user id) do ACTION on OBJECT_TYPE in SLUG?

    Prints the deciding rule with its file and line, the role chain that gives the subject
    that rule's role, and every other rule that matched (an allow a deny overrode)."""
    import json

    from portal.authz import describe, explanation_dict
    from portal.services import simulation
    with services().db.sessions() as session:
        _, subject = simulation.subject(session, who)
        org = simulation.organization(session, slug)
        ctx = {**simulation.context(org),
               **simulation.attributes(context_attrs, "context")}
    subject.update(simulation.attributes(subject_attrs, "subject"))
    obj = {**simulation.attributes(object_attrs, "object"), "type": object_type}
    explanation = services().policy.explain(subject, slug, obj, action, ctx)
    if as_json:
        click.echo(json.dumps(explanation_dict(explanation), indent=2))
    else:
        for line in describe(explanation):
            click.echo(line)


@policy.command("decisions")
@click.option("--org", "slug", help="Only this organization's decisions.")
@click.option("--denied", is_flag=True, help="Only denied decisions.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@with_appcontext
def policy_decisions(slug: str | None, denied: bool, limit: int) -> None:
    """The latest sampled decisions of the decision API (see TRELLIS_DECISION_LOG_SAMPLE)."""
    import sqlalchemy as sa

    from portal.decision_log import ACTION
    from portal.models import AuditEvent
    from portal.services import organizations
    with services().db.sessions() as session:
        query = sa.select(AuditEvent).where(AuditEvent.action == ACTION)
        if slug:
            query = query.where(AuditEvent.organization_id ==
                                organizations.get(session, slug).id)
        if denied:
            query = query.where(AuditEvent.outcome == "failure")
        events = list(session.scalars(query.order_by(AuditEvent.seq.desc()).limit(limit)))
    if not events:
        click.echo("no sampled decisions")
    for event in reversed(events):
        d = event.details
        rule = ", ".join(d["rule"]) if d.get("rule") else d.get("reason") or ""
        click.echo(f"{event.occurred_at:%Y-%m-%d %H:%M:%S} {d['decision_id']} "
                   f"{'allow' if d['allowed'] else 'deny '} {d['org']} "
                   f"subject={d['subject'].get('id')} {d['action']} "
                   f"{d['object'].get('type')} ({rule}) by {d.get('caller')}")


@policy.command("diff")
@click.argument("candidate", type=click.Path(exists=True, path_type=Path))
@click.option("--as", "replaces", metavar="RELPATH",
              help="The file CANDIDATE replaces, e.g. kinds/partner.csv (default: guessed "
                   "from its name).")
@click.option("--org", "slugs", multiple=True, help="Sample this organization (repeatable; "
              "default: a random sample).")
@click.option("--orgs", "org_count", default=20, show_default=True,
              type=click.IntRange(0, 10000), help="How many organizations to sample.")
@click.option("--subjects", "subject_count", default=10, show_default=True,
              type=click.IntRange(1, 1000), help="How many members of each to sample.")
@click.option("--show", default=50, show_default=True, type=click.IntRange(0, 100000),
              help="How many changed decisions to print.")
@with_appcontext
def policy_diff(candidate: Path, replaces, slugs, org_count, subject_count, show) -> None:
    """Which decisions change if CANDIDATE (a policy folder, or one file) replaced the
    policy in force: the decision tables' cases and a sample of real members, objects and
    actions. Exits 1 when some decision changes (like diff)."""
    from policies.diff import candidate_folder, compare, compare_tables, sample_requests
    from policies.files import load_policy_files
    from portal.authz import database_sources
    current = Path(current_app.config["POLICY_DIR"])
    with candidate_folder(current, candidate, replaces) as folder:
        before, after = load_policy_files(current), load_policy_files(folder)
        tables = sorted((current / "tests").glob("*.yaml"))
        counted, changes = compare_tables(current, folder, tables)
        subjects, statuses = _sample_subjects(list(slugs), org_count, subject_count)
        requests = sample_requests([before, after], subjects, statuses)
        sampled, found = compare(current, folder, database_sources(services().db), requests)
        changes += found
    for change in changes[:show]:
        click.echo(change.describe())
    if len(changes) > show:
        click.echo(f"... and {len(changes) - show} more")
    click.echo(f"policy {before.fingerprint} -> {after.fingerprint}: {len(changes)} of "
               f"{counted + sampled} decisions change ({counted} table cases, {sampled} "
               f"sampled requests over {len({org for _, org in subjects})} organizations)")
    if changes:
        sys.exit(1)


def _sample_subjects(slugs: list[str], org_count: int, subject_count: int
                     ) -> tuple[list[tuple[dict, str]], dict[str, str]]:
    """Members of a sample of organizations (plus one operator), as the portal sees them."""
    import random

    import sqlalchemy as sa

    from portal.models import Membership, Organization, User
    from portal.services import organizations
    with services().db.sessions() as session:
        if slugs:
            orgs = [organizations.get(session, slug) for slug in slugs]
        else:
            ids = list(session.scalars(sa.select(Organization.id)))
            chosen = random.sample(ids, min(org_count, len(ids)))
            orgs = list(session.scalars(sa.select(Organization).where(
                Organization.id.in_(chosen)))) if chosen else []
        operator = session.scalar(sa.select(User.id).where(User.is_operator.is_(True))
                                  .limit(1))
        subjects, statuses = [], {}
        for org in orgs:
            statuses[org.slug] = org.status.value
            members = list(session.scalars(sa.select(Membership.user_id).where(
                Membership.organization_id == org.id)))
            for user_id in random.sample(members, min(subject_count, len(members))):
                subjects.append(({"id": str(user_id), "platform_operator": False}, org.slug))
            if operator is not None:
                subjects.append(({"id": str(operator), "platform_operator": True}, org.slug))
    return subjects, statuses


@policy.command("upload")
@click.argument("slug")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@with_appcontext
def policy_upload(slug: str, file) -> None:
    """Make FILE (rules as in orgs/<slug>.csv) the uploaded policy of organization SLUG.

    A broken file is refused with file, line and reason; the policy in force stays."""
    from portal.services import org_policies
    s = services()
    warnings = org_policies.upload_or_refuse(s.db, cli_context(), s.policy.files, slug,
                                             file.read())
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"policy of {slug} uploaded; in force in every worker within a second")


@policy.command("remove")
@click.argument("slug")
@with_appcontext
def policy_remove(slug: str) -> None:
    """Remove organization SLUG's uploaded policy (orgs/<slug>.csv in the folder stays)."""
    from portal.services import org_policies
    with services().db.transaction() as session:
        org_policies.remove(session, cli_context(), slug)
    click.echo(f"uploaded policy of {slug} removed")


@policy.command("reload")
@with_appcontext
def policy_reload() -> None:
    """Check the policy folder and tell every worker to re-read it now (with REDIS_URL;
    without, workers re-read edited files within two seconds)."""
    engine = services().policy
    engine.reload_files()
    reached = "every worker told" if engine.notifier is not None else \
        "workers re-read it within two seconds (no REDIS_URL)"
    click.echo(f"policy {engine.files.fingerprint} loads cleanly; {reached}")


# --- audit ------------------------------------------------------------------------------

@main.group("audit")
def audit_group() -> None:
    """The tamper-evident audit trail."""


@audit_group.command("verify")
@with_appcontext
def audit_verify() -> None:
    """Check the hash chain; name the first event that was altered, inserted or removed."""
    from portal.models import AuditHead
    with services().db.sessions() as session:
        result = audit.verify(session)
        head = session.get(AuditHead, 1)
        legacy = (head.legacy_seq, head.legacy_hash, head.legacy_problem) if head else (0, "", "")
    if not result.ok:
        _fail(f"audit chain broken after {result.checked} good events: {result.problem}")
    click.echo(f"audit chain intact: {result.checked} events")
    if legacy[0]:
        click.echo(f"re-chained at the upgrade to format 2: the old chain ended at event "
                   f"{legacy[0]} with hash {legacy[1]} "
                   f"({legacy[2] or 'it verified then'})")


@audit_group.command("export")
@click.option("--since", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
              help="Only events at or after this UTC date/time.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl",
              show_default=True)
@with_appcontext
def audit_export(since: datetime | None, fmt: str) -> None:
    """Stream events to standard output."""
    since = since.replace(tzinfo=UTC) if since else None
    with services().db.sessions() as session:
        for chunk in audit.export(session, fmt, since):
            click.echo(chunk, nl=False)


# --- demo and serving -------------------------------------------------------------------

@main.group()
def throttle() -> None:
    """The sign-in throttles."""


@throttle.command("status")
@with_appcontext
def throttle_status() -> None:
    """Whether the global sign-in throttle is engaged, since when and until when, and the
    accounts and IPs locked now. Reading it also records the end of an episode that has run
    out (audited once). The operators' *Sign-in protection* page shows the same."""
    from portal.errors import describe_wait
    from portal.services import signin_protection
    s = services()
    with s.db.sessions() as session:
        state = signin_protection.status(session, s.throttle)
    episode, limit = state.episode, state.global_limit
    if not limit:
        click.echo("global throttle: off (TRELLIS_GLOBAL_FAILURES=0)")
    else:
        click.echo(f"global throttle: {'ENGAGED' if episode.engaged else 'not engaged'}")
        click.echo(f"failures this window: {episode.window_failures} (limit {limit} per "
                   f"{state.global_window} s)")
        if episode.engaged:
            click.echo(f"engaged since: {signin_protection.utc_text(episode.started)}")
            click.echo(f"lifts at: {signin_protection.utc_text(episode.until)} unless "
                       "failures go on")
    for title, locks in (("locked accounts", state.accounts), ("locked IPs", state.ips)):
        click.echo(f"{title}: {len(locks) or 'none'}")
        for lock in locks:
            click.echo(f"  {lock.label}  until {signin_protection.utc_text(lock.lock.until)} "
                       f"(in {describe_wait(state.seconds_left(lock))}, "
                       f"{lock.lock.failures} failures)  key {lock.key}")
    if state.truncated:
        click.echo(f"(only the first {signin_protection.LIST_LIMIT} locks are listed)")


@throttle.command("unlock")
@click.argument("who")
@with_appcontext
def throttle_unlock(who: str) -> None:
    """Lift the lock on one account (its email), one IP address, or a key as `throttle
    status` lists it (a second-factor lock); its failures are forgotten. Audited."""
    from portal.services import signin_protection
    s = services()
    key, name = signin_protection.key_of(s.throttle, who)
    with s.db.transaction() as session:
        lifted = signin_protection.unlock(session, cli_context(), s.throttle, key, name)
        click.echo(f"lifted the lock on {lifted.label}")


@main.group()
def demo() -> None:
    """Demo data for trying Trellis out."""


@demo.command("seed")
@with_appcontext
def demo_seed() -> None:
    """Create demo organizations and users (refused in production)."""
    from portal import demo as demo_data
    if current_app.config["ENV"] == "production":
        raise TrellisError("Demo data is refused when TRELLIS_ENV=production.",
                           code="production")
    s = services()
    created = demo_data.seed(s.db, s.passwords, cli_context())
    click.echo("demo data created" if created else "demo data already present")


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@with_appcontext
def serve(host: str, port: int) -> None:
    """Serve the portal with the built-in server (for development and demos)."""
    import logging

    from werkzeug.serving import run_simple

    from portal import demo as demo_data
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # our own lines carry request ids
    url = f"http://{host}:{port}/"
    click.echo(f"\n  Trellis is running at {url}\n")
    if current_app.config["ENV"] != "production":
        click.echo(demo_data.describe())
    run_simple(host, port, current_app._get_current_object(), threaded=True,
               use_reloader=False)


from portal.cli_saml import saml  # noqa: E402  (its commands need main's helpers)

main.add_command(saml)

if __name__ == "__main__":  # pragma: no cover
    main()
