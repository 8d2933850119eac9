"""Local password sign-in throughput against the cost of the password hash itself.

Measures, in one process and one thread, on a temporary SQLite database with the default
argon2id parameters: raw argon2id verifications per second (the baseline), complete sign-ins
per second through the WSGI app with Flask's test client (POST /login: CSRF check, rate
limit, throttle, user lookup, argon2id, risk score, second-factor check, session row, audit
events, commit, session cookie), their ratio (goal >= 0.8), and the median and p99 latency
of an authenticated portal-home request. Each sign-in comes from a returning browser (one
of a few that signed in before and signed out, keeping its device cookie) that loaded the
sign-in page first (untimed); only the POST is timed. Also timed: sign-ins from browsers
never seen before (the device is remembered and the owner mailed a new-device notice), and
the returning sign-in handed to the app as a pre-built WSGI environ (no test-client work:
what is left is the app alone).

Baseline and app run in alternating rounds so machine noise hits both alike; medians over
rounds are reported.

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
from portal.config import SETTINGS
from portal.extensions import services
from portal.passwords import Passwords
from portal.services import organizations, users

GOALS = {"signin_to_hash_ratio": 0.8}
EMAIL = "bench@acme.test"
PASSWORD = "benchmark password 1"
CSRF = re.compile(r'name="csrf_token"[^>]*?value="([^"]+)"')
# The production defaults, taken from the settings table so a TRELLIS_ARGON2_* variable in
# the environment cannot change what is measured.
ARGON2 = {s.key: s.default for s in SETTINGS if s.key.startswith("ARGON2_")}


def build_app(folder: Path):
    url = f"sqlite:///{folder / 'bench.db'}"
    migrate.upgrade(url)
    app = create_app({"ENV": "test", "DATABASE_URL": url, "INSTANCE_PATH": str(folder),
                      "SECRET_KEY": "b" * 48, "REDIS_URL": "", "LOG_LEVEL": "WARNING",
                      "LOG_FORMAT": "text", "LOGIN_RATE_LIMIT": "1000000/minute",
                      "LOGIN_FREE_FAILURES": 100, "LOGIN_IP_FREE_FAILURES": 10000,
                      **ARGON2})
    with app.app_context():
        s = services()
        ctx = audit.Context(actor="bench")
        with s.db.transaction() as session:
            organizations.create(session, ctx, slug="acme", name="Acme", kind="partner")
        with s.db.transaction() as session:
            users.create(session, ctx, s.passwords, email=EMAIL, password=PASSWORD,
                         org_slug="acme")
    return app


def baseline_hasher() -> Passwords:
    return Passwords(ARGON2["ARGON2_TIME_COST"], ARGON2["ARGON2_MEMORY_KIB"],
                     ARGON2["ARGON2_PARALLELISM"])


def hash_round(passwords: Passwords, count: int) -> float:
    """Raw argon2id verifications per second with the app's parameters."""
    stored = passwords.hasher.hash(PASSWORD)
    start = time.perf_counter()
    for _ in range(count):
        passwords.hasher.verify(stored, PASSWORD)
    return count / (time.perf_counter() - start)


def fresh_client(app):
    """A new browser (its own cookie jar) that has loaded the sign-in page."""
    client = app.test_client()
    token = CSRF.search(client.get("/login").get_data(as_text=True)).group(1)
    return client, {"email": EMAIL, "password": PASSWORD, "csrf_token": token}


def check_signed_in(status: int | str, location: str | None) -> None:
    assert str(status).startswith("302") and location == "/", (status, location)


class Browsers:
    """Where each timed sign-in comes from. ``new``: a browser never seen before (its device
    is remembered and, the account having signed in elsewhere, the owner is mailed a
    new-device notice). Otherwise a returning browser: one of a few that signed in before
    and signed out, so only its device cookie remains (the everyday case)."""

    def __init__(self, app, new: bool, count: int = 8) -> None:
        self.app, self.new, self.pool, self.turn = app, new, [], 0
        if not new:
            for _ in range(count):
                client, form = fresh_client(app)
                check_signed_in(*location(client.post("/login", data=form)))
                self.pool.append(client)

    def next(self):
        """A browser that has just loaded the sign-in page, and its filled-in form."""
        if self.new:
            return fresh_client(self.app)
        client = self.pool[self.turn % len(self.pool)]
        self.turn += 1
        client.delete_cookie(self.app.config["SESSION_COOKIE_NAME"])  # signed out
        token = CSRF.search(client.get("/login").get_data(as_text=True)).group(1)
        return client, {"email": EMAIL, "password": PASSWORD, "csrf_token": token}


def location(response) -> tuple[int, str | None]:
    return response.status_code, response.headers.get("Location")


def signin_round(browsers: Browsers, count: int) -> float:
    """Sign-ins per second through the test client; only the POST is timed."""
    elapsed = 0.0
    for _ in range(count):
        client, form = browsers.next()
        start = time.perf_counter()
        response = client.post("/login", data=form)
        elapsed += time.perf_counter() - start
        check_signed_in(*location(response))
    return count / elapsed


def prebuilt_request(browsers: Browsers) -> dict:
    """The same POST as a ready WSGI environ, as a server would hand it over."""
    client, form = browsers.next()
    cookies = "; ".join(f"{cookie.key}={cookie.value}" for cookie in client._cookies.values())
    return EnvironBuilder(path="/login", method="POST", data=form,
                          headers={"Cookie": cookies}).get_environ()


def call_wsgi(app, environ: dict) -> tuple[str, str | None]:
    started: list = []
    body = app(environ, lambda status, headers, exc_info=None: started.append((status, headers)))
    for _ in body:
        pass
    getattr(body, "close", lambda: None)()
    status, headers = started[0]
    return status, dict(headers).get("Location")


def prebuilt_round(app, browsers: Browsers, count: int) -> float:
    """Sign-ins per second with the request pre-built: the app's call alone is timed."""
    requests = [prebuilt_request(browsers) for _ in range(count)]
    elapsed = 0.0
    for environ in requests:
        start = time.perf_counter()
        status, location = call_wsgi(app, environ)
        elapsed += time.perf_counter() - start
        check_signed_in(status, location)
    return count / elapsed


def home_latencies(app, count: int) -> list[float]:
    client, form = fresh_client(app)
    response = client.post("/login", data=form)
    check_signed_in(response.status_code, response.headers.get("Location"))
    for _ in range(20):  # warm up
        client.get("/")
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        response = client.get("/")
        samples.append(time.perf_counter() - start)
        assert response.status_code == 200 and b"Acme" in response.data
    return samples


def main() -> int:
    args = parse_args(__doc__)
    rounds, per_round, home_count = (5, 20, 500) if args.quick else (11, 60, 3000)

    with tempfile.TemporaryDirectory() as folder:
        app = build_app(Path(folder))
        passwords = baseline_hasher()
        returning, new = Browsers(app, new=False), Browsers(app, new=True)
        hash_round(passwords, 3)  # warm up imports, templates, connections, allocator
        signin_round(returning, 3)
        prebuilt_round(app, returning, 3)
        signin_round(new, 3)
        hashes, signins, prebuilt, firsts = [], [], [], []
        for _ in range(rounds):
            hashes.append(hash_round(passwords, per_round))
            signins.append(signin_round(returning, per_round))
            prebuilt.append(prebuilt_round(app, returning, per_round))
            firsts.append(signin_round(new, per_round // 2))
        home = home_latencies(app, home_count)
        app.extensions["trellis"].db.dispose()

    hash_rate, signin_rate = statistics.median(hashes), statistics.median(signins)
    prebuilt_rate = statistics.median(prebuilt)
    first_rate = statistics.median(firsts)
    first_ratio = first_rate / hash_rate
    ratio = signin_rate / hash_rate
    prebuilt_ratio = prebuilt_rate / hash_rate
    round_ratios = sorted(s / h for s, h in zip(signins, hashes, strict=True))
    overhead_ms = (1 / signin_rate - 1 / hash_rate) * 1000
    prebuilt_overhead_ms = (1 / prebuilt_rate - 1 / hash_rate) * 1000
    home_p50, home_p99 = statistics.median(home) * 1000, percentile(home, 0.99) * 1000

    print(f"argon2id t={ARGON2['ARGON2_TIME_COST']} m={ARGON2['ARGON2_MEMORY_KIB']} KiB "
          f"p={ARGON2['ARGON2_PARALLELISM']}; {rounds} rounds x {per_round} sign-ins "
          f"(each way), {home_count} home requests; medians over rounds")
    print(f"{'measure':<50}{'value':>12}{'vs baseline':>14}")
    print(f"{'raw argon2id verify (baseline)':<50}{hash_rate:>9.1f} /s{1.0:>14.3f}")
    print(f"{'sign-in, returning browser (goal >= 0.8)':<50}{signin_rate:>9.1f} /s"
          f"{ratio:>14.3f}")
    print(f"{'  per-round ratio, min .. max':<50}{'':>12}"
          f"{f'{round_ratios[0]:.3f}..{round_ratios[-1]:.3f}':>14}")
    print(f"{'sign-in from a new browser (device remembered,':<50}{first_rate:>9.1f} /s"
          f"{first_ratio:>14.3f}")
    print(f"{'  owner mailed a new-device notice)':<50}")
    print(f"{'sign-in, pre-built WSGI environ (app alone)':<50}{prebuilt_rate:>9.1f} /s"
          f"{prebuilt_ratio:>14.3f}")
    print(f"{'overhead beyond the hash, test client':<50}{overhead_ms:>9.2f} ms")
    print(f"{'overhead beyond the hash, app alone':<50}{prebuilt_overhead_ms:>9.2f} ms")
    print(f"{'portal home, signed in: median':<50}{home_p50:>9.2f} ms")
    print(f"{'portal home, signed in: p99':<50}{home_p99:>9.2f} ms")
    figures = {"hash_verifications_per_s": round(hash_rate, 1),
               "signins_per_s": round(signin_rate, 1),
               "signin_to_hash_ratio": round(ratio, 3),
               "round_ratio_min": round(round_ratios[0], 3),
               "round_ratio_max": round(round_ratios[-1], 3),
               "overhead_ms_per_signin": round(overhead_ms, 2),
               "new_browser_signins_per_s": round(first_rate, 1),
               "new_browser_signin_to_hash_ratio": round(first_ratio, 3),
               "prebuilt_signins_per_s": round(prebuilt_rate, 1),
               "prebuilt_signin_to_hash_ratio": round(prebuilt_ratio, 3),
               "prebuilt_overhead_ms_per_signin": round(prebuilt_overhead_ms, 2),
               "home_median_ms": round(home_p50, 2), "home_p99_ms": round(home_p99, 2),
               "rounds": rounds, "signins_per_round": per_round, "home_requests": home_count,
               "argon2": ARGON2, "quick": args.quick}
    goals_met = ratio >= GOALS["signin_to_hash_ratio"]
    print(json.dumps({"benchmark": "login", "figures": figures, "goals": GOALS,
                      "goals_met": goals_met}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
