"""The decision API over HTTP: one gunicorn worker (one core) serving Trellis, loaded from
the other core, and the per-request CPU of the same requests in process.

In process (the primary evidence on a shared machine): CPU time (time.process_time) per
request through Trellis's WSGI app for GET /healthz, a single check and a batch of 1,000,
against a bare Flask app with one /healthz route in the same process as the baseline.

Over HTTP: single checks per second, batched checks per second (batches of 1,000) and
GET /healthz, loaded by the Python client (policies.client) and, when Debian's ``wrk`` is
installed, by wrk (so the load generator's own cost is separated), for gunicorn's threaded
worker (keep-alive) and its sync worker (a connection per request); with each rate, the
worker's own CPU per request (from /proc), whose inverse is what one core can serve. Then
the worker's resident memory once every organization has been asked about, and the time
from a role grant written to the database until the API's answer changes.

With ``REDIS_URL`` set, the worker listens for policy changes over Redis, and a second grant
is made through Trellis's own data layer (which publishes the change) to time the pub/sub
path as well as the database version check.

    [REDIS_URL=redis://127.0.0.1:6379/N] .venv/bin/python bench/authz_api.py [--quick]
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
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


# --- in process -----------------------------------------------------------------------------

def _environ(method: str, path: str, body: bytes = b"", key: str = "") -> dict:
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "",
               "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
               "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
               "HTTP_HOST": "127.0.0.1:8000", "wsgi.url_scheme": "http",
               "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
               "wsgi.run_once": False, "wsgi.version": (1, 0)}
    if body:
        environ["CONTENT_TYPE"] = "application/json"
        environ["CONTENT_LENGTH"] = str(len(body))
    if key:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return environ


def _call(app, environ: dict, body: bytes) -> str:
    environ = {**environ, "wsgi.input": io.BytesIO(body)}
    status = []
    b"".join(app(environ, lambda line, headers, exc_info=None: status.append(line)))
    return status[0]


def cpu_per_request(app, environ: dict, body: bytes, count: int) -> float:
    """CPU µs per request, the best of three rounds (other processes only ever add time)."""
    assert _call(app, environ, body).startswith("200"), _call(app, environ, body)
    for _ in range(count // 10):
        _call(app, environ, body)
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for _ in range(count):
            _call(app, environ, body)
        best = min(best, (time.process_time() - start) / count * 1e6)
    return best


def in_process(environment: dict[str, str], key: str, count: int) -> dict[str, float]:
    from flask import Flask, jsonify

    from portal import create_app

    bare = Flask("bare")
    bare.add_url_rule("/healthz", "healthz", lambda: jsonify(status="ok"))
    saved = dict(os.environ)
    os.environ.update(environment)
    try:
        app = create_app()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    single = json.dumps(check_for(3)).encode()
    batch = json.dumps({"checks": [check_for(n) for n in range(1000)]}).encode()
    check = _environ("POST", "/api/v1/authz/check", single, key)
    figures = {
        "bare_healthz_us": cpu_per_request(bare, _environ("GET", "/healthz"), b"", count),
        "healthz_us": cpu_per_request(app, _environ("GET", "/healthz"), b"", count),
        "check_us": cpu_per_request(app, check, single, count),
        "batch_check_us": cpu_per_request(
            app, _environ("POST", "/api/v1/authz/batch", batch, key), batch,
            max(count // 500, 5)) / 1000,
    }
    # The default log level (INFO) writes an access line per request; here to /dev/null.
    request_log = logging.getLogger("trellis.request")
    with open(os.devnull, "w") as null:
        handlers = [handler for name in ("trellis", "portal")
                    for handler in logging.getLogger(name).handlers]
        streams = [handler.setStream(null) for handler in handlers]
        request_log.setLevel(logging.INFO)
        try:
            figures["check_logged_us"] = cpu_per_request(app, check, single, count)
        finally:
            request_log.setLevel(logging.NOTSET)
            for handler, stream in zip(handlers, streams, strict=True):
                handler.setStream(stream)
    services = app.extensions["trellis"]
    services.policy.close()
    services.db.dispose()
    return figures


# --- over HTTP ------------------------------------------------------------------------------

def worker_pid(master_pid: int) -> int:
    return int(Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()[0])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (from /proc, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(worker: int, run) -> tuple[float, float]:
    """(requests/s, the worker's CPU µs per request) of one load run returning
    (requests, seconds)."""
    before = cpu_seconds(worker)
    done, seconds = run()
    used = cpu_seconds(worker) - before
    return done / seconds, used / max(done, 1) * 1e6


def python_load(seconds: float, step) -> tuple[int, float]:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += step(done)
    return done, time.perf_counter() - start


WRK_SCRIPT = """
wrk.method = "{method}"
wrk.headers["Authorization"] = "Bearer {key}"
wrk.headers["Content-Type"] = "application/json"
local bodies = {{{bodies}}}
local n = 0
request = function()
  n = n % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[n])
end
"""


def wrk_load(folder: Path, url: str, method: str, key: str, bodies: list[str],
             seconds: float, connections: int) -> tuple[int, float]:
    script = folder / "load.lua"
    quoted = ", ".join("[==[" + body + "]==]" for body in bodies) or "''"
    script.write_text(WRK_SCRIPT.format(method=method, key=key, bodies=quoted))
    command = [shutil.which("wrk") or "wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s",
               "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True,  # noqa: S603
                         check=True).stdout
    done = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    assert done, out
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert not failed, f"wrk saw failed requests:\n{out}"
    elapsed = float(done.group(2)) / (1000 if done.group(3) == "ms" else 1)
    return int(done.group(1)), elapsed


def http_rates(folder: Path, server: GunicornServer, key: str, seconds: float,
               use_wrk: bool, python_client: bool) -> dict[str, dict]:
    """Rates and worker CPU per request for /healthz, single and batched checks."""
    worker = worker_pid(server.process.pid)
    results: dict[str, dict] = {}
    singles = [json.dumps(check_for(n)) for n in range(200)]
    batch = [check_for(n) for n in range(1000)]
    if python_client:
        client = TrellisClient(server.url, key, cache_seconds=0)
        client.check(**_args(check_for(0)))
        healthz = measured(worker, lambda: python_load(
            seconds / 2, lambda _: client._call("GET", "/healthz", None) and 1))
        single = measured(worker, lambda: python_load(
            seconds, lambda n: client.check(**_args(check_for(n))) and 1))
        batched = measured(worker, lambda: python_load(
            seconds, lambda _: len(client.batch(batch))))
        client.close()
        results["python client"] = {"healthz": healthz, "single": single, "batched": batched}
    if use_wrk:
        healthz = measured(worker, lambda: wrk_load(
            folder, f"{server.url}/healthz", "GET", key, [], seconds / 2, 4))
        single = measured(worker, lambda: wrk_load(
            folder, f"{server.url}/api/v1/authz/check", "POST", key, singles, seconds, 4))
        rate, cpu = measured(worker, lambda: wrk_load(
            folder, f"{server.url}/api/v1/authz/batch", "POST", key,
            [json.dumps({"checks": batch})], seconds, 2))
        results["wrk"] = {"healthz": healthz, "single": single,
                          "batched": (rate * 1000, cpu / 1000)}
    return results


BARE_APP = """from flask import Flask, jsonify

app = Flask("bare")
app.add_url_rule("/healthz", "healthz", lambda: jsonify(status="ok"))
"""


def bare_flask_over_http(folder: Path, seconds: float, use_wrk: bool) -> tuple[float, float]:
    """The HTTP baseline: a bare Flask app with one /healthz route in the same gunicorn worker
    set-up (gthread, keep-alive), loaded the same way."""
    (folder / "bareapp.py").write_text(BARE_APP)
    server = GunicornServer(folder, {}, workers=1, threads=2, app="bareapp:app",
                            pythonpath=folder)
    try:
        worker = worker_pid(server.process.pid)
        if use_wrk:
            return measured(worker, lambda: wrk_load(folder, f"{server.url}/healthz", "GET", "",
                                                     [], seconds / 2, 4))
        client = TrellisClient(server.url, "", cache_seconds=0)
        try:
            return measured(worker, lambda: python_load(
                seconds / 2, lambda _: client._call("GET", "/healthz", None) and 1))
        finally:
            client.close()
    finally:
        server.stop()


def main() -> int:
    global ORGS
    args = parse_args(__doc__)
    ORGS, seconds, count = (50, 3.0, 2000) if args.quick else (1000, 10.0, 10000)
    use_wrk = shutil.which("wrk") is not None
    load_before = Path("/proc/loadavg").read_text().split()[0]
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/bench.db"
        migrate.upgrade(url)
        key = seed(url, ORGS)
        redis_url = os.environ.get("REDIS_URL", "")
        environment = {
            "DATABASE_URL": url, "TRELLIS_ENV": "test", "TRELLIS_INSTANCE_PATH": folder,
            "SECRET_KEY": "b" * 48, "TRELLIS_LOG_LEVEL": "WARNING", "REDIS_URL": redis_url}
        cpu = in_process({**environment, "REDIS_URL": ""}, key, count)
        bare_http = bare_flask_over_http(Path(folder), seconds, use_wrk)
        http: dict[str, dict] = {}
        server = GunicornServer(Path(folder), environment, workers=1, threads=2)
        try:
            client = TrellisClient(server.url, key, cache_seconds=0)
            for n in range(0, ORGS * USERS_PER_ORG, 1000):  # warm every organization
                client.batch([check_for(m) for m in range(n, min(n + 1000, ORGS * 20))])
            for key_name, rates in http_rates(Path(folder), server, key, seconds, use_wrk,
                                              True).items():
                http[f"gthread, {key_name}"] = rates
            rss = worker_rss_mb(server.process.pid)
            visible = change_latency(url, client)
            pubsub = change_latency_redis(url, redis_url, client) if redis_url else None
            client.close()
        finally:
            server.stop()
        server = GunicornServer(Path(folder), environment, workers=1, worker_class="sync")
        try:
            TrellisClient(server.url, key, cache_seconds=0).batch(
                [check_for(n) for n in range(1000)])
            for key_name, rates in http_rates(Path(folder), server, key, seconds, use_wrk,
                                              not use_wrk).items():
                http[f"sync, {key_name}"] = rates
        finally:
            server.stop()
    load_after = Path("/proc/loadavg").read_text().split()[0]

    print(f"{ORGS} organizations x {USERS_PER_ORG} users; load average {load_before} before, "
          f"{load_after} after (2 cores)")
    print("\nIn process: CPU per request through the WSGI app")
    print(f"{'request':<46}{'µs':>10}{'vs bare Flask':>16}")
    base = cpu["bare_healthz_us"]
    for label, name in (("bare Flask app, GET /healthz (baseline)", "bare_healthz_us"),
                        ("Trellis GET /healthz", "healthz_us"),
                        ("Trellis single check", "check_us"),
                        ("Trellis single check, access log on (INFO)", "check_logged_us"),
                        ("Trellis batched check (per check of 1,000)", "batch_check_us")):
        print(f"{label:<46}{cpu[name]:>10.1f}{cpu[name] / base:>15.2f}x")
    print(f"\nOver HTTP, one gunicorn worker, {seconds:.0f} s per measure "
          "(rate /s, and the worker's CPU µs per request → what one core can serve)")
    print(f"{'worker, load':<26}{'/healthz':>18}{'single checks':>24}{'batched checks':>24}")
    print(f"{'bare Flask app (baseline)':<26}"
          f"{f'{bare_http[0]:,.0f} ({bare_http[1]:,.0f} µs)':>18}")
    for name, rates in http.items():
        cells = [f"{rate:,.0f} ({cpu_us:,.0f} µs)" for rate, cpu_us in
                 (rates["healthz"], rates["single"], rates["batched"])]
        print(f"{name:<26}{cells[0]:>18}{cells[1]:>24}{cells[2]:>24}")
    print(f"\n{'worker RSS, every organization warm':<44}{rss:>10.0f} MB")
    print(f"{'grant change visible to the API after':<44}{visible:>11.2f} s")
    if pubsub is not None:
        print(f"{'  the same, made through Trellis (Redis)':<44}{pubsub * 1000:>10.1f} ms")

    def best(kind: str) -> float:
        return max(rates[kind][0] for rates in http.values())

    def capacity(kind: str) -> float:
        """What one core would serve: requests per second of the worker's own CPU."""
        return max(1e6 / rates[kind][1] for rates in http.values() if rates[kind][1] > 0)

    single, batched = best("single"), best("batched")
    print(f"{'one core (from the worker CPU): single checks':<44}{capacity('single'):>10,.0f} /s")
    print(f"{'one core (from the worker CPU): batched checks':<44}"
          f"{capacity('batched'):>10,.0f} /s")
    figures = {
        "organizations": ORGS, "load_average": [float(load_before), float(load_after)],
        "in_process_us": {name: round(value, 1) for name, value in cpu.items()},
        "http_bare_flask_healthz": {"per_s": round(bare_http[0]),
                                    "worker_cpu_us": round(bare_http[1], 1)},
        "http": {name: {kind: {"per_s": round(rate), "worker_cpu_us": round(cpu_us, 1)}
                        for kind, (rate, cpu_us) in rates.items()}
                 for name, rates in http.items()},
        "healthz_per_s": round(best("healthz")), "single_checks_per_s": round(single),
        "batched_checks_per_s": round(batched), "worker_rss_mb": round(rss),
        "change_visible_s": round(visible, 3),
        "change_visible_redis_s": round(pubsub, 4) if pubsub is not None else None,
        "one_core_single_checks_per_s": round(capacity("single")),
        "one_core_batched_checks_per_s": round(capacity("batched")),
        "goals_met_on_worker_cpu": (capacity("single") >= GOALS["single_checks_per_s"]
                                    and capacity("batched") >= GOALS["batched_checks_per_s"]),
        "wrk": use_wrk, "quick": args.quick}
    goals_met = (single >= GOALS["single_checks_per_s"]
                 and batched >= GOALS["batched_checks_per_s"]
                 and rss <= GOALS["worker_rss_mb"] and visible <= GOALS["change_visible_s"])
    print(json.dumps({"benchmark": "authz_api", "figures": figures, "goals": GOALS,
                      "goals_met": goals_met}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
