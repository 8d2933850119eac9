"""Protocol adapters (OIDC now; SAML and LDAP later) and the provisioning they share.

Every adapter exposes ``begin(connection, request_context) -> Redirect`` and
``complete(connection, callback_data, pending_state) -> ExternalIdentity`` and raises only
``FederationError``. Nothing here imports Flask or the portal's web code.
"""

from federation.errors import FederationError
from federation.identity import AuthContext, ExternalIdentity, Redirect, RequestContext

__all__ = ["AuthContext", "ExternalIdentity", "FederationError", "Redirect", "RequestContext"]
