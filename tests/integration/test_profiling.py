"""Progressive profiling: an app that needs profile fields gets them asked for once, exactly
those, with where and why each value was collected."""

from urllib.parse import urlencode

import pytest
import sqlalchemy as sa

from portal.models import ProfileValue
from tests.conftest import audit_events, csrf_token, services_of, sign_in
from tests.integration.provider_helpers import REDIRECT, register


@pytest.fixture
def member(app, make_org, make_user):
    make_org("acme", "Acme Supplies")
    make_user("alice@acme.test", org="acme")


def _authorize(client, client_id, scope):
    query = urlencode({"response_type": "code", "client_id": client_id,
                       "redirect_uri": REDIRECT, "scope": scope, "state": "s1",
                       "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                       "code_challenge_method": "S256", "nonce": "n1"})
    return client.get(f"/oauth/authorize?{query}")


def _values(app):
    with services_of(app).db.sessions() as session:
        return {v.field: v for v in session.scalars(sa.select(ProfileValue))}


SCHEMA = """
fields:
  - {key: job_title, label: Job title, type: text, max_length: 100, optional: true,
     purpose: Shown next to your name., required_by: ["scope:profile"]}
  - {key: phone, label: Work phone, type: phone, required_by: ["app:APP"],
     purpose: Apps that arrange deliveries call this number about them.}
  - {key: country, label: Country you work in, type: choice, required_by: ["app:APP"],
     choices: [France, Germany], purpose: Apps use it to follow each country's rules.}
"""


def _needing(settings, tmp_path, client_id):
    """The app with a schema where phone and country are needed by this app, and the job
    title (optional) by apps asking for the profile scope."""
    from portal import create_app
    schema = tmp_path / "schema.yaml"
    schema.write_text(SCHEMA.replace("APP", client_id))
    return create_app({**settings, "PROFILE_SCHEMA": str(schema)})


def test_an_app_needing_fields_asks_for_exactly_those_then_continues(
        app, settings, tmp_path, member):
    delivery = register(app, name="Delivery Planner")
    app = _needing(settings, tmp_path, delivery.client_id)
    client = app.test_client()
    sign_in(client, "alice@acme.test")
    asked = _authorize(client, delivery.client_id, "openid email")
    assert asked.status_code == 302
    location = asked.headers["Location"]
    assert location.startswith("/account/profile/complete?")
    page = client.get(location).get_data(as_text=True)
    assert "Delivery Planner needs a few details" in page
    assert 'name="phone"' in page and 'name="country"' in page
    assert 'name="job_title"' not in page  # not needed by this request: not asked
    assert "Skip for now" not in page  # both are required
    assert "Why: Apps that arrange deliveries call this number" in page

    token = csrf_token(client, location)
    bad = client.post(location, data={"csrf_token": token, "phone": "call me maybe",
                                      "country": "Atlantis", "action": "save"})
    text = bad.get_data(as_text=True)
    assert bad.status_code == 400
    assert "Work phone: enter a phone number" in text
    assert "Country you work in: choose one of the options" in text
    assert 'value="call me maybe"' in text  # what was typed stays in the form
    assert _values(app) == {}  # nothing stored while anything is wrong

    good = client.post(location, data={"csrf_token": token, "phone": "+49 30 1234567",
                                       "country": "Germany", "action": "save"})
    assert good.status_code == 302 and good.headers["Location"].startswith("/oauth/authorize")
    stored = _values(app)
    assert stored["phone"].value == "+49 30 1234567"
    assert stored["phone"].collected_via == f"app:{delivery.client_id}"
    assert "deliveries" in stored["phone"].purpose
    # Given once: the app now opens without asking again.
    again = _authorize(client, delivery.client_id, "openid email")
    assert not again.headers.get("Location", "").startswith("/account/profile/")
    [event] = audit_events(app, "profile.collect")
    assert event.details["fields"] == ["country", "phone"]
    services_of(app).db.dispose()


def test_optional_fields_can_be_skipped_and_apps_needing_nothing_are_not_stopped(
        app, settings, tmp_path, member):
    portal_app = register(app, name="Supplier Portal")
    shipped_app = app
    app = _needing(settings, tmp_path, "someone-else")
    client = app.test_client()
    sign_in(client, "alice@acme.test")
    asked = _authorize(client, portal_app.client_id, "openid profile")
    location = asked.headers["Location"]
    page = client.get(location).get_data(as_text=True)
    assert 'name="job_title"' in page and "Skip for now" in page
    skipped = client.post(location, data={"csrf_token": csrf_token(client, location),
                                          "action": "skip"})
    assert skipped.headers["Location"].startswith("/oauth/authorize")
    after = _authorize(client, portal_app.client_id, "openid profile")
    assert not after.headers.get("Location", "").startswith("/account/profile/")
    assert _values(app) == {}
    plain = _authorize(client, portal_app.client_id, "openid email")
    assert not plain.headers.get("Location", "").startswith("/account/profile/")
    services_of(app).db.dispose()
    # As shipped, no app needs anything: nobody is stopped.
    shipped = shipped_app.test_client()
    sign_in(shipped, "alice@acme.test")
    first = _authorize(shipped, portal_app.client_id, "openid profile")
    assert not first.headers.get("Location", "").startswith("/account/profile/")


def test_details_are_shown_and_edited_on_the_account_page(app, client, member):
    sign_in(client, "alice@acme.test")
    page = client.get("/account/").get_data(as_text=True)
    assert "Details apps asked for" in page and "not given" in page
    token = csrf_token(client, "/account/profile/complete")
    saved = client.post("/account/profile/complete", data={
        "csrf_token": token, "job_title": "Buyer", "phone": "+33 1 23 45 67 89",
        "country": "France", "action": "save"})  # the shipped schema's fields
    assert saved.headers["Location"] == "/account/"
    page = client.get("/account/").get_data(as_text=True)
    assert "Buyer" in page and "via account_page" in page
    export = client.get("/account/export").get_json()
    assert {f["field"] for f in export["profile_fields"]} == {"job_title", "phone", "country"}


def _jwt_claims(token: str) -> dict:
    import base64
    import json
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_apps_receive_exactly_the_fields_they_require_in_tokens_and_userinfo(
        app, op, tmp_path):
    from portal.models import User
    from portal.services import profiling
    from tests.integration.provider_helpers import full_login
    delivery = register(app, name="Delivery Planner")
    other = register(app, name="Supplier Portal")
    schema = tmp_path / "schema.yaml"
    schema.write_text(SCHEMA.replace("APP", delivery.client_id))
    app.extensions["trellis_profile_schema"] = profiling.load_schema(schema)
    with services_of(app).db.transaction() as session:
        alice = session.scalar(sa.select(User).where(User.email == "alice@acme.test"))
        for field, value in (("phone", "+49 30 1234567"), ("country", "Germany"),
                             ("job_title", "Buyer")):
            session.add(ProfileValue(user_id=alice.id, field=field, value=value,
                                     collected_via="account_page", purpose="test"))
    client, token, _, _ = full_login(op, delivery, scope="openid email")
    expected = {"phone": "+49 30 1234567", "country": "Germany"}  # not job_title
    assert _jwt_claims(token["id_token"])["profile_fields"] == expected
    assert client.get(op + "/oauth/userinfo").json()["profile_fields"] == expected
    # The profile scope requires the job title; an app needing nothing gets nothing.
    client, token, _, _ = full_login(op, other, scope="openid profile")
    assert _jwt_claims(token["id_token"])["profile_fields"] == {"job_title": "Buyer"}
    client, token, _, _ = full_login(op, other, scope="openid email")
    assert "profile_fields" not in _jwt_claims(token["id_token"])
    assert "profile_fields" not in client.get(op + "/oauth/userinfo").json()
    # An organization's own field goes to apps opened for that organization.
    app.extensions["trellis_org_profile_schemas"] = {"acme": profiling.load_schema(
        _org_schema(tmp_path, other.client_id))}
    with services_of(app).db.transaction() as session:
        session.add(ProfileValue(user_id=alice.id, field="acme_cost_center", value="CC-42",
                                 collected_via="account_page", purpose="test"))
    client, token, _, _ = full_login(op, other, scope="openid org")
    assert _jwt_claims(token["id_token"])["profile_fields"] == {"acme_cost_center": "CC-42"}


def _org_schema(tmp_path, client_id):
    path = tmp_path / "acme.yaml"
    path.write_text(ORG_SCHEMA.replace("APP", client_id))
    return path


ORG_SCHEMA = """
fields:
  - {key: acme_cost_center, label: Cost center, type: text, required_by: ["app:APP"],
     purpose: Acme bills deliveries to it.}
"""


def test_an_organizations_own_fields_are_asked_of_its_members_only(
        app, settings, tmp_path, make_org, make_user):
    make_org("acme", "Acme Supplies")
    make_org("globex", "Globex")
    make_user("alice@acme.test", org="acme")
    make_user("bob@globex.test", org="globex")
    planner = register(app, name="Delivery Planner", organizations=["acme", "globex"])
    folder = tmp_path / "orgs"
    folder.mkdir()
    (folder / "acme.yaml").write_text(ORG_SCHEMA.replace("APP", planner.client_id))
    from portal import create_app
    app = create_app({**settings, "ORG_PROFILE_SCHEMAS": str(folder)})
    try:
        alice = app.test_client()
        sign_in(alice, "alice@acme.test")
        asked = _authorize(alice, planner.client_id, "openid")
        assert asked.headers["Location"].startswith("/account/profile/complete?")
        page = alice.get(asked.headers["Location"]).get_data(as_text=True)
        assert 'name="acme_cost_center"' in page and "Acme bills deliveries" in page
        assert "Cost center" in alice.get("/account/").get_data(as_text=True)
        bob = app.test_client()
        sign_in(bob, "bob@globex.test")
        opened = _authorize(bob, planner.client_id, "openid")
        assert not opened.headers.get("Location", "").startswith("/account/profile/")
        assert "Cost center" not in bob.get("/account/").get_data(as_text=True)
    finally:
        services_of(app).db.dispose()


def test_a_key_defined_twice_stops_the_start(settings, tmp_path):
    from portal import create_app
    from portal.config import ConfigError
    folder = tmp_path / "orgs"
    folder.mkdir()
    (folder / "acme.yaml").write_text(
        "fields:\n  - {key: job_title, label: Title, type: text, purpose: x}\n")
    with pytest.raises(ConfigError) as stopped:
        create_app({**settings, "ORG_PROFILE_SCHEMAS": str(folder)})
    assert str(stopped.value).startswith("TRELLIS_ORG_PROFILE_SCHEMAS: acme.yaml: field "
                                         "'job_title' is already defined in the platform")


def test_the_discovery_document_announces_the_profile_fields_claim(app):
    """Relying parties read claims_supported to know what they may ask for."""
    from portal.services import profiling
    config = app.test_client().get("/.well-known/openid-configuration").get_json()
    assert profiling.CLAIM in config["claims_supported"]
    assert "email" in config["claims_supported"]
