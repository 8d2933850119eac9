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
    from portal.flask_app import Portal

    settings = load_settings(overrides=config)
    app = Portal(__name__, template_folder=str(ROOT / "templates"),
                instance_path=settings["INSTANCE_PATH"])
    app.config.update(settings)
    from portal.security import DatabaseId
    from portal.session_cookie import CookieSessions
    app.url_map.converters["int"] = DatabaseId
    app.session_interface = CookieSessions()
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
    app.remember_sync_callables()
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


def _audit_episode(db):
    """Record the global sign-in throttle engaging or lifting, once per episode, in its own
    transaction (the throttle runs outside the sign-in's transaction)."""
    from datetime import UTC, datetime

    from portal import audit

    def record(what: str, episode) -> None:
        when = {"started_at": datetime.fromtimestamp(episode.started, UTC).isoformat(),
                "until": datetime.fromtimestamp(episode.until, UTC).isoformat()}
        if what == "engaged":
            when["window_failures"] = episode.window_failures
        with db.transaction() as tx:
            audit.record(tx, audit.Context(actor="system"), f"throttle.global_{what}",
                         target="platform", details=when)
    return record


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
                               ip_accounts=config["RISK_IP_ACCOUNTS"],
                               global_failures=config["GLOBAL_FAILURES"],
                               global_window=config["GLOBAL_WINDOW_SECONDS"],
                               known_good_days=config["KNOWN_GOOD_DAYS"],
                               on_episode=_audit_episode(db)),
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
    try:
        app.extensions["trellis_org_profile_schemas"] = profiling.load_org_schemas(
            config["ORG_PROFILE_SCHEMAS"], app.extensions["trellis_profile_schema"])
    except ValueError as exc:
        raise ConfigError(f"TRELLIS_ORG_PROFILE_SCHEMAS: {exc}") from None


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
    _no_remember_cookie_for_machines(app)


def _no_remember_cookie_for_machines(app: Flask) -> None:
    """Flask-Login's response hook reads the session on every request to refresh or clear the
    remember cookie, which only signing in or out asks for. Machine endpoints (the decision
    API, health checks) never sign anyone in or out, so it is skipped for them; their answers
    then also carry no ``Vary: Cookie``, as they do not depend on one."""
    from flask import request

    from portal.extensions import login_manager
    from portal.security import MACHINE_BLUEPRINTS

    hooks = app.after_request_funcs.setdefault(None, [])
    for index, hook in enumerate(hooks):
        if getattr(hook, "__func__", None) is getattr(type(login_manager),
                                                      "_update_remember_cookie", None):
            def update_unless_machine(response, hook=hook):
                if request.blueprint in MACHINE_BLUEPRINTS:
                    return response
                return hook(response)
            hooks[index] = update_unless_machine


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
                            "provider.device_authorization", "provider.par")


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
    _trim_limiter_hooks(app, limiter)
    app.extensions["trellis_limiter"] = limiter


def _trim_limiter_hooks(app: Flask, limiter) -> None:
    """flask-limiter's before-request hook looks for request-wide limits (default,
    application, blueprint and meta limits) and resolves them on every request: ~0.14 ms of a
    ``/healthz`` that cost 0.2 ms in all. Trellis declares none: its limits sit on the
    credential views, which check them in their own wrappers. So the hook runs only while the
    limiter holds a request-wide limit (looked up per request, so one added later is enforced),
    and never for the exempt ``api`` blueprint. Its response and teardown hooks only act on
    the state a check leaves on the request, so they are skipped when no check ran."""
    from flask import request
    from flask_limiter._compat import request_context

    check = limiter._check_request_limit

    def check_request_wide_limits(*args, **kwargs):
        if request.blueprint == "api" or not has_request_wide_limits(limiter):
            return None
        return check(*args, **kwargs)

    def only_after_a_check(hook, passthrough: bool):
        def hook_if_checked(value):
            if not hasattr(request_context(), "_limiter_request_context"):
                return value if passthrough else None
            return hook(value)
        return hook_if_checked

    def ours(hook) -> bool:
        target = getattr(hook, "func", hook)  # the response hook is a functools.partial
        owner = getattr(hook, "args", (None,))[0] if hasattr(hook, "func") else \
            getattr(hook, "__self__", None)
        return owner is limiter and getattr(target, "__module__", "").startswith(
            "flask_limiter")

    before = app.before_request_funcs.setdefault(None, [])
    after = app.after_request_funcs.setdefault(None, [])
    teardown = app.teardown_request_funcs.setdefault(None, [])
    for index, hook in enumerate(before):
        if ours(hook):
            before[index] = check_request_wide_limits
    for index, hook in enumerate(after):
        if ours(hook):
            after[index] = only_after_a_check(hook, passthrough=True)
    for index, hook in enumerate(teardown):
        if ours(hook):
            teardown[index] = only_after_a_check(hook, passthrough=False)


def has_request_wide_limits(limiter) -> bool:
    """Whether the limiter's before-request hook could find a limit to apply: limits on a
    decorated view are checked by the view's wrapper, everything else by the hook."""
    manager = limiter.limit_manager
    return bool(manager._default_limits or manager._application_limits
                or manager._blueprint_limits or limiter._meta_limits
                or limiter._in_memory_fallback)
