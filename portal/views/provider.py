"""Trellis as the OpenID Provider of vendor apps: discovery, keys, authorization with
consent and organization choice, tokens, userinfo, introspection, revocation, device
authorization and logout.

Machine endpoints answer in the OAuth error format; the browser endpoints never redirect to a
URI that is not registered for the app (such errors are shown on Trellis)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749.errors import OAuth2Error
from flask import (
    Blueprint,
    current_app,
    g,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user, logout_user
from werkzeug.datastructures import CombinedMultiDict, ImmutableMultiDict

from portal import audit, oauth, request_objects
from portal.errors import TrellisError
from portal.extensions import audit_context, csrf, db_session, services
from portal.models import OAuthApp as OAuthAppModel
from portal.models import Organization
from portal.permissions import ACCESS, public, signed_in
from portal.services import apps, backchannel, device, provider, provider_keys
from portal.services import auth as auth_service
from portal.views import use_branding

bp = Blueprint("provider", __name__)
PROMPTS = {"none", "login", "consent", "select_account"}


def bearer(view):
    """Declared for the route walk: the view checks an access token itself."""
    setattr(view, ACCESS, "bearer")
    return view


# --- discovery and keys -------------------------------------------------------------------

@bp.get("/.well-known/openid-configuration")
@public
def discovery():
    base = oauth.issuer()
    return jsonify({
        "issuer": base,
        "authorization_endpoint": base + "/oauth/authorize",
        "token_endpoint": base + "/oauth/token",
        "userinfo_endpoint": base + "/oauth/userinfo",
        "jwks_uri": base + "/oauth/jwks",
        "introspection_endpoint": base + "/oauth/introspect",
        "revocation_endpoint": base + "/oauth/revoke",
        "end_session_endpoint": base + "/oauth/logout",
        "device_authorization_endpoint": base + "/oauth/device_authorization",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": list(apps.GRANT_TYPES),
        "subject_types_supported": list(apps.SUBJECT_TYPES),
        "id_token_signing_alg_values_supported": list(provider_keys.ALGORITHMS),
        "token_endpoint_auth_methods_supported": oauth.ALL_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
        "introspection_endpoint_auth_methods_supported": oauth.CONFIDENTIAL_METHODS,
        "revocation_endpoint_auth_methods_supported": oauth.ALL_METHODS,
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": list(apps.SCOPES),
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr",
                             "amr", "sid", "azp", "at_hash", "name", "email",
                             "email_verified", "org", "roles", "profile_fields"],
        "prompt_values_supported": sorted(PROMPTS),
        "acr_values_supported": ACR_VALUES,
        "claims_parameter_supported": True,
        "request_parameter_supported": True,
        "request_object_signing_alg_values_supported": list(request_objects.ALGORITHMS),
        "request_uri_parameter_supported": False,
        "pushed_authorization_request_endpoint": base + "/oauth/par",
        "require_pushed_authorization_requests": False,
        "authorization_response_iss_parameter_supported": True,
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "frontchannel_logout_supported": True,
        "frontchannel_logout_session_supported": True,
    })


@bp.get("/oauth/jwks")
@public
def jwks():
    response = jsonify(oauth.key_ring().jwks())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


# --- authorization ------------------------------------------------------------------------

@bp.route("/oauth/authorize", methods=["GET", "POST"])
@public
def authorize():
    if request.method == "POST":
        if "client_id" in request.form:
            _posted_request()  # an app's authorization request sent as a form
        else:
            csrf.protect()  # the consent form
    if "request" in request.args or "request_uri" in request.args:
        refused = _use_request_object()
        if refused is not None:
            return refused
    server = oauth.server()
    try:
        grant = server.get_consent_grant(end_user=None)
    except OAuth2Error as error:
        return _authorization_error(error)
    client: oauth.AppClient = grant.request.client
    redirect_uri = grant.redirect_uri
    state = request.values.get("state")
    try:
        _check_extra_parameters()
    except OAuth2Error as error:
        return _to_client(redirect_uri, error.error, error.description, state)
    prompts = set(request.values.get("prompt", "").split())

    reauthenticate = _must_reauthenticate(prompts)
    if not current_user.is_authenticated or reauthenticate:
        if "none" in prompts:
            return _to_client(redirect_uri, "login_required", "Sign-in is required.", state)
        return _send_to_login(prompts, force=reauthenticate)
    try:
        needed, essential = requested_level(request.values.get("acr_values", ""),
                                            request.values.get("claims"))
    except ValueError as exc:
        return _to_client(redirect_uri, "invalid_request", str(exc), state)
    if needed and _level() < needed:
        # A second factor can raise the session to 2, and to 3 only for a person whose
        # identity an administrator checked.
        reachable = needed <= 2 or _identity_level() >= 3
        if "none" in prompts and reachable and _can_step_up():
            return _to_client(redirect_uri, "interaction_required",
                              "The user must confirm their second factor.", state)
        step_up = None if "none" in prompts or not reachable else _step_up_url()
        if step_up:
            return redirect(step_up)
        if essential:
            _audit_denied(client, "unmet_authentication_requirements")
            return _to_client(redirect_uri, "unmet_authentication_requirements",
                              "This sign-in cannot reach the authentication level the app "
                              "requires.", state)

    facts = provider.sign_in_facts(db_session(), current_user.id, current_user.email,
                                   client.app)
    orgs = facts.orgs
    wanted = request.values.get("org")
    if wanted:
        orgs = [o for o in orgs if o.slug == wanted]
    if not orgs:
        _audit_denied(client, "organization_not_offered")
        return _to_client(redirect_uri, "access_denied",
                          "This app is not offered to your organization.", state)
    scopes = set((grant.request.scope or "").split())
    needs_consent = client.app.consent_required and (
        "consent" in prompts or not provider.has_consent(db_session(), current_user.id,
                                                         client.app.id, scopes))
    choose = len(orgs) > 1 and ("select_account" in prompts or not wanted)

    if request.method == "POST" and not g.get("posted_request"):
        return _decide(grant, client, facts, orgs, scopes, redirect_uri, state)
    if "none" in prompts and (needs_consent or choose):
        return _to_client(redirect_uri, "consent_required" if needs_consent
                          else "account_selection_required", "The user must decide.", state)
    if needs_consent or choose:
        return _consent_page(client, orgs, scopes)
    return _issue_code(grant, facts, orgs[0])


def _posted_request() -> None:
    """OpenID Connect Core 3.1.2.1: the authorization request may come as a form POST (a
    request object too long for a URL, typically). Its fields become the query, exactly as
    if the browser had sent them with GET; the consent form and the sign-in round trip then
    carry them in the URL (``_here``). No CSRF token: an app's page sends it, and it changes
    nothing until the user decides."""
    req = request._get_current_object()
    if request.args:
        raise TrellisError("The app's sign-in request is not valid.",
                           code="oauth_invalid_request", status=400,
                           detail="send the parameters either in the query or in the body")
    args = ImmutableMultiDict(list(req.form.items(multi=True)))
    req.args, req.form = args, ImmutableMultiDict()
    req.values = CombinedMultiDict([args])
    g.posted_request = True


def _here() -> str:
    """This authorization request's URL (the consent form's action, the step-up's way
    back): the query it came with, or the fields of a POSTed request."""
    if not g.get("posted_request"):
        return request.full_path
    original = g.get("signed_args") or request.args
    return url_for("provider.authorize") + "?" + urlencode(
        list(original.items(multi=True)))


def _use_request_object():
    """Check the app's signed request object, or find its pushed request (RFC 9126), and
    let its parameters replace the query's. A refusal goes to the app only when the query's
    redirect URI is registered; otherwise it is shown here."""
    client_id = request.args.get("client_id")
    client = oauth.query_client(client_id) if isinstance(client_id, str) else None
    if client is None:
        raise TrellisError("This app is not registered with Trellis.",
                           code="oauth_invalid_client", status=400,
                           detail="client_id must be in the query as well")
    try:
        if "request_uri" in request.args:
            if "request" in request.args:
                raise request_objects.Refused("request_uri", "request and request_uri are "
                                              "mutually exclusive.", error="invalid_request")
            return _use_pushed_request(client)
        claims = request_objects.decode(request.args["request"], client.client_id,
                                        client.app.jwks, oauth.issuer(),
                                        request.args.get("response_type"))
    except request_objects.Refused as refused:
        _audit_denied(client, f"request_object_{refused.check}")
        target = request.args.get("redirect_uri")
        if target and client.check_redirect_uri(target):
            return _to_client(target, refused.error, refused.message,
                              request.args.get("state"))
        raise TrellisError("The app's sign-in request is not valid.",
                           code=f"oauth_{refused.error}", status=400,
                           detail=refused.message) from None
    request_objects.apply(claims)
    return None


def _use_pushed_request(client: oauth.AppClient):
    """Only ``request_uri`` values Trellis handed out at ``/oauth/par`` are accepted; a
    URL to fetch a request object from is not (``request_uri_not_supported``)."""
    uri = request.args["request_uri"]
    if not uri.startswith(provider.PAR_PREFIX):
        raise request_objects.Refused("request_uri", "Only request_uri values from the "
                                      "pushed authorization request endpoint are accepted.",
                                      error="request_uri_not_supported")
    pushed = provider.open_pushed_request(services().db, uri, client.app.id)
    if pushed is None:
        raise request_objects.Refused("request_uri_unknown", "The request_uri is unknown, "
                                      "expired or already used.",
                                      error="invalid_request_uri")
    g.pushed_request_id = pushed.id
    request_objects.apply(pushed.params, keep_query=False)
    return None


def _decide(grant, client, facts, orgs, scopes, redirect_uri, state):
    """The consent form was sent (``authorize`` has checked its CSRF token)."""
    if request.form.get("decision") != "allow":
        _audit_denied(client, "user_denied")
        return _to_client(redirect_uri, "access_denied", "The user declined.", state)
    chosen = request.form.get("org_choice") or (orgs[0].slug if len(orgs) == 1 else "")
    org = next((o for o in orgs if o.slug == chosen), None)
    if org is None:
        return _consent_page(client, orgs, scopes, error="Choose an organization.",
                             status=400)
    if client.app.consent_required:
        with services().db.transaction() as tx:
            provider.remember_consent(tx, audit_context(), current_user.id, client.app,
                                      scopes)
    return _issue_code(grant, facts, org)


def _issue_code(grant, facts: provider.SignInFacts, org: provider.OrgRef):
    token_hash = provider.digest(session.get("sid", ""))
    # The Trellis session's row id, looked up once per session (a new sign-in clears it).
    session_id = session.get("auth_session_id")
    if session_id is None:
        session_id = session["auth_session_id"] = provider.auth_session_id(db_session(),
                                                                           token_hash)
    who = provider.principal(
        current_user, facts, org, token_hash,
        auth_time=_auth_time(), acr=f"{ACR_PREFIX}{_level()}",
        amr=tuple(session.get("amr") or ("pwd",)), session_id=session_id)
    return oauth.server().create_authorization_response(grant_user=who, grant=grant)


ACR_PREFIX = "urn:trellis:loa:"
# 1: one factor; 2: a second factor; 3: a second factor, by a person whose identity an
# administrator checked in person or from a document (identity assurance level 3).
ACR_VALUES = [f"{ACR_PREFIX}{level}" for level in (1, 2, 3)]


def _identity_level() -> int:
    return int(getattr(current_user, "identity_level", 0) or 0)


def _level() -> int:
    """The level ``acr`` reports: the session's assurance (1 or 2), or 3 when a second
    factor was used and the person's identity was checked by an administrator."""
    level = int(session.get("assurance", 1))
    return 3 if level >= 2 and _identity_level() >= 3 else level
# The page that raises the session's assurance with the user's second factor; it takes
# ``next`` and sends the user back here, where the level is read again.
STEP_UP_ENDPOINT = "mfa.step_up"
UNREACHABLE = 99


def requested_level(acr_values: str, claims: str | None) -> tuple[int | None, bool]:
    """The lowest assurance level the app accepts, and whether it is essential. ``acr``
    requested as an essential claim (the ``claims`` parameter) is a demand; ``acr_values``
    is a preference (OpenID Connect Core 3.1.2.1, 5.5.1.1). Values Trellis does not know are
    never met."""
    if claims:
        import json
        try:
            parsed = json.loads(claims)
        except ValueError:
            raise ValueError("claims is not JSON.") from None
        if not isinstance(parsed, dict):
            raise ValueError("claims must be a JSON object.")
        acr = (parsed.get("id_token") or {}).get("acr") if isinstance(
            parsed.get("id_token"), dict) else None
        if isinstance(acr, dict) and acr.get("essential") is True:
            values = acr.get("values") or ([acr["value"]] if "value" in acr else [])
            if not isinstance(values, list) or not values:
                return None, False  # any level will do
            return _lowest(values), True
    values = acr_values.split()
    return (_lowest(values), False) if values else (None, False)


def _lowest(values: list) -> int:
    levels = [int(v[len(ACR_PREFIX):]) for v in values if isinstance(v, str)
              and v.startswith(ACR_PREFIX) and v[len(ACR_PREFIX):] in ("1", "2", "3")]
    return min(levels) if levels else UNREACHABLE


def _can_step_up() -> bool:
    from flask import current_app

    from portal.services import mfa
    return STEP_UP_ENDPOINT in current_app.view_functions and \
        mfa.has_second_factor(db_session(), current_user.id)


def _step_up_url() -> str | None:
    """The second-factor step-up page, when the user has a second factor, once per
    authorization request: coming back at the same level means the user could not, and the
    request is then answered truthfully."""
    if not _can_step_up():
        return None
    marker = provider.digest(_here())
    if session.get("step_up_tried") == marker:
        return None
    session["step_up_tried"] = marker
    return url_for(STEP_UP_ENDPOINT, next=_here())


def _auth_time():
    from datetime import UTC, datetime
    return datetime.fromtimestamp(session.get("auth_time") or time.time(), UTC)


def _must_reauthenticate(prompts: set[str]) -> bool:
    """``prompt=login``, ``max_age=0`` and a Trellis sign-in older than ``max_age`` send the
    user back to sign in, and on to the partner's identity provider with a demand to
    authenticate again. (Without a Trellis session the ordinary sign-in follows anyway.)"""
    if g.get("signed_args") is not None and current_user.is_authenticated and \
            request_objects.reauthenticated_since_marker(session.get("auth_time", 0)):
        return False  # the sign-in Trellis sent the user to for this request object
    if "login" in prompts:
        return True
    max_age = request.values.get("max_age")
    if max_age is None:
        return False
    try:
        limit = max(0, int(max_age))
    except ValueError:
        return True
    if limit == 0:
        return True
    return current_user.is_authenticated and \
        time.time() - session.get("auth_time", 0) > limit


def _send_to_login(prompts: set[str], force: bool):
    """Back to this request once signed in, without ``prompt=login`` (which would loop);
    a fresh sign-in then satisfies ``max_age`` too. The app may pre-select the
    organization, whose branded sign-in page is then shown."""
    signed = g.get("signed_args")
    if signed is not None:
        # The signed object travels unchanged; a marker Trellis signs says the user was
        # sent to sign in now, which satisfies its prompt=login or max_age on the way back.
        args = {k: v for k, v in signed.items() if k != "reauth"}
        args["reauth"] = request_objects.reauth_marker()
    else:
        args = {k: v for k, v in request.args.items(multi=True) if k != "prompt"}
        if prompts - {"login"}:
            args["prompt"] = " ".join(sorted(prompts - {"login"}))
        if "max_age" in args:
            args.pop("max_age")
    next_url = url_for("provider.authorize") + "?" + urlencode(args)
    # The sign-in page shows its form even to a signed-in user, and the partner's identity
    # provider is asked to authenticate again (prompt=login / ForceAuthn); signing in
    # clears the flag with the rest of the session.
    if force:
        session["force_login"] = True
    slug = request.args.get("org")
    if slug:
        return redirect(url_for("auth.org_login", slug=slug, next=next_url))
    return redirect(url_for("auth.login", next=next_url))


def _check_extra_parameters() -> None:
    """``request`` objects and pushed requests were applied before this runs; one that is
    still here came in a way that was not checked (a pushed request holding another)."""
    from authlib.oauth2.rfc6749.errors import InvalidRequestError
    if "request" in request.values:
        error = InvalidRequestError("The request object was not checked.")
        error.error = "invalid_request_object"
        raise error
    if "request_uri" in request.values:
        error = InvalidRequestError("request_uri is not supported here.")
        error.error = "request_uri_not_supported"
        raise error
    prompts = set(request.values.get("prompt", "").split())
    if prompts - PROMPTS or ("none" in prompts and len(prompts) > 1):
        raise InvalidRequestError("Unsupported prompt value.")
    if len(request.values.get("nonce", "")) > 255:
        raise InvalidRequestError("nonce is too long.")


def _to_client(redirect_uri: str, error: str, description: str, state: str | None):
    params = [("error", error), ("error_description", description)]
    if state:
        params.append(("state", state))
    params.append(("iss", oauth.issuer()))
    return redirect(add_params_to_uri(redirect_uri, params), 302)


def _authorization_error(error: OAuth2Error):
    """Errors before the redirect URI is known good are shown here, never redirected."""
    if error.redirect_uri:
        return _to_client(error.redirect_uri, error.error, error.description or "",
                          request.values.get("state"))
    message = {"invalid_client": "This app is not registered with Trellis.",
               "invalid_request": "The app's sign-in request is not valid."}.get(
        error.error, "The app's sign-in request is not valid.")
    raise TrellisError(message, code=f"oauth_{error.error}", status=400,
                       detail=error.description or "")


def _audit_denied(client, reason: str) -> None:
    with services().db.transaction() as tx:
        audit.record(tx, audit_context(), "oauth.authorize", outcome="failure",
                     target=f"app:{client.client_id}", reason=reason)


def _consent_page(client, orgs, scopes, error: str | None = None, status: int = 200):
    brand = db_session().get(Organization, orgs[0].id) if len(orgs) == 1 else None
    use_branding(brand)
    shown = [(name, text) for name, text in apps.SCOPES.items() if name in scopes]
    return render_template("provider/consent.html", app=client.app, orgs=orgs, scopes=shown,
                           error=error, action=_here()), status


# --- token endpoints ----------------------------------------------------------------------

@bp.post("/oauth/token")
@public
def token():
    if request.args:
        return _oauth_error("invalid_request", "Send parameters in the body, not the URL.")
    with oauth.token_transaction():
        return oauth.server().create_token_response()


PAR_MAX_BYTES = 32 * 1024
CLIENT_AUTH_FIELDS = {"client_id", "client_secret", "client_assertion",
                      "client_assertion_type"}


@bp.post("/oauth/par")
@public
def par():
    """Pushed authorization requests (RFC 9126): the app's backend sends the authorization
    request with its credentials and gets a short-lived ``request_uri`` for the browser. The
    request is checked here as far as it can be without the user (client, redirect URI,
    response type, scopes, PKCE, a request object's signature); the rest at the
    authorization endpoint, as for any request."""
    if request.args:
        return _oauth_error("invalid_request", "Send parameters in the body, not the URL.")
    if (request.content_length or 0) > PAR_MAX_BYTES:
        return _oauth_error("invalid_request", "The pushed request is too large.", 413)
    server = oauth.server()
    req = server.create_oauth2_request(request)
    try:
        client: oauth.AppClient = server.authenticate_client(req, oauth.ALL_METHODS, "par")
    except OAuth2Error as error:
        response = _oauth_error(error.error, error.description or "", error.status_code)
        if error.status_code == 401:
            response.headers["WWW-Authenticate"] = "Basic"
        return response
    if "request_uri" in request.form:
        return _oauth_error("invalid_request", "A pushed request may not hold request_uri.")
    params = {k: v for k, v in request.form.items() if k not in CLIENT_AUTH_FIELDS}
    if "request" in params:
        try:
            claims = request_objects.decode(params["request"], client.client_id,
                                            client.app.jwks, oauth.issuer(),
                                            params.get("response_type"))
        except request_objects.Refused as refused:
            _audit_denied(client, f"request_object_{refused.check}")
            return _oauth_error(refused.error, refused.message)
        params = request_objects.as_params(claims)
    problem = _pushed_problem(client, params)
    if problem:
        return _oauth_error(*problem)
    params["client_id"] = client.client_id
    with services().db.transaction() as tx:
        request_uri = provider.push_request(tx, client.app.id, params)
    response = jsonify(request_uri=request_uri, expires_in=provider.PAR_SECONDS)
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    return response


def _pushed_problem(client: oauth.AppClient, params: dict[str, str]
                    ) -> tuple[str, str] | None:
    """What the authorization endpoint would refuse without the user, as (error,
    description); None when the request may be stored."""
    if params.get("client_id", client.client_id) != client.client_id:
        return "invalid_request", "client_id differs from the authenticated app."
    if not client.check_redirect_uri(params.get("redirect_uri", "")):
        return "invalid_request", "redirect_uri is missing or not registered for this app."
    if not client.check_response_type(params.get("response_type", "")):
        return "unsupported_response_type", "Only response_type=code is supported."
    if client.get_allowed_scope(params.get("scope")) is None:
        return "invalid_scope", "A scope is not allowed for this app."
    if not params.get("code_challenge") or params.get("code_challenge_method") != "S256":
        return "invalid_request", "PKCE is required: send code_challenge with " \
                                  "code_challenge_method=S256."
    return None


@bp.post("/oauth/introspect")
@public
def introspect():
    return oauth.server().create_endpoint_response("introspection")


@bp.post("/oauth/revoke")
@public
def revoke():
    return oauth.server().create_endpoint_response("revocation")


@bp.post("/oauth/device_authorization")
@public
def device_authorization():
    return oauth.server().create_endpoint_response("device_authorization")


for _view in (token, par, introspect, revoke, device_authorization, authorize):
    csrf.exempt(_view)  # authorize checks the consent form's token itself


def _oauth_error(error: str, description: str, status: int = 400):
    response = jsonify(error=error, error_description=description)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/oauth/userinfo", methods=["GET", "POST"])
@bearer
def userinfo():
    header = request.headers.get("Authorization", "")
    token_value = header[7:] if header.startswith("Bearer ") else ""
    record = oauth.lookup(token_value, "access_token") if token_value else None
    if record is None or record.is_revoked() or record.row.user_id is None:
        response = _oauth_error("invalid_token", "The access token is not valid.", 401)
        response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return response
    row = record.row
    scopes = set(row.scope.split())
    if "openid" not in scopes:
        response = _oauth_error("insufficient_scope", "The openid scope is required.", 403)
        response.headers["WWW-Authenticate"] = 'Bearer error="insufficient_scope"'
        return response
    who = provider.refresh_principal(db_session(), row)
    app = db_session().get(OAuthAppModel, row.app_id)
    claims: dict[str, Any] = {"sub": provider.subject_for(app, row.user_id)}
    if who:
        claims.update(oauth.scope_claims(who, scopes, app.client_id))
    return jsonify(claims)


csrf.exempt(userinfo)


# --- logout -------------------------------------------------------------------------------

@bp.route("/oauth/logout", methods=["GET", "POST"])
@public
def end_session():
    """RP-initiated logout: with a valid ``id_token_hint`` the session ends at once; without
    one the user confirms (a bare link must not sign anyone out)."""
    hint = request.values.get("id_token_hint", "")
    claims = oauth.verify(hint, None) if hint else None
    if hint and claims is None:
        # An expired hint is still acceptable evidence; only a forged one is refused.
        claims = _expired_hint(hint)
        if claims is None:
            raise TrellisError("The logout request is not valid.", code="invalid_logout",
                               status=400)
    client_id = request.values.get("client_id") or (claims or {}).get("aud")
    client = oauth.query_client(client_id) if isinstance(client_id, str) else None
    if claims and client and claims.get("aud") != client.client_id:
        raise TrellisError("The logout request is not valid.", code="invalid_logout", status=400)
    target = request.values.get("post_logout_redirect_uri")
    if target and not (client and claims and target in client.app.post_logout_redirect_uris):
        target = None  # only registered URIs, and only with an ID token as evidence
    if claims is None and request.method != "POST":
        return render_template("provider/logout.html", client=client,
                               values=request.values)
    if current_user.is_authenticated and (claims is None or _hint_names_user(claims)):
        frames = sign_out()
    else:
        frames = []
    if target:
        state = request.values.get("state")
        target = add_params_to_uri(target, [("state", state)] if state else [])
        if not frames:
            return redirect(target)
    return signed_out_page(frames, target)


def _hint_names_user(claims: dict[str, Any]) -> bool:
    """The hint's ``sub`` is the signed-in user as its app sees them (pairwise or not; the
    app may be disabled since)."""
    from sqlalchemy import select
    app = db_session().scalar(select(OAuthAppModel).where(
        OAuthAppModel.client_id == str(claims.get("aud"))))
    return app is not None and claims.get("sub") == provider.subject_for(app, current_user.id)


def _expired_hint(hint: str) -> dict[str, Any] | None:
    from joserfc import jwt
    from joserfc.errors import JoseError
    try:
        decoded = jwt.decode(hint, oauth.key_ring().public,
                             algorithms=list(provider_keys.ALGORITHMS))
    except (JoseError, ValueError):
        return None
    claims = dict(decoded.claims)
    return claims if claims.get("iss") == oauth.issuer() else None


def sign_out() -> list[backchannel.Frame]:
    """End the Trellis session, revoke what apps got from it, tell apps that listen on the
    back channel; returns the front-channel frames the signed-out page must load."""
    ctx = audit_context()
    sid_token = session.get("sid")
    found = backchannel.Collected()
    with services().db.transaction() as tx:
        auth_service.end_session(tx, sid_token)
        if sid_token:
            found = backchannel.revoke_and_collect(tx, provider.digest(sid_token),
                                                   oauth.issuer())
        audit.record(tx, ctx, "auth.logout", target=f"user:{current_user.email}",
                     details={"frontchannel": [f.client_id for f in found.front]}
                     if found.front else None)
    logout_user()
    session.clear()
    backchannel.notify(found.back, issuer=oauth.issuer(), sign=oauth.sign)
    return found.front


def signed_out_page(frames: list[backchannel.Frame], next_url: str | None = None):
    """The signed-out page. With front-channel frames it loads each app's logout URI in a
    hidden frame (its CSP lets it frame those origins and nothing else), then moves on to
    ``next_url`` after a moment, without script."""
    response = make_response(render_template("provider/logged_out.html", frames=frames,
                                             next_url=next_url))
    if frames:
        origins = " ".join(backchannel.frame_origins(frames))
        response.headers["Content-Security-Policy"] = (
            current_app.config["CONTENT_SECURITY_POLICY"] + f"; frame-src {origins}")
    return response


# --- device authorization: the user's page --------------------------------------------------

@bp.route("/device", methods=["GET", "POST"])
@signed_in
def device_page():
    from portal.errors import InvalidRequest
    code = request.values.get("user_code", "")
    if request.method == "GET" and not code:
        return render_template("provider/device.html", step="code")
    try:
        row, app = device.pending(db_session(), code)
    except InvalidRequest as exc:
        return render_template("provider/device.html", step="code", error=exc.message,
                               code=code), 400
    orgs = provider.eligible_orgs(db_session(), current_user.id, app)
    if not orgs:
        return render_template("provider/device.html", step="code", code=code,
                               error="This app is not offered to your organization."), 403
    if request.method == "GET" or "decision" not in request.form:
        return render_template("provider/device.html", step="confirm", app=app, orgs=orgs,
                               code=row.user_code,
                               scopes=_scope_texts(row.scope))
    approve = request.form.get("decision") == "allow"
    org = next((o for o in orgs if o.slug == request.form.get("org_choice")),
               orgs[0] if len(orgs) == 1 else None)
    if approve and org is None:
        return render_template("provider/device.html", step="confirm", app=app, orgs=orgs,
                               code=row.user_code, error="Choose an organization.",
                               scopes=_scope_texts(row.scope)), 400
    with services().db.transaction() as tx:
        device.decide(tx, audit_context(), row.id, current_user.id,
                      org.id if org else None, approve)
    return render_template("provider/device.html", step="done", approved=approve, app=app)


def _scope_texts(scope: str) -> list[tuple[str, str]]:
    asked = set(scope.split())
    return [(name, text) for name, text in apps.SCOPES.items() if name in asked]


# --- the user's connected apps --------------------------------------------------------------

@bp.get("/account/apps")
@signed_in
def connected_apps():
    return render_template("provider/apps.html",
                           consents=provider.consents(db_session(), current_user.id),
                           scopes=apps.SCOPES)


@bp.post("/account/apps/<client_id>/revoke")
@signed_in
def withdraw(client_id: str):
    with services().db.transaction() as tx:
        provider.withdraw_consent(tx, audit_context(), current_user.id, client_id)
    from flask import flash
    flash("The app's access was removed.", "info")
    return redirect(url_for("provider.connected_apps"))

