"""Fixtures shared by the organization-administration tests."""

from tests.integration.test_org_admin import two_orgs  # noqa: F401
