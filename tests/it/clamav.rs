//! Malware scanning (`[scan]`) through the whole gateway, against a real clamd
//! started by these tests (a temporary config and a one-signature database
//! for the EICAR test string: no signature download), a closed port, and a
//! fake clamd that accepts and never answers.
//!
//! Without `clamd` installed the tests that need it are skipped, loudly,
//! unless `CI` is set: then they fail (`.ci/run` installs `clamav-daemon`).

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::*;

/// The EICAR anti-virus test string (harmless, detected by every scanner).
pub const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// A clamd process shared by the whole test binary. It lives as long as the
/// binary: its parent shell kills it when our end of its stdin closes.
struct Clamd {
    port: u16,
    _dir: tempfile::TempDir,
    _stdin: ChildStdin,
    _child: Child,
}

fn clamd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("clamd"))
        .find(|p| p.is_file())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut reply = [0u8; 5];
    s.write_all(b"zPING\0").is_ok() && s.read_exact(&mut reply).is_ok() && &reply == b"PONG\0"
}

fn start_clamd() -> Option<Clamd> {
    let Some(bin) = clamd_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "clamd is not installed and CI is set: install clamav-daemon (see .ci/run)"
        );
        eprintln!(
            "\n*** SKIPPING the ClamAV tests: clamd is not installed \
             (apt-get install clamav-daemon). With CI set they fail instead. ***\n"
        );
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    std::fs::create_dir(&db).unwrap();
    // An extended (.ndb) signature: any file type, any offset, the first 40
    // bytes of the EICAR string.
    std::fs::write(
        db.join("test.ndb"),
        format!("Eicar-Test:0:*:{}\n", hex(&EICAR[..40])),
    )
    .unwrap();
    let port = free_port();
    let mut conf = format!(
        "DatabaseDirectory {}\nTCPSocket {port}\nTCPAddr 127.0.0.1\nStreamMaxLength 20M\n\
         Foreground yes\nLogFile {}\n",
        db.display(),
        dir.path().join("clamd.log").display()
    );
    if std::fs::metadata("/proc/self").map(|m| m.uid()).ok() == Some(0) {
        conf.push_str("User root\n");
    }
    let conf_path = dir.path().join("clamd.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let started = Instant::now();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#""$0" -c "$1" & pid=$!; cat >/dev/null; kill $pid"#)
        .arg(&bin)
        .arg(&conf_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    while !ping(port) {
        if started.elapsed() > Duration::from_secs(60) {
            let log = std::fs::read_to_string(dir.path().join("clamd.log")).unwrap_or_default();
            panic!("clamd did not answer PING on port {port} within 60 s; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "clamd ready on 127.0.0.1:{port} after {:?}",
        started.elapsed()
    );
    Some(Clamd {
        port,
        _dir: dir,
        _stdin: stdin,
        _child: child,
    })
}

/// The shared clamd's port, or `None` (skip) when clamd is not installed.
fn clamd() -> Option<u16> {
    static CLAMD: OnceLock<Option<Clamd>> = OnceLock::new();
    CLAMD.get_or_init(start_clamd).as_ref().map(|c| c.port)
}

/// A gateway scanning with the clamd on `port` (within 10 s).
fn scanning(port: u16) -> TestGateway {
    let mut scan = toml::Table::new();
    scan.insert("clamd".into(), format!("tcp://127.0.0.1:{port}").into());
    scan.insert("timeout_s".into(), 10.into());
    Harness::builder().section("scan", scan)
}

/// `jpeg` with a COM segment holding the EICAR string right after SOI: still a
/// well-formed JPEG, so only the malware scan can refuse it.
fn with_eicar(jpeg: &[u8]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xFE]);
    out.extend_from_slice(&((EICAR.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(EICAR);
    out.extend_from_slice(&jpeg[2..]);
    out
}

async fn chunked(h: &Harness, body: &[u8]) -> Reply {
    upload_to(
        h.addr,
        &jwt(ALICE.0, ALICE.1),
        "/api/image/v1.0/receipt",
        "image/jpeg",
        Payload::Chunked(body.chunks(100_000).map(<[u8]>::to_vec).collect()),
    )
    .await
}

/// The value of one metric line (`name{labels}`), 0 when absent.
async fn metric(h: &Harness, series: &str) -> f64 {
    let text = h.admin_get("/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn wait_ready(h: &Harness, want: u16) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = h.admin_get("/readyz").await;
        if r.status == want || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn eicar_is_refused_and_never_complete_upstream() {
    let Some(port) = clamd() else { return };
    let h = scanning(port).start().await;
    assert_eq!(wait_ready(&h, 200).await.status, 200);

    // Small: all of it is within the held-back tail.
    let small = with_eicar(JPEG);
    // Large: 2 MiB stream to Concur while clamd reads them; the verdict
    // arrives before the last 64 KiB are released.
    let large = with_eicar(&big_jpeg(2 * 1024 * 1024));
    for body in [&small, &large] {
        let r = h.upload("/api/image/v1.0/receipt", body).await;
        let v = r.problem(422, "malware_detected");
        assert!(
            !r.text().to_lowercase().contains("eicar"),
            "signature leaked: {v}"
        );
    }
    // The large one had started streaming to Concur: its record comes once
    // the exchange is cut.
    let large_len = Some(large.len() as u64);
    wait_for(|| h.uploads().iter().any(|u| u.content_length == large_len)).await;
    // Chunked: spooled through the same checks, so nothing is sent at all.
    let before = h.uploads().len();
    chunked(&h, &large).await.problem(422, "malware_detected");
    assert_eq!(
        h.uploads().len(),
        before,
        "a refused chunked body never starts upstream"
    );
    let ups = h.uploads();
    assert!(ups.iter().all(|u| !u.complete), "{ups:#?}");
    assert_eq!(
        metric(&h, "concur_gateway_scans_total{result=\"found\"}").await,
        3.0
    );
    assert_eq!(
        metric(
            &h,
            "concur_gateway_inspection_rejections_total{code=\"malware_detected\"}"
        )
        .await,
        3.0
    );
}

#[tokio::test]
async fn clean_uploads_pass_byte_identical() {
    let Some(port) = clamd() else { return };
    let h = scanning(port).start().await;
    let body = big_jpeg(3 * 1024 * 1024);
    let r = h.upload("/api/image/v1.0/receipt", &body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = chunked(&h, &body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let ups = h.uploads();
    assert_eq!(ups.len(), 2);
    for u in &ups {
        assert!(u.complete);
        assert_eq!(u.sha256_hex, sha256_hex(&body));
    }
    assert_eq!(
        metric(&h, "concur_gateway_scans_total{result=\"clean\"}").await,
        2.0
    );
    assert_eq!(
        metric(&h, "concur_gateway_scan_duration_seconds_count").await,
        2.0
    );
    assert_eq!(wait_ready(&h, 200).await.status, 200);
    assert_eq!(metric(&h, "concur_gateway_clamd_up").await, 1.0);
}

#[tokio::test]
async fn clamd_down_fails_closed_or_lets_through_with_allow() {
    let port = free_port(); // nothing listens there
    let h = scanning(port).start().await;
    let r = h.upload("/api/image/v1.0/receipt", JPEG).await;
    r.problem(503, "scan_unavailable");
    assert!(r.header("retry-after").is_some());
    // Refused before Concur was asked: clamd's refusal to connect comes
    // long before the TLS exchange with Concur could send a head.
    settle().await;
    assert!(h.uploads().is_empty(), "{:?}", h.uploads());
    chunked(&h, JPEG).await.problem(503, "scan_unavailable");
    let ready = wait_ready(&h, 503).await;
    assert_eq!(ready.status, 503);
    assert!(ready.text().contains("clamd"), "{}", ready.text());
    assert_eq!(
        metric(&h, "concur_gateway_scans_total{result=\"error\"}").await,
        2.0
    );
    assert_eq!(metric(&h, "concur_gateway_clamd_up").await, 0.0);
    h.stop().await;

    let h = scanning(port).set("scan.on_error", "allow").start().await;
    let r = h.upload("/api/image/v1.0/receipt", JPEG).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(h.uploads()[0].complete);
    assert_eq!(
        metric(
            &h,
            "concur_gateway_scans_total{result=\"allowed_on_error\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        wait_ready(&h, 200).await.status,
        200,
        "allow: ready without clamd"
    );
}

#[tokio::test]
async fn a_stalled_clamd_is_503_within_the_timeout() {
    // Accepts, never reads, never answers.
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = stall.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = stall.accept().await {
            held.push(s);
        }
    });
    let h = scanning(port).set("scan.timeout_s", 1).start().await;
    // Small: the writes fit in socket buffers, the verdict never comes.
    // Large: the writes themselves stall (clamd does not read).
    for body in [JPEG.to_vec(), big_jpeg(8 * 1024 * 1024)] {
        let started = Instant::now();
        let r = h.upload("/api/image/v1.0/receipt", &body).await;
        r.problem(503, "scan_unavailable");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }
    // Both exchanges with Concur had started (a second is long enough for the
    // head to arrive); neither body was let through.
    let ups = h.wait_for_uploads(2).await;
    assert!(ups.iter().all(|u| !u.complete), "{ups:#?}");
    assert_eq!(wait_ready(&h, 503).await.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_queue_for_scan_permits() {
    let Some(port) = clamd() else { return };
    let h = scanning(port).set("scan.max_concurrent", 4).start().await;
    let body = big_jpeg(512 * 1024);
    let token = jwt(ALICE.0, ALICE.1);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let (addr, body, token) = (h.addr, body.clone(), token.clone());
        tasks.spawn(async move {
            let path = format!("/api/image/v1.0/report/R{i}");
            upload_to(addr, &token, &path, "image/jpeg", Payload::Full(body)).await
        });
    }
    while let Some(r) = tasks.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let ups = h.uploads();
    assert_eq!(ups.len(), 16);
    assert!(
        ups.iter()
            .all(|u| u.complete && u.sha256_hex == sha256_hex(&body))
    );
    assert_eq!(
        metric(&h, "concur_gateway_scans_total{result=\"clean\"}").await,
        16.0
    );
}

/// The cost of scanning: sequential uploads of 1 MiB and 8 MiB through the
/// gateway with and without clamd. Run in release mode:
/// `cargo test --release --test it clamav::scan_cost -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn scan_cost() {
    let Some(port) = clamd() else { return };
    const UPLOADS: usize = 10;
    const RUNS: usize = 5;
    let plain = Harness::start().await;
    let scanned = scanning(port).start().await;
    for size in [1024 * 1024, 8 * 1024 * 1024] {
        let body = big_jpeg(size);
        for (name, h) in [("without scan", &plain), ("with clamd", &scanned)] {
            let mut runs = Vec::new();
            for _ in 0..RUNS {
                let started = Instant::now();
                for i in 0..UPLOADS {
                    let r = h
                        .upload(&format!("/api/image/v1.0/report/B{i}"), &body)
                        .await;
                    assert_eq!(r.status, 201, "{}", r.text());
                }
                runs.push(started.elapsed());
            }
            runs.sort();
            let median = runs[RUNS / 2];
            eprintln!(
                "{} MiB x {UPLOADS} {name}: median {median:?} ({:?} per upload; runs {runs:?})",
                size / (1024 * 1024),
                median / UPLOADS as u32,
            );
        }
    }
}

#[tokio::test]
async fn a_scan_is_a_child_span_with_its_verdict() {
    let Some(port) = clamd() else { return };
    let collector = crate::tracing::Collector::start().await;
    let h = scanning(port).merge(&collector.config()).start().await;
    let r = h.upload("/api/image/v1.0/receipt", &with_eicar(JPEG)).await;
    r.problem(422, "malware_detected");
    let spans = collector.wait_for_spans(5).await;
    let server = crate::tracing::named(&spans, "POST receipt");
    let scan = crate::tracing::named(&spans, "clamav scan");
    assert_eq!(scan.parent_span_id, server.span_id);
    assert!(matches!(
        crate::tracing::attr(scan, "concur_gateway.code"),
        Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(v)) if v == "malware_detected"
    ));
    h.stop().await;
}
