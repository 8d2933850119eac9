"""Trellis as an OpenID Provider: client-credentials grants, full code-flow logins and token
introspections per second, through one gunicorn worker on loopback (one core; the load runs
on the other core with stdlib connections), once with the threaded worker (2 threads,
keep-alive) and once with the sync worker (the connection closed after each answer). The
goals are judged on the worker that meets them, or else on the one with the most grants.

A code-flow login here is what an app's sign-in costs Trellis once the user already has a
Trellis session and the app is pre-approved: the authorization request (answered with a
code), then the token request with PKCE (ID token and JWT access token signed RS256, refresh
token stored). Baseline in the same run: GET /healthz over the same kind of connection.
Then the same steps in process through Flask's test client, timed with time.process_time
(CPU per request, which a loaded machine skews far less than the wall clock).

    .venv/bin/python bench/provider.py [--quick]
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import secrets
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import parse_args
from sqlalchemy.orm import Session

from portal import audit, migrate
from portal.db import create_engine
from portal.passwords import Passwords
from portal.services import apps, organizations, users
from tests.peers.gunicorn_server import GunicornServer

GOALS = {"client_credentials_per_s": 500, "code_flow_logins_per_s": 150}
REDIRECT = "http://127.0.0.1:9/callback"
PASSWORD = "bench password 1"


def seed(url: str) -> tuple[tuple[str, str], tuple[str, str]]:
    engine = create_engine(url)
    ctx = audit.Context(actor="bench")
    with Session(engine) as session, session.begin():
        organizations.create(session, ctx, slug="acme", name="Acme", kind="partner")
        users.create(session, ctx, Passwords(1, 8192, 1), email="alice@acme.test",
                     password=PASSWORD, display_name="Alice", org_slug="acme")
        backend, backend_secret = apps.create(session, ctx, apps.AppSpec(
            name="Backend", grant_types=["client_credentials"], scopes=["authz"],
            organizations=["acme"]))
        web, web_secret = apps.create(session, ctx, apps.AppSpec(
            name="Web", redirect_uris=[REDIRECT], organizations=["acme"],
            consent_required=False))
        ids = (backend.client_id, backend_secret), (web.client_id, web_secret)
    engine.dispose()
    SEEDED[url] = ids
    return ids


class Conn:
    """One keep-alive connection with its own small cookie jar."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.http = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        self.cookie = ""
        self.jar: dict[str, str] = {}

    def call(self, method: str, path: str, body: dict | None = None,
             headers: dict | None = None) -> tuple[int, dict, bytes]:
        headers = dict(headers or {})
        data = None
        if body is not None:
            data = urlencode(body)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if self.cookie:
            headers["Cookie"] = self.cookie
        self.http.request(method, path, data, headers)
        response = self.http.getresponse()
        payload = response.read()
        # Several cookies may be set (the session and the sign-in's device marker): keep each.
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                key, _, rest = value.split(";", 1)[0].partition("=")
                self.jar[key] = rest
        self.cookie = "; ".join(f"{k}={v}" for k, v in self.jar.items())
        return response.status, dict(response.getheaders()), payload


def basic(client_id: str, secret: str) -> dict[str, str]:
    token = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def sign_in(conn: Conn) -> None:
    _, _, page = conn.call("GET", "/login")
    csrf = re.search(rb'name="csrf_token"[^>]*?value="([^"]+)"', page).group(1).decode()
    status, _, _ = conn.call("POST", "/login", {"email": "alice@acme.test",
                                                 "password": PASSWORD, "csrf_token": csrf})
    assert status == 302, "bench sign-in failed"


def code_flow_login(conn: Conn, backend: Conn, client_id: str, secret: str) -> dict:
    """The browser (``conn``, with the Trellis session cookie) gets a code; the app's
    backend (``backend``, no cookie) redeems it."""
    verifier = secrets.token_urlsafe(48)
    status, headers, _ = conn.call("GET", "/oauth/authorize?" + _authorize_query(client_id,
                                                                                 verifier))
    assert status == 302, status
    assert "code=" in headers["Location"], headers["Location"]
    code = parse_qs(urlsplit(headers["Location"]).query)["code"][0]
    status, _, body = backend.call("POST", "/oauth/token", {
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "code_verifier": verifier}, basic(client_id, secret))
    assert status == 200, body
    return json.loads(body)


def in_process(url: str, folder: str, rounds: int) -> dict[str, float]:
    """CPU milliseconds per request (``time.process_time``) through Flask's test client in
    this process, the median of batches of 25: what each step costs the server, without
    HTTP and without the load on the shared machine's other core skewing a wall clock."""
    import statistics

    from portal import create_app
    app = create_app({"ENV": "test", "DATABASE_URL": url, "INSTANCE_PATH": folder,
                      "SECRET_KEY": "b" * 48, "REDIS_URL": "", "LOG_LEVEL": "WARNING",
                      "ARGON2_TIME_COST": 1, "ARGON2_MEMORY_KIB": 8192,
                      "ARGON2_PARALLELISM": 1, "OAUTH_RATE_LIMIT": "1000000/minute"})
    (backend_id, backend_secret), (web_id, web_secret) = SEEDED[url]
    browser, machine = app.test_client(), app.test_client()
    page = browser.get("/login").get_data()
    csrf = re.search(rb'name="csrf_token"[^>]*?value="([^"]+)"', page).group(1).decode()
    assert browser.post("/login", data={"email": "alice@acme.test", "password": PASSWORD,
                                        "csrf_token": csrf}).status_code == 302
    web_auth, cc_auth = basic(web_id, web_secret), basic(backend_id, backend_secret)

    def authorize() -> tuple[str, str]:
        verifier = secrets.token_urlsafe(48)
        response = browser.get("/oauth/authorize?" + _authorize_query(web_id, verifier))
        assert response.status_code == 302, response.status_code
        return verifier, parse_qs(urlsplit(response.headers["Location"]).query)["code"][0]

    def redeem(verifier: str, code: str) -> None:
        response = machine.post("/oauth/token", headers=web_auth, data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "code_verifier": verifier})
        assert response.status_code == 200, response.get_data()

    def client_credentials() -> None:
        assert machine.post("/oauth/token", headers=cc_auth, data={
            "grant_type": "client_credentials", "scope": "authz"}).status_code == 200

    def healthz() -> None:
        assert machine.get("/healthz").status_code == 200

    for _ in range(10):  # warm caches (app registry, keys, compiled statements)
        redeem(*authorize())
        client_credentials()
        healthz()
    batches: dict[str, list[float]] = {k: [] for k in ("healthz", "authorize", "token",
                                                       "client_credentials")}
    clock = time.process_time
    for _ in range(max(1, rounds // 25)):
        spent = dict.fromkeys(batches, 0.0)
        for _ in range(25):
            start = clock()
            healthz()
            middle = clock()
            verifier, code = authorize()
            after_authorize = clock()
            redeem(verifier, code)
            after_token = clock()
            client_credentials()
            end = clock()
            spent["healthz"] += middle - start
            spent["authorize"] += after_authorize - middle
            spent["token"] += after_token - after_authorize
            spent["client_credentials"] += end - after_token
        for key, value in spent.items():
            batches[key].append(value / 25 * 1000)
    return {key: statistics.median(values) for key, values in batches.items()}


SEEDED: dict[str, tuple] = {}  # database URL -> the client ids and secrets seed() made


def _authorize_query(client_id: str, verifier: str) -> str:
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()
                                         ).rstrip(b"=").decode()
    return urlencode({"response_type": "code", "client_id": client_id,
                      "redirect_uri": REDIRECT, "scope": "openid email org roles",
                      "state": "s", "nonce": "n", "code_challenge": challenge,
                      "code_challenge_method": "S256"})


def rate(seconds: float, step) -> float:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        done += 1
    return done / (time.perf_counter() - start)


def over_http(folder: str, url: str, seconds: float, worker_class: str) -> dict[str, float]:
    """Requests per second through one gunicorn worker of ``worker_class``: ``gthread`` (2
    threads, keep-alive) or ``sync`` (one request at a time, the connection closed after each
    answer; http.client opens the next one)."""
    (backend_id, backend_secret), (web_id, web_secret) = SEEDED[url]
    server = GunicornServer(Path(folder), {
        "DATABASE_URL": url, "TRELLIS_ENV": "test", "TRELLIS_INSTANCE_PATH": folder,
        "SECRET_KEY": "b" * 48, "TRELLIS_LOG_LEVEL": "WARNING",
        "TRELLIS_ARGON2_TIME_COST": "1", "TRELLIS_ARGON2_MEMORY_KIB": "8192",
        "TRELLIS_OAUTH_RATE_LIMIT": "1000000/minute"}, workers=1, threads=2,
        worker_class=worker_class)
    try:
        conn = Conn(server.url)
        sign_in(conn)
        app_backend = Conn(server.url)
        tokens = code_flow_login(conn, app_backend, web_id, web_secret)  # warms caches
        cc_body = {"grant_type": "client_credentials", "scope": "authz"}
        cc_auth = basic(backend_id, backend_secret)
        machine = Conn(server.url)
        introspect_body = {"token": tokens["access_token"]}
        web_auth = basic(web_id, web_secret)
        return {
            "healthz": rate(seconds / 2, lambda: machine.call("GET", "/healthz")),
            "cc": rate(seconds, lambda: machine.call("POST", "/oauth/token", cc_body,
                                                     cc_auth)),
            "logins": rate(seconds, lambda: code_flow_login(conn, app_backend, web_id,
                                                            web_secret)),
            "introspections": rate(seconds, lambda: machine.call(
                "POST", "/oauth/introspect", introspect_body, web_auth))}
    finally:
        server.stop()


def cell(rates: dict[str, float], key: str) -> str:
    return f"{rates[key]:,.0f} /s ({rates[key] / rates['healthz']:.2f})"


def main() -> int:
    args = parse_args(__doc__)
    seconds = 3.0 if args.quick else 10.0
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/bench.db"
        migrate.upgrade(url)
        seed(url)
        workers = {kind: over_http(folder, url, seconds, kind) for kind in ("gthread", "sync")}
        cpu = in_process(url, folder, 100 if args.quick else 500)

    print(f"one gunicorn worker, SQLite, {seconds:.0f} s per measure; requests per second "
          "(and against /healthz)")
    print(f"{'measure':<40}{'gthread (2 threads)':>22}{'sync':>22}")
    for name, key in (("GET /healthz (baseline)", "healthz"),
                      ("client-credentials grants", "cc"),
                      ("code-flow logins (authorize + token)", "logins"),
                      ("token introspections", "introspections")):
        cells = "".join(f"{cell(rates, key):>22}" for rates in workers.values())
        print(f"{name:<40}{cells}")
    login_ms = cpu["authorize"] + cpu["token"]
    print("\nin process (Flask test client), CPU per request (time.process_time, median of "
          "batches of 25)")
    print(f"{'step':<44}{'CPU ms':>14}{'per core':>14}")
    for name, value in (("GET /healthz (baseline)", cpu["healthz"]),
                        ("authorization request (code issued)", cpu["authorize"]),
                        ("token request (code redeemed)", cpu["token"]),
                        ("code-flow login (both)", login_ms),
                        ("client-credentials grant", cpu["client_credentials"])):
        print(f"{name:<44}{value:>14.3f}{1000 / value:>12.0f}/s")

    def meets(rates: dict[str, float]) -> bool:
        return (rates["cc"] >= GOALS["client_credentials_per_s"]
                and rates["logins"] >= GOALS["code_flow_logins_per_s"])

    best = max(workers, key=lambda kind: (meets(workers[kind]), workers[kind]["cc"]))
    figures = {"worker": best, "healthz_per_s": round(workers[best]["healthz"]),
               "client_credentials_per_s": round(workers[best]["cc"]),
               "code_flow_logins_per_s": round(workers[best]["logins"]),
               "introspections_per_s": round(workers[best]["introspections"]),
               "by_worker": {kind: {k: round(v) for k, v in rates.items()}
                             for kind, rates in workers.items()},
               "quick": args.quick,
               "in_process_cpu_ms": {k: round(v, 3) for k, v in cpu.items()},
               "load_average": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps({"benchmark": "provider", "figures": figures, "goals": GOALS,
                      "goals_met": meets(workers[best])}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
