"""Every route declares its access through the one permission check (portal/permissions.py)."""

from portal.permissions import ACCESS

FLASK_OWN = {"static"}


def test_every_route_declares_who_may_reach_it(app):
    undeclared = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in FLASK_OWN:
            continue
        if getattr(app.view_functions[rule.endpoint], ACCESS, None) is None:
            undeclared.append(f"{rule.rule} ({rule.endpoint})")
    assert undeclared == [], "routes without @public, @signed_in or @require: " + \
        ", ".join(undeclared)


def test_public_routes_are_the_expected_ones(app):
    public = sorted(rule.endpoint for rule in app.url_map.iter_rules()
                    if getattr(app.view_functions.get(rule.endpoint), ACCESS, "") == "public")
    assert public == ["account.confirm_email", "account.forgot_password",
                      "account.not_me", "account.org_register", "account.register",
                      "account.reset_password", "account.verify_email", "auth.login",
                      "auth.org_login", "branding.logo", "branding.logo_versioned",
                      "branding.stylesheet",
                      "devmail.html", "devmail.index", "health.healthz",
                      "health.readyz", "mfa.challenge", "mfa.passkey_options",
                      "mfa.passkey_verify", "mfa.passwordless_options",
                      "mfa.passwordless_sign_in", "mfa.setup_at_sign_in",
                      "openapi.docs", "openapi.openapi_json",
                      "provider.authorize", "provider.device_authorization",
                      "provider.discovery", "provider.end_session", "provider.introspect",
                      "provider.jwks", "provider.par", "provider.revoke", "provider.token",
                      "saml.acs",
                      "saml.metadata", "saml.sls", "sso.link", "sso.link_by_email",
                      "sso.link_confirm", "sso.oidc_callback",
                      "sso.start_chosen"]
