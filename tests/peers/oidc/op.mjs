// A real OpenID Provider for Trellis's tests (node oidc-provider 9), on 127.0.0.1 only.
//
// Configuration: a JSON file named by OP_CONFIG, then these environment variables on top:
//   OP_PORT (required)      port to listen on (loopback only)
//   OP_ISSUER               issuer, default http://127.0.0.1:<port>
//   OP_ADMIN_TOKEN          bearer token for the /_test/ admin endpoints (none: admin disabled)
//   OP_INTERACTIVE=1        the stock devInteractions login and consent forms (browser tests)
//                           instead of automatic sign-in
//   OP_DEFAULT_ACCOUNT      email of the account that signs in automatically when the request
//                           has no login_hint
// The JSON file may hold the same settings (port, issuer, admin_token, interactive,
// default_account) plus "clients": [{client_id, client_secret, redirect_uris, misbehave, ...
// any client metadata}] and "accounts": [{email, sub?, misbehave?, ...claims}].
//
// Automatic sign-in: the account whose email equals the request's login_hint (case-insensitive)
// signs in, else the default account, else access_denied. Consent is granted automatically.
// Account claims go to the ID token too (conformIdTokenClaims: false); "amr" and "acr" given
// for an account become the session's amr/acr. PKCE S256 is required for every client.
//
// Admin endpoints (Authorization: Bearer <OP_ADMIN_TOKEN>), for tests to change the provider
// while it runs:
//   POST /_test/clients    {client_id?, client_secret?, redirect_uris, misbehave?, ...metadata}
//                          creates or replaces a client; answers {client_id, client_secret, ...}
//   POST /_test/accounts   {email, misbehave?, claims: {...}} creates or replaces an account
//                          (its sub is kept across updates unless claims.sub is given)
//   POST /_test/misbehave  {client_id | account: email, misbehave: [...]} changes only that
//
// Misbehaviour (MODES below) is selected per client, per account, or per authorization request
// with the extra parameter misbehave=<mode>[,<mode>...]; a request gets the union of the three.
// A mode may carry a number: slow-token=5. Discovery misbehaviour is served by pseudo-issuers
// <issuer>/_rogue/<mode> whose discovery document is all there is to them (endpoints point at
// the real provider).
import { createServer } from 'node:http';
import {
  createHmac, generateKeyPairSync, randomUUID, sign as cryptoSign, timingSafeEqual,
} from 'node:crypto';
import { readFileSync } from 'node:fs';
import Provider, { errors } from 'oidc-provider';

const MODES = {
  // ID token (the token endpoint's id_token is re-signed after the change)
  'wrong-iss': 'iss is another issuer',
  'wrong-aud': 'aud is another client',
  expired: 'exp an hour in the past',
  'future-iat': 'iat an hour in the future',
  'alg-none': 'unsigned: header alg none, empty signature',
  'hs256-pubkey': 'HS256 with the provider RSA public key (SPKI PEM text) as HMAC secret',
  'foreign-key': 'RS256 by a key not in the JWKS, under the kid of the published key',
  'unknown-kid': 'RS256 by the published key, but under a kid the JWKS does not have',
  'nonce-mismatch': 'nonce is not the one sent',
  'missing-sub': 'no sub claim',
  'other-client': 'issued to another client: aud and azp name it',
  'azp-other': 'aud lists this client and another, azp names the other',
  // other endpoints
  'userinfo-sub': 'userinfo answers with a sub that is not the ID token sub',
  'mix-up': 'authorization response carries a wrong iss parameter (RFC 9207)',
  'slow-token': 'token endpoint answers after N seconds (default 3)',
};
const DISCOVERY_MODES = {
  'slow-discovery': 'discovery answers after N seconds (default 3)',
  'not-json': 'discovery: 200, Content-Type application/json, body is HTML',
  'huge-discovery': 'discovery: N MB (default 50) of valid JSON, streamed without a length',
  'discovery-wrong-issuer': 'discovery: issuer is not the URL it was fetched from',
};
const SIGNING_MODES = ['alg-none', 'hs256-pubkey', 'foreign-key', 'unknown-kid'];
const WRONG_ISSUER = 'https://wrong-issuer.example';
const OTHER_CLIENT = 'some-other-client';

const file = process.env.OP_CONFIG ? JSON.parse(readFileSync(process.env.OP_CONFIG, 'utf8')) : {};
const PORT = Number(process.env.OP_PORT || file.port);
if (!PORT) throw new Error('OP_PORT (or "port" in the OP_CONFIG file) is required');
const ISSUER = (process.env.OP_ISSUER || file.issuer || `http://127.0.0.1:${PORT}`).replace(/\/$/, '');
const ADMIN_TOKEN = process.env.OP_ADMIN_TOKEN || file.admin_token || '';
const INTERACTIVE = process.env.OP_INTERACTIVE
  ? process.env.OP_INTERACTIVE === '1' : Boolean(file.interactive);
const DEFAULT_ACCOUNT = String(process.env.OP_DEFAULT_ACCOUNT || file.default_account || '')
  .toLowerCase();

// --- misbehaviour specs: ["expired", "slow-token=2"] -> Map {expired => null, slow-token => 2}
function parseModes(value, known = MODES) {
  const list = Array.isArray(value) ? value : String(value ?? '').split(',');
  const modes = new Map();
  for (const raw of list) {
    const spec = String(raw).trim();
    if (!spec) continue;
    const [name, number] = spec.split('=', 2);
    if (!Object.hasOwn(known, name)) throw new Error(`unknown misbehaviour ${JSON.stringify(name)}`);
    if (number !== undefined && !/^\d+(\.\d+)?$/.test(number)) throw new Error(`bad number in ${spec}`);
    modes.set(name, number === undefined ? null : Number(number));
  }
  if (SIGNING_MODES.filter((m) => modes.has(m)).length > 1) {
    throw new Error(`at most one of ${SIGNING_MODES.join(', ')}`);
  }
  return modes;
}
const union = (...maps) => new Map(maps.flatMap((m) => [...(m || new Map())]));

// --- storage: plain Maps with expiry. The stock memory adapter is an LRU of 1000 entries that
// evicts registered clients after a few hundred sign-ins.
const store = new Map(); // `${model}:${id}` -> { payload, expiresAt }
const grantMembers = new Map(); // grantId -> Set of store keys
const secondary = new Map(); // `${model}:uid:${uid}` / `${model}:userCode:${code}` -> id

class TestAdapter {
  constructor(model) { this.model = model; }

  key(id) { return `${this.model}:${id}`; }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    const expiresAt = expiresIn ? Date.now() + expiresIn * 1000 : Infinity;
    store.set(key, { payload: structuredClone(payload), expiresAt });
    if (payload.grantId) {
      if (!grantMembers.has(payload.grantId)) grantMembers.set(payload.grantId, new Set());
      grantMembers.get(payload.grantId).add(key);
    }
    if (payload.uid) secondary.set(`${this.model}:uid:${payload.uid}`, id);
    if (payload.userCode) secondary.set(`${this.model}:userCode:${payload.userCode}`, id);
  }

  async find(id) {
    const entry = store.get(this.key(id));
    if (!entry) return undefined;
    if (entry.expiresAt <= Date.now()) {
      store.delete(this.key(id));
      return undefined;
    }
    return structuredClone(entry.payload);
  }

  async findByUid(uid) { return this.find(secondary.get(`${this.model}:uid:${uid}`)); }

  async findByUserCode(code) { return this.find(secondary.get(`${this.model}:userCode:${code}`)); }

  async consume(id) {
    const entry = store.get(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) { store.delete(this.key(id)); }

  async revokeByGrantId(grantId) {
    for (const key of grantMembers.get(grantId) || []) store.delete(key);
    grantMembers.delete(grantId);
  }
}

// --- state the tests control
const accounts = new Map(); // lower-case email -> { claims (with sub), misbehave: Map }
const clientModes = new Map(); // client_id -> Map
const codeModes = new Map(); // authorization code -> { modes, at }
const tokenModes = new Map(); // access token -> { modes, at }

function accountBySub(sub) {
  for (const account of accounts.values()) {
    if (account.claims.sub === sub || account.claims.email === sub) return account;
  }
  return undefined;
}

function putAccount({ email, sub, misbehave, claims = {}, ...rest }) {
  if (!email) throw new Error('email is required');
  const key = String(email).toLowerCase();
  const previous = accounts.get(key);
  const all = { ...rest, ...claims };
  const account = {
    claims: { sub: sub || previous?.claims.sub || randomUUID(), email, email_verified: true, ...all },
    misbehave: parseModes(misbehave),
  };
  accounts.set(key, account);
  return account;
}

setInterval(() => { // forget expired entries so long benchmark runs stay small
  const now = Date.now();
  for (const [key, entry] of store) if (entry.expiresAt <= now) store.delete(key);
  for (const [grantId, keys] of grantMembers) {
    for (const key of keys) if (!store.has(key)) keys.delete(key);
    if (!keys.size) grantMembers.delete(grantId);
  }
  for (const [key, id] of secondary) {
    if (!store.has(`${key.split(':')[0]}:${id}`)) secondary.delete(key);
  }
  for (const map of [codeModes, tokenModes]) {
    for (const [key, { at }] of map) if (now - at > 600_000) map.delete(key);
  }
}, 30_000).unref();

// --- keys: the published one, and a foreign one that never appears in the JWKS
const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const { privateKey: foreignKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const KID = randomUUID();
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: KID, use: 'sig', alg: 'RS256' };
const PUBLIC_PEM = publicKey.export({ type: 'spki', format: 'pem' });

const provider = new Provider(ISSUER, {
  adapter: TestAdapter,
  jwks: { keys: [jwk] },
  cookies: { keys: [randomUUID()] },
  pkce: { required: () => true, methods: ['S256'] },
  claims: {
    acr: null,
    amr: null,
    auth_time: null,
    sid: null,
    // acr, amr (from the account, via the session) and auth_time in every ID token
    openid: ['sub', 'acr', 'amr', 'auth_time'],
    email: ['email', 'email_verified'],
    profile: ['name', 'given_name', 'family_name', 'preferred_username', 'locale'],
    groups: ['groups'],
    ...(file.claims || {}),
  },
  conformIdTokenClaims: false,
  extraParams: {
    async misbehave(ctx, value) {
      try {
        parseModes(value);
      } catch (err) {
        throw new errors.InvalidRequest(`misbehave: ${err.message}`);
      }
    },
  },
  features: {
    devInteractions: { enabled: INTERACTIVE },
    registration: { enabled: true },
  },
  ...(INTERACTIVE ? {} : { interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` } }),
  // Automatic sign-in uses the account's sub; the interactive form's login is the email.
  findAccount: async (ctx, id) => {
    const account = accountBySub(id);
    if (!account) return undefined;
    return { accountId: id, claims: async () => ({ ...account.claims, sub: id }) };
  },
  ttl: {
    AccessToken: 600, AuthorizationCode: 60, IdToken: 600, Interaction: 600, Session: 600, Grant: 600,
  },
});
provider.proxy = false;

// --- ID token tampering
const b64 = (data) => Buffer.from(data).toString('base64url');
const readPart = (part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));

function tamperIdToken(idToken, modes) {
  const [rawHeader, rawPayload] = idToken.split('.');
  const header = readPart(rawHeader);
  const claims = readPart(rawPayload);
  const now = Math.floor(Date.now() / 1000);
  if (modes.has('wrong-iss')) claims.iss = WRONG_ISSUER;
  if (modes.has('wrong-aud')) claims.aud = OTHER_CLIENT;
  if (modes.has('expired')) Object.assign(claims, { iat: now - 7200, exp: now - 3600 });
  if (modes.has('future-iat')) Object.assign(claims, { iat: now + 3600, exp: now + 4200 });
  if (modes.has('nonce-mismatch')) claims.nonce = 'not-the-nonce-you-sent';
  if (modes.has('missing-sub')) delete claims.sub;
  if (modes.has('other-client')) Object.assign(claims, { aud: OTHER_CLIENT, azp: OTHER_CLIENT });
  if (modes.has('azp-other')) Object.assign(claims, { aud: [claims.aud, OTHER_CLIENT], azp: OTHER_CLIENT });

  let protectedHeader = { alg: 'RS256', typ: header.typ, kid: KID };
  if (modes.has('alg-none')) protectedHeader = { alg: 'none', typ: header.typ };
  if (modes.has('hs256-pubkey')) protectedHeader = { alg: 'HS256', typ: header.typ, kid: KID };
  if (modes.has('unknown-kid')) protectedHeader.kid = `unknown-${randomUUID()}`;
  const input = `${b64(JSON.stringify(protectedHeader))}.${b64(JSON.stringify(claims))}`;
  let signature;
  if (modes.has('alg-none')) signature = Buffer.alloc(0);
  else if (modes.has('hs256-pubkey')) signature = createHmac('sha256', PUBLIC_PEM).update(input).digest();
  else signature = cryptoSign('sha256', Buffer.from(input), modes.has('foreign-key') ? foreignKey : privateKey);
  return `${input}.${b64(signature)}`;
}

const TOKEN_CHANGES = [...SIGNING_MODES, 'wrong-iss', 'wrong-aud', 'expired', 'future-iat',
  'nonce-mismatch', 'missing-sub', 'other-client', 'azp-other'];
const sleep = (seconds) => new Promise((resolve) => { setTimeout(resolve, seconds * 1000); });

provider.use(async (ctx, next) => {
  await next();
  const route = ctx.oidc?.route;
  if (route === 'authorization' || route === 'resume') {
    const location = ctx.response.get('location');
    if (!location || !location.includes('code=')) return;
    const url = new URL(location);
    const code = url.searchParams.get('code');
    if (!code) return;
    const requested = parseModes(ctx.oidc.params?.misbehave);
    const accountId = ctx.oidc.session?.accountId;
    const modes = union(clientModes.get(ctx.oidc.client?.clientId), requested,
      accountId && accountBySub(accountId)?.misbehave);
    codeModes.set(code, { modes: requested, at: Date.now() });
    if (modes.has('mix-up')) {
      url.searchParams.set('iss', WRONG_ISSUER);
      ctx.response.set('location', url.href);
    }
  } else if (route === 'token' && ctx.status === 200 && ctx.body?.access_token) {
    const code = ctx.oidc.params?.code;
    const fromCode = code ? codeModes.get(code)?.modes : undefined;
    if (code) codeModes.delete(code);
    const sub = ctx.oidc.entities?.AuthorizationCode?.accountId
      || (ctx.body.id_token && readPart(ctx.body.id_token.split('.')[1]).sub);
    const modes = union(clientModes.get(ctx.oidc.client?.clientId), fromCode,
      sub && accountBySub(sub)?.misbehave);
    tokenModes.set(ctx.body.access_token, { modes, at: Date.now() });
    if (ctx.body.id_token && TOKEN_CHANGES.some((m) => modes.has(m))) {
      ctx.body = { ...ctx.body, id_token: tamperIdToken(ctx.body.id_token, modes) };
    }
    if (modes.has('slow-token')) await sleep(modes.get('slow-token') ?? 3);
  } else if (route === 'userinfo' && ctx.status === 200 && ctx.body?.sub) {
    const token = (ctx.get('authorization').match(/^(?:Bearer|DPoP) (.+)$/i) || [])[1]
      || ctx.oidc.params?.access_token;
    const modes = union(tokenModes.get(token)?.modes, clientModes.get(ctx.oidc.client?.clientId),
      accountBySub(ctx.body.sub)?.misbehave);
    if (modes.has('userinfo-sub')) ctx.body = { ...ctx.body, sub: `not-${ctx.body.sub}` };
  }
});

// --- automatic sign-in and consent
async function autoInteraction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  if (prompt.name === 'login') {
    const hint = String(params.login_hint || DEFAULT_ACCOUNT).toLowerCase();
    const account = accounts.get(hint);
    if (!account) {
      return provider.interactionFinished(req, res, {
        error: 'access_denied', error_description: 'unknown test account',
      }, { mergeWithLastSubmission: false });
    }
    const { sub, amr, acr } = account.claims;
    const login = { accountId: sub, ...(amr && { amr: [].concat(amr) }), ...(acr && { acr }) };
    return provider.interactionFinished(req, res, { login }, { mergeWithLastSubmission: false });
  }
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  const grantId = await grant.save();
  return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

// --- discovery pseudo-issuers: <issuer>/_rogue/<mode>
async function rogueDiscovery(req, res, spec) {
  let modes;
  try {
    modes = parseModes(spec, DISCOVERY_MODES);
  } catch (err) {
    res.writeHead(404, { 'content-type': 'text/plain' }).end(err.message);
    return;
  }
  const base = `${ISSUER}/_rogue/${spec}`;
  if (modes.has('slow-discovery')) await sleep(modes.get('slow-discovery') ?? 3);
  if (modes.has('not-json')) {
    res.writeHead(200, { 'content-type': 'application/json' })
      .end('<!doctype html><html><body><h1>Down for maintenance</h1></body></html>');
    return;
  }
  const document = {
    issuer: modes.has('discovery-wrong-issuer') ? WRONG_ISSUER : base,
    authorization_endpoint: `${ISSUER}/auth`,
    token_endpoint: `${ISSUER}/token`,
    userinfo_endpoint: `${ISSUER}/me`,
    jwks_uri: `${ISSUER}/jwks`,
    response_types_supported: ['code'],
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: ['RS256'],
    code_challenge_methods_supported: ['S256'],
    authorization_response_iss_parameter_supported: true,
  };
  if (!modes.has('huge-discovery')) {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(document));
    return;
  }
  // {"issuer": ..., "padding": "aaaa...."} streamed 1 MB at a time, as long as the reader reads.
  const megabytes = modes.get('huge-discovery') ?? 50;
  const chunk = Buffer.alloc(1024 * 1024, 'a');
  res.writeHead(200, { 'content-type': 'application/json' });
  res.write(`${JSON.stringify(document).slice(0, -1)},"padding":"`);
  for (let sent = 0; sent < megabytes && !res.destroyed; sent += 1) {
    if (!res.write(chunk)) await new Promise((resolve) => { res.once('drain', resolve); res.once('close', resolve); });
  }
  if (!res.destroyed) res.end('"}');
}

// --- admin
function readJson(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.on('data', (chunk) => {
      body += chunk;
      if (body.length > 1 << 20) reject(new Error('request body too large'));
    });
    req.on('end', () => { try { resolve(JSON.parse(body || '{}')); } catch (e) { reject(e); } });
    req.on('error', reject);
  });
}

function authorized(req) {
  if (!ADMIN_TOKEN) return false;
  const given = Buffer.from(String(req.headers.authorization || ''));
  const expected = Buffer.from(`Bearer ${ADMIN_TOKEN}`);
  return given.length === expected.length && timingSafeEqual(given, expected);
}

async function putClient({ misbehave, ...metadata }) {
  const modes = parseModes(misbehave);
  const full = {
    client_id: randomUUID(),
    client_secret: randomUUID() + randomUUID(),
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: 'RS256',
    ...metadata,
  };
  const client = new provider.Client(full); // throws on invalid metadata
  await provider.Client.adapter.upsert(client.clientId, client.metadata());
  clientModes.set(client.clientId, modes);
  return client.metadata();
}

const send = (res, status, body) => res.writeHead(status, { 'content-type': 'application/json' })
  .end(JSON.stringify(body));

async function admin(req, res) {
  if (!authorized(req)) {
    send(res, 401, { error: 'admin token required' });
    return;
  }
  if (req.method !== 'POST') {
    send(res, 405, { error: 'POST only' });
    return;
  }
  const body = await readJson(req);
  try {
    if (req.url === '/_test/clients') {
      send(res, 200, await putClient(body));
    } else if (req.url === '/_test/accounts') {
      send(res, 200, putAccount(body).claims);
    } else if (req.url === '/_test/misbehave') {
      const modes = parseModes(body.misbehave);
      if (body.client_id) clientModes.set(body.client_id, modes);
      else if (accounts.has(String(body.account).toLowerCase())) {
        accounts.get(String(body.account).toLowerCase()).misbehave = modes;
      } else throw new Error('client_id or a known account is required');
      send(res, 200, { misbehave: [...modes.keys()] });
    } else {
      send(res, 404, { error: 'no such admin endpoint' });
    }
  } catch (err) {
    send(res, 400, { error: err.error || 'bad_request', error_description: err.error_description || err.message });
  }
}

for (const client of file.clients || []) await putClient(client);
for (const account of file.accounts || []) putAccount(account);

const callback = provider.callback();
const fail = (res) => (err) => {
  console.error(err);
  if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' }).end(String(err));
  else res.destroy();
};
const server = createServer((req, res) => {
  const rogue = req.url.match(/^\/_rogue\/([^/?]+)\/\.well-known\/openid-configuration(?:\?.*)?$/);
  if (rogue) {
    rogueDiscovery(req, res, decodeURIComponent(rogue[1])).catch(fail(res));
  } else if (req.url.startsWith('/_test/')) {
    admin(req, res).catch(fail(res));
  } else if (!INTERACTIVE && req.url.startsWith('/interaction/')) {
    autoInteraction(req, res).catch(fail(res));
  } else {
    callback(req, res);
  }
});
server.listen(PORT, '127.0.0.1', () => console.log(`oidc-provider listening on ${ISSUER}`));
const stop = () => { server.close(); server.closeAllConnections(); process.exit(0); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
