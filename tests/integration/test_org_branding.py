"""Branding by an organization's owner: colours, texts, a logo upload checked by its
content, and a preview that saves nothing."""

from __future__ import annotations

import base64
import io

import sqlalchemy as sa

from portal.models import Organization, OrgLogo
from tests.conftest import audit_events, csrf_token
from tests.images import SVG_WITH_SCRIPT, jpeg_like, png, webp_like
from tests.integration.test_admin_api import token_for
from tests.integration.test_org_admin import as_user, post


def branding_of(tx, slug="acme"):
    with tx() as session:
        return session.scalar(sa.select(Organization.branding).where(Organization.slug == slug))


def logos(tx):
    with tx() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(OrgLogo))


def upload(client, data: bytes, name: str, mimetype: str = "image/png"):
    return client.post("/o/acme/admin/branding/logo", data={
        "csrf_token": csrf_token(client, "/"), "logo": (io.BytesIO(data), name, mimetype)},
        content_type="multipart/form-data")


def test_owner_previews_then_saves_colours_and_texts(app, tx, two_orgs):
    alice = as_user(app, "alice@acme.test")
    values = {"primary_color": "#0B6E4F", "accent_color": "#7c2d12",
              "signin_text": "Use your Acme account.", "footer_text": "Acme Supplies Ltd"}
    preview = post(alice, "/o/acme/admin/branding", action="preview", **values)
    assert preview.status_code == 200
    page = preview.get_data(as_text=True)
    assert "Preview (not saved yet)" in page and "Use your Acme account." in page
    assert "primary_color=%230b6e4f" in page  # the preview stylesheet carries the colours
    css = alice.get("/o/acme/admin/branding/preview.css?primary_color=%230b6e4f"
                    "&accent_color=%237c2d12").get_data(as_text=True)
    assert css == ".preview { --preview-brand: #0b6e4f; --preview-accent: #7c2d12; }\n"
    assert branding_of(tx) == {}  # nothing saved by a preview
    saved = post(alice, "/o/acme/admin/branding", action="save", **values)
    assert saved.status_code == 302
    assert branding_of(tx) == {"primary_color": "#0b6e4f", "accent_color": "#7c2d12",
                               "signin_text": "Use your Acme account.",
                               "footer_text": "Acme Supplies Ltd"}
    login = app.test_client().get("/o/acme/login").get_data(as_text=True)
    assert "Use your Acme account." in login and "Acme Supplies Ltd" in login
    stylesheet = app.test_client().get("/branding/acme.css").get_data(as_text=True)
    assert stylesheet == ":root { --brand: #0b6e4f; --accent: #7c2d12; }\n"
    assert audit_events(app, "org.branding")[-1].details["after"]["signin_text"] == (
        "Use your Acme account.")


def test_unreadable_or_hostile_values_are_refused(app, tx, two_orgs):
    alice = as_user(app, "alice@acme.test")
    for values, text in (
            ({"primary_color": "#ffff00"}, "too light to read on white"),
            ({"primary_color": "red;}</style><script>x</script>"}, "must look like #1a73e8"),
            ({"accent_color": "#fffffe"}, "too light"),
            ({"signin_text": "x" * 301}, "at most 300"),
            ({"footer_text": "bell\x07"}, "printable")):
        response = post(alice, "/o/acme/admin/branding", action="save", **values)
        assert response.status_code == 400, values
        body = response.get_data(as_text=True)
        assert text in body and "<script>x</script>" not in body, values
    assert branding_of(tx) == {}


def test_logo_upload_is_checked_by_its_content(app, tx, two_orgs):
    alice = as_user(app, "alice@acme.test")
    svg = upload(alice, SVG_WITH_SCRIPT, "logo.png")  # named like a PNG
    assert svg.status_code == 400 and "SVG" in svg.get_data(as_text=True)
    text = upload(alice, b"just some text, not an image", "logo.png")
    assert text.status_code == 400 and "not a PNG, JPEG or WebP" in text.get_data(as_text=True)
    big = upload(alice, png() + b"\x00" * (600 * 1024), "big.png")
    assert big.status_code == 400 and "too large" in big.get_data(as_text=True)
    assert logos(tx) == 0 and "logo" not in branding_of(tx)
    failures = [e.reason for e in audit_events(app, "org.logo") if e.outcome == "failure"]
    assert failures == ["logo_not_image", "logo_not_image", "logo_too_large"]

    image = png()
    assert upload(alice, image, "logo.svg", "image/svg+xml").status_code == 302  # bytes decide
    served = app.test_client().get(f"/branding/acme/logo?v={branding_of(tx)['logo']}")
    assert served.status_code == 200 and served.data == image
    assert served.mimetype == "image/png"
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    login = app.test_client().get("/o/acme/login").get_data(as_text=True)
    assert f'src="/branding/acme/logo?v={branding_of(tx)["logo"]}"' in login
    for data, kind in ((jpeg_like(), "image/jpeg"), (webp_like(), "image/webp")):
        assert upload(alice, data, "logo.bin").status_code == 302
        assert app.test_client().get("/branding/acme/logo").mimetype == kind
    assert post(alice, "/o/acme/admin/branding/logo/remove").status_code == 302
    assert logos(tx) == 0 and app.test_client().get("/branding/acme/logo").status_code == 404


def test_a_50_mb_upload_is_refused_before_it_is_read(app, tx, two_orgs):
    alice = as_user(app, "alice@acme.test")
    huge = upload(alice, b"\x89PNG\r\n\x1a\n" + b"\x00" * (50 * 1024 * 1024), "huge.png")
    assert huge.status_code == 413
    assert logos(tx) == 0


def test_only_those_allowed_may_change_branding(app, tx, two_orgs):
    uma = as_user(app, "uma@acme.test")
    assert uma.get("/o/acme/admin/branding").status_code == 403
    assert upload(uma, png(), "logo.png").status_code == 403
    assert as_user(app, "alice@acme.test").get("/o/globex/admin/branding").status_code == 404
    assert logos(tx) == 0


def test_branding_over_the_api(app, tx, two_orgs):
    client, auth = app.test_client(), token_for(tx, "alice@acme.test")
    done = client.put("/api/v1/orgs/acme/branding", headers=auth,
                      json={"primary_color": "#0b6e4f", "footer_text": "Acme"})
    assert done.status_code == 200 and done.get_json()["primary_color"] == "#0b6e4f"
    light = client.put("/api/v1/orgs/acme/branding", headers=auth,
                       json={"primary_color": "#eeeeee"})
    assert light.status_code == 400 and light.get_json()["code"] == "low_contrast"
    svg = client.put("/api/v1/orgs/acme/branding/logo", headers=auth,
                     json={"image_base64": base64.b64encode(SVG_WITH_SCRIPT).decode()})
    assert svg.status_code == 400 and svg.get_json()["code"] == "logo_not_image"
    bad = client.put("/api/v1/orgs/acme/branding/logo", headers=auth,
                     json={"image_base64": "not base64!"})
    assert bad.status_code == 422
    logo = client.put("/api/v1/orgs/acme/branding/logo", headers=auth,
                      json={"image_base64": base64.b64encode(png()).decode()})
    assert logo.status_code == 200 and "/branding/acme/logo?v=" in logo.get_json()["logo_url"]
    assert client.delete("/api/v1/orgs/acme/branding/logo", headers=auth).get_json()[
        "logo_url"] is None
    assert branding_of(tx) == {"primary_color": "#0b6e4f", "footer_text": "Acme"}


def test_emails_carry_the_uploaded_logo_over_https(app, tx, two_orgs):
    from portal.services import organizations, outbox
    app.config["BASE_URL"] = "https://partners.example.com"
    alice = as_user(app, "alice@acme.test")
    image = png()
    assert upload(alice, image, "logo.png").status_code == 302
    version = branding_of(tx)["logo"]
    url = f"https://partners.example.com/branding/acme/logo/{version}.img"
    assert branding_of(tx)["logo_url"] == url
    with tx() as session:
        assert outbox.brand_of(organizations.get(session, "acme"))["logo_url"] == url
    served = app.test_client().get(f"/branding/acme/logo/{version}.img")
    assert served.status_code == 200 and served.data == image
    assert upload(alice, png(64, 16), "new.png").status_code == 302
    assert branding_of(tx)["logo_url"].endswith(f"/logo/{branding_of(tx)['logo']}.img")
    post(alice, "/o/acme/admin/branding/logo/remove")
    assert "logo_url" not in branding_of(tx) and "logo" not in branding_of(tx)
