"""Outbound HTTP with connect/read timeouts and a size cap on every response, so a slow or
hostile IdP can neither hang a worker nor fill its memory.

The standard library's ``http.client`` over kept-alive connections: a federated sign-in makes
two calls to the IdP, and urllib3 (requests even more) spent twice the CPU of the exchange
itself on building pools, keys and response wrappers for each. TLS is the standard library's
default context (system CAs, host names checked); HTTPS_PROXY and NO_PROXY are honoured.
"""

from __future__ import annotations

import base64
import functools
import http.client
import ipaddress
import json
import select
import ssl
import threading
import urllib.request
from typing import Any
from urllib.parse import urlencode, urlsplit

from federation.errors import FederationError

CONNECT_TIMEOUT = 3.05
READ_TIMEOUT = 10.0
MAX_BYTES = 512 * 1024
USER_AGENT = "Trellis-Federation/0.1"
IDLE_PER_HOST = 8
TLS = ssl.create_default_context()  # replaced by tests that trust their own CA


def _https_proxy() -> tuple[str, int] | None:
    """HTTPS_PROXY, read once at start."""
    proxy = urllib.request.getproxies().get("https")
    if not proxy:
        return None
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return parts.hostname or "", parts.port or 3128


_PROXY = _https_proxy()


@functools.lru_cache(maxsize=1024)
def _bypasses_proxy(host: str) -> bool:
    """NO_PROXY, decided once per host: the standard library reads the whole environment on
    every call, which was a tenth of the CPU of a federated sign-in."""
    return bool(urllib.request.proxy_bypass(host)) or _is_loopback(host)


class _IdleConnections:
    """Kept-alive connections per (scheme, host, port). A connection is taken out while a
    thread uses it and given back only after a complete, reusable answer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}

    def take(self, key: tuple[str, str, int]) -> http.client.HTTPConnection | None:
        with self._lock:
            pool = self._idle.get(key)
            connection = pool.pop() if pool else None
        if connection is not None and _closed_by_peer(connection):
            connection.close()
            return None
        return connection

    def give(self, key: tuple[str, str, int], connection: http.client.HTTPConnection) -> None:
        with self._lock:
            pool = self._idle.setdefault(key, [])
            if len(pool) < IDLE_PER_HOST:
                pool.append(connection)
                return
        connection.close()


_IDLE = _IdleConnections()


def _closed_by_peer(connection: http.client.HTTPConnection) -> bool:
    """An idle connection has nothing to read unless the server closed it (or sent junk)."""
    if connection.sock is None:
        return True
    try:
        return bool(select.select([connection.sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _open(scheme: str, host: str, port: int, connect: float) -> http.client.HTTPConnection:
    if scheme == "https":
        if _PROXY is not None and not _bypasses_proxy(host):
            connection = http.client.HTTPSConnection(*_PROXY, timeout=connect, context=TLS)
            connection.set_tunnel(host, port)
        else:
            connection = http.client.HTTPSConnection(host, port, timeout=connect, context=TLS)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=connect)
    connection.connect()
    return connection


def check_url(url: str, *, allow_insecure_loopback: bool, what: str) -> str:
    """HTTPS only; plain HTTP only to a loopback address (development and tests)."""
    parts = urlsplit(url or "")
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and allow_insecure_loopback and _is_loopback(parts.hostname):
        return url
    raise FederationError("insecure_url", "The identity provider is not configured correctly.",
                          f"{what} must be an https:// URL, got {url!r}")


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def fetch_json(url: str, *, method: str = "GET", what: str, data: dict | None = None,
               headers: dict[str, str] | None = None, auth: tuple[str, str] | None = None,
               timeout: tuple[float, float] | None = None,
               max_bytes: int = MAX_BYTES, ok_statuses: tuple[int, ...] = (200,)
               ) -> dict[str, Any]:
    """GET or POST (form-encoded) and parse a JSON object; every failure is a
    ``FederationError``."""
    raw = fetch_bytes(url, method=method, what=what, data=data, headers=headers, auth=auth,
                      timeout=timeout, max_bytes=max_bytes, ok_statuses=ok_statuses)
    try:
        document = json.loads(raw)
    except ValueError:
        raise FederationError("idp_bad_response", "Your organization's identity provider "
                              "sent an answer we could not read.",
                              f"{what}: not JSON: {raw[:200]!r}", status=502) from None
    if not isinstance(document, dict):
        raise FederationError("idp_bad_response", "Your organization's identity provider "
                              "sent an answer we could not read.",
                              f"{what}: JSON is not an object", status=502)
    return document


def fetch_bytes(url: str, *, method: str = "GET", what: str, data: dict | None = None,
                headers: dict[str, str] | None = None, auth: tuple[str, str] | None = None,
                timeout: tuple[float, float] | None = None,
                max_bytes: int = MAX_BYTES, ok_statuses: tuple[int, ...] = (200,)) -> bytes:
    """GET or POST (form-encoded) with timeouts, no redirects and a size cap; every failure is
    a ``FederationError``."""
    connect, read = timeout or (CONNECT_TIMEOUT, READ_TIMEOUT)
    headers = {"User-Agent": USER_AGENT, **(headers or {})}
    body = None
    if data is not None:
        body = urlencode(data)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if auth is not None:
        pair = f"{auth[0]}:{auth[1]}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FederationError("insecure_url", "The identity provider is not configured "
                              "correctly.", f"{what}: cannot fetch {url!r}")
    key = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        status, raw = _exchange(key, connect, read, method, target, body, headers, max_bytes,
                                what)
    except TimeoutError:
        raise FederationError("idp_timeout", "Your organization's identity provider did not "
                              "answer in time. Try again in a moment.",
                              f"{what}: timeout at {url}", status=502) from None
    except (OSError, http.client.HTTPException) as exc:
        raise FederationError("idp_unreachable", "Your organization's identity provider "
                              "could not be reached. Try again in a moment.",
                              f"{what}: {exc!r}", status=502) from None
    if status not in ok_statuses:
        raise FederationError("idp_bad_response", "Your organization's identity provider "
                              "answered with an error.",
                              f"{what}: HTTP {status}: {raw[:300]!r}", status=502)
    return raw


def _exchange(key: tuple[str, str, int], connect: float, read: float, method: str,
              target: str, body: str | None, headers: dict[str, str], max_bytes: int,
              what: str) -> tuple[int, bytes]:
    """One request and its answer, on a kept-alive connection when there is one. A kept
    connection the server dropped meanwhile is replaced once, before any answer was read."""
    connection = _IDLE.take(key)
    reused = connection is not None
    while True:
        if connection is None:
            connection = _open(*key, connect)
        try:
            connection.sock.settimeout(read)
            connection.request(method, target, body=body, headers=headers)
            response = connection.getresponse()
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            connection.close()
            if not reused:
                raise
            connection, reused = None, False
            continue
        except BaseException:
            connection.close()
            raise
        try:
            raw = _read_capped(response, max_bytes, what)
        except BaseException:
            connection.close()
            raise
        if response.will_close:
            connection.close()
        else:
            _IDLE.give(key, connection)
        return response.status, raw


def _read_capped(response: http.client.HTTPResponse, max_bytes: int, what: str) -> bytes:
    declared = response.getheader("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(what, f"Content-Length {declared} > {max_bytes}")
    chunks, size = [], 0
    while chunk := response.read(65536):
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(what, f"more than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(what: str, detail: str) -> FederationError:
    return FederationError("idp_response_too_large", "Your organization's identity provider "
                           "sent an answer that is too large.", f"{what}: {detail}", status=502)
