"""Directory sync and bind sign-in against a local slapd with generated entries.

Loads 100,000 users in 100 groups (one group nested in another) into a throwaway slapd
(``--quick``: 10,000), then measures, in one process on a temporary SQLite database:

* the baseline: reading every user entry page by page with the same adapter and nothing
  else (the directory and ldap3's decoding are the floor a sync cannot beat);
* the first sync (every user created, with membership, roles and an audit event each) and a
  re-sync with no change in the directory, as entries per second and as a ratio of the
  baseline;
* the process's peak RSS after both syncs (the goal is that pages are streamed, never the
  whole directory held);
* bind sign-ins per second: the adapter's search + bind + nested-group lookup, one user after
  another, and complete sign-ins through the app (POST /login: throttle, bind, provisioning,
  session, audit) with Flask's test client.

    .venv/bin/python bench/ldap_sync.py [--quick]
"""

from __future__ import annotations

import json
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import parse_args

from portal import audit, create_app, migrate
from portal.extensions import services
from portal.models import Connection
from portal.services import connections, ldap_sync, organizations
from tests.peers.slapd import (
    GROUPS,
    PEOPLE,
    SERVICE_DN,
    SERVICE_PASSWORD,
    USER_PASSWORD,
    start_bulk,
)

GOALS = {"first_sync_entries_per_s": 2000, "resync_entries_per_s": 10000,
         "peak_rss_mb": 200}
CSRF = re.compile(r'name="csrf_token"[^>]*?value="([^"]+)"')
CTX = audit.Context(actor="bench")


def build_app(folder: Path, server):
    url = f"sqlite:///{folder / 'bench.db'}"
    migrate.upgrade(url)
    app = create_app({"ENV": "test", "DATABASE_URL": url, "INSTANCE_PATH": str(folder),
                      "SECRET_KEY": "b" * 48, "REDIS_URL": "", "LOG_LEVEL": "WARNING",
                      "LOGIN_RATE_LIMIT": "1000000/minute", "LOGIN_FREE_FAILURES": 100,
                      "LOGIN_IP_FREE_FAILURES": 100000})
    with app.app_context():
        s = services()
        with s.db.transaction() as session:
            organizations.create(session, CTX, slug="bulk", name="Bulk", kind="partner")
            organizations.add_domain(session, CTX, "bulk", "bulk.test")
            organizations.verify_domain_manually(session, CTX, "bulk.test")
            connection = connections.create_ldap(
                session, CTX, s.secrets, org_slug="bulk", name="Bulk directory",
                bind_password=SERVICE_PASSWORD, enabled=True, urls=[server.url],
                bind_dn=SERVICE_DN, user_base=PEOPLE, group_base=GROUPS, start_tls=False,
                allow_plain=True, page_size=1000,
                group_roles={"g000": "user_manager", "g001": "auditor"})
            connection_id = connection.id
    return app, connection_id


def raw_read(app, connection_id: int) -> tuple[int, float]:
    with app.app_context():
        s = services()
        with s.db.sessions() as session:
            settings = connections.ldap_settings(session.get(Connection, connection_id),
                                                 s.secrets)
        started = time.perf_counter()
        service = s.ldap.service_connection(settings)
        count = sum(len(page) for page in s.ldap.iter_users(service, settings))
        service.unbind()
        return count, time.perf_counter() - started


def run_sync(app, connection_id: int) -> tuple[ldap_sync.SyncSummary, float]:
    with app.app_context():
        s = services()
        started = time.perf_counter()
        summary = ldap_sync.run(s.db, CTX, s.ldap, s.secrets, connection_id)
        return summary, time.perf_counter() - started


def adapter_binds(app, connection_id: int, seconds: float) -> float:
    with app.app_context():
        s = services()
        with s.db.sessions() as session:
            settings = connections.ldap_settings(session.get(Connection, connection_id),
                                                 s.secrets)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            s.ldap.authenticate(settings, f"u{done:06d}", USER_PASSWORD)
            done += 1
        return done / (time.perf_counter() - started)


def app_sign_ins(app, seconds: float) -> float:
    done, elapsed = 0, 0.0
    while elapsed < seconds:
        client = app.test_client()
        page = client.get("/o/bulk/login").get_data(as_text=True)
        token = CSRF.search(page).group(1)
        started = time.perf_counter()
        response = client.post("/o/bulk/login", data={
            "email": f"u{done:06d}@bulk.test", "password": USER_PASSWORD,
            "csrf_token": token})
        elapsed += time.perf_counter() - started
        assert response.status_code == 302, response.get_data(as_text=True)[:300]
        done += 1
    return done / elapsed


def main() -> None:
    args = parse_args(__doc__)
    count = 10_000 if args.quick else 100_000
    with tempfile.TemporaryDirectory() as folder_name:
        folder = Path(folder_name)
        started = time.perf_counter()
        server = start_bulk(folder / "slapd", count)
        load_seconds = time.perf_counter() - started
        try:
            app, connection_id = build_app(folder, server)
            start_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            first, first_seconds = run_sync(app, connection_id)
            again, again_seconds = run_sync(app, connection_id)
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            read_count, read_seconds = raw_read(app, connection_id)
            binds = adapter_binds(app, connection_id, 3 if args.quick else 10)
            signins = app_sign_ins(app, 3 if args.quick else 10)
        finally:
            server.stop()
    assert first.created == count and again.unchanged == count, (first, again)
    figures = {
        "entries": count, "slapadd_seconds": round(load_seconds, 1),
        "raw_read_entries_per_s": round(read_count / read_seconds),
        "first_sync_entries_per_s": round(count / first_seconds),
        "first_sync_seconds": round(first_seconds, 1),
        "resync_entries_per_s": round(count / again_seconds),
        "resync_seconds": round(again_seconds, 1),
        "first_sync_to_raw_read": round(read_seconds / first_seconds, 2),
        "resync_to_raw_read": round(read_seconds / again_seconds, 2),
        "peak_rss_mb": round(peak_mb),
        "rss_before_syncs_mb": round(start_mb),
        "adapter_bind_sign_ins_per_s": round(binds, 1),
        "app_bind_sign_ins_per_s": round(signins, 1),
    }
    print(f"{'measure':<34}{'value':>14}")
    for name, value in figures.items():
        print(f"{name:<34}{value:>14,}")
    goals_met = (figures["first_sync_entries_per_s"] >= GOALS["first_sync_entries_per_s"]
                 and figures["resync_entries_per_s"] >= GOALS["resync_entries_per_s"]
                 and figures["peak_rss_mb"] <= GOALS["peak_rss_mb"])
    print(json.dumps({"benchmark": "ldap_sync", "figures": figures, "goals": GOALS,
                      "goals_met": goals_met}))


if __name__ == "__main__":
    main()
