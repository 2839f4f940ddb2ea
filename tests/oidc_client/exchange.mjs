// Token exchange (RFC 8693) performed by panva's openid-client 6, an independent OAuth/OIDC client library, against
// a live IdP (tests/test_token_exchange.py). The library does discovery (and this script checks that the grant is
// advertised), authenticates the client (private_key_jwt with the given private JWK, or client_secret_basic), sends
// the exchange with genericGrantRequest and validates the token response (JSON, token_type, expires_in …).
// It can first obtain the client's own client_credentials token to use it as the actor token (delegation).
//
// Protocol: config JSON in argv[2]:
//   {"issuer", "client_id", "client_secret"? | "private_jwk"?, "actor_from_client_credentials"?: bool,
//    "requests": [{"label", "parameters": {...RFC 8693 parameters...}, "with_actor"?: bool}]}
// stdout: one JSON line {"ok": true, "grant_advertised", "token_endpoint", "results": [{"label", "ok": true,
//   "response": {...}} | {"label", "ok": false, "oauth_error", "error_description", "status"}]} and exit 0,
//   or {"error": "..."} and exit 1.
import * as client from 'openid-client';

const GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

function emit(object) {
  process.stdout.write(JSON.stringify(object) + '\n');
}

async function clientAuthentication(config) {
  if (config.private_jwk) {
    const jwk = config.private_jwk;
    const algorithm = jwk.kty === 'EC' ? { name: 'ECDSA', namedCurve: jwk.crv }
      : { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
    const key = await crypto.subtle.importKey('jwk', jwk, algorithm, false, ['sign']);
    return client.PrivateKeyJwt({ key, kid: jwk.kid });
  }
  if (config.client_secret) return client.ClientSecretBasic(config.client_secret);
  throw new Error('configuration lacks client_secret or private_jwk');
}

function describe(err) {
  return {
    ok: false,
    oauth_error: err?.error ?? null,
    error_description: err?.error_description ?? null,
    status: err?.status ?? null,
    message: `${err?.name ?? 'Error'}: ${err?.message ?? String(err)}`,
  };
}

async function main() {
  const raw = process.argv[2];
  if (!raw) throw new Error('no configuration: pass JSON as the first argument');
  const config = JSON.parse(raw);
  for (const key of ['issuer', 'client_id', 'requests']) {
    if (!config[key]) throw new Error(`configuration lacks ${key}`);
  }
  const auth = await clientAuthentication(config);
  // Our test issuer is plain http on loopback: openid-client refuses that unless told.
  const oidc = await client.discovery(new URL(config.issuer), config.client_id, {}, auth,
    { execute: [client.allowInsecureRequests] });
  const metadata = oidc.serverMetadata();
  const advertised = (metadata.grant_types_supported ?? []).includes(GRANT);

  let actorToken = null;
  if (config.actor_from_client_credentials) {
    const own = await client.clientCredentialsGrant(oidc, {});
    actorToken = own.access_token;
  }

  const results = [];
  for (const item of config.requests) {
    const parameters = { ...item.parameters };
    if (item.with_actor) {
      parameters.actor_token = actorToken;
      parameters.actor_token_type = ACCESS_TOKEN_TYPE;
    }
    try {
      const response = await client.genericGrantRequest(oidc, GRANT, parameters);
      results.push({
        label: item.label,
        ok: true,
        response: {
          access_token: response.access_token,
          issued_token_type: response.issued_token_type,
          token_type: response.token_type,
          expires_in: response.expires_in,
          expires_in_helper: response.expiresIn() ?? null,
          scope: response.scope ?? null,
          refresh_token: response.refresh_token ?? null,
        },
      });
    } catch (err) {
      results.push({ label: item.label, ...describe(err) });
    }
  }
  emit({ ok: true, grant_advertised: advertised, token_endpoint: metadata.token_endpoint,
    actor_token: actorToken, results });
}

main().then(
  () => process.exit(0),
  (err) => {
    emit({ error: `${err?.name ?? 'Error'}: ${err?.message ?? String(err)}`, ...describe(err) });
    process.exit(1);
  },
);
