"""Outbound HTTP with connect/read timeouts and a size cap on every response, so a slow or
hostile IdP can neither hang a worker nor fill its memory."""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import urllib.request
from typing import Any
from urllib.parse import urlencode, urlsplit

import urllib3

from federation.errors import FederationError

CONNECT_TIMEOUT = 3.05
READ_TIMEOUT = 10.0
MAX_BYTES = 512 * 1024
USER_AGENT = "Trellis-Federation/0.1"


def _pool_manager() -> urllib3.PoolManager:
    """urllib3 directly: requests re-reads proxy settings and rebuilds much of each request
    on every call, which costs more CPU per sign-in than the whole ID-token check. Proxy
    settings (HTTPS_PROXY, NO_PROXY) are read once at start."""
    proxy = urllib.request.getproxies().get("https")
    options = {"retries": False, "headers": {"User-Agent": USER_AGENT}}
    return urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)


_pool = _pool_manager()
_direct = urllib3.PoolManager(retries=False, headers={"User-Agent": USER_AGENT})


@functools.lru_cache(maxsize=1024)
def _bypasses_proxy(host: str) -> bool:
    """NO_PROXY, decided once per host: the standard library reads the whole environment on
    every call, which was a tenth of the CPU of a federated sign-in."""
    return bool(urllib.request.proxy_bypass(host)) or _is_loopback(host)


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
    headers = dict(headers or {})
    body = None
    if data is not None:
        body = urlencode(data)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if auth is not None:
        pair = f"{auth[0]}:{auth[1]}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    host = urlsplit(url).hostname or ""
    pool = _direct if _bypasses_proxy(host) else _pool
    try:
        response = pool.request(method, url, body=body, headers=headers, redirect=False,
                                preload_content=False,
                                timeout=urllib3.Timeout(connect=connect, read=read))
        try:
            raw = _read_capped(response, max_bytes, what)
        finally:
            response.release_conn()
    except urllib3.exceptions.NewConnectionError as exc:  # also a TimeoutError subclass
        raise FederationError("idp_unreachable", "Your organization's identity provider "
                              "could not be reached. Try again in a moment.",
                              f"{what}: {exc!r}", status=502) from None
    except (urllib3.exceptions.TimeoutError, TimeoutError):
        raise FederationError("idp_timeout", "Your organization's identity provider did not "
                              "answer in time. Try again in a moment.",
                              f"{what}: timeout at {url}", status=502) from None
    except urllib3.exceptions.HTTPError as exc:
        raise FederationError("idp_unreachable", "Your organization's identity provider "
                              "could not be reached. Try again in a moment.",
                              f"{what}: {exc!r}", status=502) from None
    if response.status not in ok_statuses:
        raise FederationError("idp_bad_response", "Your organization's identity provider "
                              "answered with an error.",
                              f"{what}: HTTP {response.status}: {raw[:300]!r}", status=502)
    return raw


def _read_capped(response: urllib3.BaseHTTPResponse, max_bytes: int, what: str) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(what, f"Content-Length {declared} > {max_bytes}")
    chunks, size = [], 0
    for chunk in response.stream(65536):
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(what, f"more than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(what: str, detail: str) -> FederationError:
    return FederationError("idp_response_too_large", "Your organization's identity provider "
                           "sent an answer that is too large.", f"{what}: {detail}", status=502)
