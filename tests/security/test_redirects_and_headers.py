"""Open redirects, security headers, oversized bodies and markup in templates."""

import re
from pathlib import Path

import pytest

from portal.security import safe_next
from tests.conftest import sign_in

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


@pytest.mark.parametrize("target", [
    "//evil.example/", "https://evil.example/", "http:evil.example", "/\\evil.example",
    "\\\\evil.example", "javascript:alert(1)", "/%0d%0aSet-Cookie:x=1", "/ok\r\nX: y",
    "evil.example", "  //evil.example", "/\t/evil.example", "x" * 3000,
])
def test_next_never_leaves_the_site(target):
    result = safe_next(target, "/")
    assert result == "/" or (result.startswith("/") and not result.startswith("//")
                             and "\\" not in result and "\n" not in result)
    assert "evil.example" not in result or result.startswith("/%0d")


@pytest.mark.parametrize(("target", "expected"), [
    ("//evil.example/", "/"), ("https://evil.example/x", "/"),
    ("/o/acme/?tab=apps", "/o/acme/?tab=apps"),
])
def test_sign_in_redirects_only_to_local_paths(client, make_user, target, expected):
    make_user("alice@acme.test")
    response = sign_in(client, "alice@acme.test", next=target)
    assert response.status_code == 302 and response.headers["Location"] == expected


def test_next_from_the_login_link_is_kept(client, make_user):
    make_user("alice@acme.test")
    redirect = client.get("/admin/")
    assert redirect.headers["Location"] == "/login?next=/admin/"
    page = client.get(redirect.headers["Location"]).get_data(as_text=True)
    assert 'name="next" type="hidden" value="/admin/"' in page


def test_security_headers_on_every_response(client, make_user):
    make_user("alice@acme.test")
    for response in (client.get("/login"), client.get("/nowhere"), client.get("/healthz")):
        headers = response.headers
        csp = headers["Content-Security-Policy"]
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin"
        assert headers["X-Frame-Options"] == "DENY"
        assert re.fullmatch(r"[0-9a-f]{16}", headers["X-Request-ID"])
        assert "Strict-Transport-Security" not in headers  # plain HTTP here
    assert "no-store" not in client.get("/login").headers.get("Cache-Control", "")
    sign_in(client, "alice@acme.test")
    assert client.get("/").headers["Cache-Control"] == "no-store"


def test_hsts_over_https(client):
    response = client.get("/login", base_url="https://portal.example")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=63072000")


def test_a_safe_incoming_request_id_is_kept_and_a_hostile_one_replaced(client):
    kept = client.get("/healthz", headers={"X-Request-ID": "lb-1234abcd"})
    assert kept.headers["X-Request-ID"] == "lb-1234abcd"
    replaced = client.get("/healthz", headers={"X-Request-ID": "x forged&log=line\"<>"})
    assert re.fullmatch(r"[0-9a-f]{16}", replaced.headers["X-Request-ID"])


def test_oversized_form_body_is_refused_with_a_page(settings):
    from portal import create_app
    client = create_app({**settings, "MAX_REQUEST_KIB": 16}).test_client()
    response = client.post("/login", data={"email": "a@b.test", "password": "x" * 20000})
    assert response.status_code == 413
    page = response.get_data(as_text=True)
    assert "too large" in page and response.headers["X-Request-ID"] in page


def test_templates_have_no_inline_script_style_or_handlers():
    for path in TEMPLATES.rglob("*.html"):
        text = path.read_text()
        assert "|safe" not in text, f"unescaped output in {path}"
        if path.parent.name == "mail":  # emails, never served as pages: mail clients need
            continue  # inline styles (and the dev mail page serves them sandboxed)
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), f"inline script in {path}"
        assert not re.search(r"\sstyle=", text), f"inline style attribute in {path}"
        assert "<style" not in text, f"inline <style> in {path}"
        assert not re.search(r"\son[a-z]+=", text), f"inline event handler in {path}"
        assert "|safe" not in text, f"unescaped output in {path}"


def test_branding_cannot_inject_markup_or_css(client, app, make_org, make_user, tx):
    from portal.errors import ValidationError
    from portal.services import organizations
    from tests.conftest import CLI_CTX
    make_org("acme", "Acme <b>Supplies</b>",
             branding={"footer_text": "</footer><script>x()</script>"})
    make_user("alice@acme.test", org="acme")
    sign_in(client, "alice@acme.test")
    page = client.get("/").get_data(as_text=True)
    assert "<script>x()" not in page and "&lt;/footer&gt;&lt;script&gt;x()" in page
    assert "Acme &lt;b&gt;Supplies&lt;/b&gt;" in page
    with pytest.raises(ValidationError), tx() as session:
        organizations.update_branding(session, CLI_CTX, "acme",
                                      {"primary_color": "#000000;}</style><script>"})
    css = client.get("/branding/acme.css").get_data(as_text=True)
    assert css == ""  # nothing stored, nothing emitted


def test_form_targets_allow_identity_providers_but_plain_http_only_on_loopback():
    from portal.security import content_security_policy
    production = content_security_policy(production=True)
    assert "form-action 'self' https:;" in production and "http:" not in production
    assert "http://127.0.0.1:*" in content_security_policy(production=False)
