// DEMO ONLY: not a production authorization server. Both clients may get every scope (so the
// mcp:admin "step-up" is granted to anyone holding a client key), both authenticate with the same
// key (the demo client certificate's), state is kept in memory and the token signing key is made
// anew at every start. oidc-provider 9 prints "Unsupported runtime" on Node 20: it runs.
//
// The MCP example's authorization server: panva's oidc-provider (npm, pinned in package.json)
// issuing JWT access tokens for one protected resource (RFC 8707 resource indicators), by the
// client credentials grant, the client authenticated with private_key_jwt (RFC 7523). Tokens are
// sender-constrained: bound to the client certificate of the TLS connection the token request
// came over (RFC 8705, client `mcp-mtls`), or to the key of the request's DPoP proof (RFC 9449,
// client `mcp-dpop`).
//
// Run from the repository's root after scripts/install-tools.sh (DEMO certificates from
// deploy/local; the client's private_key_jwt key is its certificate's key):
//
//   node deploy/mcp/authorization-server.mjs
//
// Options (defaults in brackets): --listen [127.0.0.1:9443], --issuer [https://localhost:9443],
// --cert/--key: its TLS server certificate [deploy/local/demo-server.{pem,key}],
// --client-cert: the client's certificate, whose public key verifies its client assertions
// [deploy/local/demo-client.pem], --resource: the protected resource's identifier, byte for byte
// the `resource` of its RFC 9728 metadata [https://localhost:8443/mcp], --scopes: the scopes
// tokens for it may carry ["mcp:tools mcp:admin"]. It prints `listening ISSUER` once ready, and
// one line per request (method, path, status; never a token).
import { readFileSync } from 'node:fs';
import { X509Certificate, generateKeyPairSync, randomUUID } from 'node:crypto';
import { createServer } from 'node:https';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const { values: options } = parseArgs({
  options: {
    listen: { type: 'string', default: '127.0.0.1:9443' },
    issuer: { type: 'string', default: 'https://localhost:9443' },
    cert: { type: 'string', default: 'deploy/local/demo-server.pem' },
    key: { type: 'string', default: 'deploy/local/demo-server.key' },
    'client-cert': { type: 'string', default: 'deploy/local/demo-client.pem' },
    resource: { type: 'string', default: 'https://localhost:8443/mcp' },
    scopes: { type: 'string', default: 'mcp:tools mcp:admin' },
  },
});

// The signing key of the access tokens: made at start, published at /jwks (certbound fetches it).
const signing = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
// The client's private_key_jwt verification key: its certificate's public key.
const clientKey = new X509Certificate(readFileSync(options['client-cert'])).publicKey.export({ format: 'jwk' });
const client = (id, binding) => ({
  client_id: id,
  token_endpoint_auth_method: 'private_key_jwt',
  token_endpoint_auth_signing_alg: 'ES256',
  jwks: { keys: [{ ...clientKey, alg: 'ES256', use: 'sig' }] },
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: options.scopes,
  ...binding,
});

const provider = new Provider(options.issuer, {
  clients: [
    client('mcp-mtls', { tls_client_certificate_bound_access_tokens: true }),
    client('mcp-dpop', { dpop_bound_access_tokens: true }),
  ],
  jwks: { keys: [{ ...signing, kid: randomUUID(), alg: 'ES256', use: 'sig' }] },
  // Its one key is ES256: the clients' defaults must not ask for RS256.
  clientDefaults: { id_token_signed_response_alg: 'ES256' },
  scopes: ['openid', ...options.scopes.split(' ')],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    dPoP: { enabled: true },
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      // The certificate of this TLS connection (the listener asks for one and accepts any: the
      // token is bound to whatever key the client proved it holds).
      getCertificate: (ctx) => ctx.socket.getPeerX509Certificate?.(),
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => options.resource,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resource) => {
        if (resource !== options.resource) {
          throw new errors.InvalidTarget(`unknown resource ${resource}`);
        }
        return {
          audience: resource,
          scope: options.scopes,
          accessTokenFormat: 'jwt',
          accessTokenTTL: 300,
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
});
provider.use(async (ctx, next) => {
  await next();
  console.log(`${ctx.method} ${ctx.path} ${ctx.status}`);
});
for (const event of ['grant.error', 'server_error']) {
  provider.on(event, (_ctx, error) => console.log(`${event}: ${error.message} ${error.error_description ?? ''}`));
}

const [host, port] = options.listen.split(':');
const server = createServer(
  {
    cert: readFileSync(options.cert),
    key: readFileSync(options.key),
    // Ask every client for a certificate, accept any: mcp-mtls tokens are bound to it.
    requestCert: true,
    rejectUnauthorized: false,
  },
  provider.callback(),
);
server.listen(Number(port), host, () => console.log(`listening ${options.issuer}`));
const stop = () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
