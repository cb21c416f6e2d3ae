#!/usr/bin/env bash
# Offline checks of the deployment manifests (no cluster here):
# - kustomize renders the base and the overlay;
# - every rendered object validates against the Kubernetes schemas (kubernetes-validate, strict);
# - the certbound configuration inside the ConfigMap, and the other shipped certbound configs,
#   pass `certbound check-config`;
# - the Envoy module's filter_config, wherever it is shipped (deploy/envoy/module.yaml, the
#   Istio EnvoyFilter, the Envoy Gateway EnvoyExtensionPolicy), passes `check-config --module`;
# - the Istio, Envoy Gateway and Traefik manifests are well-formed YAML with
#   apiVersion/kind/metadata, and the CRD fields certbound relies on are spelt as their CRDs
#   have them (Envoy Gateway v1.9.0, Traefik v3).
# Envoy bootstraps under deploy/ are validated by tests/envoy_e2e.rs (envoy --mode validate).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${CERTBOUND_BIN:-target/debug/certbound}
[ -x "$bin" ] || cargo build --quiet --bin certbound
venv=.venv/bin
kubectl=$(command -v kubectl || echo "$venv/kubectl")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0

for kustomization in deploy/kubernetes/base deploy/kubernetes/overlays/*/; do
  name=$(echo "$kustomization" | tr '/' '_')
  "$kubectl" kustomize "$kustomization" >"$work/$name.yaml"
  "$venv/kubernetes-validate" --strict --quiet "$work/$name.yaml"
  echo "ok: $kustomization renders and validates ($(grep -c '^kind:' "$work/$name.yaml") objects)"
  passed=$((passed + 1))
  # The config in the rendered ConfigMap must be valid certbound configuration.
  "$venv/python" - "$work/$name.yaml" "$work/$name-certbound.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
maps = [d for d in docs if d["kind"] == "ConfigMap" and "certbound.yaml" in d.get("data", {})]
assert len(maps) == 1, f"expected one certbound ConfigMap, found {len(maps)}"
open(sys.argv[2], "w").write(maps[0]["data"]["certbound.yaml"])
PY
  "$bin" check-config --config "$work/$name-certbound.yaml" >/dev/null
  echo "ok: $kustomization ConfigMap passes certbound check-config"
  passed=$((passed + 1))
done

for config in deploy/istio/certbound-xfcc.yaml deploy/local/certbound.yaml deploy/forward-auth/certbound*.yaml \
  deploy/mcp/certbound*.yaml; do
  "$bin" check-config --config "$config" >/dev/null
  echo "ok: $config passes certbound check-config"
  passed=$((passed + 1))
done

# The Envoy module's filter_config in every place it is shipped passes `check-config --module`.
("$venv/python" - "$work" <<'PY'
import json, os, sys, yaml
out = sys.argv[1]
found = []
def walk(node, path):
    if isinstance(node, dict):
        # The filter's configuration (a per-route one, DynamicModuleFilterPerRoute, names the
        # filter too but holds only route requirements).
        per_route = str(node.get("@type", "")).endswith("PerRoute")
        if node.get("filter_name") == "certbound" and "filter_config" in node and not per_route:
            found.append((path, node["filter_config"]["value"]))
        if "dynamicModule" in node:
            for module in node["dynamicModule"]:
                found.append((path, yaml.safe_dump(module["config"])))
        for value in node.values():
            walk(value, path)
    elif isinstance(node, list):
        for value in node:
            walk(value, path)
for path in ["deploy/envoy/module.yaml", "deploy/istio/module-envoy-filter.yaml",
             "deploy/envoy-gateway/module-extension-policy.yaml", "deploy/mcp/envoy-module.yaml"]:
    for doc in yaml.safe_load_all(open(path)):
        walk(doc, path)
for i, (path, text) in enumerate(found):
    name = os.path.join(out, f"module-{i}.yaml")
    open(name, "w").write(text)
    print(f"{path}\t{name}")
PY
) >"$work/module-configs.tsv"
[ -s "$work/module-configs.tsv" ] || { echo "no module filter_config found" >&2; exit 1; }
while IFS=$'\t' read -r source config; do
  "$bin" check-config --module --config "$config" >/dev/null
  echo "ok: the module filter_config in $source passes certbound check-config --module"
  passed=$((passed + 1))
done <"$work/module-configs.tsv"

"$venv/python" - deploy/istio/*.yaml deploy/envoy-gateway/*.yaml deploy/traefik/*.yaml deploy/observability/prometheus-rule.yaml <<'PY'
import sys, yaml

def only(path, kind, where, node, allowed):
    """Kubernetes prunes unknown fields of a CRD: a misspelt one silently loses the setting."""
    unknown = set(node) - set(allowed)
    assert not unknown, f"{path}: {kind} {where} has fields its CRD does not: {unknown}"

for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        if doc is None or "static_resources" in doc or "issuers" in doc:
            continue
        missing = [k for k in ("apiVersion", "kind") if k not in doc]
        assert not missing, f"{path}: {doc.get('kind')} lacks {missing}"
        if doc["kind"] != "IstioOperator":
            assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} without metadata.name"
        # Envoy Gateway v1.9.0's EnvoyProxy.spec.dynamicModules[]: {name, source, doNotClose,
        # loadGlobally}; source is required, Local {path: absolute} or Remote {url, sha256}.
        # Kubernetes prunes unknown fields, so a wrong name silently loses the setting.
        if doc["kind"] == "EnvoyProxy":
            for module in doc.get("spec", {}).get("dynamicModules", []):
                unknown = set(module) - {"name", "source", "doNotClose", "loadGlobally"}
                assert not unknown, f"{path}: dynamicModules entry with unknown fields {unknown}"
                source = module.get("source")
                assert source, f"{path}: dynamicModules entry {module.get('name')} without source"
                kind = source.get("type")
                if kind == "Local":
                    local = source.get("local", {})
                    assert set(local) == {"path"} and local["path"].startswith("/"), \
                        f"{path}: Local source needs an absolute local.path"
                elif kind == "Remote":
                    remote = source.get("remote", {})
                    assert {"url", "sha256"} <= set(remote), f"{path}: Remote needs url and sha256"
                else:
                    raise AssertionError(f"{path}: source.type must be Local or Remote, not {kind}")
        # Envoy Gateway v1.9.0's SecurityPolicy.spec.extAuth and its HTTPExtAuthService.
        if doc["kind"] == "SecurityPolicy" and "extAuth" in doc.get("spec", {}):
            ext = doc["spec"]["extAuth"]
            only(path, "SecurityPolicy", "extAuth", ext, {"grpc", "http", "headersToExtAuth",
                 "bodyToExtAuth", "failOpen", "recomputeRoute", "contextExtensions", "timeout"})
            assert ext.get("failOpen") is False, f"{path}: extAuth must fail closed"
            if "http" in ext:
                only(path, "SecurityPolicy", "extAuth.http", ext["http"],
                     {"backendRef", "backendRefs", "backendSettings", "path", "headersToBackend"})
                sent = {h.lower() for h in ext.get("headersToExtAuth", [])}
                assert {"authorization", "dpop", "x-forwarded-client-cert"} <= sent, \
                    f"{path}: over HTTP, certbound needs authorization, dpop and XFCC sent"
        # Traefik v3 (traefik.io/v1alpha1) Middleware and TLSOption fields used here.
        if doc["apiVersion"].startswith("traefik.io/"):
            spec = doc.get("spec", {})
            if doc["kind"] == "Middleware":
                if "forwardAuth" in spec:
                    only(path, "Middleware", "forwardAuth", spec["forwardAuth"], {"address",
                         "tls", "trustForwardHeader", "authResponseHeaders",
                         "authResponseHeadersRegex", "authRequestHeaders",
                         "addAuthCookiesToResponse", "headerField", "forwardBody", "maxBodySize",
                         "preserveLocationHeader", "preserveRequestMethod"})
                if "passTLSClientCert" in spec:
                    only(path, "Middleware", "passTLSClientCert", spec["passTLSClientCert"],
                         {"pem", "info"})
                    assert spec["passTLSClientCert"].get("pem") is True, \
                        f"{path}: certbound reads the certificate itself (pem: true)"
            if doc["kind"] == "TLSOption":
                auth = spec.get("clientAuth", {})
                only(path, "TLSOption", "clientAuth", auth, {"secretNames", "clientAuthType"})
    print(f"ok: {path} is well-formed")
PY
passed=$((passed + $(ls deploy/istio/*.yaml deploy/envoy-gateway/*.yaml deploy/traefik/*.yaml deploy/observability/prometheus-rule.yaml | wc -l)))
echo "deploy validation: $passed passed, 0 failed"
