"""The portal home shows a member the apps offered to their organizations, each tile
starting the app's own login."""

from __future__ import annotations

import html
import re
from urllib.parse import parse_qs, urlsplit

from tests.conftest import sign_in
from tests.integration.provider_helpers import register

TILE = re.compile(r'<a class="tile" href="([^"]+)">.*?<span class="tile-name">([^<]+)</span>')


def _tiles(client, path: str = "/") -> dict[str, str]:
    page = client.get(path).get_data(as_text=True)
    return {name: html.unescape(url) for url, name in TILE.findall(page)}


def test_member_sees_the_apps_offered_to_their_organizations(app, client, make_org, make_user):
    make_org("acme", "Acme Supplies")
    make_org("globex", "Globex Logistics")
    make_user("alice@acme.test", org="acme")
    make_user("bob@globex.test", org="globex")
    register(app, name="Ticketing", organizations=["acme", "globex"],
             initiate_login_uri="https://tickets.example/login")
    register(app, name="Globex Freight", organizations=["globex"],
             initiate_login_uri="https://freight.example/start?from=portal")
    register(app, name="No tile", organizations=["acme"])  # no initiate-login URI
    stopped = register(app, name="Stopped", organizations=["acme"],
                       initiate_login_uri="https://stopped.example/login")
    register(app, name="Backend", organizations=["acme"], redirect_uris=[],
             grant_types=["client_credentials"], scopes=["authz"],
             initiate_login_uri="https://backend.example/login")
    from portal.services import apps
    from tests.conftest import CLI_CTX, services_of
    with services_of(app).db.transaction() as session:
        apps.set_enabled(session, CLI_CTX, stopped.client_id, False)

    sign_in(client, "alice@acme.test")
    tiles = _tiles(client)
    assert list(tiles) == ["Ticketing"]
    url = urlsplit(tiles["Ticketing"])
    assert url.netloc == "tickets.example" and url.path == "/login"
    assert parse_qs(url.query) == {"iss": ["http://localhost"]}  # Trellis's issuer
    assert _tiles(client, "/o/acme/") == tiles

    bob = app.test_client()
    sign_in(bob, "bob@globex.test")
    tiles = _tiles(bob)
    assert sorted(tiles) == ["Globex Freight", "Ticketing"]
    assert tiles["Globex Freight"].startswith("https://freight.example/start?from=portal&iss=")


def test_member_without_offered_apps_sees_the_empty_notice(app, client, make_org, make_user):
    make_org("acme", "Acme Supplies")
    make_org("globex", "Globex Logistics")
    make_user("alice@acme.test", org="acme")
    register(app, name="Globex Freight", organizations=["globex"],
             initiate_login_uri="https://freight.example/login")
    sign_in(client, "alice@acme.test")
    page = client.get("/").get_data(as_text=True)
    assert "Globex Freight" not in page and "No apps are available to you yet" in page


def test_platform_wide_app_is_offered_to_every_organization(app, make_org, make_user):
    import pytest

    from portal.errors import InvalidRequest
    make_org("acme", "Acme Supplies")
    make_org("globex", "Globex Logistics")
    make_user("alice@acme.test", org="acme")
    make_user("bob@globex.test", org="globex")
    make_user("nomad@example.test")  # in no organization: no tiles at all
    register(app, name="Help desk", organizations=["*"],
             initiate_login_uri="https://help.example/login")
    with pytest.raises(InvalidRequest, match="stands alone"):
        register(app, name="Mixed", organizations=["*", "acme"])
    for email in ("alice@acme.test", "bob@globex.test"):
        client = app.test_client()
        sign_in(client, email)
        assert list(_tiles(client)) == ["Help desk"]
    nomad = app.test_client()
    sign_in(nomad, "nomad@example.test")
    assert _tiles(nomad) == {}


def test_platform_wide_app_signs_in_members_of_any_organization(app, op):
    from tests.integration.provider_helpers import full_login
    registered = register(app, name="Help desk", organizations=["*"])
    for email, slug in (("alice@acme.test", "acme"), ("bob@globex.test", "globex")):
        client, _, _, _ = full_login(op, registered, email=email)
        assert client.get(op + "/oauth/userinfo").json()["org"]["slug"] == slug
