// An independent RFC 9449 client for the end-to-end tests: panva's `dpop` npm package makes the
// key pair and the proofs, `jose` computes the RFC 7638 thumbprint. Nothing here is certbound's.
//
// Usage: node dpop-client.mjs ALG   (ES256, Ed25519, RS256 or PS256)
// Prints {"jkt": ..., "jkt_dpop": ...} once, then answers each line of JSON on stdin,
// {"htm", "htu", "token", "nonce"?}, with {"proof": ...}.
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import { join } from 'node:path';

const modules = process.env.CERTBOUND_NODE_MODULES;
if (!modules) {
  console.error('CERTBOUND_NODE_MODULES must name the node_modules folder (scripts/install-tools.sh)');
  process.exit(64);
}
const load = (path) => import(pathToFileURL(join(modules, path)).href);
const DPoP = await load('dpop/build/index.js');
const jose = await load('jose/dist/webapi/index.js');

const alg = process.argv[2] ?? 'ES256';
const keypair = await DPoP.generateKeyPair(alg);
const jwk = await jose.exportJWK(keypair.publicKey);
const jkt = await jose.calculateJwkThumbprint(jwk, 'sha256');
const jktDpop = await DPoP.calculateThumbprint(keypair.publicKey);
console.log(JSON.stringify({ jkt, jkt_dpop: jktDpop }));

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const { htm, htu, token, nonce } = JSON.parse(line);
  const proof = await DPoP.generateProof(keypair, htu, htm, nonce ?? undefined, token);
  console.log(JSON.stringify({ proof }));
}
