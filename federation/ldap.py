"""LDAP and Active Directory: sign-in by bind, directory reads for sync, connection tests.

Sign-in: the typed name is looked up with the connection's service account (the value
escaped for LDAP filters, so it can only ever match literally), then Trellis binds as the one
entry found with the typed password. An empty password is refused before any bind: a simple
bind with a DN and no password is an *unauthenticated* bind that servers answer with
success. The account is linked by the entry's stable id (``entryUUID`` or ``objectGUID``),
never by its DN, which changes when the entry is moved or renamed.

Transport: ``ldaps://`` URLs, or ``ldap://`` with StartTLS, and the server certificate is
always verified (against the connection's own CA certificate when it has one). Plain LDAP
only when the connection explicitly allows it; such connections are flagged as insecure.
Several URLs form a pool: the first that answers serves the request.

Nothing here imports Flask: the portal hands in ``LdapSettings`` as plain data.
"""

from __future__ import annotations

import contextlib
import math
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ldap3 import SIMPLE, SUBTREE, Connection, Server, Tls
from ldap3.core import exceptions as ldap_errors
from ldap3.strategy import sync as sync_strategy
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn

from federation import ldap_ber
from federation.errors import FederationError
from federation.identity import AuthContext, ExternalIdentity, canonical_email

INVALID = "The email or password is not correct."
UNREACHABLE = ("Your organization's directory could not be reached. Try again in a few "
               "minutes, and if it keeps happening tell your administrator.")
MAX_LOGIN_LENGTH = 256
MAX_GROUP_DEPTH = 10
MAX_GROUPS = 1000
DOWN_SECONDS = 60  # a server that failed is tried after the others for this long
AD_IN_CHAIN = "1.2.840.113556.1.4.1941"  # LDAP_MATCHING_RULE_IN_CHAIN
AD_DISABLED_BIT = 2  # userAccountControl ACCOUNTDISABLE

PRESETS: dict[str, dict[str, Any]] = {
    "openldap": {
        "user_filter": "(objectClass=inetOrgPerson)",
        "login_attributes": ("uid", "mail"),
        "group_filter": "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))",
        "group_member_attribute": "member",
        "nested_groups": "recursive",
        "attributes": {"subject": "entryUUID", "username": "uid", "email": "mail",
                       "given_name": "givenName", "family_name": "sn", "display_name": "cn"},
    },
    "ad": {
        "user_filter": "(&(objectCategory=person)(objectClass=user))",
        "login_attributes": ("sAMAccountName", "userPrincipalName", "mail"),
        "group_filter": "(objectClass=group)",
        "group_member_attribute": "member",
        "nested_groups": "ad",
        "attributes": {"subject": "objectGUID", "username": "sAMAccountName", "email": "mail",
                       "given_name": "givenName", "family_name": "sn",
                       "display_name": "displayName"},
    },
}
MAPPED_FIELDS = ("subject", "username", "email", "given_name", "family_name", "display_name")

# Trellis reads only raw (bytes) values and matches attribute names without case itself, so
SEARCH_ENTRY = 4  # protocolOp of an LDAP searchResEntry


def install_fast_entry_decoder() -> None:
    """Search entries are decoded by ``ldap_ber`` (same result, about three times faster).

    ldap3's synchronous strategy calls its module-level decoder for every message; wrapping
    it there is the one place it can be changed, and the wrapper returns exactly what ldap3's
    own decoder would, so every connection in the process may share it."""
    if not hasattr(sync_strategy.decode_message_fast, "generic"):
        sync_strategy.decode_message_fast = ldap_ber.with_fast_entries(
            sync_strategy.decode_message_fast)


install_fast_entry_decoder()


def _decode_entries_raw(connection: Connection) -> Connection:
    """Search entries come back as their DN and raw bytes only.

    ldap3 decodes every entry twice, as raw bytes and as formatted values with per-value
    configuration look-ups; Trellis reads only the raw bytes, and on a directory sync the
    second decoding was a third of the time. ``attributes`` stays a separate copy with the
    same keys because ldap3's AD range retrieval appends to both."""
    generic = connection.strategy.decode_response_fast

    def decode(message: dict[str, Any]) -> dict[str, Any]:
        if message["protocolOp"] != SEARCH_ENTRY:
            return generic(message)
        dn, attributes = message["payload"][0][3], message["payload"][1][3]
        raw = {bytes(a[3][0][3]).decode("utf-8", "replace"): [bytes(v[3]) for v in a[3][1][3]]
               for a in attributes}
        return {"type": "searchResEntry", "raw_dn": dn,
                "dn": bytes(dn).decode("utf-8", "replace"), "raw_attributes": raw,
                "attributes": {name: list(values) for name, values in raw.items()}}

    connection.strategy.decode_response_fast = decode
    return connection

# Active Directory puts a sub-code in the diagnostic message of a failed bind ("... data 775,").
AD_SUBCODES: dict[str, tuple[str, str]] = {
    "525": ("unknown_user", INVALID),
    "52e": ("wrong_password", INVALID),
    "530": ("logon_hours", "Your directory account may not sign in at this time of day. "
            "Contact your administrator."),
    "531": ("logon_workstation", "Your directory account may not sign in from here. "
            "Contact your administrator."),
    "532": ("password_expired", "Your directory password has expired. Change it the way your "
            "organization usually does, then sign in again."),
    "533": ("account_disabled", "Your directory account is disabled. Contact your "
            "administrator."),
    "701": ("account_expired", "Your directory account has expired. Contact your "
            "administrator."),
    "773": ("password_must_change", "You must change your directory password before you can "
            "sign in. Change it the way your organization usually does, then sign in again."),
    "775": ("account_locked", "Your directory account is locked. Wait, or ask your "
            "administrator to unlock it."),
}
AD_SUBCODE = re.compile(r"\bdata ([0-9a-fA-F]{3,4})\b")
# Failures that mean "these credentials are wrong": counted by the sign-in throttle.
CREDENTIAL_FAILURES = frozenset({"wrong_password", "unknown_user", "empty_password",
                                 "invalid_login"})


@dataclass(frozen=True)
class LdapSettings:
    """One connection's directory settings as plain data (built by the portal)."""

    connection_id: int
    urls: tuple[str, ...]
    bind_dn: str
    bind_password: str
    user_base: str
    user_filter: str = PRESETS["openldap"]["user_filter"]
    login_attributes: tuple[str, ...] = ("uid", "mail")
    group_base: str = ""
    group_filter: str = PRESETS["openldap"]["group_filter"]
    group_member_attribute: str = "member"
    group_name_attribute: str = "cn"
    nested_groups: str = "recursive"  # "none", "recursive" or "ad"
    attributes: dict[str, str] = field(default_factory=lambda: dict(
        PRESETS["openldap"]["attributes"]))
    disabled_attribute: str = ""  # entry disabled when it holds one of disabled_values
    disabled_values: tuple[str, ...] = ()
    start_tls: bool = True  # for ldap:// URLs
    allow_plain: bool = False
    ca_cert_pem: str = ""
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    page_size: int = 500
    emails_verified: bool = True  # the organization administers its directory's emails
    directory: str = "openldap"  # "openldap" or "ad"

    def attribute(self, name: str) -> str:
        return self.attributes.get(name) or PRESETS[self.directory]["attributes"].get(name, "")

    @property
    def insecure(self) -> bool:
        return any(_scheme(url) == "ldap" for url in self.urls) and (
            self.allow_plain and not self.start_tls)


@dataclass(frozen=True)
class DirectoryEntry:
    """A user entry read from the directory, mapped (or the reason it could not be)."""

    dn: str
    identity: ExternalIdentity | None
    disabled: bool = False
    problem: str = ""


@dataclass
class ConnectionReport:
    """What a connection test found (for the admin page and the CLI)."""

    ok: bool
    server: str = ""
    tls: str = ""
    users: int = 0
    groups: int = 0
    sample: ExternalIdentity | None = None
    sample_dn: str = ""
    error: FederationError | None = None
    warnings: list[str] = field(default_factory=list)


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.lower()


def _fail(code: str, detail: str, message: str = UNREACHABLE,
          status: int = 503) -> FederationError:
    return FederationError(code, message, detail, status=status)


def ad_subcode(message: str) -> str | None:
    """The sub-code of an Active Directory bind failure (``data 775`` -> ``775``)."""
    found = AD_SUBCODE.search(message or "")
    return found.group(1).lower() if found else None


def bind_failure(result: dict[str, Any]) -> FederationError:
    """Turn a failed user bind's result into a refusal with a plain message."""
    message = str(result.get("message", ""))
    sub = ad_subcode(message)
    if sub in AD_SUBCODES:
        code, text = AD_SUBCODES[sub]
        return FederationError(code, text, f"bind refused: {message[:200]}", status=401)
    description = str(result.get("description", ""))
    return FederationError("wrong_password", INVALID,
                           f"bind refused: {description} {message[:200]}".strip(), status=401)


class LdapAdapter:
    """One per process. Every call opens its own connections and closes them; the adapter
    only remembers which servers failed lately, so failover does not wait on them again."""

    def __init__(self, connection_factory: Callable[..., Connection] = Connection,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._connection = connection_factory
        self.clock = clock
        self._lock = threading.Lock()
        self._down: dict[str, float] = {}

    # -- transport ------------------------------------------------------------------------

    def _servers(self, settings: LdapSettings) -> list[tuple[str, Server]]:
        if not settings.urls:
            raise _fail("misconfigured", "the connection has no server URL", status=500)
        servers = []
        for url in settings.urls:
            scheme = _scheme(url)
            if scheme not in ("ldap", "ldaps"):
                raise _fail("misconfigured", f"unsupported URL scheme in {url!r}", status=500)
            if scheme == "ldap" and not settings.start_tls and not settings.allow_plain:
                raise _fail("insecure_refused", f"{url} is plain LDAP without StartTLS and the "
                            "connection does not allow plain LDAP", status=500)
            parts = urlsplit(url)
            tls = None
            if scheme == "ldaps" or settings.start_tls:
                tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_data=settings.ca_cert_pem or None,
                          sni=parts.hostname)
            port = parts.port or (636 if scheme == "ldaps" else 389)
            servers.append((url, Server(parts.hostname, port=port, use_ssl=scheme == "ldaps",
                                        tls=tls, get_info="NO_INFO",
                                        connect_timeout=settings.connect_timeout)))
        return servers

    def _in_order(self, servers: list[tuple[str, Server]]) -> list[tuple[str, Server]]:
        """Failover order: servers that failed in the last minute go last (not away)."""
        now = self.clock()
        with self._lock:
            return sorted(servers, key=lambda item: self._down.get(item[0], 0) > now)

    def _mark(self, url: str, down: bool) -> None:
        with self._lock:
            if down:
                self._down[url] = self.clock() + DOWN_SECONDS
            else:
                self._down.pop(url, None)

    def _open(self, settings: LdapSettings, user: str | None, password: str | None,
              what: str) -> Connection:
        """Connect to the first server that answers, secure (StartTLS) and bind.

        A server that cannot be reached or secured is skipped for the next one; a refused
        bind is an answer, so it is not retried elsewhere."""
        options: dict[str, Any] = {"user": user, "password": password,
                                   "authentication": SIMPLE} if user else {}
        errors: list[FederationError] = []
        for url, server in self._in_order(self._servers(settings)):
            connection = _decode_entries_raw(self._connection(
                server, receive_timeout=max(1, math.ceil(settings.read_timeout)),
                raise_exceptions=False, auto_bind="NONE", read_only=True, auto_range=True,
                **options))
            try:
                connection.open()
                if settings.start_tls and not connection.server.ssl and \
                        not connection.start_tls():
                    raise _fail("tls_failed", f"StartTLS refused by {url}: {connection.result}")
            except FederationError as error:
                close_quietly(connection)
                errors.append(error)
                self._mark(url, True)
                continue
            except ldap_errors.LDAPException as exc:
                close_quietly(connection)
                errors.append(transport_error(exc, url))
                self._mark(url, True)
                continue
            self._mark(url, False)
            return self._bind(connection, user, what)
        # Name the most telling failure: an untrusted certificate beats "unreachable".
        errors.sort(key=lambda error: error.code != "tls_untrusted")
        raise errors[0]

    def _bind(self, connection: Connection, user: str | None, what: str) -> Connection:
        if user is None:
            return connection
        try:
            bound = connection.bind()
        except ldap_errors.LDAPException as exc:
            close_quietly(connection)
            raise transport_error(exc) from None
        if not bound:
            result = connection.result or {}
            close_quietly(connection)
            raise_for_bind(what, result)
        return connection

    def service_connection(self, settings: LdapSettings) -> Connection:
        return self._open(settings, settings.bind_dn, settings.bind_password, "service")

    # -- sign-in --------------------------------------------------------------------------

    def authenticate(self, settings: LdapSettings, login: str, password: str) -> ExternalIdentity:
        """Find the entry for ``login`` and bind as it with ``password``."""
        if not password:
            raise FederationError("empty_password", INVALID, "empty password refused "
                                  "before any bind", status=401)
        login = (login or "").strip()
        if not login or len(login) > MAX_LOGIN_LENGTH:
            raise FederationError("invalid_login", INVALID, "empty or overlong name",
                                  status=401)
        service = self.service_connection(settings)
        try:
            dn, raw = self._find_user(service, settings, login)
            self._bind_as(settings, dn, password)
            groups = self.groups_of(service, settings, dn)
        finally:
            close_quietly(service)
        entry = map_entry(settings, dn, decode_raw(raw), groups)
        if entry.problem:
            raise FederationError("attribute_missing", "Your directory entry lacks something "
                                  "this portal needs. Tell your administrator.",
                                  f"{dn}: {entry.problem}", status=403)
        if entry.disabled:
            raise FederationError("account_disabled", AD_SUBCODES["533"][1],
                                  f"{dn} is disabled in the directory", status=403)
        return entry.identity

    def _find_user(self, service: Connection, settings: LdapSettings,
                   login: str) -> tuple[str, dict[str, list[bytes]]]:
        value = escape_filter_chars(login)
        alternatives = "".join(f"({name}={value})" for name in settings.login_attributes)
        query = f"(&{settings.user_filter}(|{alternatives}))"
        entries = self._search(service, settings.user_base, query,
                               self._user_attributes(settings), size_limit=2)
        if not entries:
            raise FederationError("unknown_user", INVALID, f"no entry matches {login!r}",
                                  status=401)
        if len(entries) > 1:
            raise FederationError(
                "ambiguous_user", "More than one account in your organization's directory "
                "matches this name, so the portal cannot tell which is yours. Sign in with "
                "your username, or ask your administrator to fix the directory.",
                f"{len(entries)}+ entries match {login!r}", status=409)
        return entries[0]["dn"], entries[0]["raw_attributes"]

    def _bind_as(self, settings: LdapSettings, dn: str, password: str) -> None:
        user = self._open(settings, dn, password, "user")
        close_quietly(user)

    def _search(self, connection: Connection, base: str, query: str,
                attributes: list[str], size_limit: int = 0,
                scope: str = SUBTREE) -> list[dict[str, Any]]:
        try:
            ok = connection.search(base, query, scope, attributes=attributes,
                                   size_limit=size_limit)
        except ldap_errors.LDAPException as exc:
            raise transport_error(exc) from None
        result = connection.result or {}
        # sizeLimitExceeded (4) still returns the entries found so far.
        if not ok and result.get("result") not in (0, 4, 32):
            raise _fail("search_failed", f"search under {base!r} failed: "
                        f"{result.get('description')} {result.get('message', '')[:200]}")
        return [entry for entry in connection.response or [] if entry.get("type") ==
                "searchResEntry"]

    def _user_attributes(self, settings: LdapSettings) -> list[str]:
        names = {settings.attribute(name) for name in MAPPED_FIELDS}
        if settings.directory == "ad":
            names.add("userAccountControl")
        if settings.disabled_attribute:
            names.add(settings.disabled_attribute)
        return sorted(name for name in names if name)

    # -- groups ---------------------------------------------------------------------------

    def groups_of(self, service: Connection, settings: LdapSettings, dn: str) -> tuple[str, ...]:
        """The names of every group the entry belongs to, directly or through other groups."""
        if not settings.group_base or settings.nested_groups not in ("none", "recursive", "ad"):
            return ()
        member = settings.group_member_attribute
        name_attr = settings.group_name_attribute
        if settings.nested_groups == "ad":
            query = f"(&{settings.group_filter}({member}:{AD_IN_CHAIN}:={escape_filter_chars(dn)}))"
            found = self._search(service, settings.group_base, query, [name_attr])
            return tuple(sorted({_first(_get(e["raw_attributes"], name_attr)) for e in found}
                                - {""}))
        names: set[str] = set()
        seen: set[str] = set()
        frontier = [dn]
        for _depth in range(MAX_GROUP_DEPTH if settings.nested_groups == "recursive" else 1):
            if not frontier or len(seen) >= MAX_GROUPS:
                break
            alternatives = "".join(f"({member}={escape_filter_chars(d)})" for d in frontier)
            query = f"(&{settings.group_filter}(|{alternatives}))"
            frontier = []
            for entry in self._search(service, settings.group_base, query, [name_attr]):
                key = entry["dn"].lower()
                if key in seen:
                    continue  # a cycle, or a group reached twice
                seen.add(key)
                frontier.append(entry["dn"])
                names.add(_first(_get(entry["raw_attributes"], name_attr)))
        return tuple(sorted(names - {""}))

    # -- whole-directory reads (sync) -----------------------------------------------------

    def iter_users(self, service: Connection, settings: LdapSettings
                   ) -> Iterator[list[tuple[str, dict[str, Any]]]]:
        """Every user entry, one page at a time (the directory is never held whole)."""
        yield from self._paged(service, settings.user_base, settings.user_filter,
                               self._user_attributes(settings), settings.page_size)

    def iter_groups(self, service: Connection, settings: LdapSettings
                    ) -> Iterator[list[tuple[str, dict[str, Any]]]]:
        if not settings.group_base:
            return
        yield from self._paged(service, settings.group_base, settings.group_filter,
                               [settings.group_name_attribute,
                                settings.group_member_attribute], settings.page_size)

    def _paged(self, connection: Connection, base: str, query: str, attributes: list[str],
               page_size: int) -> Iterator[list[tuple[str, dict[str, Any]]]]:
        cookie: bytes | None = None
        while True:
            try:
                connection.search(base, query, SUBTREE, attributes=attributes,
                                  paged_size=page_size, paged_cookie=cookie)
            except ldap_errors.LDAPException as exc:
                raise transport_error(exc) from None
            result = connection.result or {}
            if result.get("result") not in (0, 32):
                raise _fail("search_failed", f"paged search under {base!r} failed: "
                            f"{result.get('description')} {result.get('message', '')[:200]}")
            page = [(entry["dn"], entry["raw_attributes"]) for entry in connection.response
                    or [] if entry.get("type") == "searchResEntry"]
            if page:
                yield page
            controls = result.get("controls", {}).get("1.2.840.113556.1.4.319", {})
            cookie = controls.get("value", {}).get("cookie")
            if not cookie:
                return

    # -- connection test ------------------------------------------------------------------

    def test(self, settings: LdapSettings, sample_login: str = "") -> ConnectionReport:
        """Bind with the service account, count users and groups, map one sample user."""
        report = ConnectionReport(ok=False)
        if settings.insecure:
            report.warnings.append("Plain LDAP without TLS: passwords cross the network "
                                   "readable by anyone on the path.")
        try:
            service = self.service_connection(settings)
        except FederationError as error:
            report.error = error
            return report
        try:
            report.server = f"{service.server.host}:{service.server.port}"
            report.tls = ("LDAPS" if service.server.ssl else "StartTLS" if service.tls_started
                          else "none")
            sample = None
            for page in self.iter_users(service, settings):
                report.users += len(page)
                sample = sample or page[0]
            for page in self.iter_groups(service, settings):
                report.groups += len(page)
            if sample_login:
                sample = self._find_user(service, settings, sample_login)
            if sample is not None:
                dn, raw = sample
                entry = map_entry(settings, dn, decode_raw(raw),
                                  self.groups_of(service, settings, dn))
                report.sample, report.sample_dn = entry.identity, dn
                if entry.problem:
                    report.warnings.append(f"Sample entry {dn}: {entry.problem}")
            report.ok = True
        except FederationError as error:
            report.error = error
        finally:
            close_quietly(service)
        return report


def raise_for_bind(what: str, result: dict[str, Any]) -> None:
    if what == "service":
        raise FederationError(
            "service_bind_failed", UNREACHABLE,
            f"the service account's bind was refused: {result.get('description')} "
            f"{str(result.get('message', ''))[:200]}".strip(), status=503)
    raise bind_failure(result)


def transport_error(exc: Exception, url: str = "") -> FederationError:
    text = f"{url}: {exc}" if url else str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text or \
            isinstance(exc, ldap_errors.LDAPCertificateError) or "hostname" in text.lower():
        return _fail("tls_untrusted", f"the directory's TLS certificate is not trusted: "
                     f"{text[:300]}")
    if isinstance(exc, ldap_errors.LDAPResponseTimeoutError | ldap_errors.LDAPSocketReceiveError):
        return _fail("directory_timeout", f"the directory did not answer in time: {text[:300]}")
    if "timed out" in text.lower():
        return _fail("directory_timeout", f"the directory did not answer in time: {text[:300]}")
    return _fail("directory_unreachable", f"{type(exc).__name__}: {text[:300]}")


def close_quietly(connection: Connection) -> None:
    with contextlib.suppress(ldap_errors.LDAPException, OSError):
        connection.unbind()


def _first(value: Any) -> str:
    if isinstance(value, list | tuple):
        value = value[0] if value else ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def decode_raw(raw: dict[str, list[bytes]]) -> dict[str, Any]:
    """Raw (bytes) attribute values as the mapping takes them; objectGUID stays bytes."""
    decoded: dict[str, Any] = {}
    for name, values in raw.items():
        if name.lower() == "objectguid":
            decoded[name] = list(values)
        else:
            decoded[name] = [v.decode("utf-8", "replace") for v in values]
    return decoded


def _get(attributes: dict[str, Any], name: str) -> Any:
    if not name:
        return None
    if name in attributes:
        return attributes[name]
    lower = name.lower()
    for key, value in attributes.items():
        if key.lower() == lower:
            return value
    return None


def stable_id(name: str, value: Any) -> str:
    """The entry's id as a string: objectGUID's 16 bytes (little-endian GUID) as a UUID."""
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if value is None or value == "":
        return ""
    if name.lower() == "objectguid":
        if isinstance(value, str):
            return str(uuid.UUID(value))
        if len(value) != 16:
            return ""
        return str(uuid.UUID(bytes_le=bytes(value)))
    return value.decode() if isinstance(value, bytes) else str(value).lower()


def is_disabled(settings: LdapSettings, attributes: dict[str, Any]) -> bool:
    if settings.directory == "ad":
        control = _first(_get(attributes, "userAccountControl"))
        if control.isdigit() and int(control) & AD_DISABLED_BIT:
            return True
    if settings.disabled_attribute:
        values = _get(attributes, settings.disabled_attribute) or []
        values = values if isinstance(values, list | tuple) else [values]
        wanted = {v.lower() for v in settings.disabled_values}
        return any(_first(v).lower() in wanted for v in values)
    return False


def map_entry(settings: LdapSettings, dn: str, attributes: dict[str, Any],
              groups: tuple[str, ...]) -> DirectoryEntry:
    """Build the identity of one entry; ``problem`` says which attribute is missing."""
    subject_name = settings.attribute("subject")
    subject = stable_id(subject_name, _get(attributes, subject_name))
    if not subject:
        return DirectoryEntry(dn, None, problem=f"no {subject_name} (the stable id)")
    email = canonical_email(_first(_get(attributes, settings.attribute("email")))) or None
    claims = {"dn": dn, "username": _first(_get(attributes, settings.attribute("username"))),
              "subject_attribute": subject_name}
    identity = ExternalIdentity(
        connection_id=settings.connection_id, issuer=f"ldap:{settings.connection_id}",
        subject=subject, email=email, email_verified=bool(email) and settings.emails_verified,
        given_name=_first(_get(attributes, settings.attribute("given_name")))[:100],
        family_name=_first(_get(attributes, settings.attribute("family_name")))[:100],
        display_name=_first(_get(attributes, settings.attribute("display_name")))[:200],
        groups=groups, claims=claims, auth=AuthContext(amr=("pwd",)))
    problem = "" if email else f"no {settings.attribute('email')} (the email address)"
    return DirectoryEntry(dn, identity, disabled=is_disabled(settings, attributes),
                          problem=problem)


def dn_key(dn: str) -> str:
    """A DN in a form that compares equal however the directory spelled it."""
    try:
        return ",".join(f"{attr.lower()}={value.lower()}" for attr, value, _sep
                        in parse_dn(dn, escape=False, strip=True))
    except ldap_errors.LDAPException:
        return dn.lower()

