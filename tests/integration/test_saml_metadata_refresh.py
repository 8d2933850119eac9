"""`trellis worker` keeps SAML metadata current for every connection configured by URL, not
only those someone signs in through, against the real pysaml2 IdP's metadata endpoint."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask.cli import ScriptInfo

from portal.db import utcnow
from portal.models import Connection, Domain
from portal.services import organizations
from portal.services import saml as saml_connections
from tests.conftest import CLI_CTX, audit_events, services_of
from tests.integration.test_org_admin import as_user, grant
from tests.integration.test_saml_signin import add_saml_connection, saml_login
from tests.peers.saml_idp import SamlIdp


def cli(app, *args):
    from portal.cli import main
    return CliRunner().invoke(main, list(args), obj=ScriptInfo(create_app=lambda: app))


def worker_pass(app):
    result = cli(app, "worker", "--once")
    assert result.exit_code == 0, result.output
    return result.output


def settings(tx, connection_id) -> dict:
    with tx() as session:
        return dict(session.get(Connection, connection_id).settings)


def make_due(tx, connection_id) -> None:
    with tx() as session:
        row = session.get(Connection, connection_id)
        row.settings = {**row.settings, "metadata": {**row.settings["metadata"],
                                                     "refresh_at": time.time() - 1}}


@pytest.fixture
def partner(app, tx, make_org):
    make_org("partner", "Partner Co")
    with tx() as session:
        organizations.add_domain(session, CLI_CTX, "partner", "partner.example")
        organizations.verify_domain_manually(session, CLI_CTX, "partner.example")
        # Checked just now, so the worker's domain re-check leaves it alone (no DNS here).
        session.execute(sa.update(Domain).values(last_checked_at=utcnow()))


def test_a_due_connection_nobody_signs_in_through_is_refreshed_by_the_worker(
        app, tx, client, partner, saml_idp):
    connection_id = add_saml_connection(app, tx, client, saml_idp)
    with tx() as session:  # switched off: kept current all the same
        session.get(Connection, connection_id).enabled = False
    saml_idp.publish_next_key()
    make_due(tx, connection_id)
    fetches = saml_idp.metadata_fetches

    output = worker_pass(app)

    assert f"saml connection {connection_id}: metadata refreshed" in output
    assert saml_idp.metadata_fetches == fetches + 1
    after = settings(tx, connection_id)
    assert len(after["idp_certs"]) == 2 and after["metadata"]["error"] == ""
    assert after["metadata"]["refresh_at"] > time.time()
    [event] = audit_events(app, "connection.metadata_refresh")
    assert event.outcome == "success" and event.target == f"connection:{connection_id}"
    assert event.details["changed"] == ["idp_certs"]

    # The IdP switches to the announced key: sign-ins go on, with no fetch at sign-in.
    with tx() as session:
        session.get(Connection, connection_id).enabled = True
    saml_idp.switch_to_next_key(keep_old=False)
    assert saml_login(client, connection_id).headers["Location"] == "/o/partner/"
    assert saml_idp.metadata_fetches == fetches + 1


def test_metadata_that_is_not_due_is_not_fetched(app, tx, client, partner, saml_idp):
    connection_id = add_saml_connection(app, tx, client, saml_idp)
    before = settings(tx, connection_id)
    fetches = saml_idp.metadata_fetches
    saml_idp.publish_next_key()

    assert "saml" not in worker_pass(app)

    assert saml_idp.metadata_fetches == fetches
    assert settings(tx, connection_id)["metadata"] == before["metadata"]
    assert audit_events(app, "connection.metadata_refresh") == []


def test_a_failed_fetch_keeps_the_last_good_metadata_and_the_pass_goes_on(
        app, tx, client, make_org, make_user, partner, saml_idp, tmp_path):
    make_org("other", "Other Co")
    broken_idp = SamlIdp(tmp_path)
    try:
        broken = add_saml_connection(app, tx, client, broken_idp)  # the lower id: tried first
        working = add_saml_connection(app, tx, client, saml_idp, org_slug="other")
        before = settings(tx, broken)
        broken_idp.metadata_broken = True
        broken_idp.publish_next_key()
        saml_idp.publish_next_key()
        make_due(tx, broken)
        make_due(tx, working)

        started = time.time()
        output = worker_pass(app)
    finally:
        broken_idp.stop()

    assert f"saml connection {broken}: refresh failed, last good metadata kept:" in output
    assert f"saml connection {working}: metadata refreshed" in output
    kept = settings(tx, broken)
    assert kept["idp_certs"] == before["idp_certs"]
    assert kept["metadata"]["fetched_at"] == before["metadata"]["fetched_at"]
    assert "HTTP 503" in kept["metadata"]["error"]
    assert kept["metadata"]["refresh_at"] == pytest.approx(started + 300, abs=30)  # retried
    assert len(settings(tx, working)["idp_certs"]) == 2

    failure, success = audit_events(app, "connection.metadata_refresh")
    assert (failure.outcome, failure.target) == ("failure", f"connection:{broken}")
    assert "HTTP 503" in failure.details["error"]
    assert failure.details["url"] == broken_idp.entity_id
    assert (success.outcome, success.target) == ("success", f"connection:{working}")

    # The organization's SSO manager sees it on the connection page.
    make_user("sam@partner.example", org="partner")
    grant(tx, "sam@partner.example", "partner", "sso_manager")
    sam = as_user(app, "sam@partner.example")
    page = sam.get(f"/o/partner/admin/connections/{broken}").get_data(as_text=True)
    assert "HTTP 503" in page and "the last good copy is in use" in page

    # Not fetched again before the retry time.
    assert "saml" not in worker_pass(app)


def test_two_workers_do_not_fetch_the_same_metadata_at_once(app, tx, client, partner,
                                                           saml_idp):
    connection_id = add_saml_connection(app, tx, client, saml_idp)
    saml_idp.publish_next_key()
    make_due(tx, connection_id)
    db = services_of(app).db
    saml_idp.metadata_requested.clear()
    saml_idp.metadata_gate = threading.Event()
    fetches, first = saml_idp.metadata_fetches, {}

    def first_worker():
        first["report"] = saml_connections.refresh_due(db, CLI_CTX)

    thread = threading.Thread(target=first_worker)
    thread.start()
    try:
        assert saml_idp.metadata_requested.wait(30), "the first worker never fetched"
        second = saml_connections.refresh_due(db, CLI_CTX)  # while the first one fetches
    finally:
        saml_idp.metadata_gate.set()
        thread.join(60)
    assert second.busy == [connection_id] and not second.refreshed and not second.failed
    assert first["report"].refreshed == [connection_id]
    assert saml_idp.metadata_fetches == fetches + 1

    # Once the first one has committed, the connection is no longer due for anybody.
    third = saml_connections.refresh_due(db, CLI_CTX)
    assert third == saml_connections.RefreshPass()
    assert saml_idp.metadata_fetches == fetches + 1
    assert len(audit_events(app, "connection.metadata_refresh")) == 1
    with tx() as session:
        assert len(session.scalar(sa.select(Connection)).settings["idp_certs"]) == 2



def test_refresh_metadata_due_from_cron_does_the_same_pass(app, tx, client, partner,
                                                           saml_idp):
    connection_id = add_saml_connection(app, tx, client, saml_idp)
    idle = cli(app, "saml", "refresh-metadata", "--due")
    assert idle.exit_code == 0 and "no metadata is due" in idle.output
    make_due(tx, connection_id)
    saml_idp.metadata_broken = True
    failed = cli(app, "saml", "refresh-metadata", "--due")
    assert failed.exit_code == 1
    assert (f"connection {connection_id}: refresh failed, last good metadata kept: "
            in failed.output) and "HTTP 503" in failed.output
    saml_idp.metadata_broken = False
    done = cli(app, "saml", "refresh-metadata", str(connection_id))  # by hand: not due yet
    assert done.exit_code == 0
    assert f"connection {connection_id}: metadata refreshed" in done.output
    assert [e.outcome for e in audit_events(app, "connection.metadata_refresh")] == [
        "failure", "success"]
    assert settings(tx, connection_id)["metadata"]["error"] == ""
