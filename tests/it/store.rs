//! Many replicas, one truth: gateways sharing state on a real Redis.
//!
//! The tests start Debian's `redis-server` themselves on free loopback ports:
//! a single node, a TLS node (certificate generated here), and a three-master
//! Cluster (`redis-cli --cluster create`). Several gateways run in this
//! process in front of one Concur sandbox, each with its own listeners, so
//! what one replica does is seen by the others only through Redis. Without
//! `redis-server` the tests skip with a loud notice, except under `CI`,
//! where they fail.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use concur_gateway::config::Config;
use concur_gateway::gateway::Gateway;
use concur_gateway::sandbox::{OAuthClient, Sandbox, SandboxConfig, SandboxToken};
use concur_gateway::server;

use crate::support::*;

const ALICE: (&str, &str) = ("acme", "alice@acme.example");
const GINA: (&str, &str) = ("globex", "gina@globex.example");
const BOB: (&str, &str) = ("acme", "bob@acme.example");
const BOB_CLIENT: &str = "bob-client-id";
const BOB_SECRET: &str = "bob-client-secret-5ecret";
const BOB_REFRESH: &str = "bob-refresh-token-initial-0001";

// ---------------------------------------------------------------------------
// redis-server, started by the tests
// ---------------------------------------------------------------------------

fn redis_available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is required under CI (apt-get install redis-server)"
        );
        eprintln!("!!! SKIPPED: redis-server not installed; the shared-store tests did not run");
    }
    found
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `redis-server` process, killed when dropped.
struct RedisNode {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    _dir: Arc<tempfile::TempDir>,
}

impl RedisNode {
    fn spawn(dir: Arc<tempfile::TempDir>, extra: &[String]) -> Self {
        let port = free_port();
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            dir.path().display().to_string(),
        ];
        args.extend(extra.iter().map(|a| a.replace("{port}", &port.to_string())));
        if !extra.iter().any(|a| a == "--port") {
            args.push("--port".into());
            args.push(port.to_string());
        }
        let mut node = RedisNode {
            child: None,
            port,
            args,
            _dir: dir,
        };
        node.start();
        node
    }

    fn start(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP / SIGCONT: a Redis that stops answering without closing its
    /// connections (a stalled node, a failover under way).
    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(ok.success());
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.stop();
    }
}

fn single_node() -> RedisNode {
    RedisNode::spawn(Arc::new(tempfile::tempdir().unwrap()), &[])
}

/// A TLS-only node with a certificate generated here; returns the node and
/// the PEM a client must trust.
fn tls_node() -> (RedisNode, String) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.path().join("redis.crt");
    let key = dir.path().join("redis.key");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let extra: Vec<String> = [
        "--port",
        "0",
        "--tls-port",
        "{port}",
        "--tls-cert-file",
        &cert.display().to_string(),
        "--tls-key-file",
        &key.display().to_string(),
        "--tls-ca-cert-file",
        &cert.display().to_string(),
        "--tls-auth-clients",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    (RedisNode::spawn(dir, &extra), generated.cert.pem())
}

/// Three masters, slots assigned by `redis-cli --cluster create`.
fn cluster() -> Vec<RedisNode> {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let nodes: Vec<RedisNode> = (0..3)
        .map(|i| {
            RedisNode::spawn(
                dir.clone(),
                &[
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    format!("nodes-{i}-{{port}}.conf"),
                ],
            )
        })
        .collect();
    let mut cmd = Command::new("redis-cli");
    cmd.arg("--cluster").arg("create");
    for n in &nodes {
        cmd.arg(format!("127.0.0.1:{}", n.port));
    }
    let out = cmd
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ok = nodes.iter().all(|n| {
            Command::new("redis-cli")
                .args(["-p", &n.port.to_string(), "cluster", "info"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        });
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "the cluster did not become ok");
        std::thread::sleep(Duration::from_millis(100));
    }
    nodes
}

// ---------------------------------------------------------------------------
// A fleet: one sandbox, several gateways sharing one store
// ---------------------------------------------------------------------------

struct Replica {
    gateway: Arc<Gateway>,
    addr: SocketAddr,
    admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

struct Fleet {
    sandbox: Sandbox,
    replicas: Vec<Replica>,
    dir: tempfile::TempDir,
    /// The replicas' configuration.
    text: String,
}

fn bob_client() -> OAuthClient {
    OAuthClient {
        client_id: BOB_CLIENT.into(),
        client_secret: BOB_SECRET.into(),
        company: BOB.0.into(),
        user: Some(BOB.1.into()),
        refresh_token: BOB_REFRESH.into(),
    }
}

fn credentials() -> String {
    format!(
        "{CREDENTIALS}\n[[credential]]\ncompany = \"{}\"\nuser = \"{}\"\nrefresh_token = \"{BOB_REFRESH}\"\nclient_id = \"{BOB_CLIENT}\"\nclient_secret = \"{BOB_SECRET}\"\n",
        BOB.0, BOB.1
    )
}

/// The `[store]` section for `urls`, with `ca` (PEM) for TLS.
fn store_section(dir: &Path, urls: &str, ca: Option<&str>, extra: &str) -> String {
    let key = dir.join("store.key");
    if !key.exists() {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).unwrap();
        std::fs::write(
            &key,
            base64::engine::general_purpose::STANDARD.encode(bytes),
        )
        .unwrap();
    }
    let mut s = format!(
        "[store]\nbackend = \"redis\"\nurl = \"{urls}\"\nencryption_key_file = \"store.key\"\ntimeout_ms = 200\n{extra}"
    );
    if let Some(pem) = ca {
        std::fs::write(dir.join("redis-ca.pem"), pem).unwrap();
        s.push_str("ca_file = \"redis-ca.pem\"\n");
    }
    s
}

impl Fleet {
    /// A sandbox (access tokens living `ttl`; zero: an hour) and `n` gateways
    /// configured with `sections` (TOML sections appended to the base config).
    async fn start(n: usize, ttl: Duration, sections: impl Fn(&Path) -> String) -> Fleet {
        Self::start_with(n, ttl, sections, true).await
    }

    /// [`Fleet::start`], waiting for each replica to connect to Redis or not.
    async fn start_with(
        n: usize,
        ttl: Duration,
        sections: impl Fn(&Path) -> String,
        wait_for_redis: bool,
    ) -> Fleet {
        let sandbox = Sandbox::start(
            "127.0.0.1:0".parse().unwrap(),
            SandboxConfig {
                tokens: vec![
                    SandboxToken {
                        token: ALICE_TOKEN.into(),
                        company: "acme".into(),
                        user: Some(ALICE.1.into()),
                    },
                    SandboxToken {
                        token: ADMIN_TOKEN.into(),
                        company: "acme".into(),
                        user: None,
                    },
                    SandboxToken {
                        token: GINA_TOKEN.into(),
                        company: "globex".into(),
                        user: Some(GINA.1.into()),
                    },
                ],
                tls: None,
                access_token_ttl: ttl,
                oauth_clients: vec![bob_client()],
            },
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), sandbox.ca_cert_pem()).unwrap();
        std::fs::write(dir.path().join("jwks.json"), &keys().jwks).unwrap();
        std::fs::write(dir.path().join("credentials.toml"), credentials()).unwrap();
        let text = format!(
            "[server]\ndrain_delay_s = 0\nshutdown_grace_s = 2\n[upstream]\nbase_url = \"{}\"\nca_file = \"ca.pem\"\ntimeout_s = 10\n[auth]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\njwks_file = \"jwks.json\"\n[credentials]\nfile = \"credentials.toml\"\n{}",
            sandbox.base_url(),
            sections(dir.path())
        );
        let mut replicas = Vec::new();
        for _ in 0..n {
            replicas.push(Self::replica(&text, dir.path(), wait_for_redis).await);
        }
        Fleet {
            sandbox,
            replicas,
            dir,
            text,
        }
    }

    async fn replica(text: &str, dir: &Path, wait_for_redis: bool) -> Replica {
        let config = Config::from_toml(text, dir).unwrap_or_else(|e| panic!("{e}"));
        let gateway = Arc::new(Gateway::new(config).unwrap_or_else(|e| panic!("{e:?}")));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let gw = gateway.clone();
        let task = tokio::spawn(async move {
            server::run(gw, listener, admin, async {
                let _ = rx.await;
            })
            .await
            .expect("connection workers");
        });
        let replica = Replica {
            gateway,
            addr,
            admin: admin_addr,
            stop: Some(tx),
            task,
        };
        // Wait until the store is connected (the health loop runs every second).
        if let Some(redis) = replica.gateway.store.redis().filter(|_| wait_for_redis) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !redis.connected() {
                assert!(
                    Instant::now() < deadline,
                    "the gateway did not connect to Redis"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        replica
    }

    async fn stop(mut self) {
        for r in &mut self.replicas {
            let _ = r.stop.take().map(|tx| tx.send(()));
        }
        for r in self.replicas.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), r.task).await;
        }
        self.sandbox.shutdown().await;
    }
}

async fn upload(addr: SocketAddr, who: (&str, &str), path: &str) -> Reply {
    let token = jwt(who.0, who.1);
    request(
        addr,
        "POST",
        path,
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "image/jpeg"),
        ],
        Payload::Full(JPEG.to_vec()),
    )
    .await
}

/// Uploads to `addr` (Bob's receipt) until one is answered 201, every answer
/// before it a 503 (a state kept for the store, not written yet), for 10 s
/// at most; `context` is printed with a failure.
async fn upload_until_created(addr: SocketAddr, context: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = upload(addr, BOB, "/api/image/v1.0/receipt").await;
        if r.status == 201 {
            return;
        }
        assert!(
            r.status == 503 && Instant::now() < deadline,
            "{} {}\n{}",
            r.status,
            r.text(),
            context()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metrics(admin: SocketAddr) -> String {
    request(admin, "GET", "/metrics", &[], Payload::Full(Vec::new()))
        .await
        .text()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Fires uploads from `callers` round-robin over the replicas for `for_`,
/// `workers` at a time; returns (admitted, refused).
async fn hammer(
    fleet: &Fleet,
    callers: &[(&'static str, &'static str)],
    for_: Duration,
    workers: usize,
) -> (usize, usize) {
    let addrs: Vec<SocketAddr> = fleet.replicas.iter().map(|r| r.addr).collect();
    let until = Instant::now() + for_;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let addrs = addrs.clone();
        let callers = callers.to_vec();
        tasks.spawn(async move {
            let (mut ok, mut refused, mut i) = (0, 0, w);
            while Instant::now() < until {
                let who = callers[i % callers.len()];
                let r = upload(
                    addrs[i % addrs.len()],
                    who,
                    &format!("/api/image/v1.0/report/W{w}N{i}"),
                )
                .await;
                match r.status.as_u16() {
                    201 => ok += 1,
                    429 => refused += 1,
                    other => panic!("unexpected {other}: {}", r.text()),
                }
                i += workers;
            }
            (ok, refused)
        });
    }
    let (mut ok, mut refused) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (o, f) = r.unwrap();
        ok += o;
        refused += f;
    }
    (ok, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_for_the_sum_of_three_gateways() {
    if !redis_available() {
        return;
    }
    let redis = single_node();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    // The company: 20/s with a burst of 5; users unlimited. (A burst of 1
    // would count every request's lateness against the rate: GCRA with no
    // tolerance admits at most one per period *after* the last admission.)
    let fleet = Fleet::start(3, Duration::ZERO, |dir| {
        format!(
            "[rate_limit]\nuser_per_second = 1000.0\nuser_burst = 1000\ncompany_per_second = 20.0\ncompany_burst = 5\nuser_concurrent = 1000\ncompany_concurrent = 1000\n{}",
            store_section(dir, &url, None, "")
        )
    })
    .await;
    let users = [
        ALICE,
        ("acme", "u2@acme.example"),
        ("acme", "u3@acme.example"),
        ("acme", "u4@acme.example"),
    ];
    let window = Duration::from_secs(5);
    let (ok, refused) = hammer(&fleet, &users, window, 8).await;
    // GCRA on Redis time: 5 at once, then one every 50 ms, whichever replica.
    let expected = 5.0 + 20.0 * window.as_secs_f64();
    eprintln!(
        "company limit across 3 gateways: {ok} admitted, {refused} refused, expected {expected}"
    );
    assert!(refused > ok, "the limit was exercised");
    assert!(
        (ok as f64 - expected).abs() <= expected * 0.05,
        "{ok} admitted vs {expected} (within 5%)"
    );
    assert_eq!(
        fleet.sandbox.uploads().len(),
        ok,
        "every admitted upload and nothing else reached Concur"
    );
    fleet.stop().await;

    // The user limit likewise: one user, 5/s, over three gateways.
    let fleet = Fleet::start(3, Duration::ZERO, |dir| {
        format!(
            "[rate_limit]\nuser_per_second = 5.0\nuser_burst = 2\ncompany_per_second = 1000.0\ncompany_burst = 1000\n{}",
            store_section(dir, &url, None, "key_prefix = \"t2:\"\n")
        )
    })
    .await;
    let window = Duration::from_secs(4);
    let (ok, _) = hammer(&fleet, &[ALICE], window, 6).await;
    let expected = 2.0 + 5.0 * window.as_secs_f64();
    eprintln!("user limit across 3 gateways: {ok} admitted, expected {expected}");
    assert!(
        (ok as f64 - expected).abs() <= (expected * 0.05).max(1.0),
        "{ok} admitted vs {expected}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concur_back_off_and_in_flight_caps_hold_on_every_replica() {
    if !redis_available() {
        return;
    }
    let redis = single_node();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let fleet = Fleet::start(2, Duration::ZERO, |dir| {
        format!(
            "[rate_limit]\nuser_per_second = 1000.0\nuser_burst = 1000\ncompany_per_second = 1000.0\ncompany_burst = 1000\nuser_concurrent = 1\n{}",
            store_section(dir, &url, None, "")
        )
    })
    .await;
    let (a, b) = (fleet.replicas[0].addr, fleet.replicas[1].addr);
    // Concur throttles alice's credential through replica A...
    fleet
        .sandbox
        .push_fault(concur_gateway::sandbox::Fault::Status {
            status: 429,
            message: "slow down".into(),
            retry_after: Some("30".into()),
        });
    let r = upload(a, ALICE, "/api/image/v1.0/report/R1").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["code"], "concur_error");
    // ...and replica B holds alice back without calling Concur.
    let before = fleet.sandbox.uploads().len();
    let r = upload(b, ALICE, "/api/image/v1.0/report/R2").await;
    r.problem(429, "rate_limited");
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((25..=30).contains(&wait), "{wait}");
    assert_eq!(
        fleet.sandbox.uploads().len(),
        before,
        "nothing reached Concur"
    );
    // Another credential of the same company is not throttled.
    assert_eq!(
        upload(
            b,
            ("acme", "carol@acme.example"),
            "/api/image/v1.0/report/R3"
        )
        .await
        .status,
        201
    );
    assert_eq!(
        upload(b, GINA, "/api/image/v1.0/report/R4").await.status,
        201
    );
    // One upload in flight per user, across replicas: a stalled upload on A
    // makes carol's next one on B a 429.
    let token = jwt("acme", "carol@acme.example");
    let mut slow = tokio::net::TcpStream::connect(a).await.unwrap();
    use tokio::io::AsyncWriteExt;
    slow.write_all(
        format!(
            "POST /api/image/v1.0/report/S1 HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {token}\r\ncontent-type: image/jpeg\r\ncontent-length: {}\r\n\r\n",
            JPEG.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = upload(
        b,
        ("acme", "carol@acme.example"),
        "/api/image/v1.0/report/R5",
    )
    .await;
    r.problem(429, "rate_limited");
    drop(slow);
    // The place comes back (released by A when its upload ends).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = upload(
            b,
            ("acme", "carol@acme.example"),
            "/api/image/v1.0/report/R6",
        )
        .await;
        if r.status == 201 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the place never came back: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.stop().await;
}

/// The refresh token the store holds for bob, opened with the fleet's key.
async fn stored_refresh_token(port: u16, dir: &Path, prefix: &str) -> String {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*:tok:*"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let sealed: String = redis::cmd("HGET")
        .arg(&keys[0])
        .arg("s")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(!sealed.contains("bob-refresh"), "nothing stored in clear");
    let key = concur_gateway::sealing::load_key(&dir.join("store.key")).unwrap();
    let plain = concur_gateway::sealing::Sealer::new(&key)
        .open(&keys[0], &sealed)
        .expect("opens with the key");
    let v: serde_json::Value = serde_json::from_slice(&plain).unwrap();
    v["refresh_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_gateways_share_one_rotating_refresh_token() {
    if !redis_available() {
        return;
    }
    let redis = single_node();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    // Access tokens live 3 s (refreshed after 2 s); every refresh rotates the
    // refresh token and kills the one that was used.
    let ttl = Duration::from_secs(3);
    let fleet = Fleet::start(4, ttl, |dir| {
        format!(
            "[rate_limit]\nuser_per_second = 10000.0\nuser_burst = 10000\ncompany_per_second = 10000.0\ncompany_burst = 10000\nuser_concurrent = 1000\ncompany_concurrent = 1000\n{}",
            store_section(dir, &url, None, "")
        )
    })
    .await;
    let addrs: Vec<SocketAddr> = fleet.replicas.iter().map(|r| r.addr).collect();
    let started = Instant::now();
    let total = 2000;
    // Paced over at least three lifetimes: 16 workers, 125 uploads each.
    let pace = (ttl * 3 + Duration::from_secs(1)) / (total / 16) as u32;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16 {
        let addrs = addrs.clone();
        tasks.spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..(total / 16) {
                let next = Instant::now() + pace;
                let r = upload(addrs[(w + i) % 4], BOB, "/api/image/v1.0/receipt").await;
                statuses.push((r.status.as_u16(), r.text()));
                tokio::time::sleep_until(next.into()).await;
            }
            statuses
        });
    }
    let mut statuses = Vec::new();
    while let Some(r) = tasks.join_next().await {
        statuses.extend(r.unwrap());
    }
    let took = started.elapsed();
    let failed: Vec<_> = statuses.iter().filter(|(s, _)| *s != 201).collect();
    assert!(
        failed.is_empty(),
        "{} of {total} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    assert!(took >= ttl * 3, "ran {took:?}, at least three lifetimes");
    let requests = fleet.sandbox.token_requests();
    let ok = fleet.sandbox.successful_refreshes();
    assert_eq!(
        requests, ok,
        "zero invalid_grant: every token request succeeded"
    );
    // One refresh per lifetime (refreshed at 2/3 of 3 s): never one per
    // replica per expiry.
    let lifetimes = took.as_secs_f64() / 2.0;
    eprintln!(
        "{total} uploads over 4 gateways in {took:?}: {requests} token requests for ~{lifetimes:.1} refresh periods"
    );
    assert!(
        (requests as f64) <= lifetimes.ceil() + 1.0,
        "{requests} token requests in {took:?}"
    );
    let tokens: std::collections::HashSet<String> = fleet
        .sandbox
        .uploads()
        .iter()
        .filter_map(|u| u.token.clone())
        .collect();
    assert_eq!(
        tokens.len() as u64,
        requests,
        "every access token obtained was used by the fleet, none obtained twice"
    );
    let live = fleet.sandbox.current_refresh_token(BOB_CLIENT).unwrap();
    assert_eq!(
        stored_refresh_token(redis.port, fleet.dir.path(), "concur-gateway:").await,
        live,
        "the store holds the sandbox's live refresh token"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_falls_back_to_local_state_and_comes_back() {
    if !redis_available() {
        return;
    }
    let mut redis = single_node();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    // Bob's access token lives an hour: once fetched it stays valid.
    let fleet = Fleet::start(2, Duration::ZERO, |dir| {
        format!(
            "[rate_limit]\nuser_per_second = 0.01\nuser_burst = 2\ncompany_per_second = 1000.0\ncompany_burst = 1000\n{}",
            store_section(dir, &url, None, "")
        )
    })
    .await;
    let (a, b) = (fleet.replicas[0].addr, fleet.replicas[1].addr);
    // Shared: two uploads for alice in all, wherever they land.
    assert_eq!(
        upload(a, ALICE, "/api/image/v1.0/report/A1").await.status,
        201
    );
    assert_eq!(
        upload(b, ALICE, "/api/image/v1.0/report/A2").await.status,
        201
    );
    upload(a, ALICE, "/api/image/v1.0/report/A3")
        .await
        .problem(429, "rate_limited");
    // Bob's refreshing credential gets its token while Redis is up.
    assert_eq!(upload(a, BOB, "/api/image/v1.0/receipt").await.status, 201);

    redis.stop();
    // Requests keep flowing, each within timeout_ms + its own time, on each
    // replica's own limits (gina has a fresh allowance on each replica).
    for (i, addr) in [a, b, a, b].into_iter().enumerate() {
        let started = Instant::now();
        let r = upload(addr, GINA, &format!("/api/image/v1.0/report/G{i}")).await;
        let took = started.elapsed();
        assert!(r.status == 201 || r.status == 429, "{}", r.text());
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    // A valid cached access token keeps being used without the store.
    assert_eq!(upload(a, BOB, "/api/image/v1.0/receipt").await.status, 201);
    let m = metrics(fleet.replicas[0].admin).await;
    assert!(
        m.contains("concur_gateway_store_fallbacks_total{op=\"admit\"}"),
        "{m}"
    );
    let ready = request(
        fleet.replicas[0].admin,
        "GET",
        "/readyz",
        &[],
        Payload::Full(Vec::new()),
    )
    .await;
    assert_eq!(ready.status, 200, "readiness stays up");
    assert!(ready.text().contains("store"), "{}", ready.text());

    redis.start();
    // Shared again without a restart: limits are global (a fresh Redis has
    // no state: gina gets two uploads in all, then 429 on either replica).
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics(fleet.replicas[0].admin)
        .await
        .contains("concur_gateway_store_up 0")
        || metrics(fleet.replicas[1].admin)
            .await
            .contains("concur_gateway_store_up 0")
    {
        assert!(Instant::now() < deadline, "the store did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let carol = ("acme", "carol@acme.example");
    assert_eq!(
        upload(a, carol, "/api/image/v1.0/report/C1").await.status,
        201
    );
    assert_eq!(
        upload(b, carol, "/api/image/v1.0/report/C2").await.status,
        201
    );
    upload(a, carol, "/api/image/v1.0/report/C3")
        .await
        .problem(429, "rate_limited");
    upload(b, carol, "/api/image/v1.0/report/C4")
        .await
        .problem(429, "rate_limited");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_needing_the_lock_is_refused_while_redis_is_down() {
    if !redis_available() {
        return;
    }
    let mut redis = single_node();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let fleet = Fleet::start(1, Duration::ZERO, |dir| store_section(dir, &url, None, "")).await;
    let a = fleet.replicas[0].addr;
    redis.stop();
    // Bob has no access token yet: it needs a refresh, which needs the lock.
    let r = upload(a, BOB, "/api/image/v1.0/receipt").await;
    r.problem(503, "store_unavailable");
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        fleet.sandbox.token_requests(),
        0,
        "no refresh without the lock"
    );
    // Other callers are served.
    assert_eq!(
        upload(a, ALICE, "/api/image/v1.0/report/R1").await.status,
        201
    );
    redis.start();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = upload(a, BOB, "/api/image/v1.0/receipt").await;
        if r.status == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_state_over_tls() {
    if !redis_available() {
        return;
    }
    let (redis, ca) = tls_node();
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let fleet = Fleet::start(2, Duration::ZERO, |dir| {
        format!(
            "[rate_limit]\nuser_per_second = 0.01\nuser_burst = 2\n{}",
            store_section(dir, &url, Some(&ca), "")
        )
    })
    .await;
    shared_basics(&fleet, &[ALICE]).await;
    fleet.stop().await;
}

/// On two replicas with `user_per_second = 0.01, user_burst = 2`: two
/// uploads per caller in all, wherever they land, then 429; and bob's
/// refreshing credential refreshed once for both.
async fn shared_basics(fleet: &Fleet, callers: &[(&'static str, &'static str)]) {
    let (a, b) = (fleet.replicas[0].addr, fleet.replicas[1].addr);
    for &who in callers {
        assert_eq!(
            upload(a, who, "/api/image/v1.0/report/X1").await.status,
            201
        );
        assert_eq!(
            upload(b, who, "/api/image/v1.0/report/X2").await.status,
            201
        );
        upload(a, who, "/api/image/v1.0/report/X3")
            .await
            .problem(429, "rate_limited");
    }
    assert_eq!(upload(a, BOB, "/api/image/v1.0/receipt").await.status, 201);
    assert_eq!(upload(b, BOB, "/api/image/v1.0/receipt").await.status, 201);
    assert_eq!(
        fleet.sandbox.token_requests(),
        1,
        "one refresh for both replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_state_on_a_cluster() {
    if !redis_available() {
        return;
    }
    let nodes = cluster();
    let urls = nodes
        .iter()
        .map(|n| format!("redis://127.0.0.1:{}", n.port))
        .collect::<Vec<_>>()
        .join(",");
    let fleet = Fleet::start(2, Duration::ZERO, |dir| {
        format!(
            "[rate_limit]\nuser_per_second = 0.01\nuser_burst = 2\n{}",
            store_section(dir, &urls, None, "")
        )
    })
    .await;
    // Several companies, so the keys spread over the slots of all masters.
    shared_basics(&fleet, &[ALICE, GINA]).await;
    // Releases riding on another user's admission: keys of one slot.
    let store = fleet.replicas[0].gateway.store.clone();
    for user in [
        "frank@acme.example",
        "hank@acme.example",
        "frank@acme.example",
    ] {
        let admission = store.admit(&acme(user), &acme_admin()).await.unwrap();
        assert!(
            matches!(admission.place, concur_gateway::store::Place::Shared(_)),
            "admitted by the cluster, not by the fallback"
        );
    }
    let (a, b) = (fleet.replicas[0].addr, fleet.replicas[1].addr);
    fleet
        .sandbox
        .push_fault(concur_gateway::sandbox::Fault::Status {
            status: 503,
            message: "busy".into(),
            retry_after: Some("20".into()),
        });
    // Acme's admin credential (used for dave and erin) is throttled by Concur
    // through one replica, and held back on the other.
    let r = upload(
        a,
        ("acme", "dave@acme.example"),
        "/api/image/v1.0/report/D1",
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    let r = upload(
        b,
        ("acme", "erin@acme.example"),
        "/api/image/v1.0/report/E1",
    )
    .await;
    r.problem(429, "rate_limited");
    assert!(r.text().contains("concur"), "{}", r.text());
    fleet.stop().await;
}

/// The store stalls while a replica refreshes, past the refresh lock's
/// life: the rotated state Concur handed back is not lost. The replica keeps
/// it and writes it once Redis answers; every replica then uses it, and
/// nobody refreshes with the rotated-out token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_the_store_missed_is_written_once_it_answers() {
    if !redis_available() {
        return;
    }
    let redis = single_node();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let fleet = Fleet::start(2, Duration::ZERO, |dir| {
        store_section(dir, &url, None, "refresh_lock_ttl_ms = 300\n")
    })
    .await;
    let (a, b) = (fleet.replicas[0].addr, fleet.replicas[1].addr);
    fleet
        .sandbox
        .delay_token_answers(Duration::from_millis(1200));
    let first = tokio::spawn(async move { upload(a, BOB, "/api/image/v1.0/receipt").await });
    wait_for(|| fleet.sandbox.token_requests() == 1).await;
    redis.signal("-STOP");
    // The token answer arrives (1.2 s) while Redis is stalled, past the
    // lock's life: the write fails, the caller is told to retry.
    let r = first.await.unwrap();
    r.problem(503, "store_unavailable");
    redis.signal("-CONT");
    fleet.sandbox.delay_token_answers(Duration::ZERO);
    // Once Redis answers, the kept state is written (by the replica's next
    // request at the latest, before anything else): both replicas use it,
    // with no second refresh (the file's token is dead, rotated away). (A
    // request on the other replica in the first 100 ms after Redis is back,
    // before the kept state is offered again, would still refresh with the
    // dead token: docs/store.md.)
    upload_until_created(a, String::new).await;
    assert_eq!(upload(b, BOB, "/api/image/v1.0/receipt").await.status, 201);
    assert_eq!(fleet.sandbox.token_requests(), 1, "refreshed once");
    assert_eq!(fleet.sandbox.successful_refreshes(), 1);
    fleet.stop().await;
}

/// A TCP proxy to `port` that holds each piece of the server's answers for
/// the delay in milliseconds that the returned handle says (a slow link for
/// one replica only).
async fn slow_link(port: u16) -> (u16, Arc<std::sync::atomic::AtomicU64>) {
    slow_link_both(port, None).await
}

/// [`slow_link`], and with `commands` the commands too are held for the
/// delay that handle says (a link cut for a while: nothing arrives).
async fn slow_link_both(
    port: u16,
    commands: Option<Arc<std::sync::atomic::AtomicU64>>,
) -> (u16, Arc<std::sync::atomic::AtomicU64>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let delay = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap().port();
    let d = delay.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let commands = commands.clone();
            tokio::spawn(async move {
                let Some(hold) = commands else {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    return;
                };
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    // Held until the link is back (checked every 10 ms).
                    while hold.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            let d = d.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let ms = d.load(std::sync::atomic::Ordering::Relaxed);
                    if ms > 0 {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (local, delay)
}

/// Replica C, whose store URL is `via` (a proxy in front of Redis), with
/// `extra` in its `[store]`, then replica A, the same but straight to Redis.
async fn fleet_via(via: &str, redis_port: u16, extra: &str) -> Fleet {
    let mut fleet = Fleet::start(1, Duration::ZERO, |dir| {
        store_section(dir, via, None, extra)
    })
    .await;
    let direct = fleet
        .text
        .replace(via, &format!("redis://127.0.0.1:{redis_port}"));
    fleet
        .replicas
        .push(Fleet::replica(&direct, fleet.dir.path(), true).await);
    fleet
}

/// The black-box round of 2026-11-30: replica C refreshes; while Concur
/// takes its time, C's link to Redis turns slow (past `timeout_ms`, but
/// every command still arrives). C's lock renewals time out; it used to take
/// that for a lost lock, skip the write and release the lock, and replica A
/// then refreshed with the refresh token C had just rotated out (Concur:
/// `invalid_grant`, the credential dead on A). Now C keeps the lock until its
/// state is written, and A waits for that state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_slow_link_keeps_the_refresh_lock_until_its_state_is_stored() {
    if !redis_available() {
        return;
    }
    let capture = capture_logs().await;
    let redis = single_node();
    let (proxy, delay) = slow_link(redis.port).await;
    let slow_url = format!("redis://127.0.0.1:{proxy}");
    // C, through the slow link (its lock renewed every second); A, straight
    // to Redis.
    let fleet = fleet_via(&slow_url, redis.port, "refresh_lock_ttl_ms = 3000\n").await;
    let (c, a) = (fleet.replicas[0].addr, fleet.replicas[1].addr);
    fleet
        .sandbox
        .delay_token_answers(Duration::from_millis(2500));
    let on_c = tokio::spawn(async move { upload(c, BOB, "/api/image/v1.0/receipt").await });
    wait_for(|| fleet.sandbox.token_requests() == 1).await;
    // Slower than `timeout_ms` (200), for C only.
    delay.store(400, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let on_a = tokio::spawn(async move { upload(a, BOB, "/api/image/v1.0/receipt").await });
    let r = on_c.await.unwrap();
    r.problem(503, "store_unavailable");
    // A gets the state C refreshed (written although C saw its write time
    // out), not a refresh of its own with the rotated-out token.
    let r = on_a.await.unwrap();
    assert_eq!(r.status, 201, "{}\n{}", r.text(), capture.snapshot());
    assert_eq!(fleet.sandbox.token_requests(), 1, "one refresh for both");
    // C's link is well again: C uses the same state, and the lock is free.
    delay.store(0, std::sync::atomic::Ordering::Relaxed);
    fleet.sandbox.delay_token_answers(Duration::ZERO);
    upload_until_created(c, String::new).await;
    assert_eq!(fleet.sandbox.token_requests(), 1, "refreshed once");
    assert_eq!(fleet.sandbox.successful_refreshes(), 1);
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port)).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let locks = loop {
        let locks: Vec<String> = redis::cmd("KEYS")
            .arg("*:lock:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        if locks.is_empty() || Instant::now() > deadline {
            break locks;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(locks.is_empty(), "the refresh lock is released: {locks:?}");
    fleet.stop().await;
}

/// The second black-box round on the refresh lock: replica C refreshes and
/// is then cut off from Redis for longer than the lock's life; replica A
/// takes the expired lock and refreshes with the refresh token C just
/// rotated out (Concur: `invalid_grant`), storing a dead state. When C is
/// back, its kept, live state used to be dropped for that dead one, and A
/// stayed unusable for good. Now C's state replaces the dead one, and A,
/// asking the store again a few seconds later, revives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_state_kept_through_a_partition_beats_the_dead_one_and_revives_the_others() {
    if !redis_available() {
        return;
    }
    let capture = capture_logs().await;
    let redis = single_node();
    let cut = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (proxy, answers) = slow_link_both(redis.port, Some(cut.clone())).await;
    let cut_url = format!("redis://127.0.0.1:{proxy}");
    let fleet = fleet_via(&cut_url, redis.port, "refresh_lock_ttl_ms = 1000\n").await;
    let (c, a) = (fleet.replicas[0].addr, fleet.replicas[1].addr);
    fleet
        .sandbox
        .delay_token_answers(Duration::from_millis(2500));
    let on_c = tokio::spawn(async move { upload(c, BOB, "/api/image/v1.0/receipt").await });
    wait_for(|| fleet.sandbox.token_requests() == 1).await;
    // C cut off: its lock expires after a second.
    cut.store(1, std::sync::atomic::Ordering::Relaxed);
    answers.store(1, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fleet.sandbox.delay_token_answers(Duration::ZERO);
    let r = upload(a, BOB, "/api/image/v1.0/receipt").await;
    r.problem(502, "upstream_auth_failed");
    assert_eq!(fleet.sandbox.token_requests(), 2);
    let _ = on_c.await.unwrap();
    // C is back: its state replaces the dead one.
    cut.store(0, std::sync::atomic::Ordering::Relaxed);
    answers.store(0, std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(15);
    for addr in [c, a] {
        loop {
            let r = upload(addr, BOB, "/api/image/v1.0/receipt").await;
            if r.status == 201 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} {}\n{}",
                r.status,
                r.text(),
                capture.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    assert_eq!(fleet.sandbox.token_requests(), 2, "no refresh since");
    assert_eq!(fleet.sandbox.successful_refreshes(), 1);
    fleet.stop().await;
    let logs = capture.finish();
    assert!(logs.contains("replaces the dead state"), "{logs}");
    assert!(logs.contains("is usable again"), "{logs}");
}

/// The second black-box round on the refresh lock: Redis came back empty
/// (restarted without persistence) while a refresh was in flight. The
/// refreshing replica's write found the lock gone, kept the state, and then
/// dropped it as if another replica had stored a newer one (the key was
/// absent, not newer): the next refresh used the refresh token Concur had
/// just rotated out. Now an absent state takes the kept one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_state_is_written_to_a_redis_that_came_back_empty() {
    if !redis_available() {
        return;
    }
    let capture = capture_logs().await;
    let redis = single_node();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    // Access tokens of 2 s: a request 2 s later refreshes again.
    let fleet = Fleet::start(2, Duration::from_secs(2), |dir| {
        store_section(dir, &url, None, "refresh_lock_ttl_ms = 3000\n")
    })
    .await;
    let (a, b) = (fleet.replicas[0].addr, fleet.replicas[1].addr);
    // A first state in Redis, so that the emptied key is one that was there.
    assert_eq!(upload(a, BOB, "/api/image/v1.0/receipt").await.status, 201);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    fleet
        .sandbox
        .delay_token_answers(Duration::from_millis(1500));
    let first = tokio::spawn(async move { upload(a, BOB, "/api/image/v1.0/receipt").await });
    wait_for(|| fleet.sandbox.token_requests() == 2).await;
    // Emptied while Concur takes its time (the lock and the state go).
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut con).await.unwrap();
    let _ = first.await.unwrap();
    fleet.sandbox.delay_token_answers(Duration::ZERO);
    // The other replica gets the state A kept (written once the store took
    // it), not a refresh of its own with the rotated-out token.
    upload_until_created(b, || capture.snapshot()).await;
    assert_eq!(upload(a, BOB, "/api/image/v1.0/receipt").await.status, 201);
    // Every refresh used a live refresh token.
    assert_eq!(
        fleet.sandbox.token_requests(),
        fleet.sandbox.successful_refreshes(),
        "{}",
        capture.snapshot()
    );
    fleet.stop().await;
    let logs = capture.finish();
    assert!(!logs.contains("is dropped"), "{logs}");
}

/// A replica whose `store.encryption_key_file` differs from the one that
/// sealed the stored token state: its callers get 503, it never refreshes
/// with the file's token nor overwrites the store, and `/readyz` keeps
/// saying why (it said so only until the next health ping).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_another_encryption_key_keeps_saying_so_in_readyz() {
    if !redis_available() {
        return;
    }
    let redis = single_node();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let mut fleet = Fleet::start(1, Duration::ZERO, |dir| store_section(dir, &url, None, "")).await;
    let a = fleet.replicas[0].addr;
    assert_eq!(upload(a, BOB, "/api/image/v1.0/receipt").await.status, 201);
    let mut other = [0u8; 32];
    aws_lc_rs::rand::fill(&mut other).unwrap();
    std::fs::write(
        fleet.dir.path().join("other.key"),
        base64::engine::general_purpose::STANDARD.encode(other),
    )
    .unwrap();
    let text = fleet.text.replace("\"store.key\"", "\"other.key\"");
    fleet
        .replicas
        .push(Fleet::replica(&text, fleet.dir.path(), true).await);
    let (b, b_admin) = (fleet.replicas[1].addr, fleet.replicas[1].admin);
    let problem = upload(b, BOB, "/api/image/v1.0/receipt")
        .await
        .problem(503, "store_unavailable");
    // The answer says why (not "unavailable": Redis answers), and the store
    // counts no fallback for it.
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("store.encryption_key_file differs"),
        "{detail}"
    );
    assert!(!detail.contains("unavailable"), "{detail}");
    let m = metrics(b_admin).await;
    assert!(
        !m.contains("concur_gateway_store_fallbacks_total{op=\"token_read\"}"),
        "{m}"
    );
    assert!(m.contains("concur_gateway_store_up 1"), "{m}");
    // Past two health pings (one a second), it is still said.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ready = request(b_admin, "GET", "/readyz", &[], Payload::Full(Vec::new())).await;
    assert_eq!(ready.status, 200);
    assert!(
        ready
            .text()
            .contains("does not open with store.encryption_key_file"),
        "{}",
        ready.text()
    );
    assert_eq!(
        fleet.sandbox.token_requests(),
        1,
        "no refresh on the other key"
    );
    assert_eq!(upload(a, BOB, "/api/image/v1.0/receipt").await.status, 201);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_while_holding_the_refresh_lock_is_taken_over() {
    if !redis_available() {
        return;
    }
    let redis = single_node();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let lock = "refresh_lock_ttl_ms = 1500\n";
    let fleet = Fleet::start(1, Duration::ZERO, |dir| {
        store_section(dir, &url, None, lock)
    })
    .await;
    // A second replica, as a process that aborts after Concur answered its
    // refresh and before it stored the answer (kill -9 at the worst moment).
    let config = fleet.dir.path().join("crashing.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\n[upstream]\nbase_url = \"{}\"\nca_file = \"ca.pem\"\n[auth]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\njwks_file = \"jwks.json\"\n[credentials]\nfile = \"credentials.toml\"\n{}",
        free_port(),
        free_port(),
        fleet.sandbox.base_url(),
        store_section(fleet.dir.path(), &url, None, lock)
    );
    std::fs::write(&config, &text).unwrap();
    let listen: SocketAddr = text
        .lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap()
        .parse()
        .unwrap();
    let mut crashing = Command::new(env!("CARGO_BIN_EXE_concur-gateway"))
        .args(["serve", "--config"])
        .arg(&config)
        .env(
            concur_gateway::credentials::refresh::CRASH_AFTER_TOKEN_ANSWER_ENV,
            "1",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(listen).is_err() {
        assert!(
            Instant::now() < deadline,
            "the crashing replica did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give it time to connect to Redis (its health loop ticks every second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    {
        // Raw: the process dies under this request.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let token = jwt(BOB.0, BOB.1);
        let mut s = tokio::net::TcpStream::connect(listen).await.unwrap();
        let head = format!(
            "POST /api/image/v1.0/receipt HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {token}\r\ncontent-type: image/jpeg\r\ncontent-length: {}\r\n\r\n",
            JPEG.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let _ = s.write_all(JPEG).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut answer)).await;
        assert!(
            answer.is_empty(),
            "the replica died mid-refresh without answering"
        );
    }
    let status = crashing.wait().unwrap();
    assert!(!status.success(), "aborted: {status:?}");
    let mut log = String::new();
    use std::io::Read;
    crashing
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        !log.contains(BOB_REFRESH) && !log.contains(BOB_SECRET),
        "no secret logged"
    );
    assert_eq!(
        fleet.sandbox.token_requests(),
        1,
        "Concur rotated: the window"
    );

    // The surviving replica waits for the dead holder's lock to expire, then
    // takes over: the stored token is the file's, which Concur killed, so the
    // credential is reported unusable, not hidden. Everyone else is served.
    let a = fleet.replicas[0].addr;
    let started = Instant::now();
    let r = upload(a, BOB, "/api/image/v1.0/receipt").await;
    r.problem(502, "upstream_auth_failed");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fleet.sandbox.token_requests(), 2);
    assert_eq!(fleet.sandbox.successful_refreshes(), 1);
    let ready = request(
        fleet.replicas[0].admin,
        "GET",
        "/readyz",
        &[],
        Payload::Full(Vec::new()),
    )
    .await;
    assert!(ready.text().contains("unusable"), "{}", ready.text());
    assert_eq!(
        upload(a, ALICE, "/api/image/v1.0/report/R1").await.status,
        201
    );
    fleet.stop().await;
}

/// A Redis the gateway never reached (a wrong password here): `/readyz`
/// stays 200 and says why, not only that it is not connected yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_says_why_redis_was_never_reached() {
    if !redis_available() {
        return;
    }
    let redis = RedisNode::spawn(
        Arc::new(tempfile::tempdir().unwrap()),
        &["--requirepass".into(), "right-password-1".into()],
    );
    let url = format!("redis://:wrong-password-2@127.0.0.1:{}", redis.port);
    let fleet = Fleet::start_with(
        1,
        Duration::ZERO,
        |dir| store_section(dir, &url, None, ""),
        false,
    )
    .await;
    let admin = fleet.replicas[0].admin;
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let ready = request(admin, "GET", "/readyz", &[], Payload::Full(Vec::new())).await;
        assert_eq!(ready.status, 200, "{}", ready.text());
        let text = ready.text();
        if text.contains("not connected to Redis yet (") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(text.contains("not connected to Redis yet ("), "{text}");
    let lower = text.to_lowercase();
    assert!(
        lower.contains("auth") || lower.contains("pass"),
        "the reason: {text}"
    );
    assert!(!text.contains("wrong-password-2"), "{text}");
    // A keyed upload fails for want of the store (503); the reason shown
    // stays why the connection failed, not "not connected yet".
    let token = jwt(ALICE.0, ALICE.1);
    let keyed = request(
        fleet.replicas[0].addr,
        "POST",
        "/api/image/v1.0/report/K9",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("content-type", "image/jpeg"),
            ("idempotency-key", "k-readyz-1"),
        ],
        Payload::Full(JPEG.to_vec()),
    )
    .await;
    keyed.problem(503, "store_unavailable");
    let again = request(admin, "GET", "/readyz", &[], Payload::Full(Vec::new())).await;
    assert_eq!(again.text(), text, "the reason is kept");
    // Requests flow on the replica's own limits all the same.
    assert_eq!(
        upload(fleet.replicas[0].addr, ALICE, "/api/image/v1.0/report/P1")
            .await
            .status,
        201
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_records_are_shared_by_every_replica() {
    if !redis_available() {
        return;
    }
    use crate::idempotency::keyed;
    let redis = single_node();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let fleet = Fleet::start(2, Duration::ZERO, |dir| store_section(dir, &url, None, "")).await;
    let (a, b) = (fleet.replicas[0].addr, fleet.replicas[1].addr);
    // Stored on A, replayed by B: Concur saw one upload.
    let first = keyed(a, ALICE, "/api/image/v1.0/report/R1", "k-1", JPEG, &[]).await;
    assert_eq!(first.status, 201, "{}", first.text());
    let again = keyed(b, ALICE, "/api/image/v1.0/report/R1", "k-1", JPEG, &[]).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json(), first.json());
    keyed(b, ALICE, "/api/image/v1.0/report/R2", "k-1", JPEG, &[])
        .await
        .problem(422, "idempotency_key_reused");
    assert_eq!(fleet.sandbox.uploads().len(), 1);
    // In flight on A (held at Concur): B answers 409.
    fleet
        .sandbox
        .push_fault(concur_gateway::sandbox::Fault::Delay { millis: 1500 });
    let held = tokio::spawn(async move {
        keyed(a, ALICE, "/api/image/v1.0/report/R3", "k-2", JPEG, &[]).await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while fleet.sandbox.uploads().len() < 2 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    keyed(b, ALICE, "/api/image/v1.0/report/R3", "k-2", JPEG, &[])
        .await
        .problem(409, "idempotency_conflict");
    assert_eq!(held.await.unwrap().status, 201);
    let replay = keyed(b, ALICE, "/api/image/v1.0/report/R3", "k-2", JPEG, &[]).await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(fleet.sandbox.uploads().len(), 2);
    fleet.stop().await;
}

/// Holds the clients of the node at `url` that write, for `ms` (`CLIENT
/// PAUSE … WRITE`, what a managed failover does): a script that writes waits,
/// then runs; the gateway's call times out meanwhile.
async fn pause_writes(url: &str, ms: u64) {
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("WRITE")
        .query_async(&mut con)
        .await
        .unwrap();
}

/// Retries `key` on `addr` while it answers `409` or `503` (for up to 10 s),
/// as a client told to come back later would.
async fn retry_past_409(addr: SocketAddr, path: &str, key: &str) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = crate::idempotency::keyed(addr, ALICE, path, key, JPEG, &[]).await;
        if !matches!(r.status.as_u16(), 409 | 503) || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Concur's final answer came while Redis stalled: the write of the record
/// timed out. The replica keeps it, holds the key meanwhile, and writes it
/// once Redis answers: the retry on another replica gets the answer, and
/// Concur saw one upload. (It was lost, and logged as stored: the in-flight
/// record held the key for its lease, then the retry uploaded a second
/// image.) The stalled write itself ran when Redis came back, which the
/// retried write takes as done, not as another request's record. A replica
/// told to stop meanwhile writes it before it ends (it ended at once, and
/// the answer was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_answer_the_store_missed_is_written_once_it_answers() {
    if !redis_available() {
        return;
    }
    use crate::idempotency::keyed;
    for stop_first in [false, true] {
        let capture = capture_logs().await;
        let redis = single_node();
        let url = format!("redis://127.0.0.1:{}", redis.port);
        // (The fleet's shutdown grace is 2 s, past the pause.)
        let limits = "[rate_limit]\nuser_per_second = 1000.0\nuser_burst = 1000\n";
        let mut fleet = Fleet::start(2, Duration::ZERO, |dir| {
            format!("{limits}{}", store_section(dir, &url, None, ""))
        })
        .await;
        let (a, b) = (fleet.replicas[0].addr, fleet.replicas[1].addr);
        // A first key: Redis has the scripts now, so the stalled write is one
        // `EVALSHA` that runs when the pause ends.
        let warm = keyed(a, ALICE, "/api/image/v1.0/report/M0", "warm-1", JPEG, &[]).await;
        assert_eq!(warm.status, 201, "{}", warm.text());
        fleet
            .sandbox
            .push_fault(concur_gateway::sandbox::Fault::Delay { millis: 1000 });
        let first = tokio::spawn(async move {
            keyed(a, ALICE, "/api/image/v1.0/report/M1", "missed-1", JPEG, &[]).await
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while fleet.sandbox.uploads().len() < 2 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Concur answers within the pause.
        pause_writes(&url, 1600).await;
        let first = first.await.unwrap();
        assert_eq!(first.status, 201, "{}", first.text());
        let metrics = fleet.replicas[0].gateway.metrics.encode_prometheus();
        assert!(
            metrics.contains("concur_gateway_idempotency_total{result=\"pending\"} 1"),
            "{metrics}"
        );
        if stop_first {
            // Stopped while Redis is still paused: it ends once the record
            // is in, which the key holds when it has stopped.
            let mut replica = fleet.replicas.remove(0);
            let _ = replica.stop.take().map(|tx| tx.send(()));
            tokio::time::timeout(Duration::from_secs(10), replica.task)
                .await
                .expect("stopped in time")
                .unwrap();
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut con = client.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("concur-gateway:*:idem:*")
                .query_async(&mut con)
                .await
                .unwrap();
            assert_eq!(keys.len(), 2, "{keys:?}");
            for key in keys {
                let held: String = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut con)
                    .await
                    .unwrap();
                assert!(held.contains("fingerprint"), "a record, not: {held}");
            }
        }
        let again = retry_past_409(b, "/api/image/v1.0/report/M1", "missed-1").await;
        assert_eq!(again.status, 201, "{}", again.text());
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert_eq!(again.json(), first.json());
        assert_eq!(
            fleet.sandbox.uploads().len(),
            2,
            "one image at Concur per key"
        );
        fleet.stop().await;
        let logs = capture.finish();
        assert!(
            logs.contains("is kept under its Idempotency-Key now"),
            "stop_first {stop_first}: {logs}"
        );
        assert!(!logs.contains("is dropped"), "{logs}");
    }
}

/// The call that takes a key timed out (Redis stalled) and ran after all:
/// the request got `503 store_unavailable`, and its in-flight record would
/// have held the key for a whole lease against the corrected retry. It is
/// taken away once Redis answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_taking_timed_out_is_free_for_the_retry() {
    if !redis_available() {
        return;
    }
    use crate::idempotency::keyed;
    let redis = single_node();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    // (Generous rate limits: the retry polls.)
    let limits = "[rate_limit]\nuser_per_second = 1000.0\nuser_burst = 1000\n";
    let fleet = Fleet::start(1, Duration::ZERO, |dir| {
        format!("{limits}{}", store_section(dir, &url, None, ""))
    })
    .await;
    let a = fleet.replicas[0].addr;
    // A first key: Redis has the script now, so the stalled call is one
    // `EVALSHA` that runs when the pause ends (not a `NOSCRIPT` answered then,
    // which the client, timed out, would never follow with the script).
    let warm = keyed(a, ALICE, "/api/image/v1.0/report/T0", "warm-1", JPEG, &[]).await;
    assert_eq!(warm.status, 201, "{}", warm.text());
    pause_writes(&url, 400).await;
    keyed(
        a,
        ALICE,
        "/api/image/v1.0/report/T1",
        "stalled-1",
        JPEG,
        &[],
    )
    .await
    .problem(503, "store_unavailable");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let retry = retry_past_409(a, "/api/image/v1.0/report/T1", "stalled-1").await;
    assert_eq!(retry.status, 201, "{}", retry.text());
    assert!(retry.header("idempotent-replayed").is_none());
    assert_eq!(fleet.sandbox.uploads().len(), 2);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_held_by_a_killed_replica_is_free_after_its_lease() {
    if !redis_available() {
        return;
    }
    use crate::idempotency::keyed;
    let redis = single_node();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    // (Generous rate limits: the test polls.)
    let lease =
        "[idempotency]\nlease_s = 1.5\n[rate_limit]\nuser_per_second = 1000.0\nuser_burst = 1000\n";
    let fleet = Fleet::start(1, Duration::ZERO, |dir| {
        format!("{lease}{}", store_section(dir, &url, None, ""))
    })
    .await;
    // A second replica as a process, killed (-9) in the middle of an upload
    // with a key: its in-flight record is left behind.
    let config = fleet.dir.path().join("victim.toml");
    let (port, admin) = (free_port(), free_port());
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n[upstream]\nbase_url = \"{}\"\nca_file = \"ca.pem\"\n[auth]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\njwks_file = \"jwks.json\"\n[credentials]\nfile = \"credentials.toml\"\n{lease}{}",
            fleet.sandbox.base_url(),
            store_section(fleet.dir.path(), &url, None, "")
        ),
    )
    .unwrap();
    let mut victim = Command::new(env!("CARGO_BIN_EXE_concur-gateway"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(listen).is_err() {
        assert!(Instant::now() < deadline, "the victim did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await; // connected to Redis
    use tokio::io::AsyncWriteExt;
    let body = big_jpeg(200 * 1024);
    let mut s = tokio::net::TcpStream::connect(listen).await.unwrap();
    s.write_all(
        format!(
            "POST /api/image/v1.0/report/K1 HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {}\r\ncontent-type: image/jpeg\r\nidempotency-key: crash-1\r\ncontent-length: {}\r\n\r\n",
            jwt(ALICE.0, ALICE.1),
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(&body[..1000]).await.unwrap();
    // Wait until the victim's in-flight record is in Redis.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("concur-gateway:*:idem:*")
            .query_async(&mut con)
            .await
            .unwrap();
        if !keys.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the victim never held the key");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = fleet.replicas[0].addr;
    keyed(a, ALICE, "/api/image/v1.0/report/K1", "crash-1", &body, &[])
        .await
        .problem(409, "idempotency_conflict");
    victim.kill().unwrap(); // SIGKILL
    let _ = victim.wait();
    drop(s);
    // Still held until its lease runs out (no renewal any more), then free.
    let started = Instant::now();
    loop {
        let r = keyed(a, ALICE, "/api/image/v1.0/report/K1", "crash-1", &body, &[]).await;
        if r.status == 201 {
            break;
        }
        r.problem(409, "idempotency_conflict");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the lease never ran out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        fleet
            .sandbox
            .uploads()
            .iter()
            .filter(|u| u.complete)
            .count()
            == 1,
        "one complete upload: the survivor's"
    );
    fleet.stop().await;
}

/// `(EVALSHA + EVAL calls, places held)` on the node at `port`: script calls
/// are the gateway's round trips; places are the distinct members of the
/// in-flight sorted sets under `prefix`.
async fn script_calls_and_places(port: u16, prefix: &str) -> (u64, usize) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut con)
        .await
        .unwrap();
    let calls = info
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .map(|l| {
            let calls = l.split("calls=").nth(1).unwrap();
            calls[..calls.find(',').unwrap()].parse::<u64>().unwrap()
        })
        .sum();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*:if:*"))
        .query_async(&mut con)
        .await
        .unwrap();
    let mut places = std::collections::HashSet::new();
    for key in keys {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .query_async(&mut con)
            .await
            .unwrap();
        places.extend(members);
    }
    (calls, places.len())
}

/// An acme caller, as the store sees it, and the key of acme's admin
/// credential (the one its callers without a token of their own use).
fn acme(user: &str) -> concur_gateway::auth::Identity {
    concur_gateway::auth::Identity {
        company: "acme".into(),
        user: user.into(),
    }
}

fn acme_admin() -> String {
    concur_gateway::store::credential_key("acme", None)
}

/// A Redis node and one replica on it: `[rate_limit]` holds `limits`, and
/// the store's keys start with `prefix`.
async fn one_replica(limits: &str, prefix: &str) -> (RedisNode, Fleet) {
    let redis = single_node();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let fleet = Fleet::start(1, Duration::ZERO, |dir| {
        format!(
            "[rate_limit]\n{limits}\n{}",
            store_section(dir, &url, None, &format!("key_prefix = \"{prefix}\"\n"))
        )
    })
    .await;
    (redis, fleet)
}

/// Holds every client of the node at `url` for `ms` (`CLIENT PAUSE ALL`).
async fn pause(url: &str, ms: u64) {
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("ALL")
        .query_async(&mut con)
        .await
        .unwrap();
}

/// A place given back is released at once; places given back while that
/// call is under way ride on the next admission of their company, or go
/// together in the next call: one call for all of them, never a wait of
/// their own. Sequential uploads of one user (`user_concurrent = 1`) are
/// all admitted. Redis is paused (`CLIENT PAUSE`) to hold the first release
/// under way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_go_at_once_and_together() {
    if !redis_available() {
        return;
    }
    let (redis, fleet) = one_replica(
        "user_per_second = 1000.0\nuser_burst = 1000\ncompany_per_second = 1000.0\ncompany_burst = 1000\nuser_concurrent = 1",
        "ride:",
    )
    .await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let store = fleet.replicas[0].gateway.store.clone();
    let (who, cred) = (acme, acme_admin());
    let settle = || tokio::time::sleep(Duration::from_millis(150));
    // Load both scripts.
    drop(store.admit(&who(ALICE.1), &cred).await.unwrap());
    settle().await;
    let (c0, p0) = script_calls_and_places(redis.port, "ride:").await;
    assert_eq!(p0, 0, "released on its own");
    let held: Vec<_> = ["a@acme.example", "b@acme.example", "c@acme.example"]
        .into_iter()
        .map(&who)
        .collect();
    let mut admissions = Vec::new();
    for w in &held {
        admissions.push(store.admit(w, &cred).await.unwrap());
    }
    let (c1, p1) = script_calls_and_places(redis.port, "ride:").await;
    assert_eq!((c1 - c0, p1), (3, 3));
    pause(&url, 100).await;
    // The first release goes at once (and waits in Redis); the other two
    // wait for it, and ride on the admission that starts meanwhile, or go
    // with it in one call.
    for a in admissions {
        drop(a);
    }
    let d = store.admit(&who("d@acme.example"), &cred).await.unwrap();
    settle().await;
    let (c2, p2) = script_calls_and_places(redis.port, "ride:").await;
    // One admission, and one release call at most (none when all three
    // rode on the admission, which can start before the release's task).
    assert!((1..=2).contains(&(c2 - c1)), "{} calls", c2 - c1);
    assert_eq!(p2, 1);
    drop(d);
    // Over HTTP: sequential uploads of one user (user_concurrent = 1), all
    // admitted, none left in flight.
    for i in 0..10 {
        let r = upload(
            fleet.replicas[0].addr,
            ALICE,
            &format!("/api/image/v1.0/report/Q{i}"),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    settle().await;
    assert_eq!(script_calls_and_places(redis.port, "ride:").await.1, 0);
    fleet.stop().await;
}

/// An admission dropped while its call waits on Redis (the caller went
/// away) leaves no place behind: the script still runs once Redis gets to
/// it, adding the admission's own place, which the dropped call gave back
/// (released after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_dropped_mid_call_leaves_no_place() {
    if !redis_available() {
        return;
    }
    let (redis, fleet) = one_replica("user_concurrent = 1", "cut:").await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let store = fleet.replicas[0].gateway.store.clone();
    let (who, cred) = (acme, acme_admin());
    let alice = store.admit(&who(ALICE.1), &cred).await.unwrap();
    // Redis holds every call (paused) until the caller has gone...
    pause(&url, 150).await;
    // ...carol's admission among them (it may carry alice's place, given
    // back just now, or that goes on its own).
    drop(alice);
    let cut = tokio::time::timeout(
        Duration::from_millis(50),
        store.admit(&who("carol@acme.example"), &cred),
    )
    .await;
    assert!(cut.is_err(), "the admission waited on Redis");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        script_calls_and_places(redis.port, "cut:").await.1,
        0,
        "no place left behind"
    );
    // And carol may upload (user_concurrent = 1).
    assert!(matches!(
        store
            .admit(&who("carol@acme.example"), &cred)
            .await
            .unwrap()
            .place,
        concur_gateway::store::Place::Shared(_)
    ));
    fleet.stop().await;
}

/// A replica stopped (SIGTERM) while an upload outlasts its shutdown grace
/// gives that upload's place back before it exits: other replicas do not
/// count it until its lease runs out. The binary itself, as deployed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_mid_upload_gives_its_place_back() {
    use tokio::io::AsyncWriteExt;
    if !redis_available() {
        return;
    }
    let redis = single_node();
    let h = Harness::start().await; // for its sandbox
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let store = store_section(dir.path(), &url, None, "key_prefix = \"term:\"\n");
    let (port, admin) = (free_port(), free_port());
    let config = concur_gateway::testkit::GatewayToml::new()
        .set("server.listen", format!("127.0.0.1:{port}"))
        .set("server.admin_listen", format!("127.0.0.1:{admin}"))
        .set("server.shutdown_grace_s", 1)
        .merge_toml(&store)
        .write(dir.path(), &h.sandbox, CREDENTIALS);
    let mut child = Command::new(env!("CARGO_BIN_EXE_concur-gateway"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_admin_ready(admin).await;
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    wait_for_async(async || {
        metrics(admin_addr)
            .await
            .contains("concur_gateway_store_up 1")
    })
    .await;
    // An upload that sends half its body and stalls.
    let mut slow = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    slow.write_all(
        format!(
            "POST /api/image/v1.0/report/S1 HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {}\r\ncontent-type: image/jpeg\r\ncontent-length: {}\r\n\r\n",
            jwt(ALICE.0, ALICE.1),
            JPEG.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    slow.write_all(&JPEG[..JPEG.len() / 2]).await.unwrap();
    wait_for_async(async || script_calls_and_places(redis.port, "term:").await.1 == 1).await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let exit = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || child.wait().unwrap()),
    )
    .await
    .expect("the process exits")
    .unwrap();
    assert_eq!(exit.code(), Some(0));
    assert_eq!(
        script_calls_and_places(redis.port, "term:").await.1,
        0,
        "the place was given back before the process ended"
    );
    drop(slow);
}

/// Once the health check finds Redis down, admissions fall back to this
/// replica's own limits at once, instead of each upload waiting on calls
/// that fail (up to `store.timeout_ms`, here 1.5 s); shared state resumes
/// when Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_do_not_wait_on_a_redis_known_to_be_down() {
    if !redis_available() {
        return;
    }
    let mut redis = single_node();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let fleet = Fleet::start(1, Duration::ZERO, |dir| {
        store_section(dir, &url, None, "").replace("timeout_ms = 200", "timeout_ms = 1500")
    })
    .await;
    let (addr, admin) = (fleet.replicas[0].addr, fleet.replicas[0].admin);
    assert_eq!(
        upload(addr, ALICE, "/api/image/v1.0/report/D0")
            .await
            .status,
        201
    );
    redis.stop();
    wait_for_async(async || {
        metrics(admin)
            .await
            .contains("concur_gateway_store_fallbacks_total{op=\"ping\"}")
    })
    .await;
    let started = Instant::now();
    for i in 1..=6 {
        let r = upload(addr, ALICE, &format!("/api/image/v1.0/report/D{i}")).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // Each waited about half a second on the failing calls before (the
    // client's reconnection attempts, within timeout_ms).
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "6 uploads took {took:?}: they waited on Redis"
    );
    let m = metrics(admin).await;
    let admits = m
        .lines()
        .find(|l| l.starts_with("concur_gateway_store_fallbacks_total{op=\"admit\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(admits >= 6.0, "{m}");
    redis.start();
    wait_for_async(async || metrics(admin).await.contains("concur_gateway_store_up 1")).await;
    assert_eq!(
        upload(addr, ALICE, "/api/image/v1.0/report/D9")
            .await
            .status,
        201
    );
    fleet.stop().await;
}

/// The Redis clients connected to the node on `port` now.
async fn redis_clients(port: u16) -> usize {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut con)
        .await
        .unwrap();
    // Without this listing's own connection.
    list.lines().count() - 1
}

/// Each connection worker calls Redis over a connection of its own, opened
/// on its runtime after its first call (until then the shared one serves):
/// its calls never wait for another thread to run Redis's connection.
#[tokio::test]
async fn each_connection_worker_gets_a_redis_connection_of_its_own() {
    if !redis_available() {
        return;
    }
    let (mut redis, fleet) =
        one_replica("user_per_second = 1000.0\nuser_burst = 1000", "own:").await;
    let replica = &fleet.replicas[0];
    let workers = replica.gateway.config.server.workers;
    let store = replica
        .gateway
        .store
        .redis()
        .expect("a Redis store")
        .clone();
    assert_eq!(store.connections(), 1, "the shared connection");
    assert_eq!(redis_clients(redis.port).await, 1);
    // One client connection per upload: the workers take them in turn.
    let created = |name: String| async move {
        let r = upload(
            replica.addr,
            ALICE,
            &format!("/api/image/v1.0/report/{name}"),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
    };
    for i in 0..2 * workers {
        created(format!("OWN{i}")).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while store.connections() < 1 + workers {
        assert!(
            std::time::Instant::now() < deadline,
            "{} connections for {workers} workers",
            store.connections()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.connections(), 1 + workers);
    assert_eq!(redis_clients(redis.port).await, 1 + workers);
    // And they serve: more uploads, no new connection, every one admitted.
    for i in 0..2 * workers {
        created(format!("TWO{i}")).await;
    }
    assert_eq!(redis_clients(redis.port).await, 1 + workers);
    // Redis restarts: every connection is made again (the shared one and
    // the workers' own by themselves, or a worker's anew after it broke),
    // and uploads go on through Redis.
    redis.stop();
    redis.start();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    loop {
        created(format!("BACK{i}")).await;
        i += 1;
        if i >= 2 * workers && redis_clients(redis.port).await == 1 + workers {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} Redis clients after the restart, {workers} workers",
            redis_clients(redis.port).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (calls, _) = script_calls_and_places(redis.port, "own:").await;
    assert!(
        calls > 0,
        "uploads after the restart were admitted by Redis"
    );
}
