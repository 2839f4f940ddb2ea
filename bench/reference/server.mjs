// The reference provider for bench/run: Node.js oidc-provider 9.13 (OpenID Certified), configured like the
// Selfcare IdP for the cases the harness compares:
//   - discovery and JWKS, one ES256 signing key;
//   - client_credentials with a resource indicator -> ES256 JWT access token (RFC 9068 "at+jwt");
//   - userinfo and introspection on access tokens of a person, the same scopes and claims as ours
//     (openid, phone, profile, email; a resource server client that may introspect).
// One process, an in-memory store (the best case for it, as in shared/notes/performance.md).
//
// usage: node server.mjs PORT SETUP_JSON
//   SETUP_JSON: {"secret": "...", "tokens": N, "tokens_file": "...", "accounts": N}
// Writes N access tokens of people (opaque, for userinfo and introspection) to tokens_file, one per line, then
// prints "READY" on stdout.
import crypto from 'node:crypto';
import fs from 'node:fs';
import Provider from 'oidc-provider';

const port = Number(process.argv[2] || 3000);
const setup = JSON.parse(fs.readFileSync(process.argv[3], 'utf8'));
const issuer = `http://127.0.0.1:${port}`;
const API = 'https://api.bench.example';

const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), alg: 'ES256', use: 'sig' };
jwk.kid = crypto.createHash('sha256')
  .update(JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y })).digest('base64url');

// The store: in memory, like oidc-provider's own development adapter, but without its 1000-entry LRU (which would
// evict the tokens the cases present). In memory is the best case for the reference.
const storage = new Map();
const grants = new Map();
class MapAdapter {
  constructor(model) { this.model = model; }

  key(id) { return `${this.model}:${id}`; }

  async upsert(id, payload) {
    const key = this.key(id);
    storage.set(key, payload);
    if (payload.grantId) {
      if (!grants.has(payload.grantId)) grants.set(payload.grantId, new Set());
      grants.get(payload.grantId).add(key);
    }
  }

  async find(id) { return storage.get(this.key(id)); }

  async findByUid(uid) {
    for (const [key, payload] of storage) {
      if (key.startsWith(`${this.model}:`) && payload.uid === uid) return payload;
    }
    return undefined;
  }

  async findByUserCode(userCode) {
    for (const [key, payload] of storage) {
      if (key.startsWith(`${this.model}:`) && payload.userCode === userCode) return payload;
    }
    return undefined;
  }

  async consume(id) {
    const payload = storage.get(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) { storage.delete(this.key(id)); }

  async revokeByGrantId(grantId) {
    for (const key of grants.get(grantId) || []) storage.delete(key);
    grants.delete(grantId);
  }
}

// Accounts like ours: an opaque sub, the line, the company.
const accounts = new Map();
for (let i = 0; i < setup.accounts; i += 1) {
  const id = crypto.randomBytes(16).toString('base64url');
  accounts.set(id, {
    sub: id,
    phone_number: `+39320${String(i).padStart(7, '0')}`,
    phone_number_verified: true,
    email: `user${i}@acme.example`,
    email_verified: true,
    role: 'employee',
    customer_code: `C${String(Math.floor(i / 50)).padStart(6, '0')}`,
    customer_name: `Cliente ${Math.floor(i / 50)} S.r.l.`,
  });
}

const provider = new Provider(issuer, {
  adapter: MapAdapter,
  clients: [
    {
      client_id: 'bench-cc', client_secret: setup.secret, grant_types: ['client_credentials'],
      response_types: [], redirect_uris: [], token_endpoint_auth_method: 'client_secret_basic', scope: 'api:read',
      id_token_signed_response_alg: 'ES256',
    },
    {
      client_id: 'bench-rp', client_secret: setup.secret, grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'], redirect_uris: ['https://rp.bench.example/cb'],
      token_endpoint_auth_method: 'client_secret_basic', id_token_signed_response_alg: 'ES256',
    },
    {
      client_id: 'bench-rs', client_secret: setup.secret, grant_types: [], response_types: [], redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic', id_token_signed_response_alg: 'ES256',
    },
  ],
  jwks: { keys: [jwk] },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'phone', 'api:read'],
  claims: {
    openid: ['sub'],
    phone: ['phone_number', 'phone_number_verified'],
    email: ['email', 'email_verified'],
    profile: ['role', 'customer_code', 'customer_name'],
  },
  findAccount: async (ctx, id) => {
    const claims = accounts.get(id);
    if (!claims) return undefined;
    return { accountId: id, claims: async () => claims };
  },
  enabledJWA: { idTokenSigningAlgValues: ['ES256'], userinfoSigningAlgValues: ['ES256'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true, allowedPolicy: async () => true },
    revocation: { enabled: true, allowedPolicy: async (ctx, client, token) => token.clientId === client.clientId },
    userinfo: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (ctx, client, oneOf) => oneOf,
      useGrantedResource: async () => false,
      getResourceServerInfo: async (ctx, resourceIndicator) => {
        if (resourceIndicator !== API) throw new Provider.errors.InvalidTarget();
        return { scope: 'api:read', audience: API, accessTokenTTL: 600, accessTokenFormat: 'jwt',
                 jwt: { sign: { alg: 'ES256' } } };
      },
    },
  },
  ttl: { AccessToken: 600, ClientCredentials: 600, IdToken: 600, Grant: 86400 },
});
provider.proxy = false;

// Access tokens of people for userinfo and introspection, minted through the provider's own models.
const client = await provider.Client.find('bench-rp');
const ids = [...accounts.keys()];
const lines = [];
for (let i = 0; i < setup.tokens; i += 1) {
  const accountId = ids[i % ids.length];
  const grant = new provider.Grant({ accountId, clientId: client.clientId });
  grant.addOIDCScope('openid profile phone');
  const grantId = await grant.save();
  const token = new provider.AccessToken({ accountId, client, grantId, gty: 'authorization_code',
                                           scope: 'openid profile phone' });
  lines.push(await token.save());
}
fs.writeFileSync(setup.tokens_file, lines.join('\n') + '\n');

provider.listen(port, '127.0.0.1', () => {
  process.stdout.write('READY\n');
});
