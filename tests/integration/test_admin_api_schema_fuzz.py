"""Schemathesis against the served OpenAPI document: every admin API operation, called in
process through the WSGI app with an owner's API token of a seeded organization (and every
consents API operation with an app's API key, for a member with consents recorded; and every
decision API operation with an app's API key, about a member holding a role), with
requests the document allows (and, for the server-error check, requests it does not). No
answer may be a 5xx, and every answer must be one the document describes, with a body its
schema accepts. A client generated from the document would otherwise break on it."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from portal.services import consent, organizations
from tests.integration.test_admin_api import token_for
from tests.integration.test_consent_api import crm  # noqa: F401
from tests.integration.test_decision_api import world  # noqa: F401
from tests.integration.test_org_admin import two_orgs  # noqa: F401

# Per operation and mode: enough to reach each operation's refusals and its success path,
# few enough that both databases together stay well under a minute.
EXAMPLES = 6
CONFORMANCE = [not_a_server_error, status_code_conformance, content_type_conformance,
               response_schema_conformance]


def _operations(schema, *prefixes: str):
    found = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.startswith(prefixes):
            found.append(operation)
    # Removals last, so the seeded objects are still there for every other operation.
    return sorted(found, key=lambda o: o.method.upper() == "DELETE")


def _seed(app, tx, ids: dict) -> dict:
    """One real object of each kind in Acme, so generated calls also reach the success
    paths (random ids alone only ever meet 404s)."""
    from portal.services import connections, custom_roles, domains, members
    from tests.conftest import CLI_CTX, services_of
    policy = services_of(app).policy
    with tx() as session:
        org = organizations.get(session, "acme")
        actor = members.actor_for(policy, session, org, ids["alice@acme.test"], False)
        known = members.known_roles(policy.files, session, org)
        invitation, _ = members.invite(session, CLI_CTX, org, actor, "nina@acme.test",
                                       "member", known)
        domain = domains.add(session, CLI_CTX, org, "acme-fuzz.test")
        connection = connections.create_ldap(
            session, CLI_CTX, services_of(app).secrets, org_slug="acme", name="Directory",
            bind_password="secret", urls=["ldaps://127.0.0.1:1"], bind_dn="cn=svc",
            user_base="dc=acme")
        role = custom_roles.create(
            session, CLI_CTX, org, name="helpdesk", description="", permissions=["member/read"],
            built_in=set(known), actor_id=ids["alice@acme.test"], operator=True,
            offered=custom_roles.catalogue(policy.files, org),
            held=frozenset(custom_roles.catalogue(policy.files, org)))
        session.flush()
        return {"slug": "acme", "user_id": ids["max@acme.test"],
                "invitation_id": invitation.id, "domain_id": domain.id,
                "connection_id": connection.id, "role_id": role.id, "role": "member"}


def _drive(operation, mode, headers, checks, path_parameters, fix=None):
    wanted = {p.name for p in operation.path_parameters}
    fixed = {k: v for k, v in path_parameters.items() if k in wanted}
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed)

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy.map(fix) if fix else strategy)
    def run(case):
        case.call_and_validate(headers=headers, checks=checks)

    run()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_every_admin_operation_answers_as_documented(app, tx, two_orgs):  # noqa: F811
    """Documented requests get documented answers; undocumented ones still no 5xx."""
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    headers = token_for(tx, "alice@acme.test")
    operations = _operations(schema, "/api/v1/orgs/")
    assert len(operations) >= 30, [o.label for o in operations]
    seeded = _seed(app, tx, two_orgs)
    failures = _run(operations, headers, [
        (GenerationMode.POSITIVE, CONFORMANCE, {"slug": "acme"}),
        (GenerationMode.POSITIVE, CONFORMANCE, seeded),
        (GenerationMode.NEGATIVE, [not_a_server_error], {"slug": "acme"})])
    assert not failures, "\n\n".join(failures)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_every_consents_operation_answers_as_documented(app, tx, crm):  # noqa: F811
    """The consents API, with an app's key: random user ids (404s), a member of the app's
    organization with records in the ledger (200s), and malformed cursors (no 5xx)."""
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = _operations(schema, "/api/v1/users/", "/api/v1/consents/")
    assert sorted(o.label for o in operations) == [
        "GET /api/v1/consents/changes", "GET /api/v1/users/{user_id}/consents"]
    with tx() as session:
        for n, purpose in enumerate(("terms", "product_news", "product_news")):
            consent.record(session, user_id=crm["alice"], purpose=purpose, version="1",
                           granted=n != 2, method="test", ip="", user_agent="", key="k")
    failures = _run(operations, {"Authorization": f"Bearer {crm['key']}"}, [
        (GenerationMode.POSITIVE, CONFORMANCE, {}),
        (GenerationMode.POSITIVE, CONFORMANCE, {"user_id": crm["alice"]}),
        (GenerationMode.NEGATIVE, [not_a_server_error], {})])
    assert not failures, "\n\n".join(failures)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_every_authz_operation_answers_as_documented(app, world):  # noqa: F811
    """The decision API, with an app's key for Acme: random organizations (403s), the same
    requests asked about Acme, whose member holds a role (decisions with whatever attributes
    the document allows, allowed or not), and malformed bodies (422s, never a 5xx)."""
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = _operations(schema, "/api/v1/authz/")
    assert sorted(o.label for o in operations) == [
        "GET /api/v1/authz/subjects/{subject_id}/permissions", "POST /api/v1/authz/batch",
        "POST /api/v1/authz/check", "POST /api/v1/authz/explain"]
    failures = _run(operations, {"Authorization": f"Bearer {world['key']}"}, [
        (GenerationMode.POSITIVE, CONFORMANCE, {}),
        (GenerationMode.POSITIVE, [*CONFORMANCE, _decided], {"subject_id": world["alice"]},
         _in_acme),
        (GenerationMode.NEGATIVE, [not_a_server_error], {}),
        (GenerationMode.NEGATIVE, [not_a_server_error], {}, _in_acme)])
    assert not failures, "\n\n".join(failures)


def _decided(ctx, response, case) -> None:
    """A request the document allows, about an organization the key was given, is answered:
    the document promises nothing the endpoint would refuse."""
    assert response.status_code == 200, (response.status_code, response.text[:300])


def _in_acme(case):
    """The case asked about Acme, the organization the app's key was given, so it gets past
    the organization check to a decision."""
    body = case.body if isinstance(case.body, dict) else {}
    checks = body.get("checks")
    for item in [body, *(checks if isinstance(checks, list) else [])]:
        if isinstance(item, dict) and "organization" in item:
            item["organization"] = "acme"
    if isinstance(case.query, dict) and "org" in case.query:
        case.query["org"] = "acme"
    return case


def _run(operations, headers, runs) -> list[str]:
    """Every (mode, checks, fixed path parameters[, case fix]) run of every operation; the
    failures."""
    failures = []
    for operation in operations:
        for mode, checks, ids, *fix in runs:
            try:
                _drive(operation, mode, headers, checks, ids, *fix)
            except Exception as error:  # collect all, report together
                failures.append(f"{operation.label} [{mode.value}]: {error}"[:1500])
    return failures
