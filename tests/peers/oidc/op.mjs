// A real OpenID Provider for Trellis's tests (node oidc-provider), on 127.0.0.1.
//
// Environment: OP_PORT (required), OP_ADMIN_TOKEN (required: guards /_test/ endpoints),
// OP_INTERACTIVE=1 for the stock login form (browser tests) instead of automatic sign-in.
// Clients register themselves with dynamic registration (RFC 7591, POST /reg). Accounts are
// put with POST /_test/accounts {"email": ..., "claims": {...}} (Authorization: Bearer token).
// Automatic sign-in picks the account whose email equals the request's login_hint.
import { createServer } from 'node:http';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import Provider from 'oidc-provider';

const PORT = Number(process.env.OP_PORT);
const ADMIN_TOKEN = process.env.OP_ADMIN_TOKEN;
const INTERACTIVE = process.env.OP_INTERACTIVE === '1';
const ISSUER = `http://127.0.0.1:${PORT}`;
if (!PORT || !ADMIN_TOKEN) throw new Error('OP_PORT and OP_ADMIN_TOKEN are required');

const accounts = new Map(); // email -> claims (including sub)

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), use: 'sig', alg: 'RS256' };

const provider = new Provider(ISSUER, {
  jwks: { keys: [jwk] },
  cookies: { keys: [randomUUID()] },
  pkce: { required: () => true, methods: ['S256'] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'given_name', 'family_name'],
    groups: ['groups'],
  },
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: INTERACTIVE },
    registration: { enabled: true },
  },
  ...(INTERACTIVE ? {} : { interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` } }),
  // Automatic sign-in uses the account's sub; the interactive form accepts its email too.
  findAccount: async (ctx, id) => {
    const claims = [...accounts.values()].find((c) => c.sub === id || c.email === id);
    if (!claims) return undefined;
    return { accountId: id, claims: async () => ({ ...claims, sub: id }) };
  },
  ttl: { AccessToken: 600, AuthorizationCode: 60, IdToken: 600, Interaction: 600, Session: 600, Grant: 600 },
});
provider.proxy = false;

async function autoInteraction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  if (prompt.name === 'login') {
    const claims = accounts.get(String(params.login_hint || '').toLowerCase());
    if (!claims) {
      return provider.interactionFinished(req, res, {
        error: 'access_denied', error_description: 'unknown test account',
      }, { mergeWithLastSubmission: false });
    }
    return provider.interactionFinished(req, res, { login: { accountId: claims.sub } },
      { mergeWithLastSubmission: false });
  }
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  const grantId = await grant.save();
  return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

function readJson(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.on('data', (chunk) => { body += chunk; if (body.length > 65536) reject(new Error('too large')); });
    req.on('end', () => { try { resolve(JSON.parse(body || '{}')); } catch (e) { reject(e); } });
  });
}

async function admin(req, res) {
  if (req.headers.authorization !== `Bearer ${ADMIN_TOKEN}`) {
    res.writeHead(401).end();
    return;
  }
  if (req.method === 'POST' && req.url === '/_test/accounts') {
    const { email, claims } = await readJson(req);
    const key = String(email).toLowerCase();
    const previous = accounts.get(key);
    accounts.set(key, { sub: previous?.sub || randomUUID(), email, email_verified: true, ...claims });
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(accounts.get(key)));
    return;
  }
  res.writeHead(404).end();
}

const callback = provider.callback();
createServer((req, res) => {
  if (req.url.startsWith('/_test/')) {
    admin(req, res).catch((err) => { res.writeHead(500).end(String(err)); });
  } else if (!INTERACTIVE && req.url.startsWith('/interaction/')) {
    autoInteraction(req, res).catch((err) => { res.writeHead(500).end(String(err)); });
  } else {
    callback(req, res);
  }
}).listen(PORT, '127.0.0.1', () => console.log(`oidc-provider listening on ${ISSUER}`));
