// A relying party built on openid-client, driven step by step by the Python tests.
// Usage: node rp.mjs <step> '<json input>'  ->  one line of JSON on stdout.
// The HTTP issuer is on loopback, hence allowInsecureRequests.
import * as client from 'openid-client';

const [step, raw] = process.argv.slice(2);
const input = JSON.parse(raw || '{}');

// A P-256 private JWK (input.private_jwk) signs request objects and, for private_key_jwt
// apps, the client assertions.
async function signingKey() {
  const { kid, ...jwk } = input.private_jwk;
  const key = await crypto.subtle.importKey('jwk', jwk, { name: 'ECDSA', namedCurve: 'P-256' },
                                            false, ['sign']);
  return { key, kid };
}

async function configuration() {
  const auth = input.private_jwk ? client.PrivateKeyJwt(await signingKey())
    : input.client_secret ? client.ClientSecretBasic(input.client_secret) : client.None();
  return client.discovery(new URL(input.issuer), input.client_id, input.metadata, auth,
                          { execute: [client.allowInsecureRequests] });
}

const steps = {
  async start(config) {
    const verifier = client.randomPKCECodeVerifier();
    const state = client.randomState();
    const nonce = client.randomNonce();
    const url = client.buildAuthorizationUrl(config, {
      redirect_uri: input.redirect_uri, scope: input.scope, state, nonce,
      code_challenge: await client.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256',
    });
    return { url: url.href, verifier, state, nonce };
  },
  async start_jar(config) {
    // The same request, signed as a request object (JAR) with the app's key.
    const verifier = client.randomPKCECodeVerifier();
    const state = client.randomState();
    const nonce = client.randomNonce();
    const url = await client.buildAuthorizationUrlWithJAR(config, {
      redirect_uri: input.redirect_uri, scope: input.scope, state, nonce,
      code_challenge: await client.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256',
    }, await signingKey());
    return { url: url.href, verifier, state, nonce };
  },
  async start_par(config) {
    // The request pushed to the PAR endpoint (RFC 9126) with the app's credentials; the
    // URL holds only client_id and request_uri.
    const verifier = client.randomPKCECodeVerifier();
    const state = client.randomState();
    const nonce = client.randomNonce();
    const url = await client.buildAuthorizationUrlWithPAR(config, {
      redirect_uri: input.redirect_uri, scope: input.scope, state, nonce,
      code_challenge: await client.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256',
    });
    return { url: url.href, verifier, state, nonce };
  },
  async finish(config) {
    const tokens = await client.authorizationCodeGrant(config, new URL(input.callback), {
      pkceCodeVerifier: input.verifier, expectedState: input.state, expectedNonce: input.nonce,
      idTokenExpected: true,
    });
    return { tokens: { ...tokens }, claims: tokens.claims() };
  },
  async refresh(config) {
    const tokens = await client.refreshTokenGrant(config, input.refresh_token);
    return { tokens: { ...tokens }, claims: tokens.claims() ?? null };
  },
  async client_credentials(config) {
    const tokens = await client.clientCredentialsGrant(config, { scope: input.scope });
    return { tokens: { ...tokens } };
  },
  async userinfo(config) {
    return { userinfo: await client.fetchUserInfo(config, input.access_token, input.sub) };
  },
  async logout(config) {
    const url = client.buildEndSessionUrl(config, {
      id_token_hint: input.id_token, post_logout_redirect_uri: input.post_logout_redirect_uri,
      state: input.state,
    });
    return { url: url.href };
  },
};

try {
  const config = await configuration();
  console.log(JSON.stringify({ ok: true, ...(await steps[step](config)) }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, error: error.code || error.name,
                               message: error.message, cause: error.cause?.error ?? null,
                               detail: error.cause?.message ?? null }));
}
