"""Errors reach users as a plain page or problem+json with a reference id; the log keeps the
detail; a database outage writes nothing half-way."""

import logging

import pytest

from portal import create_app
from tests.conftest import PASSWORD


def test_html_error_page_has_a_reference_and_no_detail(client):
    response = client.get("/no/such/page")
    page = response.get_data(as_text=True)
    assert response.status_code == 404 and response.mimetype == "text/html"
    assert "That page does not exist." in page
    assert f'<code class="reference">{response.headers["X-Request-ID"]}</code>' in page


@pytest.mark.parametrize("headers", [{"Accept": "application/json"}, {}])
def test_api_paths_and_json_clients_get_problem_json(client, headers):
    path = "/api/v1/nothing" if not headers else "/no/such/page"
    response = client.get(path, headers=headers)
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["code"] == "not_found" and body["status"] == 404
    assert body["reference"] == response.headers["X-Request-ID"]


def test_unexpected_errors_show_no_stack_trace(app, client, caplog):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internal detail")

    with caplog.at_level(logging.ERROR, logger="trellis"):
        response = client.get("/boom")
    page = response.get_data(as_text=True)
    assert response.status_code == 500 and "Something went wrong on our side." in page
    assert "secret internal detail" not in page and "Traceback" not in page
    assert any("secret internal detail" in r.getMessage() or
               (r.exc_info and "secret internal detail" in str(r.exc_info[1]))
               for r in caplog.records)
    record = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert record.request_id == response.headers["X-Request-ID"]


def unreachable_database(settings, backend_url):
    if backend_url.startswith("sqlite"):
        return {**settings, "DATABASE_URL": "sqlite:////nonexistent-dir/trellis.db"}
    return {**settings, "DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/none"}


def test_database_outage_shows_the_error_page_and_readyz_fails(settings, backend_url):
    app = create_app(unreachable_database(settings, backend_url))
    client = app.test_client()
    for response in (client.get("/login"), client.get("/o/acme/login")):
        page = response.get_data(as_text=True)
        assert response.status_code == 503 and "temporarily unavailable" in page
        assert response.headers["X-Request-ID"] in page
    with client.session_transaction() as session:
        session["csrf_token"] = "x" * 40
    from flask_wtf.csrf import generate_csrf
    with app.test_request_context():
        from flask import session as flask_session
        flask_session["csrf_token"] = "x" * 40
        token = generate_csrf()
    response = client.post("/login", data={"email": "alice@acme.test", "password": PASSWORD,
                                           "csrf_token": token})
    assert response.status_code == 503
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["failed"] == ["database", "migrations"]
    assert ready.get_json()["checks"]["database"] == "unreachable"
    assert client.get("/healthz").status_code == 200


def test_failure_in_the_middle_of_a_write_leaves_nothing(app, tx, monkeypatch):
    import sqlalchemy as sa

    from portal.models import AuditEvent, Organization
    from portal.services import organizations
    from tests.conftest import CLI_CTX

    def broken(*args, **kwargs):
        raise sa.exc.OperationalError("INSERT", {}, Exception("connection lost"))

    monkeypatch.setattr("portal.services.organizations.audit.record", broken)
    with pytest.raises(sa.exc.OperationalError), tx() as session:
        organizations.create(session, CLI_CTX, slug="acme", name="Acme", kind="partner")
    monkeypatch.undo()
    with tx() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Organization)) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(AuditEvent)) == 0


def test_readyz_reports_pending_migrations(settings, tmp_path):
    from portal import migrate
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate.upgrade(url, "base")
    client = create_app({**settings, "DATABASE_URL": url}).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["failed"] == ["migrations"]
    assert body["checks"]["migrations"].startswith("database at empty, code expects")
    migrate.upgrade(url)
    assert client.get("/readyz").status_code == 200


def test_redis_outage_is_a_503_and_readyz_names_it(settings, make_user):
    app = create_app({**settings, "REDIS_URL": "redis://127.0.0.1:1/0"})
    client = app.test_client()
    assert client.head("/login").status_code == 200
    from tests.conftest import sign_in
    response = sign_in(client, "alice@acme.test")
    assert response.status_code == 503
    assert "temporarily unavailable" in response.get_data(as_text=True)
    ready = client.get("/readyz").get_json()
    assert ready["failed"] == ["redis"] and ready["checks"]["redis"] == "unreachable"
