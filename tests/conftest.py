"""Shared fixtures.

Every test that touches the database runs once on SQLite and, when ``TEST_DATABASE_URL`` is
set, once more on PostgreSQL. Each pytest run creates its own database (a temporary SQLite
file; a ``trellis_t_<random>`` PostgreSQL database), migrates it with Alembic, empties the
tables after every test and drops the database at the end.
"""

from __future__ import annotations

import os
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from portal import audit, create_app, migrate
from portal.db import Base, create_engine
from portal.extensions import services
from portal.models import AuditHead

ARTIFACTS = Path(os.environ.get("TRELLIS_TEST_OUTPUT", "test-output"))
FAST_HASH = {"ARGON2_TIME_COST": 1, "ARGON2_MEMORY_KIB": 8192, "ARGON2_PARALLELISM": 1}
PASSWORD = "correct horse battery"


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend_url(request, tmp_path_factory) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'trellis.db'}"
        migrate.upgrade(url)
        yield url
        return
    server = os.environ.get("TEST_DATABASE_URL")
    if not server:
        pytest.skip("PostgreSQL run skipped: TEST_DATABASE_URL is not set")
    with temporary_postgres_database(server) as url:
        migrate.upgrade(url)
        yield url


class temporary_postgres_database:
    """CREATE DATABASE on enter, DROP ... WITH (FORCE) on exit."""

    def __init__(self, server_url: str) -> None:
        self.server = sa.engine.make_url(server_url)
        self.name = f"trellis_t_{uuid.uuid4().hex[:10]}"
        self.admin = sa.create_engine(self.server.set(database="postgres"),
                                      isolation_level="AUTOCOMMIT")

    def __enter__(self) -> str:
        with self.admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
        return self.server.set(database=self.name).render_as_string(hide_password=False)

    def __exit__(self, *exc) -> None:
        with self.admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture
def database_url(backend_url) -> Iterator[str]:
    yield backend_url
    empty_tables(backend_url)


def empty_tables(url: str) -> None:
    """Empty every table after a test. A live server's last bit of work (a mail delivered
    after its response) may still hold a lock when the test ends: PostgreSQL then reports a
    deadlock with the TRUNCATE, which is retried once that work is done."""
    engine = create_engine(url)
    tables = [t for t in Base.metadata.sorted_tables]
    for attempt in range(5):
        try:
            with engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    names = ", ".join(f'"{t.name}"' for t in tables)
                    connection.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
                else:
                    for table in reversed(tables):
                        connection.execute(table.delete())
                connection.execute(sa.insert(AuditHead).values(id=1, last_seq=0,
                                                               last_hash=audit.GENESIS))
            break
        except sa.exc.OperationalError as error:
            if "deadlock" not in str(error).lower() or attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
    engine.dispose()


@pytest.fixture
def settings(database_url, tmp_path) -> dict:
    return {"ENV": "test", "TESTING": True, "DATABASE_URL": database_url,
            "INSTANCE_PATH": str(tmp_path / "instance"), "SECRET_KEY": secrets.token_hex(32),
            "REDIS_URL": "", "LOG_LEVEL": "WARNING",
            "RATELIMIT_KEY_PREFIX": f"t{uuid.uuid4().hex[:8]}", **FAST_HASH}


@pytest.fixture
def mail_settings(settings, request) -> dict:
    """The settings, sending mail to the loopback SMTP server (fixture ``smtp_server``)."""
    settings.update(request.getfixturevalue("smtp_server").settings())
    return settings


@pytest.fixture
def app(settings, request):
    """The app; in tests marked ``mail``, sending mail to the loopback SMTP server."""
    if request.node.get_closest_marker("mail"):
        request.getfixturevalue("mail_settings")
    return create_app(settings)


_OPENED: list = []  # the services of every app the tests created


@pytest.fixture(scope="session", autouse=True)
def _track_apps():
    """Record the services of every app a test creates (through ``app`` or its own
    ``create_app``), so that each is closed after its test: a suite of a thousand apps must
    not hold a thousand connection pools open against one PostgreSQL server."""
    from portal.extensions import Services
    original = Services.__init__

    def tracked(self, *args, **kwargs):
        original(self, *args, **kwargs)
        _OPENED.append(self)

    Services.__init__ = tracked
    yield
    Services.__init__ = original


@pytest.fixture(autouse=True)
def _close_apps():
    """After each test: stop its apps' policy listeners and close their connection pools."""
    yield
    while _OPENED:
        opened = _OPENED.pop()
        opened.policy.close()
        opened.db.dispose()


def services_of(app):
    with app.app_context():
        return services()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def tx(app):
    """Run service calls in one committed transaction: ``with tx() as session: ...``."""
    return services_of(app).db.transaction


CLI_CTX = audit.Context(actor="cli:test", request_id="test")


@pytest.fixture
def make_org(app, tx):
    from portal.services import organizations

    def make(slug: str = "acme", name: str | None = None, kind: str = "partner",
             branding: dict | None = None):
        with tx() as session:
            return organizations.create(session, CLI_CTX, slug=slug,
                                        name=name or slug.title(), kind=kind,
                                        branding=branding)
    return make


@pytest.fixture
def make_user(app, tx):
    from portal.services import users

    def make(email: str = "alice@acme.test", password: str | None = PASSWORD,
             org: str | None = None, operator: bool = False, display_name: str = ""):
        with tx() as session:
            return users.create(session, CLI_CTX, services_of(app).passwords, email=email,
                                password=password, display_name=display_name, org_slug=org,
                                operator=operator)
    return make


CSRF = re.compile(r'name="csrf_token"[^>]*?value="([^"]+)"')


def csrf_token(client, path: str = "/login") -> str:
    response = client.get(path)
    match = CSRF.search(response.get_data(as_text=True))
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def sign_in(client, email: str, password: str = PASSWORD, **extra):
    token = csrf_token(client)
    return client.post("/login", data={"email": email, "password": password,
                                       "csrf_token": token, **extra})


def audit_events(app, action: str | None = None) -> list:
    from portal.models import AuditEvent
    with services_of(app).db.sessions() as session:
        query = sa.select(AuditEvent).order_by(AuditEvent.seq)
        if action:
            query = query.where(AuditEvent.action == action)
        return list(session.scalars(query))


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("Redis test skipped: REDIS_URL is not set")
    return url


from tests.integration.provider_helpers import op  # noqa: E402, F401  (provider on loopback)
from tests.peers.oidc_provider import (  # noqa: E402, F401  (session-wide peers)
    interactive_oidc_provider,
    oidc_provider,
)
from tests.peers.rogue_op import rogue_provider  # noqa: E402, F401
from tests.peers.saml_idp import saml_idp  # noqa: E402, F401
from tests.peers.slapd import bulk_slapd, fresh_slapd, slapd  # noqa: E402, F401


@pytest.fixture
def dns_server(app):
    """A DNS server on a loopback UDP port that the app asks for verification records."""
    from tests.peers.dns_server import DnsPeer
    peer = DnsPeer().start()
    app.config["DNS_RESOLVERS"] = (peer.address,)
    app.config["DNS_TIMEOUT_SECONDS"] = 1
    yield peer
    peer.stop()
from tests.peers.http_receiver import http_receiver  # noqa: E402, F401
from tests.peers.rsyslog import rsyslog, rsyslog_tls  # noqa: E402, F401
from tests.peers.smtp import smtp_server  # noqa: E402, F401
