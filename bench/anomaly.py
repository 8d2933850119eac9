"""Anomaly detection and account-takeover checks: what they add, on PostgreSQL
(``TEST_DATABASE_URL`` or ``DATABASE_URL``, in a throwaway database) or, when neither is
set, a temporary SQLite file.

- one worker pass over a window of N sign-in events (members of 20 organizations): counted
  platform-wide and per organization, judged against the baselines, folded in; against a
  baseline of the plain platform-wide count of the same window (one grouped SELECT);
- the browser-family check run on every request with a session (``useragent.family``),
  for a new User-Agent string and a cached one, against ``str.lower`` of the same string;
- the new-device check of each completed sign-in (``takeover.device_is_new``: one query),
  against the primary-key read of the user the sign-in does anyway (median and p99 wall
  time: on a loaded machine the p99 of any query is mostly waiting for a core).

CPU time is ``time.process_time`` of this process (the database server's own CPU is not
in it); wall time is shown next to it. The machine is shared: read the load average.

    .venv/bin/python bench/anomaly.py [--quick]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa
from common import parse_args, percentile

from portal import audit, create_app, migrate, useragent
from portal.db import utcnow
from portal.extensions import services
from portal.models import (
    AuditEvent,
    KnownSignal,
    Membership,
    MembershipSource,
    MembershipStatus,
    Organization,
    OrgKind,
    User,
)
from portal.services import anomaly, takeover

GOALS = {"window_pass_ms_max": 2000, "family_new_us_max": 50, "device_check_ms_p50_max": 5}
ORGS, MEMBERS = 20, 50
AGENT = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
         "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0")


def database():
    url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url and url.startswith("postgresql"):
        from tests.conftest import temporary_postgres_database
        return temporary_postgres_database(url), "postgresql"
    return nullcontext(None), "sqlite"


def people(db) -> list[str]:
    emails = []
    with db.transaction() as session:
        for o in range(ORGS):
            org = Organization(slug=f"org{o}", name=f"Org {o}", kind=OrgKind.PARTNER)
            session.add(org)
            session.flush()
            for m in range(MEMBERS):
                user = User(email=f"m{m}@org{o}.test")
                session.add(user)
                session.flush()
                session.add(Membership(user_id=user.id, organization_id=org.id,
                                       source=MembershipSource.MANUAL,
                                       status=MembershipStatus.ACTIVE))
                session.add(KnownSignal(user_id=user.id, kind="device", value=f"{m:064d}"))
                emails.append(user.email)
    return emails


def record(db, emails: list[str], count: int) -> None:
    ctx = audit.Context(actor="", ip="192.0.2.10", user_agent=AGENT, request_id="bench")
    for start in range(0, count, 1000):
        with db.transaction() as session:
            audit.record_many(session, ctx, [
                {"action": "auth.login", "target": f"user:{emails[i % len(emails)]}",
                 "outcome": "failure" if i % 4 == 0 else "success",
                 "reason": "wrong_password" if i % 4 == 0 else ""}
                for i in range(start, min(start + 1000, count))])


def timed(run) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000


def main() -> None:
    args = parse_args(__doc__)
    events = 2000 if args.quick else 20000
    checks = 200 if args.quick else 2000
    holder, backend = database()
    with holder as pg_url, tempfile.TemporaryDirectory() as folder:
        url = pg_url or f"sqlite:///{folder}/bench.db"
        migrate.upgrade(url)
        app = create_app({"ENV": "test", "TESTING": True, "DATABASE_URL": url,
                          "INSTANCE_PATH": folder, "SECRET_KEY": "x" * 64, "REDIS_URL": "",
                          "LOG_LEVEL": "ERROR"})
        with app.app_context():
            db = services().db
            emails = people(db)
            record(db, emails, events)
            now = utcnow()
            window = timedelta(minutes=15)
            settings = anomaly.Settings(window=window)
            start = anomaly.floor_window(now, window)

            def baseline_count():
                with db.sessions() as session:
                    session.execute(sa.select(AuditEvent.action, sa.func.count()).where(
                        AuditEvent.occurred_at >= start,
                        AuditEvent.occurred_at < start + window)
                        .group_by(AuditEvent.action)).all()

            base_wall, _base_cpu = timed(baseline_count)
            ctx = audit.Context(actor="cli:bench")
            result = {}
            pass_wall, pass_cpu = timed(lambda: result.update(report=anomaly.evaluate(
                db, ctx, settings, now=start + window + timedelta(seconds=1))))
            assert result["report"].windows == 1

            new_agents = [AGENT.replace("131.0", f"{n}.0") for n in range(checks)]
            useragent.family.cache_clear()
            t = time.process_time()
            for agent in new_agents:
                useragent.family(agent)
            family_new_us = (time.process_time() - t) / checks * 1e6
            t = time.process_time()
            for _ in range(checks):
                useragent.family(AGENT)
            family_cached_us = (time.process_time() - t) / checks * 1e6
            t = time.process_time()
            for agent in new_agents:
                agent[:512].lower()
            lower_us = (time.process_time() - t) / checks * 1e6

            device_ms, read_ms = [], []
            with db.sessions() as session:
                for n in range(checks):
                    user_id = 1 + n % (ORGS * MEMBERS)
                    w = time.perf_counter()
                    takeover.device_is_new(session, user_id, f"device-{n}")
                    device_ms.append((time.perf_counter() - w) * 1000)
                    w = time.perf_counter()
                    session.scalar(sa.select(User).where(User.id == user_id)
                                   .execution_options(populate_existing=True))
                    read_ms.append((time.perf_counter() - w) * 1000)
    load = os.getloadavg()[0]
    p99_device, p99_read = percentile(device_ms, 0.99), percentile(read_ms, 0.99)
    p50_device, p50_read = percentile(device_ms, 0.5), percentile(read_ms, 0.5)
    rows = [
        ("window pass (anomaly.evaluate)", f"{pass_wall:.1f} ms wall, {pass_cpu:.1f} ms CPU",
         f"plain count {base_wall:.1f} ms wall", f"x{pass_wall / max(base_wall, 0.001):.1f}"),
        ("browser family, new UA", f"{family_new_us:.2f} us CPU",
         f"str.lower {lower_us:.2f} us", f"x{family_new_us / max(lower_us, 0.001):.1f}"),
        ("browser family, cached UA", f"{family_cached_us:.2f} us CPU", "", ""),
        ("new-device check p50", f"{p50_device:.2f} ms wall",
         f"user read p50 {p50_read:.2f} ms", f"x{p50_device / max(p50_read, 0.001):.1f}"),
        ("new-device check p99", f"{p99_device:.2f} ms wall",
         f"user read p99 {p99_read:.2f} ms", f"x{p99_device / max(p99_read, 0.001):.1f}"),
    ]
    print(f"backend {backend}, {events} events in the window, {ORGS} orgs x {MEMBERS} "
          f"members, load average {load:.2f}")
    print(f"{'step':34} {'measured':34} {'baseline':28} ratio")
    for row in rows:
        print(f"{row[0]:34} {row[1]:34} {row[2]:28} {row[3]}")
    figures = {"backend": backend, "events": events, "window_pass_ms": round(pass_wall, 1),
               "window_pass_cpu_ms": round(pass_cpu, 1),
               "baseline_count_ms": round(base_wall, 1),
               "family_new_us": round(family_new_us, 2),
               "family_cached_us": round(family_cached_us, 2),
               "device_check_ms_p50": round(p50_device, 3),
               "device_check_ms_p99": round(p99_device, 3),
               "user_read_ms_p99": round(p99_read, 3), "load_average": round(load, 2)}
    met = (pass_wall <= GOALS["window_pass_ms_max"]
           and family_new_us <= GOALS["family_new_us_max"]
           and p50_device <= GOALS["device_check_ms_p50_max"])
    print(json.dumps({"figures": figures, "goals": GOALS, "goals_met": met}))


if __name__ == "__main__":
    main()
