"""Settings, read once from environment variables and validated before the app starts.

Every setting is declared in ``SETTINGS`` so that validation, defaults and the README's
configuration table come from one list. A bad value stops the app with a message that names
the variable, because a half-configured identity broker is worse than one that will not start.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENVIRONMENTS = ("development", "production", "test")
ROOT = Path(__file__).resolve().parent.parent


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Setting:
    env: str
    key: str
    parse: Callable[[str], Any]
    default: Any
    doc: str


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("must be a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse


def _float_range(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("must be a number") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}")
        return value

    return parse


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return raw

    return parse


def _database_url(raw: str) -> str:
    if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", raw):
        raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
    return raw


def _redis_url(raw: str) -> str:
    if raw and not re.match(r"^rediss?://", raw):
        raise ValueError("must be a redis:// or rediss:// URL")
    return raw


def _rate(raw: str) -> str:
    if not re.match(r"^\d+\s*(/|per)\s*(second|minute|hour|day)s?$", raw.strip()):
        raise ValueError("must look like '30/minute'")
    return raw.strip()


def _secret_key(raw: str) -> str:
    if len(raw) < 32:
        raise ValueError("must be at least 32 characters")
    return raw


def _fernet_keys(raw: str) -> tuple[str, ...]:
    import base64
    keys = tuple(part.strip() for part in raw.split(",") if part.strip())
    for key in keys:
        try:
            if len(base64.urlsafe_b64decode(key.encode())) != 32:
                raise ValueError
        except ValueError:
            raise ValueError("each key must be a Fernet key (`trellis keys generate`)") from None
    if not keys:
        raise ValueError("needs at least one key")
    return keys


def _fraction(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("must be a number between 0 and 1") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be between 0 and 1")
    return value


def _text(raw: str) -> str:
    return raw


def _base_url(raw: str) -> str:
    if raw and not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", raw):
        raise ValueError("must be an absolute http(s) URL without query, like "
                         "https://partners.example.com")
    return raw.rstrip("/")


def _dns_servers(raw: str) -> tuple[tuple[str, int], ...]:
    """``10.0.0.53, 127.0.0.1:5353, [::1]:53`` -> ((address, port), ...)."""
    import ipaddress
    servers = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        match = re.fullmatch(
            r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([0-9.]+)(?::(\d+))?|([0-9A-Fa-f:]+)", part)
        if not match:
            raise ValueError(f"{part!r} is not an IP address with an optional :port")
        address = match.group(1) or match.group(3) or match.group(5)
        port = int(match.group(2) or match.group(4) or 53)
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"{address!r} is not an IP address") from None
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is out of range")
        servers.append((address, port))
    return tuple(servers)
def _mail_from(raw: str) -> str:
    from email.utils import parseaddr
    _name, address = parseaddr(raw)
    if "@" not in address or any(ch in raw for ch in "\r\n"):
        raise ValueError("must be an address such as 'Trellis <no-reply@example.com>'")
    return raw.strip()


def _host(raw: str) -> str:
    if raw and not re.match(r"^[A-Za-z0-9.-]+$|^\[[0-9A-Fa-f:.]+\]$", raw):
        raise ValueError("must be a host name or IP address")
    return raw


SETTINGS: tuple[Setting, ...] = (
    Setting("TRELLIS_ENV", "ENV", _choice(*ENVIRONMENTS), "development",
            "`development`, `production` or `test`. Production requires `SECRET_KEY`, "
            "forces secure cookies and refuses demo data."),
    Setting("SECRET_KEY", "SECRET_KEY", _secret_key, None,
            "Signs sessions and CSRF tokens (32+ characters). Required in production; in "
            "development it is generated once into `instance/secret_key`."),
    Setting("TRELLIS_ENCRYPTION_KEYS", "ENCRYPTION_KEYS", _fernet_keys, None,
            "Comma-separated Fernet keys that encrypt connection secrets at rest; the first "
            "encrypts, all decrypt (rotation: put a new key first, run `trellis keys rotate`, "
            "then drop the old one). Required in production; generated into "
            "`instance/encryption_keys` in development."),
    Setting("DATABASE_URL", "DATABASE_URL", _database_url, None,
            "SQLAlchemy URL. Default: SQLite file `instance/trellis.db`. PostgreSQL: "
            "`postgresql+psycopg://user@host:5432/db`."),
    Setting("REDIS_URL", "REDIS_URL", _redis_url, "",
            "When set, sign-in throttling and rate limits are shared through Redis by every "
            "worker, and policy changes reach every worker at once over pub/sub; otherwise "
            "throttling is kept in process and workers see policy changes within about a "
            "second."),
    Setting("TRELLIS_INSTANCE_PATH", "INSTANCE_PATH", _text, str(ROOT / "instance"),
            "Folder for the SQLite database and the generated development secret key."),
    Setting("TRELLIS_COOKIE_SECURE", "COOKIE_SECURE", _bool, None,
            "Send cookies over HTTPS only. Default: on in production, off in development "
            "(so `http://127.0.0.1` works). Cannot be turned off in production."),
    Setting("TRELLIS_SESSION_HOURS", "SESSION_HOURS", _int_range(1, 720), 8,
            "How long a sign-in lasts before the user must sign in again."),
    Setting("TRELLIS_TRUSTED_PROXIES", "TRUSTED_PROXIES", _int_range(0, 5), 0,
            "Number of reverse proxies in front of Trellis whose `X-Forwarded-*` headers are "
            "trusted (client IP, HTTPS). 0 trusts none."),
    Setting("TRELLIS_BASE_URL", "BASE_URL", _base_url, "",
            "The portal's public URL, e.g. `https://partners.example.com`. SAML entity IDs, "
            "ACS and logout URLs are built from it (they must not change once partners have "
            "registered them). Empty: taken from each request, for development."),
    Setting("TRELLIS_ARGON2_TIME_COST", "ARGON2_TIME_COST", _int_range(1, 20), 2,
            "argon2id iterations. Changing a parameter rehashes each password at its next "
            "sign-in."),
    Setting("TRELLIS_ARGON2_MEMORY_KIB", "ARGON2_MEMORY_KIB", _int_range(8192, 4194304), 19456,
            "argon2id memory in KiB (default is OWASP's minimum, 19 MiB)."),
    Setting("TRELLIS_ARGON2_PARALLELISM", "ARGON2_PARALLELISM", _int_range(1, 16), 1,
            "argon2id lanes."),
    Setting("TRELLIS_LOGIN_FREE_FAILURES", "LOGIN_FREE_FAILURES", _int_range(1, 100), 5,
            "Failed sign-ins allowed per account before it is locked for a while."),
    Setting("TRELLIS_LOGIN_IP_FREE_FAILURES", "LOGIN_IP_FREE_FAILURES", _int_range(1, 10000), 20,
            "Failed sign-ins allowed per client IP (any account) before that IP is locked."),
    Setting("TRELLIS_LOCKOUT_SECONDS", "LOCKOUT_SECONDS", _int_range(1, 86400), 60,
            "First lockout length; it doubles with every further failure."),
    Setting("TRELLIS_LOCKOUT_MAX_SECONDS", "LOCKOUT_MAX_SECONDS", _int_range(1, 604800), 3600,
            "Longest lockout."),
    Setting("TRELLIS_MFA_STEP_UP_MINUTES", "MFA_STEP_UP_MINUTES", _int_range(1, 1440), 15,
            "Users who have a second factor must have used it within this many minutes to "
            "change an organization's members, roles, connections or settings, or their own "
            "second factors (otherwise they are asked for a code first)."),
    Setting("TRELLIS_MFA_REAUTH_MINUTES", "MFA_REAUTH_MINUTES", _int_range(1, 1440), 10,
            "Setting up an authenticator app requires a sign-in at most this many minutes old "
            "(else the user signs in again first)."),
    Setting("TRELLIS_LOGIN_RATE_LIMIT", "LOGIN_RATE_LIMIT", _rate, "30/minute",
            "Request rate limit per client IP on every credential endpoint, failed or not."),
    Setting("TRELLIS_OAUTH_RATE_LIMIT", "OAUTH_RATE_LIMIT", _rate, "6000/minute",
            "Request rate limit per client IP on the provider's token, introspection, revocation "
            "and device endpoints (apps call them at a machine's pace)."),
    Setting("TRELLIS_MAX_REQUEST_KIB", "MAX_REQUEST_KIB", _int_range(16, 65536), 1024,
            "Largest request body accepted; larger bodies get a 413 page."),
    Setting("TRELLIS_OIDC_CACHE_SECONDS", "OIDC_CACHE_SECONDS", _int_range(0, 86400), 3600,
            "How long an identity provider's discovery document is cached."),
    Setting("TRELLIS_POLICY_DIR", "POLICY_DIR", _text, str(ROOT / "policies"),
            "Folder with `model.conf`, `platform.csv`, `kinds/` and `orgs/` policy files."),
    Setting("TRELLIS_DNS_RESOLVERS", "DNS_RESOLVERS", _dns_servers, (),
            "Comma-separated DNS servers (`10.0.0.53`, `127.0.0.1:5353`, `[::1]:53`) asked for "
            "domain verification TXT records. Empty: the system's resolvers."),
    Setting("TRELLIS_DNS_TIMEOUT_SECONDS", "DNS_TIMEOUT_SECONDS", _int_range(1, 60), 5,
            "How long one domain verification lookup may take before it counts as timed out."),
    Setting("TRELLIS_DOMAIN_RECHECK_HOURS", "DOMAIN_RECHECK_HOURS", _int_range(1, 720), 24,
            "How often `trellis worker` looks every verified domain's TXT record up again; "
            "a domain whose record is gone stops routing sign-ins."),
    Setting("TRELLIS_SECTOR_RECHECK_HOURS", "SECTOR_RECHECK_HOURS", _int_range(1, 720), 24,
            "How often `trellis worker` fetches every pairwise app's sector identifier "
            "document again; a redirect URI it no longer lists is refused until it does."),
    Setting("TRELLIS_DECISION_LOG_SAMPLE", "DECISION_LOG_SAMPLE", _fraction, 0.0,
            "Share of authorization decisions (0 to 1, e.g. `0.01`) — the decision API's and "
            "the portal's own page checks — written to the audit trail as `authz.decision` "
            "events, in batches off the request path."),
    Setting("TRELLIS_DECISION_LOG_DENIES", "DECISION_LOG_DENIES", _bool, False,
            "Also write every denied decision (decision API and portal pages) to the audit "
            "trail, whatever the sample."),
    Setting("TRELLIS_SMTP_HOST", "SMTP_HOST", _host, "",
            "Mail server that delivers Trellis's email. Empty: outside production, mail is "
            "kept and shown at `/dev/mail` instead of being sent; in production it waits in "
            "the outbox."),
    Setting("TRELLIS_SMTP_PORT", "SMTP_PORT", _int_range(1, 65535), 587,
            "Mail server port (587 for STARTTLS, 465 for implicit TLS)."),
    Setting("TRELLIS_SMTP_SECURITY", "SMTP_SECURITY", _choice("starttls", "tls", "none"),
            "starttls",
            "`starttls` (upgrade the connection, certificate checked), `tls` (implicit TLS) "
            "or `none` (plain; refused together with a user name)."),
    Setting("TRELLIS_SMTP_USER", "SMTP_USER", _text, "",
            "User name for the mail server; empty sends without authentication."),
    Setting("TRELLIS_SMTP_PASSWORD", "SMTP_PASSWORD", _text, "",
            "Password for the mail server."),
    Setting("TRELLIS_SMTP_CA_FILE", "SMTP_CA_FILE", _text, "",
            "PEM file of the CA(s) to trust for the mail server's certificate, for a private "
            "CA; empty uses the system's CAs."),
    Setting("TRELLIS_SMTP_TIMEOUT", "SMTP_TIMEOUT", _int_range(1, 120), 10,
            "Seconds to wait for the mail server before an attempt counts as failed."),
    Setting("TRELLIS_MAIL_FROM", "MAIL_FROM", _mail_from, "Trellis <no-reply@localhost>",
            "Sender of every email. Set it to an address of your domain in production."),
    Setting("TRELLIS_MAIL_MAX_ATTEMPTS", "MAIL_MAX_ATTEMPTS", _int_range(1, 50), 10,
            "Delivery attempts before a message is marked failed; the wait between attempts "
            "doubles from one minute up to six hours."),
    Setting("TRELLIS_SIEM_MAX_ATTEMPTS", "SIEM_MAX_ATTEMPTS", _int_range(1, 100), 8,
            "Delivery attempts of one batch of events to a SIEM stream before the batch is "
            "dead-lettered and the stream moves on; the wait doubles from 5 s up to 10 min."),
    Setting("TRELLIS_SIEM_BATCH_SIZE", "SIEM_BATCH_SIZE", _int_range(1, 10000), 500,
            "Most events sent to one SIEM stream in one attempt (one webhook request, one "
            "syslog connection)."),
    Setting("TRELLIS_ANOMALY_WINDOW_MINUTES", "ANOMALY_WINDOW_MINUTES", _int_range(1, 1440),
            15, "Length of the windows in which `trellis worker` counts sign-ins, failures, "
            "lockouts and failed codes (per organization and platform-wide) to compare each "
            "with its recent baseline."),
    Setting("TRELLIS_ANOMALY_Z", "ANOMALY_Z", _float_range(1.0, 50.0), 3.0,
            "How many standard deviations above its baseline a window's count must be to "
            "be reported as an anomaly (audited, sent to SIEM streams, mailed to admins)."),
    Setting("TRELLIS_ANOMALY_MIN_COUNT", "ANOMALY_MIN_COUNT", _int_range(1, 1000000), 10,
            "Smallest count in a window that can be an anomaly (small numbers are noise)."),
    Setting("TRELLIS_RISK_STEP_UP_AT", "RISK_STEP_UP_AT", _int_range(1, 100), 50,
            "Risk score (0-100) from which a sign-in asks for the second factor under an "
            "organization's `risk` MFA policy; organization owners may set their own."),
    Setting("TRELLIS_RISK_DENY_AT", "RISK_DENY_AT", _int_range(1, 101), 80,
            "Risk score from which a sign-in of a member without a second factor is stopped "
            "under the `risk` policy (101: never); organization owners may set their own."),
    Setting("TRELLIS_RISK_IP_ACCOUNTS", "RISK_IP_ACCOUNTS", _int_range(2, 100000), 20,
            "Distinct accounts failing to sign in from one IP within 15 minutes that mark "
            "the IP as credential stuffing (audited once per window, scored at sign-in)."),
    Setting("TRELLIS_GLOBAL_FAILURES", "GLOBAL_FAILURES", _int_range(0, 10000000), 1000,
            "Failed credential attempts across the platform within "
            "`TRELLIS_GLOBAL_WINDOW_SECONDS` that engage the global throttle: until the attack "
            "stops, only clients signing in from a network that succeeded before may try "
            "(0: off). See docs/security.md."),
    Setting("TRELLIS_GLOBAL_WINDOW_SECONDS", "GLOBAL_WINDOW_SECONDS", _int_range(10, 86400),
            300, "Window of the global throttle; it lifts this long after the failure rate "
            "falls below the limit."),
    Setting("TRELLIS_KNOWN_GOOD_DAYS", "KNOWN_GOOD_DAYS", _int_range(1, 365), 30,
            "How long a successful sign-in vouches for its network (/24 IPv4, /56 IPv6) "
            "while the global throttle is engaged."),
    Setting("TRELLIS_GEOIP_DATABASE", "GEOIP_DATABASE", _text, "",
            "Path of a MaxMind-format city database (`.mmdb`, e.g. GeoLite2-City) for the "
            "impossible-travel risk signal; empty turns the signal off."),
    Setting("TRELLIS_REGISTRATION", "REGISTRATION", _choice("closed", "open"), "closed",
            "`open` lets anyone create an account at `/register` without an organization; "
            "each organization has its own setting for `/o/<slug>/register`."),
    Setting("TRELLIS_TERMS_VERSION", "TERMS_VERSION", _text, "1",
            "Version of the terms of use that registration asks people to accept; recorded "
            "with each acceptance."),
    Setting("TRELLIS_TERMS_URL", "TERMS_URL", _base_url, "",
            "Where the terms of use are published (linked from the registration form)."),
    Setting("TRELLIS_CONSENT_PURPOSES", "CONSENT_PURPOSES", _text,
            str(ROOT / "portal" / "consent_purposes.yaml"),
            "YAML file listing the purposes (e.g. product news by email) people grant or "
            "withdraw on their account page; each change is recorded in the consent ledger."),
    Setting("TRELLIS_PROFILE_SCHEMA", "PROFILE_SCHEMA", _text,
            str(ROOT / "portal" / "profile_schema.yaml"),
            "YAML file of the profile fields apps may need (progressive profiling): after "
            "sign-in, a person opening an app is asked for exactly the fields it needs."),
    Setting("TRELLIS_ORG_PROFILE_SCHEMAS", "ORG_PROFILE_SCHEMAS", _text, "",
            "Folder of organizations' own profile fields: `<slug>.yaml` in the format of "
            "`TRELLIS_PROFILE_SCHEMA`, asked of that organization's members only. Keys must "
            "be unique across all schemas."),
    Setting("TRELLIS_RESET_MINUTES", "RESET_MINUTES", _int_range(5, 1440), 30,
            "How long a password reset link works."),
    Setting("TRELLIS_VERIFY_HOURS", "VERIFY_HOURS", _int_range(1, 168), 24,
            "How long an email verification link (registration) works."),
    Setting("TRELLIS_PRIVACY_VERSION", "PRIVACY_VERSION", _text, "1",
            "Version of the privacy notice. People who acknowledged an older version are "
            "asked to read the new one at their next sign-in (recorded in the consent "
            "ledger)."),
    Setting("TRELLIS_PRIVACY_URL", "PRIVACY_URL", _base_url, "",
            "Where the privacy notice is published."),
    Setting("TRELLIS_RECENT_SIGN_IN_MINUTES", "RECENT_SIGN_IN_MINUTES", _int_range(1, 120), 10,
            "A sign-in this recent stands in for the current password when changing the "
            "password, and confirms an account deletion for people without a password."),
    Setting("TRELLIS_ERASURE_GRACE_DAYS", "ERASURE_GRACE_DAYS", _int_range(0, 365), 14,
            "Days between a deletion request and the erasure (by `trellis worker`); signing "
            "in during them cancels the deletion."),
    Setting("TRELLIS_AUDIT_PSEUDONYM_KEY", "AUDIT_PSEUDONYM_KEY", _text, "",
            "Key of the keyed hash (HMAC-SHA256) that replaces an erased person's email in "
            "audit events. Empty derives it from `SECRET_KEY`; set it to keep pseudonyms "
            "stable when `SECRET_KEY` is rotated."),
    Setting("TRELLIS_SIGN_IN_HISTORY_DAYS", "SIGN_IN_HISTORY_DAYS", _int_range(1, 3650), 90,
            "After this many days, sign-in events in the audit trail lose their IP address "
            "and browser (the events themselves are kept)."),
    Setting("TRELLIS_SESSION_RETENTION_DAYS", "SESSION_RETENTION_DAYS", _int_range(1, 3650),
            30, "Ended (signed out or expired) sessions are deleted this many days later."),
    Setting("TRELLIS_OUTBOX_RETENTION_DAYS", "OUTBOX_RETENTION_DAYS", _int_range(1, 3650), 30,
            "Sent and failed emails are deleted from the outbox this many days after they "
            "were written."),
    Setting("TRELLIS_LOG_FORMAT", "LOG_FORMAT", _choice("text", "json"), "text",
            "`json` writes one JSON object per log line."),
    Setting("TRELLIS_LOG_LEVEL", "LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR"),
            "INFO", "Log level."),
)


def load_settings(environ: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read every declared setting; overrides (already typed) win over the environment."""
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.key in overrides:
            values[setting.key] = overrides.pop(setting.key)
            continue
        raw = environ.get(setting.env)
        if raw is None or raw == "":
            values[setting.key] = setting.default
            continue
        try:
            values[setting.key] = setting.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{setting.env}: {exc}") from None
    values.update(overrides)  # non-declared Flask settings, e.g. TESTING
    _derive(values)
    return values


def _derive(values: dict[str, Any]) -> None:
    production = values["ENV"] == "production"
    instance = Path(values["INSTANCE_PATH"])
    if values["DATABASE_URL"] is None:
        values["DATABASE_URL"] = f"sqlite:///{instance / 'trellis.db'}"
    if values["COOKIE_SECURE"] is None:
        values["COOKIE_SECURE"] = production
    if production and not values["COOKIE_SECURE"]:
        raise ConfigError("TRELLIS_COOKIE_SECURE: cannot be off when TRELLIS_ENV=production")
    if values["SECRET_KEY"] is None:
        if production:
            raise ConfigError("SECRET_KEY: required when TRELLIS_ENV=production")
        values["SECRET_KEY"] = _development_secret(instance)
    if values["ENCRYPTION_KEYS"] is None:
        if production:
            raise ConfigError("TRELLIS_ENCRYPTION_KEYS: required when TRELLIS_ENV=production")
        values["ENCRYPTION_KEYS"] = _development_encryption_keys(instance)
    if values["SMTP_USER"] and values["SMTP_SECURITY"] == "none":
        raise ConfigError("TRELLIS_SMTP_SECURITY: `none` would send the SMTP password in "
                          "clear; use starttls or tls")
    if values["RISK_DENY_AT"] <= values["RISK_STEP_UP_AT"]:
        raise ConfigError("TRELLIS_RISK_DENY_AT: must be above TRELLIS_RISK_STEP_UP_AT")
    if values["LOCKOUT_MAX_SECONDS"] < values["LOCKOUT_SECONDS"]:
        raise ConfigError("TRELLIS_LOCKOUT_MAX_SECONDS: must not be below TRELLIS_LOCKOUT_SECONDS")


def _development_secret(instance: Path) -> str:
    """Generate the key once so sessions survive restarts, without a constant in code."""
    return _generated_file(instance / "secret_key", lambda: secrets.token_urlsafe(48))


def _development_encryption_keys(instance: Path) -> tuple[str, ...]:
    from cryptography.fernet import Fernet
    raw = _generated_file(instance / "encryption_keys", lambda: Fernet.generate_key().decode())
    return _fernet_keys(raw)


def _generated_file(path: Path, make: Callable[[], str]) -> str:
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value


def settings_table() -> str:
    """The README's configuration table, generated so it cannot drift from the code."""
    rows = ["| Variable | Default | What it does |", "|---|---|---|"]
    for setting in SETTINGS:
        default = setting.default
        if setting.key in ("INSTANCE_PATH", "POLICY_DIR"):
            default = Path(default).name
        if setting.key in ("CONSENT_PURPOSES", "PROFILE_SCHEMA"):
            default = f"portal/{Path(default).name}"
        shown = "—" if default in (None, "", ()) else f"`{default}`"
        rows.append(f"| `{setting.env}` | {shown} | {setting.doc} |")
    return "\n".join(rows)
