// The MCP example's client: the official MCP TypeScript SDK's own `Client` and
// `StreamableHTTPClientTransport`, with its non-interactive `PrivateKeyJwtProvider` (client
// credentials, private_key_jwt) from `@modelcontextprotocol/sdk/client/auth-extensions`. It starts
// with nothing but the MCP server's URL: the SDK gets the 401, follows the challenge's
// `resource_metadata` (RFC 9728), discovers the authorization server there, asks it for a token
// for that resource (RFC 8707) and retries. Then it lists and calls the tools, and calls the admin
// endpoint's tool, where certbound's 403 `insufficient_scope` makes the SDK ask for the scope it
// names (step-up) and retry.
//
// The sender constraint is the `fetch` the SDK is given:
//   - certificate-bound tokens (default, client `mcp-mtls`): undici's fetch with an `Agent`
//     presenting the client certificate, on every connection (the authorization server binds the
//     token to it, certbound checks the binding);
//   - DPoP (`--dpop`, client `mcp-dpop`): the SDK has no DPoP, so that fetch adds what RFC 9449
//     asks, made by panva's independent `dpop` package: a proof on the token request (the
//     authorization server binds the token to its key), and on each MCP request the token sent
//     as `Authorization: DPoP` with a proof carrying its `ath` (the SDK itself sends
//     `Authorization: Bearer`, which certbound refuses for a DPoP-bound token).
//
// Run from the repository's root after scripts/install-tools.sh, with the example's stack up
// (deploy/mcp/README.md):
//
//   node deploy/mcp/client.mjs https://localhost:8443/mcp
//
// Options: --cert/--key: the client certificate, whose key also signs the client assertions
// [deploy/local/demo-client.{pem,key}], --ca: the CA the servers' certificates are checked with
// [deploy/local/demo-ca.pem], --client-id [mcp-mtls, or mcp-dpop with --dpop], --issuer: the
// authorization server the credentials belong to (the SDK's `expectedIssuer`; without it the SDK
// warns and trusts the one the metadata names), --dpop, and --other-cert/--other-key: another
// client's certificate, from which the client finally replays its token as a thief would (with
// DPoP: the token sent as Bearer, as the SDK alone would, and with a proof of another key); each
// replay must be refused.
//
// It prints one JSON document: the tools and their answers, every HTTP request it made (method,
// URL, status, the scheme of its credentials; never a token), every challenge it got (as sent,
// and as parsed by oauth4webapi, an independent OAuth client library), the metadata documents
// it read, and the claims of its tokens (no signature). It exits non-zero if any step failed.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { PrivateKeyJwtProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js';
import * as DPoP from 'dpop';
import * as oauth from 'oauth4webapi';
import { Agent, fetch as undiciFetch } from 'undici';

const { values: options, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    cert: { type: 'string', default: 'deploy/local/demo-client.pem' },
    key: { type: 'string', default: 'deploy/local/demo-client.key' },
    ca: { type: 'string', default: 'deploy/local/demo-ca.pem' },
    'client-id': { type: 'string' },
    issuer: { type: 'string' },
    dpop: { type: 'boolean', default: false },
    'other-cert': { type: 'string' },
    'other-key': { type: 'string' },
  },
});
if (positionals.length !== 1) {
  console.error('usage: node deploy/mcp/client.mjs [options] MCP_SERVER_URL');
  process.exit(64);
}
const serverUrl = new URL(positionals[0]);
const adminUrl = new URL(`${serverUrl.href.replace(/\/$/, '')}/admin`);
const clientId = options['client-id'] ?? (options.dpop ? 'mcp-dpop' : 'mcp-mtls');
const privateKey = readFileSync(options.key, 'utf8');

const report = { requests: [], challenges: [], metadata: {}, tokens: [], tools: {}, calls: {} };

// Every connection presents the client certificate and trusts only the given CA.
const agent = new Agent({
  connect: { cert: readFileSync(options.cert), key: privateKey, ca: readFileSync(options.ca) },
});
// undici's Response is not the global one the SDK tests with `instanceof`: handed over as one.
const tlsFetch = async (url, init = {}) => {
  const response = await undiciFetch(url, { ...init, dispatcher: agent });
  const { status, statusText, headers } = response;
  return new Response(response.body, { status, statusText, headers });
};

// A challenge as an independent OAuth client library reads it: oauth4webapi throws
// WWWAuthenticateChallengeError with the parsed challenges for any response that carries one.
async function parsedByOauth4webapi(response) {
  const copy = new Response(null, { status: response.status, headers: response.headers });
  try {
    await oauth.processUserInfoResponse({ issuer: 'https://as.invalid' }, { client_id: 'x' }, oauth.skipSubjectCheck, copy);
  } catch (error) {
    if (error instanceof oauth.WWWAuthenticateChallengeError) return error.cause;
  }
  return null; // not parsed
}

const dpopKeys = options.dpop ? await DPoP.generateKeyPair('ES256') : null;
const nonces = new Map(); // origin -> the DPoP-Nonce it last sent

// The SDK's scope selection (MCP's: the challenge's `scope`, else the metadata's
// `scopes_supported`) reaches its authorization-code flow only: for client credentials, SDK
// 1.32.2 asks `prepareTokenRequest` with the provider's configured scope (`fetchToken`), so a 403
// insufficient_scope would be answered with the same token again ("Server returned 403 after
// trying upscoping"). This provider asks for the scopes the resource named instead: those of
// its metadata at first, plus those each insufficient_scope challenge names.
class ScopeFollowingProvider extends PrivateKeyJwtProvider {
  scopes = new Set();

  learn(scopes) {
    for (const scope of scopes) this.scopes.add(scope);
  }

  prepareTokenRequest() {
    const params = new URLSearchParams({ grant_type: 'client_credentials' });
    if (this.scopes.size) params.set('scope', [...this.scopes].join(' '));
    return params;
  }
}

const provider = new ScopeFollowingProvider({
  clientId,
  privateKey,
  algorithm: 'ES256',
  clientName: 'certbound MCP example',
  ...(options.issuer ? { expectedIssuer: options.issuer } : {}),
});

async function send(url, init) {
  const headers = new Headers(init.headers);
  const method = init.method ?? 'GET';
  const target = new URL(url);
  const htu = `${target.origin}${target.pathname}`;
  const isTokenRequest = init.body instanceof URLSearchParams && init.body.has('grant_type');
  if (dpopKeys && isTokenRequest) {
    headers.set('dpop', await DPoP.generateProof(dpopKeys, htu, method, nonces.get(target.origin)));
  }
  const authorization = headers.get('authorization');
  if (dpopKeys && authorization?.startsWith('Bearer ')) {
    const token = authorization.slice('Bearer '.length);
    headers.set('authorization', `DPoP ${token}`);
    headers.set('dpop', await DPoP.generateProof(dpopKeys, htu, method, nonces.get(target.origin), token));
  }
  const response = await tlsFetch(url, { ...init, headers });
  const nonce = response.headers.get('dpop-nonce');
  if (nonce) nonces.set(target.origin, nonce);
  return response;
}

async function recordingFetch(url, init = {}) {
  const method = init.method ?? 'GET';
  let response = await send(url, init);
  const challenge = response.headers.get('www-authenticate');
  // RFC 9449 §8/§9: a server that wants a nonce says so once; the request is made again with it.
  if (dpopKeys && (response.status === 400 || response.status === 401) && response.headers.get('dpop-nonce')
      && (challenge?.includes('use_dpop_nonce') || (await response.clone().text()).includes('use_dpop_nonce'))) {
    report.requests.push({ method, url: String(url), status: response.status, credentials: scheme(init), nonce_retry: true });
    response = await send(url, init);
  }
  const entry = { method, url: String(url), status: response.status, credentials: scheme(init, !!dpopKeys) };
  report.requests.push(entry);
  const value = response.headers.get('www-authenticate');
  if (value) {
    const parsed = await parsedByOauth4webapi(response);
    report.challenges.push({ url: String(url), status: response.status, value, oauth4webapi: parsed });
    for (const { parameters } of parsed ?? []) {
      if (parameters.error === 'insufficient_scope' && parameters.scope) provider.learn(parameters.scope.split(' '));
    }
  }
  const path = new URL(url).pathname;
  if (path.startsWith('/.well-known/') && response.ok) {
    report.metadata[String(url)] = {
      content_type: response.headers.get('content-type'),
      cache_control: response.headers.get('cache-control'),
      document: await response.clone().json(),
    };
    const { scopes_supported: supported } = report.metadata[String(url)].document;
    if (path.startsWith('/.well-known/oauth-protected-resource') && !provider.scopes.size && supported) {
      provider.learn(supported);
    }
  }
  if (init.body instanceof URLSearchParams && init.body.has('grant_type')) {
    entry.grant_type = init.body.get('grant_type');
    entry.resource = init.body.get('resource');
    entry.scope = init.body.get('scope');
    entry.client_assertion = init.body.has('client_assertion');
    if (response.ok) {
      const body = await response.clone().json();
      entry.token_type = body.token_type;
      const claims = JSON.parse(Buffer.from(body.access_token.split('.')[1], 'base64url'));
      report.tokens.push({ token_type: body.token_type, scope: body.scope, claims });
    }
  }
  return response;
}

function scheme(init, dpop = false) {
  const value = new Headers(init.headers).get('authorization');
  if (!value) return null;
  const sent = value.split(' ')[0];
  return dpop && sent === 'Bearer' ? 'DPoP' : sent;
}

async function connect(url) {
  const client = new Client({ name: 'certbound-example-client', version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(url, { authProvider: provider, fetch: recordingFetch });
  await client.connect(transport);
  return client;
}

// The last token, replayed without its key: the sender constraint at work. A `tools/list` call
// as the SDK makes it; each answer recorded with its challenge.
async function replays() {
  const token = provider.tokens().access_token;
  const url = String(serverUrl);
  const call = async (what, agentFor, headers) => {
    const response = await undiciFetch(url, {
      method: 'POST',
      dispatcher: agentFor,
      headers: {
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        'mcp-protocol-version': '2025-11-25',
        ...headers,
      },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' }),
    });
    const copy = new Response(null, { status: response.status, headers: response.headers });
    await response.body?.cancel();
    const value = copy.headers.get('www-authenticate');
    report.replays.push({ what, status: copy.status, challenge: value });
    if (value) report.challenges.push({ url, status: copy.status, value, oauth4webapi: await parsedByOauth4webapi(copy) });
  };
  const other = new Agent({
    connect: { cert: readFileSync(options['other-cert']), key: readFileSync(options['other-key']), ca: readFileSync(options.ca) },
  });
  const anonymous = new Agent({ connect: { ca: readFileSync(options.ca) } });
  report.replays = [];
  if (dpopKeys) {
    await call('the DPoP token as Bearer (what the SDK alone sends)', agent, { authorization: `Bearer ${token}` });
    const otherKeys = await DPoP.generateKeyPair('ES256');
    const proof = await DPoP.generateProof(otherKeys, url, 'POST', undefined, token);
    await call('the DPoP token with a proof of another key', other, { authorization: `DPoP ${token}`, dpop: proof });
  } else {
    await call('the token from another client certificate', other, { authorization: `Bearer ${token}` });
    await call('the token without a client certificate', anonymous, { authorization: `Bearer ${token}` });
  }
  await other.close();
  await anonymous.close();
}

let failed = false;
try {
  const tools = await connect(serverUrl);
  report.tools['/mcp'] = (await tools.listTools()).tools.map((t) => t.name);
  report.calls.echo = (await tools.callTool({ name: 'echo', arguments: { message: 'hello through certbound' } })).content[0].text;
  report.calls.whoami = (await tools.callTool({ name: 'whoami', arguments: {} })).content[0].text;
  await tools.close();
  // The admin endpoint: the token has mcp:tools only; certbound answers 403 insufficient_scope
  // naming mcp:admin, and the SDK steps up. It reads challenges of the Bearer scheme only
  // (`extractWWWAuthenticateParams`), so with DPoP it gives up on the 403 instead: the client
  // then drops its token and connects again, the SDK's 401 flow asking for the scopes the
  // challenge named.
  let admin;
  try {
    admin = await connect(adminUrl);
  } catch (error) {
    if (!(dpopKeys && error.code === 403 && provider.scopes.has('mcp:admin'))) throw error;
    report.reconnected_after = error.message;
    provider.saveTokens(undefined);
    admin = await connect(adminUrl);
  }
  report.tools['/mcp/admin'] = (await admin.listTools()).tools.map((t) => t.name);
  report.calls.audit = (await admin.callTool({ name: 'audit', arguments: {} })).content[0].text;
  await admin.close();
  if (options['other-cert']) await replays();
} catch (error) {
  failed = true;
  report.error = `${error.name}: ${error.message}`;
}
console.log(JSON.stringify(report, null, 2));
await agent.close();
process.exit(failed ? 1 : 0);
