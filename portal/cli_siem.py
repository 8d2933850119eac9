"""``trellis siem …``: the streams that carry audit events to SIEMs, seen and changed from
the command line, and one delivery pass (``trellis worker`` runs it in its loop)."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from portal.extensions import services


def deliver_once(stream_ids: list[int] | None = None):
    """One pass over every due stream (also called by ``trellis worker``)."""
    from portal.services import siem
    return siem.deliver(services().db, services().secrets,
                        siem.SiemConfig.from_settings(current_app.config),
                        stream_ids=stream_ids)


def register(main: click.Group, cli_context) -> None:
    @main.group("siem")
    def siem_group() -> None:
        """Audit events streamed to SIEMs (syslog, webhooks, JSON-lines files)."""

    @siem_group.command("add")
    @click.argument("name")
    @click.option("--kind", type=click.Choice(["syslog", "webhook", "file"]), required=True)
    @click.option("--target", required=True,
                  help="host:port (syslog), URL (webhook) or absolute path (file).")
    @click.option("--format", "fmt", type=click.Choice(["json", "ocsf", "cef"]),
                  default="json", show_default=True)
    @click.option("--org", "slug", help="Only this organization's events (an HTTPS webhook).")
    @click.option("--actions", default="",
                  help="Comma-separated event names or prefixes (auth.,mfa.); default all.")
    @click.option("--secret", default="", help="Webhook signing key (generated if omitted).")
    @click.option("--tls", is_flag=True, help="Syslog over TLS.")
    @click.option("--ca-file", default="", help="CA bundle for the syslog TLS certificate.")
    @click.option("--max-bytes", default=10_000_000, show_default=True, type=int,
                  help="File size at which a file stream rotates.")
    @click.option("--keep", default=5, show_default=True, type=int,
                  help="Rotated files kept.")
    @click.option("--from-start", is_flag=True,
                  help="Send the whole audit trail, not only events from now on.")
    @with_appcontext
    def siem_add(name, kind, target, fmt, slug, actions, secret, tls, ca_file, max_bytes,
                 keep, from_start) -> None:
        """Add a stream NAME."""
        from portal.services import organizations, siem
        with services().db.transaction() as session:
            org = organizations.get(session, slug) if slug else None
            stream, shown = siem.create(
                session, cli_context(), services().secrets, name=name, kind=kind,
                target=target, fmt=fmt, org=org, actions=actions.split(","), secret=secret,
                tls=tls, ca_file=ca_file, max_bytes=max_bytes, keep=keep,
                start="all" if from_start else "now")
            stream_id = stream.id
        click.echo(f"stream {stream_id} ({name}) added")
        if shown and not secret:
            click.echo(f"signing secret (shown once): {shown}")

    @siem_group.command("list")
    @with_appcontext
    def siem_list() -> None:
        """Every stream: id, organization, kind, format, target, cursor, lag, last error."""
        from portal.services import siem
        with services().db.sessions() as session:
            for s in siem.listing(session, everything=True):
                click.echo(f"{s.id}\t{s.name}\t{s.organization_id or '-'}\t{s.kind}\t"
                           f"{'enabled' if s.enabled else 'paused'}\t"
                           f"{s.format}\t{siem.shown_target(s)}\tcursor={s.cursor_seq}\t"
                           f"lag={siem.backlog(session, s)}\tdelivered={s.delivered}\t"
                           f"attempts={s.attempts}\t{s.last_error}")

    @siem_group.command("remove")
    @click.argument("stream")
    @with_appcontext
    def siem_remove(stream: str) -> None:
        """Remove STREAM (an id, or an operator stream's name)."""
        from portal.services import siem
        with services().db.transaction() as session:
            row = siem.find(session, stream)
            siem.remove(session, cli_context(), row)
        click.echo("removed")

    @siem_group.command("pause")
    @click.argument("stream")
    @with_appcontext
    def siem_pause(stream: str) -> None:
        """Stop sending STREAM's events; they wait, in order, until `trellis siem resume`."""
        click.echo("paused" if _set_enabled(stream, False) else "already paused")

    @siem_group.command("resume")
    @click.argument("stream")
    @with_appcontext
    def siem_resume(stream: str) -> None:
        """Send STREAM's events again, starting with those recorded while it was paused."""
        click.echo("resumed" if _set_enabled(stream, True) else "already sending")

    def _set_enabled(stream: str, enabled: bool) -> bool:
        from portal.services import siem
        with services().db.transaction() as session:
            return siem.set_enabled(session, cli_context(), siem.find(session, stream),
                                    enabled)

    @siem_group.command("replay")
    @click.argument("stream")
    @click.option("--since", type=int, required=True, help="First event number (seq) to send.")
    @with_appcontext
    def siem_replay(stream: str, since: int) -> None:
        """Send STREAM's events again from event number SINCE on, in order."""
        from portal.services import siem
        with services().db.transaction() as session:
            row = siem.find(session, stream)
            siem.replay(session, cli_context(), row, since)
        click.echo(f"replaying from event {since} on the next delivery pass")

    @siem_group.command("dead-letters")
    @click.argument("stream")
    @with_appcontext
    def siem_dead_letters(stream: str) -> None:
        """The ranges STREAM gave up on (replay them with `trellis siem replay`)."""
        from portal.services import siem
        with services().db.sessions() as session:
            for d in siem.dead_letters(session, siem.find(session, stream)):
                click.echo(f"{d.first_seq}-{d.last_seq}\t{d.events}\t"
                           f"{d.created_at:%Y-%m-%d %H:%M:%S}\t{d.error}")

    @siem_group.command("deliver")
    @with_appcontext
    def siem_deliver() -> None:
        """One delivery pass over every due stream (for cron; `trellis worker` loops)."""
        report = deliver_once()
        click.echo(f"delivered {report.delivered} events in {report.batches} batches, "
                   f"waiting for retry {len(report.retrying)}, "
                   f"dead-lettered {len(report.dead_lettered)}")
