"""Trellis portal: the Flask application factory."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from portal.config import ROOT, load_settings

if TYPE_CHECKING:  # Flask is imported lazily so `federation` can use the data model alone.
    from flask import Flask


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app from the environment; ``config`` overrides individual settings."""
    from flask import Flask

    settings = load_settings(overrides=config)
    app = Flask(__name__, template_folder=str(ROOT / "templates"),
                instance_path=settings["INSTANCE_PATH"])
    app.config.update(settings)
    from portal.security import DatabaseId
    app.url_map.converters["int"] = DatabaseId
    _configure_flask(app)

    from portal import logs
    logs.configure(app.config["LOG_FORMAT"], app.config["LOG_LEVEL"])

    from portal import errors, security
    security.install(app)  # first, so every later hook and error has a request id
    errors.register_error_handlers(app)

    _init_services(app)
    _init_extensions(app)

    from portal import openapi
    from portal.views import (
        account,
        admin,
        admin_api,
        api,
        apps_api,
        auth,
        branding,
        consent_api,
        health,
        home,
        mfa,
        org_admin,
        provider,
        saml,
        sso,
    )
    for blueprint in (auth.bp, home.bp, admin.bp, org_admin.bp, org_admin.invites, health.bp,
                      branding.bp, sso.bp, saml.bp, api.bp, admin_api.bp, openapi.bp,
                      provider.bp, account.bp, mfa.bp, consent_api.bp, apps_api.bp):
        app.register_blueprint(blueprint)
    if app.config["ENV"] != "production":
        from portal.views import mail as devmail
        app.register_blueprint(devmail.bp)
    from portal import oauth
    oauth.init_app(app)
    _limit_credential_endpoints(app)
    return app


def _configure_flask(app: Flask) -> None:
    secure = app.config["COOKIE_SECURE"]
    app.config.update(
        SESSION_COOKIE_NAME="__Host-trellis" if secure else "trellis",
        SESSION_COOKIE_SECURE=secure,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_SECURE=secure,
        REMEMBER_COOKIE_HTTPONLY=True,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=app.config["SESSION_HOURS"]),
        MAX_CONTENT_LENGTH=app.config["MAX_REQUEST_KIB"] * 1024,
        MAX_FORM_MEMORY_SIZE=app.config["MAX_REQUEST_KIB"] * 1024,
        RATELIMIT_STORAGE_URI=app.config["REDIS_URL"] or "trellis-memory://",
        RATELIMIT_HEADERS_ENABLED=True,
    )
    if app.config["TRUSTED_PROXIES"]:
        from werkzeug.middleware.proxy_fix import ProxyFix
        count = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count, x_proto=count, x_host=count)


def _init_services(app: Flask) -> None:
    from federation.ldap import LdapAdapter
    from federation.oidc import OidcAdapter
    from federation.saml import SamlAdapter
    from portal.crypto import SecretBox
    from portal.db import Database
    from portal.decision_log import DecisionLog
    from portal.extensions import Services, close_db_session
    from portal.passwords import Passwords
    from portal.services.roles import DatabaseRoleGrants
    from portal.throttle import LoginThrottle, MemoryStore, RedisStore

    config = app.config
    if config["REDIS_URL"]:
        import redis
        store = RedisStore(redis.Redis.from_url(config["REDIS_URL"], socket_timeout=2),
                           prefix=config.get("THROTTLE_PREFIX", "trellis:throttle:"))
    else:
        store = MemoryStore()
    db = Database(config["DATABASE_URL"])
    app.extensions["trellis"] = Services(
        db=db,
        passwords=Passwords(config["ARGON2_TIME_COST"], config["ARGON2_MEMORY_KIB"],
                            config["ARGON2_PARALLELISM"]),
        throttle=LoginThrottle(store, account_free=config["LOGIN_FREE_FAILURES"],
                               ip_free=config["LOGIN_IP_FREE_FAILURES"],
                               base_seconds=config["LOCKOUT_SECONDS"],
                               max_seconds=config["LOCKOUT_MAX_SECONDS"],
                               ip_accounts=config["RISK_IP_ACCOUNTS"]),
        secrets=SecretBox(config["ENCRYPTION_KEYS"]),
        oidc=OidcAdapter(discovery_ttl=config["OIDC_CACHE_SECONDS"]),
        saml=SamlAdapter(),
        ldap=LdapAdapter(),
        role_grants=DatabaseRoleGrants(),
        policy=_policy_engine(config["POLICY_DIR"], db, config["REDIS_URL"],
                              config.get("POLICY_CHANNEL")),
        decisions=DecisionLog(db, config["DECISION_LOG_SAMPLE"], config["DECISION_LOG_DENIES"]),
    )
    app.teardown_appcontext(close_db_session)
    from portal.config import ConfigError
    from portal.services import consent
    try:
        app.extensions["trellis_purposes"] = consent.load_purposes(config["CONSENT_PURPOSES"])
    except ValueError as exc:
        raise ConfigError(f"TRELLIS_CONSENT_PURPOSES: {exc}") from None
    from portal.services import profiling
    try:
        app.extensions["trellis_profile_schema"] = profiling.load_schema(
            config["PROFILE_SCHEMA"])
    except ValueError as exc:
        raise ConfigError(f"TRELLIS_PROFILE_SCHEMA: {exc}") from None


def _policy_engine(folder: str, db, redis_url: str = "", channel: str | None = None):
    """Load the policy files now: a broken file stops the start with file, line and reason
    (a running app keeps its last good policy when a reload fails)."""
    from pathlib import Path

    from policies import PolicyError
    from portal.authz import create_engine
    from portal.config import ConfigError
    try:
        return create_engine(Path(folder), db, redis_url, channel)
    except PolicyError as exc:
        raise ConfigError(f"TRELLIS_POLICY_DIR: {exc.detail}") from None


def _init_extensions(app: Flask) -> None:
    from portal.extensions import csrf, login_manager

    csrf.init_app(app)
    login_manager.init_app(app)


# Every endpoint that accepts a credential; later protocols add theirs here.
CREDENTIAL_ENDPOINTS = ("auth.login", "auth.org_login", "sso.link", "sso.link_by_email",
                        "sso.link_confirm", "saml.acs",
                        "account.forgot_password", "account.reset_password",
                        "account.change_password", "account.register",
                        "account.org_register", "account.verify_email",
                        "account.change_email", "account.confirm_email",
                        "mfa.challenge", "mfa.setup_at_sign_in", "mfa.step_up")
# The provider's machine endpoints take app credentials at a machine's pace.
APP_CREDENTIAL_ENDPOINTS = ("provider.token", "provider.introspect", "provider.revoke",
                            "provider.device_authorization")


def _limit_credential_endpoints(app: Flask) -> None:
    """A request-rate limit per client IP on top of the failure-based lockout. Each app gets
    its own limiter so its in-process counters are not shared with another app."""
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    from portal import ratelimit  # noqa: F401  (registers the in-process storage scheme)

    limiter = Limiter(get_remote_address, app=app, default_limits=[], swallow_errors=True,
                      key_prefix=app.config.get("RATELIMIT_KEY_PREFIX", "trellis"))
    limiter.exempt(app.blueprints["api"])  # high-rate machine calls; keys are not guessable
    limiter.exempt(app.blueprints["consentapi"])
    limiter.exempt(app.blueprints["openapi"])
    rate = app.config["LOGIN_RATE_LIMIT"]
    for endpoint in CREDENTIAL_ENDPOINTS:
        view = app.view_functions[endpoint]
        app.view_functions[endpoint] = limiter.limit(rate, methods=["POST"])(view)
    for endpoint in APP_CREDENTIAL_ENDPOINTS:
        view = app.view_functions[endpoint]
        app.view_functions[endpoint] = limiter.limit(app.config["OAUTH_RATE_LIMIT"],
                                                     methods=["POST"])(view)
    _skip_limiter_for_api(app, limiter)
    app.extensions["trellis_limiter"] = limiter


def _skip_limiter_for_api(app: Flask, limiter) -> None:
    """The decision API is exempt from the limiter, yet its hook still resolved every limit on
    each request (~0.2 ms, a third of a decision request). Requests to the exempt ``api``
    blueprint now skip the hook; every other request runs it as before."""
    from flask import request

    hooks = app.before_request_funcs.setdefault(None, [])
    check = limiter._check_request_limit

    def check_unless_api(*args, **kwargs):
        if request.blueprint == "api":
            return None
        return check(*args, **kwargs)

    for index, hook in enumerate(hooks):
        if getattr(hook, "__func__", None) is getattr(check, "__func__", object()) and \
                getattr(hook, "__self__", None) is limiter:
            hooks[index] = check_unless_api
