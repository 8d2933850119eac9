"""Federated OpenID Connect sign-ins end to end against a local node oidc-provider.

For first logins (just-in-time provisioning) and returning logins separately: complete logins
per second (wall clock, provider included) and the CPU time Trellis itself spends per login,
measured with ``time.process_time`` around the two requests Trellis handles (the sign-in form
post that redirects to the provider, and the callback that verifies and provisions). Each is
handed to the app as a ready WSGI environ, as a server would (the test client's own request
building and cookie jar are this benchmark's browser, not Trellis, and are not timed; the
SAML benchmark does the same). The provider runs in its own node process, so its work is not
counted. The baseline in the same run is GET /healthz handed over the same way. Each user
has one browser: the first login (JIT) in it is its first visit, the returning logins come
back to it after signing out (its device cookie kept, as a returning user's browser does).

    .venv/bin/python bench/oidc_login.py [--quick]
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
from portal.services import connections, organizations
from tests.peers.oidc_provider import OidcProviderPeer

GOALS = {"returning_cpu_ms": 3.0, "first_cpu_ms": 6.0}
CSRF = re.compile(r'name="csrf_token"[^>]*?value="([^"]+)"')
BASE = "http://localhost"
CTX = audit.Context(actor="bench")


def build(folder: Path, peer: OidcProviderPeer):
    url = f"sqlite:///{folder / 'bench.db'}"
    migrate.upgrade(url)
    app = create_app({"ENV": "test", "DATABASE_URL": url, "INSTANCE_PATH": str(folder),
                      "LOG_LEVEL": "WARNING", "LOGIN_RATE_LIMIT": "1000000/minute",
                      "SECRET_KEY": "b" * 48})
    with app.app_context():
        s = services()
        with s.db.transaction() as session:
            organizations.create(session, CTX, slug="acme", name="Acme", kind="partner")
            organizations.add_domain(session, CTX, "acme", "acme.test")
            organizations.verify_domain_manually(session, CTX, "acme.test")
            row = connections.create_oidc(
                session, CTX, s.secrets, org_slug="acme", name="Acme SSO", client_id="x",
                client_secret="x", issuer=peer.issuer, enabled=True,
                scopes=("openid", "email", "profile", "groups"),
                group_roles={"purchasing": "buyer"})
            client_id, secret = peer.register_client(f"{BASE}/sso/oidc/{row.id}/callback")
            row.settings = {**row.settings, "client_id": client_id}
            row.sealed_secrets = s.secrets.seal({"client_secret": secret})
    return app


def one_login(app, peer: OidcProviderPeer, email: str, client=None
              ) -> tuple[float, float, float]:
    """Return (Trellis CPU seconds, wall seconds, CPU seconds of the form post alone) for
    one complete sign-in, in a new browser or (``client``) in a browser that signed in
    before and signed out."""
    if client is None:
        client = app.test_client()
    else:
        client.delete_cookie(app.config["SESSION_COOKIE_NAME"])
    token = CSRF.search(client.get("/login").get_data(as_text=True)).group(1)
    wall = time.perf_counter()
    cpu, _, location = handled(app, client, "POST", "/login",
                               {"email": email, "csrf_token": token})
    callback = peer.authorize(location, f"{BASE}/sso/")
    second, status, landed = handled(app, client, "GET", callback.removeprefix(BASE))
    wall = time.perf_counter() - wall
    assert status == 302 and landed == "/o/acme/", (status, landed)
    return cpu + second, wall, cpu


def handled(app, client, method: str, path: str, data: dict | None = None
            ) -> tuple[float, int, str | None]:
    """One request of ``client``'s browser handed to the app as a ready WSGI environ; returns
    the app's CPU seconds, the status and the Location header. The browser's cookies go in
    and come back as the test client would handle them, outside the timed part."""
    builder = EnvironBuilder(path=path, base_url=BASE, method=method, data=data)
    environ = builder.get_environ()
    builder.close()
    client._add_cookies_to_wsgi(environ)
    started: list = []
    cpu = time.process_time()
    body = app(environ, lambda status, headers, exc_info=None:
               started.append((status, headers)))
    for _ in body:
        pass
    getattr(body, "close", lambda: None)()
    cpu = time.process_time() - cpu
    status, headers = started[0]
    client._update_cookies_from_response(
        "localhost", path.partition("?")[0],
        [value for name, value in headers if name.lower() == "set-cookie"])
    return cpu, int(status[:3]), dict(headers).get("Location")


def baseline_cpu(app, count: int) -> float:
    client = app.test_client()
    return sum(handled(app, client, "GET", "/healthz")[0] for _ in range(count)) / count


def main() -> int:
    args = parse_args(__doc__)
    first_count, returning_count = (20, 40) if args.quick else (100, 300)

    with tempfile.TemporaryDirectory() as folder:
        peer = OidcProviderPeer(Path(folder))
        try:
            app = build(Path(folder), peer)
            emails = [f"user{n}@acme.test" for n in range(first_count)]
            for email in emails:
                peer.put_account(email, name=email.split("@")[0], groups=["purchasing"])
            peer.put_account("warmup@acme.test")
            one_login(app, peer, "warmup@acme.test")
            browsers = {email: app.test_client() for email in emails}
            first = [one_login(app, peer, email, browsers[email]) for email in emails]
            returning = [one_login(app, peer, emails[n % len(emails)],
                                   browsers[emails[n % len(emails)]])
                         for n in range(returning_count)]
            floor = baseline_cpu(app, 500)
        finally:
            peer.stop()

    def summary(samples):
        cpu = [c for c, _, _ in samples]
        wall = [w for _, w, _ in samples]
        return statistics.median(cpu) * 1000, percentile(cpu, 0.95) * 1000, \
            len(wall) / sum(wall)

    first_cpu, first_p95, first_rate = summary(first)
    back_cpu, back_p95, back_rate = summary(returning)
    print(f"{first_count} first logins, {returning_count} returning logins; "
          f"Trellis CPU per login measured in the Trellis process")
    print(f"{'measure':<40}{'median':>10}{'p95':>10}{'logins/s':>10}{'vs /healthz':>13}")
    print(f"{'GET /healthz (baseline CPU)':<40}{floor * 1000:>8.2f}ms{'':>10}{'':>10}"
          f"{1.0:>13.1f}")
    print(f"{'first login (JIT), Trellis CPU':<40}{first_cpu:>8.2f}ms{first_p95:>8.2f}ms"
          f"{first_rate:>10.1f}{first_cpu / (floor * 1000):>13.1f}")
    print(f"{'returning login, Trellis CPU':<40}{back_cpu:>8.2f}ms{back_p95:>8.2f}ms"
          f"{back_rate:>10.1f}{back_cpu / (floor * 1000):>13.1f}")
    form_post = statistics.median(post for _, _, post in returning) * 1000
    callback = statistics.median(cpu - post for cpu, _, post in returning) * 1000
    print(f"{'  the form post (discovery), median':<40}{form_post:>8.2f}ms")
    print(f"{'  the callback, median':<40}{callback:>8.2f}ms")
    print(f"{'returning logins/s/core if the IdP is free':<40}{1000 / back_cpu:>10.0f}")
    figures = {"first_cpu_ms": round(first_cpu, 2), "first_cpu_p95_ms": round(first_p95, 2),
               "returning_cpu_ms": round(back_cpu, 2),
               "returning_cpu_p95_ms": round(back_p95, 2),
               "returning_form_post_cpu_ms": round(form_post, 2),
               "returning_callback_cpu_ms": round(callback, 2),
               "first_logins_per_s_end_to_end": round(first_rate, 1),
               "returning_logins_per_s_end_to_end": round(back_rate, 1),
               "healthz_cpu_ms": round(floor * 1000, 3), "quick": args.quick}
    goals_met = (back_cpu <= GOALS["returning_cpu_ms"] and first_cpu <= GOALS["first_cpu_ms"])
    print(json.dumps({"benchmark": "oidc_login", "figures": figures, "goals": GOALS,
                      "goals_met": goals_met}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
