"""Progressive profiling: a declarative schema of profile fields, asked for only when an app
needs them, each value stored with when, where and why it was collected.

The schema (a YAML file for the platform, and optionally one per organization whose fields
apply to its members) says which apps or scopes need each field. ``missing`` answers, for
an app about to be opened, exactly which fields to ask for; ``collect`` validates them all
first (field-level messages, nothing stored when any fails) and then stores each with its
provenance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from portal import audit
from portal.db import utcnow
from portal.errors import ValidationError
from portal.models import ProfileValue

KEY = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
PHONE = re.compile(r"^\+?[0-9][0-9 ().-]{5,28}[0-9]$")
TYPES = ("text", "phone", "choice")


@dataclass(frozen=True)
class Field:
    key: str
    label: str
    type: str
    purpose: str
    required_by: tuple[str, ...]
    optional: bool
    max_length: int = 100
    choices: tuple[str, ...] = ()

    def needed_for(self, client_id: str, scopes: set[str]) -> bool:
        return f"app:{client_id}" in self.required_by or any(
            f"scope:{scope}" in self.required_by for scope in scopes)

    def clean(self, raw: str) -> str:
        """The stored form of a value, or ValidationError with a message for this field."""
        value = " ".join((raw or "").split())
        if not value:
            raise ValidationError(f"{self.label}: please fill this in.", code="required")
        if self.type == "text" and len(value) > self.max_length:
            raise ValidationError(f"{self.label}: at most {self.max_length} characters.",
                                  code="too_long")
        if self.type == "phone" and not PHONE.match(value):
            raise ValidationError(f"{self.label}: enter a phone number such as "
                                  "+49 30 1234567.", code="invalid_phone")
        if self.type == "choice" and value not in self.choices:
            raise ValidationError(f"{self.label}: choose one of the options.",
                                  code="invalid_choice")
        if any(not ch.isprintable() for ch in value):
            raise ValidationError(f"{self.label}: only printable characters.", code="invalid")
        return value


def load_schema(path: str | Path) -> tuple[Field, ...]:
    """Read and check the schema; ValueError names the problem (the app will not start)."""
    import yaml
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    fields: list[Field] = []
    for n, item in enumerate(data.get("fields") or [], start=1):
        if not isinstance(item, dict):
            raise ValueError(f"field {n} is not a mapping")
        key, kind = str(item.get("key", "")), str(item.get("type", "text"))
        if not KEY.match(key) or key in {f.key for f in fields}:
            raise ValueError(f"field {n}: key {key!r} must be unique lowercase letters, "
                             "digits or _")
        if kind not in TYPES:
            raise ValueError(f"field {key}: type must be one of {', '.join(TYPES)}")
        choices = tuple(str(c) for c in item.get("choices") or ())
        if kind == "choice" and not choices:
            raise ValueError(f"field {key}: a choice needs choices")
        required_by = tuple(str(r) for r in item.get("required_by") or ())
        if not all(re.match(r"^(scope|app):\S+$", r) for r in required_by):
            raise ValueError(f"field {key}: required_by entries look like scope:profile or "
                             "app:<client id>")
        label, purpose = str(item.get("label", "")).strip(), str(item.get("purpose", "")).strip()
        if not label or not purpose:
            raise ValueError(f"field {key}: needs a label and a purpose")
        fields.append(Field(key, label, kind, purpose[:300], required_by,
                            bool(item.get("optional", False)),
                            int(item.get("max_length", 100)), choices))
    return tuple(fields)


def load_org_schemas(folder: str | Path, platform: tuple[Field, ...]
                     ) -> dict[str, tuple[Field, ...]]:
    """Organizations' own fields: ``<slug>.yaml`` files in ``folder``, in the platform
    schema's format. A key must be unique across the platform and every organization (one
    stored value per person and key), else ValueError names both places."""
    if not folder:
        return {}
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"{folder} is not a folder")
    owner = {f.key: "the platform schema" for f in platform}
    found: dict[str, tuple[Field, ...]] = {}
    for file in sorted(path.glob("*.yaml")):
        slug = file.stem
        if not re.match(r"^[a-z0-9][a-z0-9-]{0,62}$", slug):
            raise ValueError(f"{file.name}: the file name must be an organization's slug")
        fields = load_schema(file)
        for field in fields:
            if field.key in owner:
                raise ValueError(f"{file.name}: field {field.key!r} is already defined in "
                                 f"{owner[field.key]}; prefix it, e.g. {slug.replace('-', '_')}"
                                 f"_{field.key}")
            owner[field.key] = file.name
        found[slug] = fields
    return found


def schema_for(platform: tuple[Field, ...], by_org: dict[str, tuple[Field, ...]],
               slugs) -> tuple[Field, ...]:
    """The platform's fields, then those of the given organizations."""
    extra = [f for slug in slugs for f in by_org.get(slug, ())]
    return platform + tuple(extra)


def values(session: Session, user_id: int) -> dict[str, ProfileValue]:
    return {row.field: row for row in session.scalars(
        sa.select(ProfileValue).where(ProfileValue.user_id == user_id))}


def missing(session: Session, schema: tuple[Field, ...], user_id: int, client_id: str,
            scopes: set[str], skipped: set[str] = frozenset()) -> list[Field]:
    """The fields this app needs that the person has not given (optional ones they skipped
    in this session are not asked again)."""
    have = values(session, user_id)
    return [f for f in schema if f.needed_for(client_id, scopes) and f.key not in have
            and not (f.optional and f.key in skipped)]


CLAIM = "profile_fields"


def claims(session: Session, schema: tuple[Field, ...], user_id: int, client_id: str,
           scopes: set[str]) -> dict[str, dict[str, str]]:
    """What an app receives in its ID token and from userinfo: the values of exactly the
    fields it (or a scope it was granted) requires, under one claim ``profile_fields``;
    nothing when it requires none or the person gave none."""
    needed = {f.key for f in schema if f.needed_for(client_id, scopes)}
    if not needed:
        return {}
    have = session.execute(sa.select(ProfileValue.field, ProfileValue.value).where(
        ProfileValue.user_id == user_id, ProfileValue.field.in_(sorted(needed)))).all()
    return {CLAIM: dict(sorted(have))} if have else {}


def collect(session: Session, ctx: audit.Context, schema: tuple[Field, ...], user_id: int,
            form: dict[str, str], keys: list[str], *, via: str,
            allow_blank_optional: bool = True) -> dict[str, str]:
    """Validate every asked field, then store them all with their provenance. Raises
    ``FieldErrors`` (every message, by field) and stores nothing if any is wrong."""
    by_key = {f.key: f for f in schema}
    asked = [by_key[k] for k in keys if k in by_key]
    cleaned: dict[str, str] = {}
    errors: dict[str, str] = {}
    for field in asked:
        raw = form.get(field.key, "")
        if field.optional and allow_blank_optional and not raw.strip():
            continue
        try:
            cleaned[field.key] = field.clean(raw)
        except ValidationError as exc:
            errors[field.key] = exc.message
    if errors:
        raise FieldErrors(errors)
    now = utcnow()
    have = values(session, user_id)
    for key, value in cleaned.items():
        row = have.get(key) or ProfileValue(user_id=user_id, field=key)
        row.value, row.collected_at, row.collected_via = value, now, via[:100]
        row.purpose = by_key[key].purpose
        session.add(row)
    if cleaned:
        audit.record(session, ctx, "profile.collect", target=f"user:{ctx.actor}",
                     details={"fields": sorted(cleaned), "via": via})
    return cleaned


class FieldErrors(ValidationError):
    """Messages per field; nothing was stored."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("Please correct the fields marked below.", code="invalid_fields",
                         extra={"fields": errors})
        self.errors = errors
