"""The Python client against the real API on a loopback port."""

import pytest

from policies.client import TrellisClient, TrellisClientError
from tests.integration.test_decision_api import order, world  # noqa: F401


@pytest.fixture
def trellis(app, world):  # noqa: F811
    from tests.e2e.conftest import LiveServer
    server = LiveServer(app)
    client = TrellisClient(server.url, world["key"], cache_seconds=30)
    yield client
    client.close()
    server.stop()


def test_check_batch_explain_and_permissions(trellis, world):  # noqa: F811
    alice = world["alice"]
    assert trellis.allowed(alice, "acme", order(10), "approve", context={"assurance": 2})
    assert not trellis.allowed(alice, "acme", order(10), "approve", context={"assurance": 1})
    results = trellis.batch([{"subject": alice, "organization": "acme", "object": order(1),
                              "action": a} for a in ("approve", "delete")])
    assert [r["allowed"] for r in results] == [False, False]  # approve needs MFA context
    explained = trellis.explain(alice, "acme", order(1), "read")
    assert "buyer" in explained["roles"] and explained["chain"] == [alice, "buyer"]
    assert explained["rule_source"].startswith("kinds/partner.csv:")
    assert {"object": "organization", "action": "read", "condition": None} in \
        trellis.permissions(alice, "acme")


def test_answers_are_cached(trellis, world):  # noqa: F811
    for _ in range(5):
        trellis.check(world["alice"], "acme", "organization", "read")
    assert trellis.requests_sent == 1
    trellis.check(world["alice"], "acme", "member", "manage")
    assert trellis.requests_sent == 2


def test_connection_is_reused_behind_gunicorn(world, settings, tmp_path, monkeypatch):  # noqa: F811
    import http.client

    from tests.peers.gunicorn_server import GunicornServer
    environment = {"DATABASE_URL": settings["DATABASE_URL"], "TRELLIS_ENV": "test",
                   "TRELLIS_INSTANCE_PATH": settings["INSTANCE_PATH"],
                   "SECRET_KEY": settings["SECRET_KEY"], "TRELLIS_LOG_LEVEL": "WARNING"}
    server = GunicornServer(tmp_path, environment)
    connects = []
    real = http.client.HTTPConnection.connect
    monkeypatch.setattr(http.client.HTTPConnection, "connect",
                        lambda self: connects.append(1) or real(self))
    try:
        client = TrellisClient(server.url, world["key"], cache_seconds=0)
        answers = [client.allowed(world["alice"], "acme", "organization", "read")
                   for _ in range(5)]
        assert answers == [True] * 5 and client.requests_sent == 5 and len(connects) == 1
        client.close()
    finally:
        server.stop()


def test_errors_carry_code_field_and_reference(trellis, world, app):  # noqa: F811
    with pytest.raises(TrellisClientError) as caught:
        trellis.check(world["alice"], "globex", "organization", "read")
    assert caught.value.status == 403 and caught.value.code == "organization_not_granted"
    assert caught.value.reference
    with pytest.raises(TrellisClientError) as caught:
        trellis.check(world["alice"], "acme", {"kind": "x"}, "read")
    assert caught.value.status == 422 and caught.value.field == "object"
    wrong_key = TrellisClient(trellis._prefix or f"http://{trellis._host}:{trellis._port}",
                              "trk_wrong")
    with pytest.raises(TrellisClientError) as caught:
        wrong_key.check("1", "acme", "x", "read")
    assert caught.value.status == 401
