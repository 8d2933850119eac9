"""An organization's branding as its owners set it: colours, texts and an uploaded logo.

Colours and texts are validated (``validation.clean_branding``) and reach pages only as a
stylesheet and escaped text. The primary colour carries white button text and is used for
links on white, so it must keep WCAG's 4.5:1 contrast with white. A logo is accepted only
when its bytes are a PNG, JPEG or WebP image (sniffed from the content, never from the file
name or the declared type), below ``LOGO_MAX_BYTES``; SVG, which can carry script, is refused.
Logos are served by Trellis itself, so the sign-in page never loads from a third-party host.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.errors import ValidationError
from portal.models import Organization, OrgLogo
from portal.validation import clean_branding

LOGO_MAX_BYTES = 512 * 1024
LOGO_MAX_SIDE = 4096
EDITABLE = ("primary_color", "accent_color", "signin_text", "footer_text")


def contrast_with_white(color: str) -> float:
    """WCAG 2 contrast ratio of ``#rrggbb`` against white."""
    channels = [int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return 1.05 / (luminance + 0.05)


def clean(values: dict[str, Any]) -> dict[str, str]:
    """The editable fields, validated; colours readable on white."""
    raw = {key: values.get(key) for key in EDITABLE}
    for key, value in raw.items():
        if value is not None and not isinstance(value, str):
            raise ValidationError(f"{key} must be text.", code="invalid_branding")
    cleaned = clean_branding(raw)
    # WCAG: 4.5:1 for text (buttons, links in the primary colour), 3:1 for the accent bar
    for key, label, needed in (("primary_color", "primary", 4.5), ("accent_color", "accent", 3)):
        color = cleaned.get(key)
        if color and contrast_with_white(color) < needed:
            raise ValidationError(
                f"The {label} colour {color} is too light to read on white (contrast "
                f"{contrast_with_white(color):.1f}:1, at least {needed:g}:1 is needed). "
                "Choose a darker shade.", code="low_contrast")
    return cleaned


def update(session: Session, ctx: audit.Context, org: Organization,
           values: dict[str, Any]) -> Organization:
    """Replace colours and texts (the uploaded logo stays)."""
    cleaned = clean(values)
    before = dict(org.branding or {})
    kept = {k: v for k, v in before.items() if k not in EDITABLE}
    org.branding = {**kept, **cleaned}
    audit.record(session, ctx, "org.branding", target=f"org:{org.slug}",
                 organization_id=org.id, details={"before": before, "after": org.branding})
    return org


def sniff(data: bytes) -> str:
    """The image type of ``data`` (image/png, image/jpeg or image/webp), read from its bytes
    and checked for a sane structure; anything else is refused with a plain reason."""
    if len(data) > LOGO_MAX_BYTES:
        raise ValidationError(f"The logo is too large ({len(data) // 1024} KiB); at most "
                              f"{LOGO_MAX_BYTES // 1024} KiB.", code="logo_too_large")
    if not data:
        raise ValidationError("Choose an image file.", code="logo_missing")
    head = data[:64].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml", b"<!doctype", b"<html")) or b"<svg" in data[:1024]:
        raise ValidationError("SVG and other markup are not accepted as a logo (they can carry "
                              "script). Upload a PNG, JPEG or WebP image.",
                              code="logo_not_image")
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 33:
        width, height = struct.unpack(">II", data[16:24])
        _dimensions(width, height)
        return "image/png"
    if data.startswith(b"\xff\xd8\xff") and data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return "image/jpeg"
    if (data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 16
            and struct.unpack("<I", data[4:8])[0] + 8 == len(data)
            and data[12:16] in (b"VP8 ", b"VP8L", b"VP8X")):
        return "image/webp"
    raise ValidationError("This file is not a PNG, JPEG or WebP image. Upload one of those "
                          "(whatever the file is called).", code="logo_not_image")


def _dimensions(width: int, height: int) -> None:
    if not (0 < width <= LOGO_MAX_SIDE and 0 < height <= LOGO_MAX_SIDE):
        raise ValidationError(f"The logo must be at most {LOGO_MAX_SIDE} pixels on each side.",
                              code="logo_not_image")


def email_logo_url(base_url: str, slug: str, version: str) -> str:
    """Where emails load the uploaded logo from: only over https (mail clients of partners
    are not on the portal's network), else nothing."""
    if not base_url.startswith("https://"):
        return ""
    return f"{base_url.rstrip('/')}/branding/{slug}/logo/{version}.img"


def set_logo(session: Session, ctx: audit.Context, org: Organization, data: bytes,
             base_url: str = "") -> str:
    """Store a sniffed image as the organization's logo; returns its content type. With an
    https ``base_url`` emails show it too (``logo_url``)."""
    content_type = sniff(data)
    digest = hashlib.sha256(data).hexdigest()
    logo = session.scalar(sa.select(OrgLogo).where(OrgLogo.organization_id == org.id))
    if logo is None:
        logo = OrgLogo(organization_id=org.id, content_type=content_type, data=data,
                       sha256=digest)
        session.add(logo)
    else:
        logo.content_type, logo.data, logo.sha256 = content_type, data, digest
    branding = {k: v for k, v in (org.branding or {}).items()
                if not _own_logo_url(org, v if k == "logo_url" else None)}
    branding["logo"] = digest[:16]
    own = email_logo_url(base_url, org.slug, digest[:16])
    if own:
        branding["logo_url"] = own
    org.branding = branding
    session.flush()
    audit.record(session, ctx, "org.logo", target=f"org:{org.slug}", organization_id=org.id,
                 details={"content_type": content_type, "bytes": len(data),
                          "sha256": digest})
    return content_type


def remove_logo(session: Session, ctx: audit.Context, org: Organization) -> bool:
    deleted = session.execute(sa.delete(OrgLogo).where(OrgLogo.organization_id == org.id)
                              ).rowcount
    branding = dict(org.branding or {})
    if _own_logo_url(org, branding.get("logo_url")):
        branding.pop("logo_url")
    had = branding.pop("logo", None) is not None or bool(deleted)
    org.branding = branding
    if had:
        audit.record(session, ctx, "org.logo_remove", target=f"org:{org.slug}",
                     organization_id=org.id)
    return had


def _own_logo_url(org: Organization, url: str | None) -> bool:
    """Whether ``url`` is the address of this organization's uploaded logo."""
    return bool(url) and f"/branding/{org.slug}/logo/" in str(url)


def logo_of(session: Session, org_id: int) -> OrgLogo | None:
    return session.scalar(sa.select(OrgLogo).where(OrgLogo.organization_id == org_id))
