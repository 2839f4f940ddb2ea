// A relying party built on panva's openid-client 6 (an independent, OpenID-certified client library), driven by
// tests/test_openid_client.py against a live IdP. Everything the library checks, it checks for real: discovery
// metadata, the authorization response (state, iss per RFC 9207), PKCE S256, the ID token (signature through the
// JWKS, iss, aud, exp, iat, nonce, at_hash, auth_time), the userinfo `sub`, the refreshed ID token.
//
// Protocol (one JSON object per line):
//   config  argv[2] or env OIDC_RP_CONFIG: {"issuer", "client_id", "client_secret" (null: public client,
//           auth method "none"), "redirect_uri", "scope"?, "introspect"?}
//   stdout  {"authorization_url": "..."}
//   stdin   the full callback URL (code, state, iss)
//   stdout  {"ok": true, ...results} and exit 0, or {"error": "...", ...} and exit 1
import * as client from 'openid-client';
import { createInterface } from 'node:readline';

function emit(object) {
  process.stdout.write(JSON.stringify(object) + '\n');
}

function readConfig() {
  const raw = process.argv[2] ?? process.env.OIDC_RP_CONFIG;
  if (!raw) throw new Error('no configuration: pass JSON as the first argument or in OIDC_RP_CONFIG');
  const config = JSON.parse(raw);
  for (const key of ['issuer', 'client_id', 'redirect_uri']) {
    if (!config[key]) throw new Error(`configuration lacks ${key}`);
  }
  return config;
}

function readLine() {
  return new Promise((resolve, reject) => {
    const rl = createInterface({ input: process.stdin, terminal: false });
    let done = false;
    rl.once('line', (line) => { done = true; rl.close(); resolve(line.trim()); });
    rl.once('close', () => { if (!done) reject(new Error('stdin closed before the callback URL arrived')); });
  });
}

function jwtHeader(jwt) {
  return JSON.parse(Buffer.from(jwt.split('.')[0], 'base64url').toString('utf8'));
}

async function main() {
  const config = readConfig();
  const publicClient = config.client_secret == null;
  const clientAuth = publicClient ? client.None() : client.ClientSecretBasic(config.client_secret);
  const metadata = { redirect_uris: [config.redirect_uri], response_types: ['code'] };
  // Our test issuer is plain http on loopback: openid-client refuses that unless told.
  const oidc = await client.discovery(new URL(config.issuer), config.client_id, metadata, clientAuth,
    { execute: [client.allowInsecureRequests] });
  const serverMetadata = oidc.serverMetadata();

  const codeVerifier = client.randomPKCECodeVerifier();
  const codeChallenge = await client.calculatePKCECodeChallenge(codeVerifier);
  const state = client.randomState();
  const nonce = client.randomNonce();
  const authorizationUrl = client.buildAuthorizationUrl(oidc, {
    redirect_uri: config.redirect_uri,
    scope: config.scope ?? 'openid profile phone',
    code_challenge: codeChallenge,
    code_challenge_method: 'S256',
    state,
    nonce,
  });
  emit({ authorization_url: authorizationUrl.href });

  const callback = new URL(await readLine());
  // Validates the authorization response (state, iss), redeems the code with the PKCE verifier and validates
  // the ID token: JWS signature with the key from jwks_uri, iss, aud, exp, iat, nonce, at_hash.
  const tokens = await client.authorizationCodeGrant(oidc, callback, {
    pkceCodeVerifier: codeVerifier,
    expectedState: state,
    expectedNonce: nonce,
    idTokenExpected: true,
  });
  const idClaims = tokens.claims();
  if (!idClaims) throw new Error('no ID token in the token response');

  // fetchUserInfo refuses a response whose sub differs from the expected one; we compare again ourselves.
  const userinfo = await client.fetchUserInfo(oidc, tokens.access_token, idClaims.sub);
  if (userinfo.sub !== idClaims.sub) throw new Error('userinfo sub differs from the ID token sub');

  let introspection = null;
  if (config.introspect) {
    introspection = await client.tokenIntrospection(oidc, tokens.access_token);
  }

  if (!tokens.refresh_token) throw new Error('no refresh token in the token response');
  // The refreshed ID token is validated too (same iss, sub, aud; OIDC Core §12.2).
  const refreshed = await client.refreshTokenGrant(oidc, tokens.refresh_token);
  const refreshedClaims = refreshed.claims() ?? null;
  if (!refreshed.access_token) throw new Error('the refresh returned no access token');
  if (!refreshed.refresh_token) throw new Error('the refresh returned no refresh token (no rotation)');
  const refreshUserinfo = await client.fetchUserInfo(oidc, refreshed.access_token, idClaims.sub);

  // RFC 7009: the server answers 200 for a revoked token; tokenRevocation throws on anything else.
  await client.tokenRevocation(oidc, refreshed.refresh_token, { token_type_hint: 'refresh_token' });
  let introspectionAfterRevocation = null;
  if (config.introspect) {
    introspectionAfterRevocation = await client.tokenIntrospection(oidc, refreshed.refresh_token,
      { token_type_hint: 'refresh_token' });
  }

  emit({
    ok: true,
    public_client: publicClient,
    server_issuer: serverMetadata.issuer,
    authorization_url: authorizationUrl.href,
    state,
    nonce,
    code_challenge: codeChallenge,
    token_type: tokens.token_type,
    expires_in: tokens.expiresIn() ?? null,
    scope: tokens.scope ?? null,
    id_token_header: jwtHeader(tokens.id_token),
    id_token_claims: idClaims,
    userinfo,
    introspection,
    access_token: tokens.access_token,
    refresh_token: tokens.refresh_token,
    refresh: {
      worked: true,
      access_token: refreshed.access_token,
      refresh_token: refreshed.refresh_token,
      new_access_token: refreshed.access_token !== tokens.access_token,
      new_refresh_token: refreshed.refresh_token !== tokens.refresh_token,
      id_token_claims: refreshedClaims,
      userinfo_sub: refreshUserinfo.sub,
    },
    revocation: { revoked: true, token: refreshed.refresh_token },
    introspection_after_revocation: introspectionAfterRevocation,
  });
}

main().then(
  () => process.exit(0),
  (err) => {
    const report = { error: `${err?.name ?? 'Error'}: ${err?.message ?? String(err)}` };
    for (const key of ['code', 'error', 'error_description', 'status']) {
      if (err?.[key] !== undefined) report[key === 'error' ? 'oauth_error' : key] = err[key];
    }
    const cause = err?.cause;
    if (cause instanceof Error) {
      report.cause = `${cause.name}: ${cause.message}`;
      if (cause.code !== undefined) report.cause_code = cause.code;
    } else if (cause instanceof Response) {
      report.cause = `HTTP ${cause.status} from ${cause.url}`;
    } else if (cause !== undefined) {
      try { report.cause = JSON.parse(JSON.stringify(cause)); } catch { report.cause = String(cause); }
    }
    emit(report);
    process.exit(1);
  },
);
