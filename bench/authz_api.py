"""The decision API over HTTP: one gunicorn worker (one core, threaded, keep-alive) serving
Trellis, and the Python client (policies.client) on the other core as the load.

Measures single checks per second, batched checks per second (batches of 1,000), the
worker's resident memory once every organization has been asked about, and the time from a
role grant written to the database until the API's answer changes. Baseline in the same run:
GET /healthz through the same connection (the cost of a request that decides nothing).

With ``REDIS_URL`` set, the worker listens for policy changes over Redis, and a second grant
is made through Trellis's own data layer (which publishes the change) to time the pub/sub
path as well as the database version check.

    [REDIS_URL=redis://127.0.0.1:6379/N] .venv/bin/python bench/authz_api.py [--quick]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa
from common import parse_args

from policies.client import TrellisClient
from portal import audit, migrate
from portal.db import create_engine, utcnow
from portal.models import Membership, Organization, RoleGrant, User
from portal.services import api_clients
from tests.peers.gunicorn_server import GunicornServer

GOALS = {"single_checks_per_s": 2000, "batched_checks_per_s": 20000, "worker_rss_mb": 500,
         "change_visible_s": 1.0}
USERS_PER_ORG = 20


def seed(url: str, orgs: int) -> str:
    engine = create_engine(url)
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(sa.insert(Organization.__table__), [
            {"id": n + 1, "slug": f"org{n}", "name": f"Org {n}", "kind": "partner",
             "status": "active", "branding": {}, "created_at": now} for n in range(orgs)])
        connection.execute(sa.insert(User.__table__), [
            {"id": n + 1, "email": f"u{n}@bench.test", "display_name": "", "status": "active",
             "is_operator": False, "created_at": now} for n in range(orgs * USERS_PER_ORG)])
        connection.execute(sa.insert(Membership.__table__), [
            {"user_id": n + 1, "organization_id": n // USERS_PER_ORG + 1, "status": "active",
             "source": "manual", "created_at": now, "updated_at": now}
            for n in range(orgs * USERS_PER_ORG)])
        connection.execute(sa.insert(RoleGrant.__table__), [
            {"user_id": n + 1, "organization_id": n // USERS_PER_ORG + 1,
             "role": "buyer" if n % 2 else "user_manager", "source": "manual",
             "created_at": now} for n in range(orgs * USERS_PER_ORG)])
    from sqlalchemy.orm import Session
    with Session(engine) as session, session.begin():
        _, key = api_clients.create(session, audit.Context(actor="bench"), "bench",
                                    [f"org{n}" for n in range(orgs)])
    engine.dispose()
    return key


def check_for(n: int) -> dict:
    org = n % ORGS
    return {"subject": str(org * USERS_PER_ORG + 1 + n % USERS_PER_ORG),
            "organization": f"org{org}", "object": {"type": "member"}, "action": "manage"}


def rate(seconds: float, step) -> float:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += step(done)
    return done / (time.perf_counter() - start)


def worker_rss_mb(master_pid: int) -> float:
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    status = Path(f"/proc/{children[0]}/status").read_text()
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return kib / 1024


def change_latency(url: str, client: TrellisClient) -> float:
    """Grant user 2 of org0 (a buyer) user_manager and wait until the API allows it."""
    body = {"subject": "2", "organization": "org0", "object": {"type": "member"},
            "action": "manage"}
    assert not client.check(**_args(body))["allowed"]
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.insert(RoleGrant.__table__).values(
            user_id=2, organization_id=1, role="user_manager", source="manual",
            created_at=utcnow()))
    engine.dispose()
    start = time.perf_counter()
    while not client.check(**_args(body))["allowed"]:
        if time.perf_counter() - start > 10:
            return float("inf")
        time.sleep(0.01)
    return time.perf_counter() - start


def change_latency_redis(url: str, redis_url: str, client: TrellisClient) -> float:
    """Grant user 4 of org0 (a buyer) user_manager through Trellis's data layer, whose commit
    publishes the change, and wait until the API allows it."""
    from portal.authz import create_engine as policy_engine
    from portal.db import Database
    body = {"subject": "4", "organization": "org0", "object": {"type": "member"},
            "action": "manage"}
    assert not client.check(**_args(body))["allowed"]
    db = Database(url)
    engine = policy_engine(Path(__file__).resolve().parent.parent / "policies", db, redis_url)
    assert engine.notifier.wait_until_listening()
    with db.transaction() as session:
        session.add(RoleGrant(user_id=4, organization_id=1, role="user_manager",
                              source="manual"))
    start = time.perf_counter()
    while not client.check(**_args(body))["allowed"]:
        if time.perf_counter() - start > 10:
            return float("inf")
        time.sleep(0.002)
    seconds = time.perf_counter() - start
    engine.close()
    db.dispose()
    return seconds


def _args(body: dict) -> dict:
    return {"subject": body["subject"], "organization": body["organization"],
            "obj": body["object"], "action": body["action"]}


ORGS = 0


def main() -> int:
    global ORGS
    args = parse_args(__doc__)
    ORGS, seconds = (50, 3.0) if args.quick else (1000, 10.0)
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/bench.db"
        migrate.upgrade(url)
        key = seed(url, ORGS)
        redis_url = os.environ.get("REDIS_URL", "")
        server = GunicornServer(Path(folder), {
            "DATABASE_URL": url, "TRELLIS_ENV": "test", "TRELLIS_INSTANCE_PATH": folder,
            "SECRET_KEY": "b" * 48, "TRELLIS_LOG_LEVEL": "WARNING", "REDIS_URL": redis_url},
            workers=1, threads=2)
        try:
            client = TrellisClient(server.url, key, cache_seconds=0)
            for n in range(0, ORGS * USERS_PER_ORG, 1000):  # warm every organization
                client.batch([check_for(m) for m in range(n, min(n + 1000, ORGS * 20))])
            healthz = rate(seconds / 2, lambda _: client._call("GET", "/healthz", None) and 1)
            single = rate(seconds, lambda n: client.check(**_args(check_for(n))) and 1)
            batch = [check_for(n) for n in range(1000)]
            batched = rate(seconds, lambda _: len(client.batch(batch)))
            rss = worker_rss_mb(server.process.pid)
            visible = change_latency(url, client)
            pubsub = change_latency_redis(url, redis_url, client) if redis_url else None
            client.close()
        finally:
            server.stop()

    print(f"{ORGS} organizations x {USERS_PER_ORG} users, one gunicorn worker (gthread), "
          f"{seconds:.0f} s per measure")
    print(f"{'measure':<44}{'value':>14}{'vs /healthz':>14}")
    print(f"{'GET /healthz (baseline)':<44}{healthz:>10.0f} /s{1.0:>14.2f}")
    print(f"{'single checks':<44}{single:>10.0f} /s{single / healthz:>14.2f}")
    print(f"{'batched checks (1,000 per call)':<44}{batched:>10.0f} /s{batched / healthz:>14.2f}")
    print(f"{'worker RSS, every organization warm':<44}{rss:>10.0f} MB")
    print(f"{'grant change visible to the API after':<44}{visible:>11.2f} s")
    if pubsub is not None:
        print(f"{'  the same, made through Trellis (Redis)':<44}{pubsub * 1000:>10.1f} ms")
    figures = {"organizations": ORGS, "healthz_per_s": round(healthz),
               "single_checks_per_s": round(single), "batched_checks_per_s": round(batched),
               "worker_rss_mb": round(rss), "change_visible_s": round(visible, 3),
               "change_visible_redis_s": round(pubsub, 4) if pubsub is not None else None,
               "quick": args.quick}
    goals_met = (single >= GOALS["single_checks_per_s"]
                 and batched >= GOALS["batched_checks_per_s"]
                 and rss <= GOALS["worker_rss_mb"] and visible <= GOALS["change_visible_s"])
    print(json.dumps({"benchmark": "authz_api", "figures": figures, "goals": GOALS,
                      "goals_met": goals_met}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
