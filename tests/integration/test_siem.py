"""Audit events streamed to SIEMs, received by real peers: Debian's rsyslogd over TCP and an
HTTP receiver on loopback; files on disk."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import timedelta

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from portal import audit
from portal.cli import main
from portal.db import utcnow
from portal.errors import ValidationError
from portal.models import SiemDeadLetter, SiemStream
from portal.services import organizations, siem
from tests.conftest import CLI_CTX, audit_events, services_of

SYSLOG_LINE = re.compile(r'^(\S+) (\S+) \[trellis@32473 seq="(\d+)" outcome="(\w+)" '
                         r'org="(\d*)"\] (.*)$')


def _config(**overrides) -> siem.SiemConfig:
    return siem.SiemConfig(**{"max_attempts": 8, "batch_size": 500, **overrides})


def _add(app, tx, **values) -> tuple[int, str]:
    with tx() as session:
        org = values.pop("org", None)
        found = organizations.get(session, org) if org else None
        stream, secret = siem.create(session, CLI_CTX, services_of(app).secrets, org=found,
                                     **values)
        return stream.id, secret


def _record(tx, count: int, action: str = "user.profile", org_id=None, **extra) -> list[int]:
    seqs = []
    with tx() as session:
        for index in range(count):
            ctx = audit.Context(actor=f"user{index}@acme.test", actor_id=index + 1,
                                ip="192.0.2.7", user_agent=extra.get("ua", "Firefox"),
                                request_id=f"r{index}")
            seqs.append(audit.record(session, ctx, action, target=f"user:{index}",
                                     organization_id=org_id,
                                     outcome=extra.get("outcome", "success"),
                                     details={"n": index})["seq"])
    return seqs


def _deliver(app, config=None, **kw) -> siem.Report:
    s = services_of(app)
    return siem.deliver(s.db, s.secrets, config or _config(), **kw)


def _stream(app, stream_id) -> SiemStream:
    with services_of(app).db.sessions() as session:
        return session.get(SiemStream, stream_id)


def test_events_reach_rsyslog_as_rfc5424_in_order(app, tx, rsyslog):
    stream_id, _ = _add(app, tx, name="soc", kind="syslog", target=rsyslog.target)
    seqs = _record(tx, 30)
    report = _deliver(app)
    assert report.delivered == 31  # the stream's own creation comes first
    lines = rsyslog.wait_for(31)
    parsed = [SYSLOG_LINE.match(line) for line in lines]
    assert all(parsed), lines[:3]
    assert parsed[0].group(2) == "siem.stream_create"
    assert [int(m.group(3)) for m in parsed[1:]] == seqs  # every event, once, in order
    first = parsed[1]
    assert first.group(1) == "trellis" and first.group(2) == "user.profile"
    body = json.loads(first.group(6))
    assert body["actor"] == "user0@acme.test" and body["seq"] == seqs[0]
    assert body["details"] == {"n": 0} and len(body["hash"]) == 64
    stream = _stream(app, stream_id)
    assert stream.cursor_seq >= seqs[-1] and stream.delivered == 31
    assert _deliver(app).delivered == 0  # nothing sent twice


def test_cef_and_ocsf_over_syslog(app, tx, rsyslog):
    _add(app, tx, name="cef", kind="syslog", target=rsyslog.target, fmt="cef",
         actions=["auth."])
    _record(tx, 1, action="user.profile")  # not selected by auth.
    _record(tx, 1, action="auth.login", outcome="failure", ua="Evil|UA cs2=forged")
    _deliver(app)
    [line] = rsyslog.wait_for(1)
    cef = SYSLOG_LINE.match(line).group(6)
    assert cef.startswith("CEF:0|Trellis|Trellis Portal|1.0|auth.login|auth.login failure|7|")
    # The user agent cannot add fields: '=' is escaped, the header '|' is not in the header.
    assert r"requestClientApplication=Evil|UA cs2\=forged" in cef
    assert " src=192.0.2.7 " in cef and " outcome=failure " in cef


def test_ocsf_file_authentication_class_for_sign_ins(app, tx, tmp_path):
    path = tmp_path / "events" / "ocsf.jsonl"
    _add(app, tx, name="lake", kind="file", target=str(path), fmt="ocsf")
    _record(tx, 1, action="auth.login")
    _record(tx, 1, action="role.grant")
    _deliver(app)
    created, login, grant = [json.loads(line) for line in path.read_text().splitlines()]
    assert created["unmapped"]["action"] == "siem.stream_create"
    assert (login["class_uid"], login["activity_id"], login["type_uid"]) == (3002, 1, 300201)
    assert login["category_uid"] == 3 and login["status"] == "Success"
    assert login["src_endpoint"] == {"ip": "192.0.2.7"}
    assert login["user"]["name"] == "user0@acme.test" and isinstance(login["time"], int)
    assert (grant["class_uid"], grant["type_uid"]) == (0, 99)
    assert grant["unmapped"]["action"] == "role.grant"


def test_file_rotates_and_keeps_every_event(app, tx, tmp_path):
    path = tmp_path / "audit.jsonl"
    _add(app, tx, name="disk", kind="file", target=str(path), max_bytes=8192, keep=50)
    seqs = _record(tx, 40)
    _deliver(app, _config(batch_size=5))
    files = sorted(tmp_path.glob("audit.jsonl.*"), key=lambda p: -int(p.suffix[1:]))
    assert files, "no rotation happened"
    lines = [line for f in [*files, path] for line in f.read_text().splitlines()]
    assert [json.loads(line)["seq"] for line in lines[1:]] == seqs
    assert all(f.stat().st_size <= 8192 for f in [*files, path])


def test_webhook_batch_is_signed_and_the_secret_sealed(app, tx, http_receiver):
    stream_id, secret = _add(app, tx, name="splunk", kind="webhook", target=http_receiver.url)
    assert len(secret) >= 40
    stored = _stream(app, stream_id)
    assert secret not in (stored.secret_sealed or "")
    assert services_of(app).secrets.open(stored.secret_sealed)["secret"] == secret
    seqs = _record(tx, 5)
    _deliver(app)
    [request] = http_receiver.requests
    timestamp = request.headers["X-Trellis-Timestamp"]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + request.body,
                        hashlib.sha256).hexdigest()
    assert request.headers["X-Trellis-Signature"] == f"v1={expected}"
    assert [e["seq"] for e in json.loads(request.body)][1:] == seqs
    assert request.headers["X-Trellis-Seq-Range"] == f"{seqs[0] - 1}-{seqs[-1]}"


def test_receiver_down_mid_stream_every_event_arrives_in_order_after(app, tx, http_receiver):
    _add(app, tx, name="elastic", kind="webhook", target=http_receiver.url)
    config = _config(batch_size=4)
    first = _record(tx, 6)
    assert _deliver(app, config).delivered == 7  # its creation and six events
    http_receiver.stop()  # the collector goes down in the middle of the stream
    during = _record(tx, 9)
    report = _deliver(app, config)
    assert report.delivered == 0 and len(report.retrying) == 1
    stream = _stream(app, report.retrying[0])
    assert stream.attempts == 1 and "Connection" in stream.last_error
    assert stream.next_attempt_at > utcnow() + timedelta(seconds=3)  # backing off
    assert _deliver(app, config).delivered == 0  # not due yet: no hammering
    later = utcnow() + timedelta(seconds=6)
    assert _deliver(app, config, now=later).retrying  # second attempt, still down
    http_receiver.start()
    after = _record(tx, 3)
    report = _deliver(app, config, now=utcnow() + timedelta(minutes=11))
    assert report.delivered == 12
    received = [e["seq"] for r in http_receiver.requests for e in json.loads(r.body)]
    assert received[1:] == first + during + after
    assert _stream(app, stream.id).attempts == 0


def test_dead_lettered_after_max_attempts_then_replayed(app, tx, http_receiver, monkeypatch,
                                                        settings):
    stream_id, _ = _add(app, tx, name="sentinel", kind="webhook", target=http_receiver.url)
    seqs = _record(tx, 3)
    http_receiver.status = 503
    config = _config(max_attempts=3)
    for attempt in range(3):
        _deliver(app, config, now=utcnow() + timedelta(hours=attempt + 1))
    with services_of(app).db.sessions() as session:
        [dead] = session.scalars(sa.select(SiemDeadLetter)).all()
        assert (dead.first_seq, dead.last_seq, dead.events) == (seqs[0] - 1, seqs[-1], 4)
        assert "HTTP 503" in dead.error
    [event] = audit_events(app, "siem.dead_letter")
    assert event.outcome == "failure" and event.details["last_seq"] == seqs[-1]
    assert _stream(app, stream_id).cursor_seq >= seqs[-1]  # the stream moved on
    http_receiver.status = 200
    run = _cli(settings, monkeypatch)
    run("siem", "replay", "sentinel", "--since", str(seqs[0]))
    assert "delivered" in run("siem", "deliver").output
    received = [e["seq"] for r in http_receiver.requests for e in json.loads(r.body)]
    assert received[:3] == seqs  # the dead-lettered range, in order
    assert audit_events(app, "siem.replay")[0].details["since"] == seqs[0]


def test_organization_stream_carries_only_its_events(app, tx, make_org, http_receiver,
                                                     monkeypatch):
    acme, globex = make_org("acme"), make_org("globex")
    monkeypatch.setattr(siem, "_check_url", lambda url, https_only: None)  # loopback peer
    _add(app, tx, name="acme-soc", kind="webhook", target=http_receiver.url, org="acme")
    mine = _record(tx, 2, org_id=acme.id)
    _record(tx, 2, org_id=globex.id)
    _record(tx, 2)  # platform events
    with services_of(app).db.sessions() as session:
        stream = session.scalar(sa.select(SiemStream))
        assert siem.backlog(session, stream) == 3  # its creation and two events: not Globex's
    _deliver(app)
    received = [e for r in http_receiver.requests for e in json.loads(r.body)]
    assert [e["seq"] for e in received][1:] == mine
    assert {e["organization_id"] for e in received} == {acme.id}


@pytest.mark.parametrize(("values", "code"), [
    ({"kind": "webhook", "target": "http://siem.example.com/"}, "invalid_stream_target"),
    ({"kind": "webhook", "target": "https://127.0.0.1/"}, "invalid_stream_target"),
    ({"kind": "webhook", "target": "https://10.1.2.3/hook"}, "invalid_stream_target"),
    ({"kind": "file", "target": "/var/log/x.jsonl"}, "invalid_stream_kind"),
    ({"kind": "syslog", "target": "siem.example.com:514"}, "invalid_stream_kind"),
])
def test_an_organization_stream_is_a_public_https_webhook(app, tx, make_org, values, code):
    make_org("acme")
    with pytest.raises(ValidationError) as raised:
        _add(app, tx, name="x", org="acme", **values)
    assert raised.value.code == code
    with services_of(app).db.sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(SiemStream)) == 0


@pytest.mark.parametrize(("values", "code"), [
    ({"name": "bad name!", "kind": "file", "target": "/var/log/a"}, "invalid_stream_name"),
    ({"name": "s", "kind": "kafka", "target": "x"}, "invalid_stream_kind"),
    ({"name": "s", "kind": "syslog", "target": "nohost"}, "invalid_stream_target"),
    ({"name": "s", "kind": "file", "target": "relative.log"}, "invalid_stream_target"),
    ({"name": "s", "kind": "file", "target": "/var/log/a", "fmt": "xml"}, "invalid_stream_format"),
    ({"name": "s", "kind": "file", "target": "/var/log/a", "actions": ["DROP;"]},
     "invalid_stream_actions"),
])
def test_bad_stream_settings_are_refused(app, tx, values, code):
    with pytest.raises(ValidationError) as raised:
        _add(app, tx, **values)
    assert raised.value.code == code
    assert not audit_events(app, "siem.stream_create")


def _cli(settings, monkeypatch):
    env = {"DATABASE_URL": settings["DATABASE_URL"], "TRELLIS_ENV": "test",
           "TRELLIS_INSTANCE_PATH": settings["INSTANCE_PATH"],
           "SECRET_KEY": settings["SECRET_KEY"], "TRELLIS_LOG_LEVEL": "WARNING"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def run(*args, expect=0):
        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == expect, result.output + result.stderr
        return result
    return run


def test_cli_add_list_deliver_remove(app, tx, rsyslog, settings, monkeypatch, tmp_path):
    run = _cli(settings, monkeypatch)
    out = run("siem", "add", "soc", "--kind", "syslog", "--target", rsyslog.target,
              "--format", "cef", "--from-start").output
    assert "stream" in out and "added" in out
    hook = run("siem", "add", "hook", "--kind", "webhook", "--target",
               "http://127.0.0.1:9/none").output
    assert "signing secret (shown once):" in hook
    listing = run("siem", "list").output
    assert "soc" in listing and "syslog" in listing and "cef" in listing
    assert "deliver" in run("siem", "deliver").output
    lines = rsyslog.wait_for(2)  # the trail from the start: both siem.stream_create events
    assert "siem.stream_create" in lines[0]
    run("siem", "pause", "soc")
    assert "paused" in run("siem", "list").output
    assert "delivered 0 events" in run("siem", "deliver").output  # paused: nothing sent
    run("siem", "resume", "soc")  # what was recorded while paused goes out, in order
    run("siem", "deliver")
    actions = [SYSLOG_LINE.match(line) for line in rsyslog.wait_for(len(lines) + 2)]
    assert "act=siem.stream_pause" in actions[-2].group(6)
    assert "act=siem.stream_resume" in actions[-1].group(6)
    run("siem", "remove", "soc")
    run("siem", "remove", "nonexistent", expect=1)
    assert "soc\t" not in run("siem", "list").output
    assert [e.details["name"] for e in audit_events(app, "siem.stream_remove")] == ["soc"]


def _signed_in(app, email):
    from tests.conftest import sign_in
    client = app.test_client()
    assert sign_in(client, email).status_code == 302
    return client


def test_org_admin_adds_a_stream_for_its_own_events_and_sees_only_its_own(
        app, tx, make_org, make_user):
    from tests.conftest import csrf_token
    from tests.integration.test_org_admin import grant
    make_org("acme", "Acme Supplies"), make_org("globex", "Globex Logistics")
    make_user("alice@acme.test", org="acme")
    grant(tx, "alice@acme.test", "acme", "org_owner")
    _add(app, tx, name="globex-soc", kind="webhook", target="https://siem.globex.test/in",
         org="globex")
    client = _signed_in(app, "alice@acme.test")
    page = client.get("/o/acme/admin/siem")
    assert page.status_code == 200 and "No event streams yet." in page.get_data(as_text=True)
    token = csrf_token(client, "/o/acme/admin/siem")
    refused = client.post("/o/acme/admin/siem", data={
        "csrf_token": token, "name": "inside", "target": "https://10.0.0.5/hook"})
    assert refused.status_code == 400
    assert "public host" in refused.get_data(as_text=True)
    added = client.post("/o/acme/admin/siem", data={
        "csrf_token": token, "name": "acme-soc", "target": "https://siem.acme.test/in?k=1",
        "format": "ocsf", "actions": "auth., role.grant", "kind": "file"})
    body = added.get_data(as_text=True)
    assert added.status_code == 200 and "Signing secret of the new stream" in body
    assert "https://siem.acme.test/in" in body and "k=1" not in body.split("<table")[1]
    assert "globex" not in body.lower()
    with services_of(app).db.sessions() as session:
        stream = session.scalar(sa.select(SiemStream).where(SiemStream.name == "acme-soc"))
        assert stream.kind == "webhook" and stream.format == "ocsf"  # no file for org admins
        assert stream.actions == ["auth.", "role.grant"]
        secret = services_of(app).secrets.open(stream.secret_sealed)["secret"]
        assert secret in body and secret not in stream.secret_sealed
    [event] = audit_events(app, "siem.stream_create")[-1:]
    assert event.actor == "alice@acme.test" and event.details["target"] == \
        "https://siem.acme.test/in"


def test_operator_page_lists_every_stream_and_adds_one(app, tx, make_org, make_user, rsyslog):
    from tests.conftest import csrf_token
    make_org("globex", "Globex Logistics")
    make_user("oscar@trellis.test", operator=True)
    _add(app, tx, name="globex-soc", kind="webhook", target="https://siem.globex.test/in",
         org="globex")
    client = _signed_in(app, "oscar@trellis.test")
    token = csrf_token(client, "/admin/siem")
    added = client.post("/admin/siem", data={
        "csrf_token": token, "name": "soc", "kind": "syslog", "target": rsyslog.target,
        "format": "cef"})
    body = added.get_data(as_text=True)
    assert added.status_code == 200 and "Globex Logistics" in body and "every organization" in body
    assert rsyslog.target in body
    with services_of(app).db.sessions() as session:
        stream_id = session.scalar(sa.select(SiemStream.id).where(SiemStream.name == "soc"))
    replay = client.post(f"/admin/siem/{stream_id}/replay", data={"csrf_token": token,
                                                                   "since": "1"})
    assert replay.status_code == 302 and _stream(app, stream_id).cursor_seq == 0
    assert client.post(f"/admin/siem/{stream_id}/remove",
                       data={"csrf_token": token}).status_code == 302
    assert _stream(app, stream_id) is None
    member = make_user("max@acme.test")
    assert member and _signed_in(app, "max@acme.test").get("/admin/siem").status_code == 403


def test_syslog_over_tls_checks_the_certificate(app, tx, rsyslog_tls):
    _add(app, tx, name="tls", kind="syslog", target=rsyslog_tls.target,
         tls=True, ca_file=str(rsyslog_tls.ca_file))
    seqs = _record(tx, 5)
    assert _deliver(app).delivered == 6
    lines = rsyslog_tls.wait_for(6)
    assert [int(SYSLOG_LINE.match(line).group(3)) for line in lines[1:]] == seqs
    # Without the CA the daemon's certificate is not trusted: nothing is sent, it waits.
    _add(app, tx, name="untrusted", kind="syslog", target=rsyslog_tls.target, tls=True)
    report = _deliver(app)
    assert report.retrying and "CERTIFICATE_VERIFY_FAILED" in _stream(
        app, report.retrying[0]).last_error
    assert len(rsyslog_tls.wait_for(7)) == 7  # the trusted stream's copy of that creation
    assert _stream(app, report.retrying[0]).delivered == 0


def test_the_worker_delivers_streams(app, tx, settings, monkeypatch, tmp_path):
    path = tmp_path / "worker.jsonl"
    _add(app, tx, name="disk", kind="file", target=str(path))
    seqs = _record(tx, 3)
    out = _cli(settings, monkeypatch)("worker", "--once").output
    assert "siem: delivered 4 events" in out
    assert [json.loads(line)["seq"] for line in path.read_text().splitlines()][1:] == seqs


def _received(http_receiver) -> list[dict]:
    return [e for r in http_receiver.requests for e in json.loads(r.body)]


def test_org_admin_pauses_and_resumes_its_stream_and_nothing_is_lost(
        app, tx, make_org, make_user, http_receiver, monkeypatch):
    from tests.conftest import csrf_token
    from tests.integration.test_org_admin import grant
    acme = make_org("acme", "Acme Supplies")
    make_user("alice@acme.test", org="acme")
    grant(tx, "alice@acme.test", "acme", "org_owner")
    monkeypatch.setattr(siem, "_check_url", lambda url, https_only: None)  # loopback peer
    stream_id, _ = _add(app, tx, name="acme-soc", kind="webhook", target=http_receiver.url,
                        org="acme")
    before = _record(tx, 2, org_id=acme.id)
    assert _deliver(app).delivered == 3
    client = _signed_in(app, "alice@acme.test")
    page = client.get("/o/acme/admin/siem").get_data(as_text=True)
    assert "Sending" in page and f"/o/acme/admin/siem/{stream_id}/pause" in page
    token = csrf_token(client, "/o/acme/admin/siem")
    assert client.post(f"/o/acme/admin/siem/{stream_id}/pause").status_code == 400  # no CSRF
    assert _stream(app, stream_id).enabled

    paused = client.post(f"/o/acme/admin/siem/{stream_id}/pause",
                         data={"csrf_token": token}, follow_redirects=True)
    body = paused.get_data(as_text=True)
    assert paused.status_code == 200
    assert "Stream acme-soc paused: its events wait, in order, until you resume it." in body
    assert re.search(r"Paused</strong> since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, "
                     r"1 event waiting", body)  # the pause itself is one of acme's events
    assert f"/o/acme/admin/siem/{stream_id}/resume" in body
    [event] = audit_events(app, "siem.stream_pause")
    assert event.actor == "alice@acme.test" and event.organization_id == acme.id
    assert event.target == f"siem_stream:{stream_id}"
    assert event.details["state"] == "paused" and event.details["name"] == "acme-soc"

    during = _record(tx, 3, org_id=acme.id)
    assert _deliver(app).delivered == 0  # paused: the receiver gets nothing
    assert len(http_receiver.requests) == 1
    page = client.get("/o/acme/admin/siem").get_data(as_text=True)
    assert "4 events waiting" in page
    stream = _stream(app, stream_id)
    assert not stream.enabled and stream.cursor_seq < during[0]  # the cursor stayed

    resumed = client.post(f"/o/acme/admin/siem/{stream_id}/resume",
                          data={"csrf_token": token}, follow_redirects=True)
    body = resumed.get_data(as_text=True)
    assert "Stream acme-soc resumed" in body and "Paused</strong>" not in body
    [event] = audit_events(app, "siem.stream_resume")
    assert event.actor == "alice@acme.test" and event.details["state"] == "enabled"
    assert _deliver(app).delivered == 5  # the pause, three events, the resume
    received = _received(http_receiver)
    assert [e["seq"] for e in received][1:3] == before
    assert [e["action"] for e in received[3:]] == \
        ["siem.stream_pause", "user.profile", "user.profile", "user.profile",
         "siem.stream_resume"]
    assert [e["seq"] for e in received[4:7]] == during  # recorded while paused, in order


def test_another_organizations_admin_can_neither_see_nor_pause_a_stream(
        app, tx, make_org, make_user):
    from tests.conftest import csrf_token
    from tests.integration.test_org_admin import grant
    make_org("acme", "Acme Supplies"), make_org("globex", "Globex Logistics")
    make_user("bob@globex.test", org="globex")
    grant(tx, "bob@globex.test", "globex", "org_owner")
    stream_id, _ = _add(app, tx, name="acme-soc", kind="webhook",
                        target="https://siem.acme.test/in", org="acme")
    client = _signed_in(app, "bob@globex.test")
    own = client.get("/o/globex/admin/siem")
    assert own.status_code == 200 and "acme-soc" not in own.get_data(as_text=True)
    token = csrf_token(client, "/o/globex/admin/siem")
    assert client.get("/o/acme/admin/siem").status_code == 404  # as every page of acme's
    for action in ("pause", "resume"):
        assert client.post(f"/o/acme/admin/siem/{stream_id}/{action}",
                           data={"csrf_token": token}).status_code == 404
        assert client.post(f"/o/globex/admin/siem/{stream_id}/{action}",
                           data={"csrf_token": token}).status_code == 404
        assert client.post(f"/admin/siem/{stream_id}/{action}",
                           data={"csrf_token": token}).status_code == 403
    assert _stream(app, stream_id).enabled
    assert not audit_events(app, "siem.stream_pause")


def test_operator_pauses_and_resumes_any_stream_from_the_page(app, tx, make_org, make_user,
                                                              tmp_path):
    from tests.conftest import csrf_token
    make_org("globex", "Globex Logistics")
    make_user("oscar@trellis.test", operator=True)
    path = tmp_path / "audit.jsonl"
    disk, _ = _add(app, tx, name="disk", kind="file", target=str(path))
    globex, _ = _add(app, tx, name="globex-soc", kind="webhook",
                     target="https://siem.globex.test/in", org="globex")
    _deliver(app, stream_ids=[disk])
    client = _signed_in(app, "oscar@trellis.test")
    token = csrf_token(client, "/admin/siem")
    for stream_id in (disk, globex):
        answer = client.post(f"/admin/siem/{stream_id}/pause", data={"csrf_token": token},
                             follow_redirects=True)
        assert answer.status_code == 200 and "paused: its events wait" in \
            answer.get_data(as_text=True)
        assert not _stream(app, stream_id).enabled
    again = client.post(f"/admin/siem/{disk}/pause", data={"csrf_token": token},
                        follow_redirects=True).get_data(as_text=True)
    assert "Stream disk was already paused." in again
    assert len(audit_events(app, "siem.stream_pause")) == 2  # the second click records nothing
    assert again.count("Paused</strong> since") == 2
    seqs = _record(tx, 2)
    assert _deliver(app, stream_ids=[disk]).delivered == 0
    lines = path.read_text().splitlines()
    assert client.post(f"/admin/siem/{disk}/resume",
                       data={"csrf_token": token}).status_code == 302
    _deliver(app, stream_ids=[disk])
    sent = [json.loads(line) for line in path.read_text().splitlines()][len(lines):]
    assert [e["seq"] for e in sent if e["action"] == "user.profile"] == seqs
    assert [e.actor for e in audit_events(app, "siem.stream_resume")] == \
        ["oscar@trellis.test"]
    member = make_user("max@acme.test")
    assert member and _signed_in(app, "max@acme.test").post(
        f"/admin/siem/{globex}/resume", data={"csrf_token": token}).status_code in (400, 403)
    assert not _stream(app, globex).enabled
