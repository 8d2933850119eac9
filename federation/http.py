"""Outbound HTTP with connect/read timeouts and a size cap on every response, so a slow or
hostile IdP can neither hang a worker nor fill its memory."""

from __future__ import annotations

import ipaddress
import json
from typing import Any
from urllib.parse import urlsplit

import requests

from federation.errors import FederationError

CONNECT_TIMEOUT = 3.05
READ_TIMEOUT = 10.0
MAX_BYTES = 512 * 1024
_session = requests.Session()
_session.headers["User-Agent"] = "Trellis-Federation/0.1"


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
    """GET or POST and parse a JSON object; every failure is a ``FederationError``."""
    timeout = timeout or (CONNECT_TIMEOUT, READ_TIMEOUT)
    try:
        response = _session.request(method, url, data=data, headers=headers, auth=auth,
                                    timeout=timeout, stream=True, allow_redirects=False)
        body = _read_capped(response, max_bytes, what)
    except requests.Timeout:
        raise FederationError("idp_timeout", "Your organization's identity provider did not "
                              "answer in time. Try again in a moment.",
                              f"{what}: timeout at {url}", status=502) from None
    except requests.RequestException as exc:
        raise FederationError("idp_unreachable", "Your organization's identity provider "
                              "could not be reached. Try again in a moment.",
                              f"{what}: {exc!r}", status=502) from None
    if response.status_code not in ok_statuses:
        raise FederationError("idp_bad_response", "Your organization's identity provider "
                              "answered with an error.",
                              f"{what}: HTTP {response.status_code}: {body[:300]!r}",
                              status=502)
    try:
        document = json.loads(body)
    except ValueError:
        raise FederationError("idp_bad_response", "Your organization's identity provider "
                              "sent an answer we could not read.",
                              f"{what}: not JSON: {body[:200]!r}", status=502) from None
    if not isinstance(document, dict):
        raise FederationError("idp_bad_response", "Your organization's identity provider "
                              "sent an answer we could not read.",
                              f"{what}: JSON is not an object", status=502)
    return document


def _read_capped(response: requests.Response, max_bytes: int, what: str) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        response.close()
        raise FederationError("idp_response_too_large", "Your organization's identity "
                              "provider sent an answer that is too large.",
                              f"{what}: Content-Length {declared} > {max_bytes}", status=502)
    chunks, size = [], 0
    for chunk in response.iter_content(65536):
        size += len(chunk)
        if size > max_bytes:
            response.close()
            raise FederationError("idp_response_too_large", "Your organization's identity "
                                  "provider sent an answer that is too large.",
                                  f"{what}: more than {max_bytes} bytes", status=502)
        chunks.append(chunk)
    return b"".join(chunks)
