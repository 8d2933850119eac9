"""SIEM export: audit events streamed to a real local syslog daemon (Debian's rsyslogd, imtcp
on a loopback port, writing to a file), on PostgreSQL (``TEST_DATABASE_URL`` or
``DATABASE_URL``, in a throwaway database) or, when neither is set, a temporary SQLite file:

- throughput: a stream caught up with the trail, then N events recorded; the delivery pass
  that sends them (read after the cursor, render JSON, frame RFC 5424, send), events/s until
  rsyslogd has written the last one, against a baseline of writing the same pre-rendered
  frames to the same daemon with no database and no rendering;
- outage: rsyslogd stopped, M events recorded (the pass fails and backs off), rsyslogd back on
  the same port: the drain rate of the backlog, and that every event arrived once, in order.

Goal (issue 11): >= 5,000 events/s to the local syslog.

    .venv/bin/python bench/siem.py [--quick]
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import parse_args

from portal import audit, create_app, migrate
from portal.db import utcnow
from portal.extensions import services
from portal.services import siem, siem_formats
from tests.peers.rsyslog import Rsyslog

GOALS = {"syslog_events_per_s_min": 5000}


def database():
    url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url and url.startswith("postgresql"):
        from tests.conftest import temporary_postgres_database
        return temporary_postgres_database(url), "postgresql"
    return nullcontext(None), "sqlite"


def record(db, count: int) -> None:
    """``count`` sign-in events, written in batches of 1,000 as a busy portal would."""
    ctx = audit.Context(actor="bench@acme.test", actor_id=1, ip="192.0.2.10",
                        user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
                        request_id="bench")
    for start in range(0, count, 1000):
        with db.transaction() as session:
            audit.record_many(session, ctx, [
                {"action": "auth.login", "target": f"user:{i}", "organization_id": 1,
                 "details": {"method": "password", "risk": {"score": 10}}}
                for i in range(start, min(start + 1000, count))])


def drain(db, box, config, daemon: Rsyslog, expected: int, now=None) -> float:
    """Seconds from the start of delivery until rsyslogd has written ``expected`` lines."""
    started = time.perf_counter()
    report = siem.deliver(db, box, config, now=now, max_batches=10**6)
    assert not report.retrying, report
    daemon.wait_for(expected, timeout=300)
    return time.perf_counter() - started


def baseline(daemon: Rsyslog, count: int) -> float:
    """Pre-rendered frames over one connection: what the daemon and the loopback allow."""
    row = {"seq": 1, "occurred_at": "2026-12-05T00:00:00.000000Z", "actor_id": 1,
           "actor": "bench@acme.test", "organization_id": 1, "action": "auth.login",
           "target": "user:1", "outcome": "success", "reason": "", "ip": "192.0.2.10",
           "user_agent": "Mozilla/5.0", "request_id": "bench", "details": {},
           "prev_hash": "0" * 64, "hash": "1" * 64}
    frame = siem_formats.syslog_frame(row, "json", "bench")
    before = len(daemon.lines())
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", daemon.port)) as conn:
        for start in range(0, count, 500):
            conn.sendall(frame * min(500, count - start))
    daemon.wait_for(before + count, timeout=300)
    return count / (time.perf_counter() - started)


def main() -> int:
    args = parse_args(__doc__)
    count, backlog = (10_000, 5_000) if args.quick else (50_000, 20_000)
    holder, backend = database()
    with holder as url, tempfile.TemporaryDirectory() as folder:
        url = url or f"sqlite:///{Path(folder) / 'bench.db'}"
        migrate.upgrade(url)
        app = create_app({"ENV": "test", "DATABASE_URL": url, "INSTANCE_PATH": folder,
                          "SECRET_KEY": "b" * 48, "REDIS_URL": "", "LOG_LEVEL": "ERROR"})
        daemon_folder = Path(folder) / "rsyslog"
        daemon_folder.mkdir()
        daemon = Rsyslog(daemon_folder).start()
        try:
            with app.app_context():
                s = services()
                config = siem.SiemConfig.from_settings(app.config)
                wire = baseline(daemon, count)
                lines_before = len(daemon.lines())
                with s.db.transaction() as session:
                    siem.create(session, audit.Context(actor="bench"), s.secrets, name="soc",
                                kind="syslog", target=daemon.target, fmt="json")
                siem.deliver(s.db, s.secrets, config)  # its creation event: caught up
                daemon.wait_for(lines_before + 1)
                record(s.db, count)
                written = len(daemon.lines())
                seconds = drain(s.db, s.secrets, config, daemon, written + count)
                rate = count / seconds

                daemon.stop()
                record(s.db, backlog)
                failed = siem.deliver(s.db, s.secrets, config)
                assert failed.retrying and not failed.delivered, failed
                daemon.start()
                written = len(daemon.lines())
                drain_seconds = drain(s.db, s.secrets, config, daemon, written + backlog,
                                      now=utcnow() + timedelta(minutes=11))
                drain_rate = backlog / drain_seconds
                seqs = [int(line.split('seq="', 1)[1].split('"', 1)[0])
                        for line in daemon.lines()[lines_before:]]
                in_order = seqs == sorted(seqs) and len(seqs) == len(set(seqs)) == \
                    1 + count + backlog
        finally:
            daemon.stop()
    print(f"{count:,} sign-in events streamed as JSON over RFC 5424/TCP to a local rsyslogd "
          f"on {backend}; outage backlog {backlog:,} events")
    print(f"{'measure':<52}{'value':>14}{'vs baseline':>14}")
    print(f"{'pre-rendered frames, one connection (baseline)':<52}{wire:>10,.0f} /s"
          f"{1.0:>14.2f}")
    print(f"{'stream to rsyslog, written (goal >= 5,000/s)':<52}{rate:>10,.0f} /s"
          f"{rate / wire:>14.2f}")
    print(f"{'backlog drain after the outage':<52}{drain_rate:>10,.0f} /s"
          f"{drain_rate / wire:>14.2f}")
    print(f"{'every event once, in order':<52}{in_order!s:>14}")
    figures = {"backend": backend, "events": count, "backlog": backlog,
               "baseline_events_per_s": round(wire), "syslog_events_per_s": round(rate),
               "drain_events_per_s": round(drain_rate), "in_order": in_order}
    goals_met = rate >= GOALS["syslog_events_per_s_min"] and in_order
    print(json.dumps({"benchmark": "siem", "figures": figures, "goals": GOALS,
                      "goals_met": goals_met}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
