"""Local password sign-in throughput against the cost of the password hash itself.

Measures, in one process and one thread: raw argon2id verifications per second with the
configured parameters (the baseline), complete sign-ins per second through the WSGI app
(POST /login: CSRF check, throttle, user lookup, argon2id, session row, audit event, commit),
their ratio, and the latency of an authenticated portal-home request. Baseline and app run
in alternating rounds so machine noise hits both alike; medians over rounds are reported.

    .venv/bin/python bench/login.py [--quick]
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import parse_args, percentile
from werkzeug.test import EnvironBuilder

from portal import audit, create_app, migrate
from portal.extensions import services
from portal.services import users

GOALS = {"signin_to_hash_ratio": 0.8}
PASSWORD = "benchmark password 1"
CSRF = re.compile(r'name="csrf_token"[^>]*?value="([^"]+)"')


def build_app(folder: Path):
    url = f"sqlite:///{folder / 'bench.db'}"
    migrate.upgrade(url)
    app = create_app({"ENV": "test", "DATABASE_URL": url, "INSTANCE_PATH": str(folder),
                      "LOG_LEVEL": "WARNING", "LOGIN_RATE_LIMIT": "1000000/minute",
                      "LOGIN_FREE_FAILURES": 100, "SECRET_KEY": "b" * 48})
    with app.app_context():
        s = services()
        with s.db.transaction() as session:
            users.create(session, audit.Context(actor="bench"), s.passwords,
                         email="bench@acme.test", password=PASSWORD)
    return app


def hash_round(app, count: int) -> float:
    with app.app_context():
        passwords = services().passwords
        stored = passwords.hash(PASSWORD)
        start = time.perf_counter()
        for _ in range(count):
            passwords.hasher.verify(stored, PASSWORD)
        return count / (time.perf_counter() - start)


def signin_request(app) -> dict:
    """A ready WSGI environ for POST /login, as a server hands it over: a fresh browser that
    loaded the sign-in page (its session cookie and CSRF token) and submits the form."""
    client = app.test_client()
    token = CSRF.search(client.get("/login").get_data(as_text=True)).group(1)
    cookie_name = app.config["SESSION_COOKIE_NAME"]
    cookie = client.get_cookie(cookie_name).value
    return EnvironBuilder(path="/login", method="POST",
                          data={"email": "bench@acme.test", "password": PASSWORD,
                                "csrf_token": token},
                          headers={"Cookie": f"{cookie_name}={cookie}"}).get_environ()


def call_wsgi(app, environ: dict) -> str:
    status: list[str] = []
    body = app(environ, lambda line, headers, exc_info=None: status.append(line))
    for _ in body:
        pass
    getattr(body, "close", lambda: None)()
    return status[0]


def signin_round(app, count: int) -> float:
    """Complete sign-ins per second through the WSGI app (only the app's call is timed)."""
    requests = [signin_request(app) for _ in range(count)]
    elapsed = 0.0
    for environ in requests:
        start = time.perf_counter()
        status = call_wsgi(app, environ)
        elapsed += time.perf_counter() - start
        assert status.startswith("302"), status
    return count / elapsed


def home_latencies(app, count: int) -> list[float]:
    client = app.test_client()
    token = CSRF.search(client.get("/login").get_data(as_text=True)).group(1)
    client.post("/login", data={"email": "bench@acme.test", "password": PASSWORD,
                                "csrf_token": token})
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        response = client.get("/")
        samples.append(time.perf_counter() - start)
        assert response.status_code == 200
    return samples



def main() -> int:
    args = parse_args(__doc__)
    rounds, per_round, home_count = (3, 15, 300) if args.quick else (7, 50, 2000)

    with tempfile.TemporaryDirectory() as folder:
        app = build_app(Path(folder))
        signin_round(app, 3)  # warm up imports, templates, connections
        hashes, signins = [], []
        for _ in range(rounds):
            hashes.append(hash_round(app, per_round))
            signins.append(signin_round(app, per_round))
        home = home_latencies(app, home_count)
        params = app.config["ARGON2_TIME_COST"], app.config["ARGON2_MEMORY_KIB"], \
            app.config["ARGON2_PARALLELISM"]

    hash_rate, signin_rate = statistics.median(hashes), statistics.median(signins)
    ratio = signin_rate / hash_rate
    overhead_ms = (1 / signin_rate - 1 / hash_rate) * 1000
    home_p50, home_p99 = statistics.median(home) * 1000, percentile(home, 0.99) * 1000

    print(f"argon2id t={params[0]} m={params[1]} KiB p={params[2]}; "
          f"{rounds} rounds x {per_round} sign-ins, {home_count} home requests")
    print(f"{'measure':<42}{'value':>14}{'vs baseline':>14}")
    print(f"{'raw argon2id verify (baseline)':<42}{hash_rate:>10.1f} /s{1.0:>14.2f}")
    print(f"{'sign-in through the WSGI app':<42}{signin_rate:>10.1f} /s{ratio:>14.2f}")
    print(f"{'app overhead per sign-in':<42}{overhead_ms:>11.2f} ms")
    print(f"{'portal home, signed in: median':<42}{home_p50:>11.2f} ms")
    print(f"{'portal home, signed in: p99':<42}{home_p99:>11.2f} ms")
    figures = {"hash_verifications_per_s": round(hash_rate, 1),
               "signins_per_s": round(signin_rate, 1),
               "signin_to_hash_ratio": round(ratio, 3),
               "overhead_ms_per_signin": round(overhead_ms, 2),
               "home_median_ms": round(home_p50, 2), "home_p99_ms": round(home_p99, 2),
               "quick": args.quick}
    goals_met = ratio >= GOALS["signin_to_hash_ratio"]
    print(json.dumps({"benchmark": "login", "figures": figures, "goals": GOALS,
                      "goals_met": goals_met}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
