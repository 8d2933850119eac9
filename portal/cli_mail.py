"""``trellis mail …``, ``trellis worker``, ``trellis gdpr export|erase`` and ``trellis org
registration``: the outbox seen from the command line, the loop that delivers it, a copy of a
person's data, and who may sign up to an organization."""

from __future__ import annotations

import time

import click
from flask import current_app
from flask.cli import with_appcontext

from portal.errors import TrellisError
from portal.extensions import services


def register(main: click.Group, cli_context) -> None:
    @main.group("mail")
    def mail_group() -> None:
        """The outbox: every email Trellis sends."""

    @mail_group.command("deliver")
    @with_appcontext
    def mail_deliver() -> None:
        """Try every message that is due once (for cron; `trellis worker` loops)."""
        report = _deliver_once()
        click.echo(f"sent {len(report.sent)}, waiting for retry {len(report.retrying)}, "
                   f"failed {len(report.failed)}")

    @mail_group.command("list")
    @click.option("--status", type=click.Choice(["pending", "sent", "failed"]))
    @with_appcontext
    def mail_list(status: str | None) -> None:
        """Newest messages first, with attempts and the last error."""
        from portal.services import outbox
        with services().db.sessions() as session:
            for m in outbox.listing(session, status or ""):
                click.echo(f"{m.id}\t{m.status.value}\t{m.attempts}\t{m.to_address}\t"
                           f"{m.subject}\t{m.last_error}")

    @mail_group.command("retry")
    @click.argument("message_id", type=int)
    @with_appcontext
    def mail_retry(message_id: int) -> None:
        """Put a failed message back in line and try it now."""
        from portal.services import outbox
        with services().db.transaction() as session:
            outbox.retry(session, cli_context(), message_id)
        report = _deliver_once([message_id])
        click.echo("sent" if report.sent else "not delivered yet; it will be retried")

    @mail_group.command("test")
    @click.argument("email")
    @with_appcontext
    def mail_test(email: str) -> None:
        """Send a test message to EMAIL through the configured mail server."""
        from portal import audit
        from portal.services import outbox
        from portal.validation import normalize_email
        address = normalize_email(email)
        ctx = cli_context()
        with services().db.transaction() as session:
            message = outbox.enqueue(session, to=address, template="test", org=None,
                                     context={"sender": ctx.actor})
            audit.record(session, ctx, "mail.test", target=f"mail:{message.id}",
                         details={"to": address})
            message_id = message.id
        report = _deliver_once([message_id])
        if report.sent:
            click.echo(f"sent to {address}")
        else:
            with services().db.sessions() as session:
                from portal.models import OutboxMessage
                error = session.get(OutboxMessage, message_id).last_error
            raise click.ClickException(f"not delivered ({error or 'no mail server'}); "
                                       "it stays in the outbox")

    @main.command("worker")
    @click.option("--interval", default=15, show_default=True, type=click.IntRange(1, 3600),
                  help="Seconds between passes.")
    @click.option("--once", is_flag=True, help="One pass, then exit (for cron).")
    @with_appcontext
    def worker(interval: int, once: bool) -> None:
        """Deliver the outbox and the SIEM streams in a loop (run it under systemd or a
        container supervisor), erase accounts whose deletion grace period is over, apply
        the retention settings, compare each complete window of sign-in events with its
        baseline (anomalies are audited and mailed), delete expired sign-ups and reset
        links, re-verify domains whose last check is older than
        TRELLIS_DOMAIN_RECHECK_HOURS, re-check apps' sector identifier documents every
        TRELLIS_SECTOR_RECHECK_HOURS, fetch again the SAML metadata whose cacheDuration or
        validUntil has come, and sync the directories scheduled with
        `trellis ldap schedule`."""
        click.echo(f"trellis worker: delivering mail every {interval}s")
        while True:
            _sync_directories()
            _recheck_domains()
            _recheck_sectors()
            _refresh_saml_metadata()
            purged = _purge_expired()
            if purged:
                click.echo(f"purged {purged} expired sign-up and reset link"
                           f"{'s' if purged != 1 else ''}")
            erase_due()
            apply_retention()
            _detect_anomalies()
            _deliver_events()
            report = _deliver_once()
            if report.sent or report.retrying or report.failed:
                click.echo(f"sent {len(report.sent)}, waiting for retry "
                           f"{len(report.retrying)}, failed {len(report.failed)}")
            if once:
                return
            time.sleep(interval)

    @main.group("gdpr")
    def gdpr_group() -> None:
        """Data protection requests served by operators."""

    @gdpr_group.command("export")
    @click.argument("email")
    @with_appcontext
    def gdpr_export(email: str) -> None:
        """Print everything held about the user with EMAIL as JSON (audited)."""
        import json

        from portal.services import gdpr, users
        with services().db.transaction() as session:
            user = users.get_by_email(session, email)
            data = gdpr.export(session, cli_context(), user.id)
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))

    @gdpr_group.command("erase")
    @click.argument("email")
    @click.option("--now", "now", is_flag=True,
                  help="Erase at once instead of after TRELLIS_ERASURE_GRACE_DAYS.")
    @click.option("--yes", is_flag=True, help="Do not ask for confirmation (with --now).")
    @with_appcontext
    def gdpr_erase(email: str, now: bool, yes: bool) -> None:
        """Erase the personal data of the user with EMAIL, on their request: scheduled after
        the grace period (signing in cancels it), or at once with --now (audited)."""
        from portal.services import gdpr, users
        if now and not yes:
            click.confirm(f"Erase {email} now? This cannot be undone", abort=True)
        config = current_app.config
        try:
            with services().db.transaction() as session:
                user = users.get_by_email(session, email)
                if now:
                    done = gdpr.erase(session, cli_context(), user.id,
                                      key=gdpr.pseudonym_key(config))
                else:
                    when = gdpr.request_erasure(session, cli_context(), user.id,
                                                grace_days=config["ERASURE_GRACE_DAYS"],
                                                confirmed=True, by_operator=True)
        except TrellisError as exc:
            raise click.ClickException(exc.message) from None
        if now:
            click.echo(f"erased user {done.user_id}; audit events now name "
                       f"{done.pseudonym} ({done.events_pseudonymized} pseudonymized)")
        else:
            click.echo(f"{email}: erasure scheduled for {when:%Y-%m-%d %H:%M} UTC "
                       "(signing in cancels it)")

    org_group = main.commands["org"]

    @org_group.command("registration")
    @click.argument("slug")
    @click.argument("mode", type=click.Choice(["invite", "domains", "open"]))
    @with_appcontext
    def org_registration(slug: str, mode: str) -> None:
        """Who may create an account in this organization: invited people only, anyone with
        an address in its verified domains, or anyone."""
        from portal.services import registration
        with services().db.transaction() as session:
            registration.set_mode(session, cli_context(), slug, mode)
        click.echo(f"{slug}: registration {mode}")


def _sync_directories() -> None:
    """Scheduled LDAP syncs that are due; one that fails is reported and tried at its next
    interval, the others go on."""
    from portal.cli import cli_context
    from portal.services import ldap_sync, locks
    s = services()
    for connection_id in ldap_sync.claim_due(s.db):
        try:
            summary = ldap_sync.run(s.db, cli_context(), s.ldap, s.secrets, connection_id)
        except (ldap_sync.SyncFailed, locks.Busy) as failed:
            click.echo(f"ldap sync of connection {connection_id}: {failed.message}", err=True)
            continue
        click.echo(f"ldap sync of connection {connection_id}: {summary.created} created, "
                   f"{summary.updated} updated, {summary.suspended} suspended, "
                   f"{summary.errors} errors")


def _recheck_domains() -> None:
    from portal.cli import cli_context
    from portal.services import domains
    summary = domains.reverify_due(services().db, cli_context(),
                                   domains.dns_settings(current_app.config),
                                   current_app.config["DOMAIN_RECHECK_HOURS"])
    for name in summary.suspended:
        click.echo(f"domain {name}: verification record gone, suspended")
    for name in summary.restored:
        click.echo(f"domain {name}: verification record back, restored")


def _recheck_sectors() -> None:
    from portal.cli import cli_context
    from portal.services import apps
    found = apps.recheck_sectors(services().db, cli_context(),
                                 current_app.config["SECTOR_RECHECK_HOURS"])
    for client_id, uris in found.blocked.items():
        click.echo(f"app {client_id}: sector identifier document no longer lists "
                   f"{', '.join(uris)}; blocked")
    for client_id, uris in found.restored.items():
        click.echo(f"app {client_id}: sector identifier document lists {', '.join(uris)} "
                   f"again; unblocked")
    for client_id, problem in found.unreadable.items():
        click.echo(f"app {client_id}: sector identifier document not checked ({problem}); "
                   f"tried again at the next pass", err=True)


def _refresh_saml_metadata() -> None:
    """IdP metadata that is due, for every SAML connection configured by URL (not only
    those someone signs in through): a certificate rollover the IdP announces is picked up
    before it switches keys. A failed fetch keeps the last good copy and is retried five
    minutes later; the other connections go on."""
    from portal.cli import cli_context
    from portal.cli_saml import refresh_report_lines
    from portal.services import saml as saml_connections
    report = saml_connections.refresh_due(services().db, cli_context())
    for line, failure in refresh_report_lines(report):
        click.echo(f"saml {line}", err=failure)


def _purge_expired() -> int:
    """Unconfirmed sign-ups hold a password hash; expired links are of no use to anyone."""
    from portal.services import credentials, registration
    with services().db.transaction() as session:
        return registration.purge_expired(session) + credentials.purge_expired(session)


def erase_due() -> int:
    """Erase every account whose grace period is over, each in its own transaction (one
    that cannot be erased yet, e.g. the last owner of an organization, is reported and tried
    again at the next pass)."""
    from portal.cli import cli_context
    from portal.services import gdpr
    s, erased = services(), 0
    with s.db.sessions() as session:
        due = gdpr.due_for_erasure(session)
    for user_id in due:
        try:
            with s.db.transaction() as session:
                gdpr.erase(session, cli_context(), user_id,
                           key=gdpr.pseudonym_key(current_app.config))
        except TrellisError as exc:
            click.echo(f"erasure of user {user_id} waits: {exc.message}", err=True)
            continue
        erased += 1
    if erased:
        click.echo(f"erased {erased} account{'s' if erased != 1 else ''} after the grace "
                   "period")
    return erased


def apply_retention():
    """Delete ended sessions and sent mail, and forget sign-in addresses, past retention."""
    from portal.services import retention
    config = current_app.config
    rules = retention.Retention(sign_in_days=config["SIGN_IN_HISTORY_DAYS"],
                                session_days=config["SESSION_RETENTION_DAYS"],
                                outbox_days=config["OUTBOX_RETENTION_DAYS"])
    with services().db.transaction() as session:
        done = retention.purge(session, rules)
    if done.total:
        click.echo(f"retention: deleted {done.sessions} sessions and {done.emails} emails, "
                   f"forgot the address of {done.sign_in_events} sign-in events")
    return done
def _detect_anomalies() -> None:
    """Each complete window of sign-in events against its baseline; an anomaly is audited
    (so the SIEM streams delivered next carry it) and mailed, in the same transaction."""
    from portal.cli import cli_context
    from portal.services import anomaly
    config = current_app.config
    base = (config.get("BASE_URL") or "").rstrip("/")
    report = anomaly.evaluate(
        services().db, cli_context(), anomaly.Settings.from_config(config),
        link_for=lambda slug: f"{base}/o/{slug}/admin/audit" if base and slug else "")
    for finding in report.findings:
        click.echo(f"anomaly: {finding.scope} {finding.metric} {finding.count} "
                   f"(baseline {finding.mean:.1f}, z {finding.z:.1f})")


def _deliver_events() -> None:
    from portal.cli_siem import deliver_once
    report = deliver_once()
    if report.delivered or report.retrying or report.dead_lettered:
        click.echo(f"siem: delivered {report.delivered} events, waiting for retry "
                   f"{len(report.retrying)}, dead-lettered {len(report.dead_lettered)}")


def _deliver_once(ids: list[int] | None = None):
    from portal.services import outbox
    config = outbox.MailConfig.from_settings(current_app.config)
    report = outbox.deliver(services().db, config, ids)
    if report.not_configured:
        raise click.ClickException("TRELLIS_SMTP_HOST is not set: nothing can be sent in "
                                   "production until it is")
    return report
