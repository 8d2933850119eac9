"""Normalizers for the identifiers users type, shared by forms, services and the CLI."""

from __future__ import annotations

import re
import unicodedata

from federation.identity import canonical_email
from portal.errors import ValidationError

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
LOGO_VERSION = re.compile(r"^[0-9a-f]{16}$")
LOGO_URL = re.compile(r"^(https://[A-Za-z0-9.-]+(:\d+)?|/static)/[A-Za-z0-9._~/%+-]*$")


def normalize_email(raw: str) -> str:
    """One spelling per mailbox, whatever was typed: NFKC folds Unicode look-alikes such as
    full-width letters, and the domain is written in its Unicode form whether it was typed
    that way or as IDNA (``xn--``), so the two spellings cannot become two accounts."""
    email = unicodedata.normalize("NFKC", raw or "").strip().lower()
    local, _, domain = email.rpartition("@")
    if not local or len(email) > 320 or not all(ch.isprintable() and not ch.isspace()
                                                 for ch in email):
        raise ValidationError("Enter a valid email address.", code="invalid_email")
    try:
        normalize_domain(domain)
        domain.rstrip(".").encode("idna").decode("ascii").encode("ascii").decode("idna")
    except (ValidationError, UnicodeError):
        raise ValidationError("Enter a valid email address.", code="invalid_email") from None
    return canonical_email(email)  # the same spelling identity providers' addresses get


def normalize_domain(raw: str) -> str:
    name = (raw or "").strip().lower().rstrip(".")
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValidationError(f"'{raw}' is not a valid domain name.",
                              code="invalid_domain") from None
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or len(labels) < 2 or not all(LABEL.match(lb) for lb in labels):
        raise ValidationError(f"'{raw}' is not a valid domain name.", code="invalid_domain")
    return ascii_name


def normalize_slug(raw: str) -> str:
    slug = (raw or "").strip().lower()
    if not SLUG.match(slug):
        raise ValidationError("A slug is 1 to 63 lowercase letters, digits or hyphens, and "
                              "does not start or end with a hyphen.", code="invalid_slug")
    return slug


def clean_branding(raw: dict[str, str | None]) -> dict[str, str]:
    """Only values that cannot break out of CSS or HTML are ever stored."""
    branding: dict[str, str] = {}
    color = (raw.get("primary_color") or "").strip()
    if color:
        if not COLOR.match(color):
            raise ValidationError("The primary colour must look like #1a73e8.",
                                  code="invalid_branding")
        branding["primary_color"] = color.lower()
    logo = (raw.get("logo_url") or "").strip()
    if logo:
        if len(logo) > 500 or not LOGO_URL.match(logo):
            raise ValidationError("The logo must be an https:// URL of an image.",
                                  code="invalid_branding")
        branding["logo_url"] = logo
    accent = (raw.get("accent_color") or "").strip()
    if accent:
        if not COLOR.match(accent):
            raise ValidationError("The accent colour must look like #1a73e8.",
                                  code="invalid_branding")
        branding["accent_color"] = accent.lower()
    for key, label in (("footer_text", "footer text"), ("signin_text", "sign-in text")):
        text = (raw.get(key) or "").strip()
        if text:
            if len(text) > 300 or any(not ch.isprintable() for ch in text):
                raise ValidationError(f"The {label} must be at most 300 printable characters.",
                                      code="invalid_branding")
            branding[key] = text
    logo = (raw.get("logo") or "").strip()
    if LOGO_VERSION.match(logo):  # an uploaded logo's fingerprint (set by the upload only)
        branding["logo"] = logo
    return branding
