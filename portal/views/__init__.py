"""One blueprint per audience: auth (everyone), home (members), admin (operators), health
(load balancers), branding (stylesheets)."""

from __future__ import annotations

from flask import g

from portal.models import Organization


def use_branding(org: Organization | None) -> None:
    """Pages rendered after this call wear the organization's branding."""
    g.brand_org = org
