//! The binary itself: `demo`, `serve` with SIGTERM, `check-config`, and what
//! reaches its logs.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_concur-gateway");

#[tokio::test]
async fn demo_prints_a_curl_line_that_uploads() {
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("curl "), "{line}");
    // curl -sS -X POST http://ADDR/path -H 'Authorization: Bearer JWT' -H 'Content-Type: image/jpeg' --data-binary @FILE
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap();
    let (addr, path) = url["http://".len()..].split_once('/').unwrap();
    let jwt = line
        .split("Bearer ")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    let file = line.trim_end().rsplit('@').next().unwrap();
    let body = std::fs::read(file).unwrap();
    let r = upload_to(
        addr.parse().unwrap(),
        jwt,
        &format!("/{path}"),
        "image/jpeg",
        Payload::Full(body),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(v["Image"]["Url"], serde_json::Value::Null);
    assert_eq!(v["Image"]["Id"].as_str().unwrap().len(), 20);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The config of a `serve` process on fixed ports (the process binds them
/// itself) in front of the sandbox, with the default rate limits.
fn serve_config(port: u16, admin: u16) -> GatewayToml {
    GatewayToml::new()
        .set("server.listen", format!("127.0.0.1:{port}"))
        .set("server.admin_listen", format!("127.0.0.1:{admin}"))
        .set("server.drain_delay_s", 0.5)
        .remove("rate_limit")
}

#[tokio::test]
async fn serve_logs_no_secret_and_exits_zero_on_sigterm() {
    let h = Harness::start().await; // for its sandbox
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = serve_config(port, admin).write(dir.path(), &h.sandbox, CREDENTIALS);
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_admin_ready(admin).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let valid = jwt("acme", "alice@acme.example");
    let mut expired_claims = claims("acme", "alice@acme.example");
    expired_claims["exp"] = (now() - 1000).into();
    let expired = sign(jsonwebtoken::Algorithm::ES256, Some("es"), &expired_claims);
    for (token, path) in [
        (
            valid.as_str(),
            "/api/image/v1.0/receipt?access_token=query-secret",
        ),
        (valid.as_str(), "/api/image/v1.0/report/R1"),
        (expired.as_str(), "/api/image/v1.0/receipt"),
        ("garbage-token-secret", "/api/image/v1.0/receipt"),
    ] {
        upload_to(
            addr,
            token,
            path,
            "image/jpeg",
            Payload::Full(JPEG.to_vec()),
        )
        .await;
    }
    h.sandbox
        .push_fault(concur_gateway::sandbox::Fault::Status {
            status: 401,
            message: "bad token".into(),
            retry_after: None,
        });
    upload_to(
        addr,
        &valid,
        "/api/image/v1.0/report/R1",
        "image/jpeg",
        Payload::Full(JPEG.to_vec()),
    )
    .await;

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        let mut logs = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut logs)
            .unwrap();
        (child.wait().unwrap(), logs)
    });
    let (exit, logs) = tokio::time::timeout(Duration::from_secs(20), exit)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0), "{logs}");
    assert!(logs.contains("\"status\":201"), "{logs}");
    assert!(logs.contains("\"code\":\"invalid_token\""), "{logs}");
    for secret in [
        valid.as_str(),
        expired.as_str(),
        "garbage-token-secret",
        "query-secret",
        ALICE_TOKEN,
        ADMIN_TOKEN,
        GINA_TOKEN,
    ] {
        assert!(!logs.contains(secret), "secret {secret:.12}… in the logs");
    }
    assert!(!logs.contains("eyJ"), "something JWT-like in the logs");
}

/// Runs `check-config` on `config`: its exit code and what it printed.
fn check_config(config: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn check_config_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"bad\"\n[auth]\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"missing.json\"\n[credentials]\nfile = \"nope.toml\"\n[typo]\n",
    )
    .unwrap();
    let (code, text) = check_config(&path);
    assert_eq!(code, Some(2));
    assert!(
        text.contains("server.listen") && text.contains("unknown key `typo`"),
        "{text}"
    );
    // The files it names are checked in the same run.
    assert!(
        text.contains("missing.json") && text.contains("nope.toml"),
        "{text}"
    );

    // Fix the config: the missing files are still reported.
    std::fs::write(
        &path,
        "[auth]\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"missing.json\"\n[credentials]\nfile = \"nope.toml\"\n",
    )
    .unwrap();
    let (code, text) = check_config(&path);
    assert_eq!(code, Some(2));
    assert!(
        text.contains("missing.json") && text.contains("nope.toml"),
        "{text}"
    );

    std::fs::write(dir.path().join("jwks.json"), &keys().jwks).unwrap();
    std::fs::write(dir.path().join("credentials.toml"), CREDENTIALS).unwrap();
    std::fs::write(
        &path,
        "[auth]\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"jwks.json\"\n[credentials]\nfile = \"credentials.toml\"\n",
    )
    .unwrap();
    let (code, text) = check_config(&path);
    assert_eq!(code, Some(0), "{text}");
}

/// `store.ca_file` is read as `upstream.ca_file` is: a file without a PEM
/// certificate is a problem (it passed, and TLS to Redis then failed for good).
#[test]
fn check_config_reads_the_store_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(dir.path().join("jwks.json"), &keys().jwks).unwrap();
    std::fs::write(dir.path().join("credentials.toml"), CREDENTIALS).unwrap();
    std::fs::write(
        dir.path().join("store.key"),
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
    )
    .unwrap();
    std::fs::write(
        &path,
        "[auth]\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"jwks.json\"\n\
         [credentials]\nfile = \"credentials.toml\"\n\
         [store]\nbackend = \"redis\"\nurl = \"rediss://localhost:6380/0\"\n\
         ca_file = \"redis-ca.pem\"\nencryption_key_file = \"store.key\"\n",
    )
    .unwrap();
    let ca = dir.path().join("redis-ca.pem");
    for junk in ["hello\n", ""] {
        std::fs::write(&ca, junk).unwrap();
        let (code, text) = check_config(&path);
        assert_eq!(code, Some(2), "{text}");
        let line = format!(
            "{}: store.ca_file {}: no PEM certificate found",
            path.display(),
            ca.display()
        );
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    std::fs::write(&ca, keys().rsa_public_pem.as_bytes()).unwrap();
    let (code, text) = check_config(&path);
    assert_eq!(code, Some(2), "a public key is no certificate: {text}");
    let (_, cert_pem) = localhost_tls();
    std::fs::write(&ca, cert_pem).unwrap();
    let (code, text) = check_config(&path);
    assert_eq!(code, Some(0), "{text}");
}

#[test]
fn check_config_reports_config_and_file_problems_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "[upstream]\nca_file = \"ca.pem\"\n\
         [auth]\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"jwks.json\"\n\
         [rate_limit]\nuser_per_second = -1\n\
         [credentials]\nfile = \"creds.toml\"\n",
    )
    .unwrap();
    let (code, text) = check_config(&path);
    assert_eq!(code, Some(2));
    let at = |name: &str| dir.path().join(name).display().to_string();
    let expected = [
        "rate_limit.user_per_second = -1: expected a rate in requests per second, more than 0 and at most 1000000".to_owned(),
        format!("upstream.ca_file {}: no such file", at("ca.pem")),
        format!("auth.jwks_file {}: no such file", at("jwks.json")),
        format!("credentials.file {}: no such file", at("creds.toml")),
    ];
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{text}");
    for problem in &expected {
        let line = format!("{}: {problem}", path.display());
        assert!(
            lines.contains(&line.as_str()),
            "missing {line:?} in:\n{text}"
        );
    }

    // Files that exist but do not parse are reported the same way.
    std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").unwrap();
    std::fs::write(dir.path().join("jwks.json"), "{").unwrap();
    std::fs::write(dir.path().join("creds.toml"), "[[credential]]\n").unwrap();
    let (code, text) = check_config(&path);
    assert_eq!(code, Some(2));
    for prefix in [
        "rate_limit.user_per_second = -1".to_owned(),
        format!("upstream.ca_file {}: ", at("ca.pem")),
        format!("auth.jwks_file {}: ", at("jwks.json")),
        format!("credentials.file {}: ", at("creds.toml")),
    ] {
        let line = format!("{}: {prefix}", path.display());
        assert!(
            text.lines().any(|l| l.starts_with(&line)),
            "missing {line:?} in:\n{text}"
        );
    }
}

#[test]
fn check_config_reports_every_value_of_the_wrong_type_and_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "[server]\nmax_body_bytes = \"10MB\"\n\
         [upstream]\ntimeout_s = \"slow\"\nca_file = \"ca.pem\"\n\
         [auth]\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"jwks.json\"\n\
         [rate_limit]\nuser_per_second = -1\n\
         [idempotency]\nttl_s = [1, 2]\n\
         [credentials]\nfile = \"creds.toml\"\n",
    )
    .unwrap();
    let (code, text) = check_config(&path);
    assert_eq!(code, Some(2), "{text}");
    let at = |name: &str| dir.path().join(name).display().to_string();
    let expected = [
        "server.max_body_bytes (line 2): invalid type: string \"10MB\"".to_owned(),
        "upstream.timeout_s (line 4): invalid type: string \"slow\"".to_owned(),
        "idempotency.ttl_s (line 13): invalid type: sequence".to_owned(),
        "rate_limit.user_per_second = -1: expected a rate in requests per second".to_owned(),
        format!("upstream.ca_file {}: no such file", at("ca.pem")),
        format!("auth.jwks_file {}: no such file", at("jwks.json")),
        format!("credentials.file {}: no such file", at("creds.toml")),
    ];
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{text}");
    for problem in &expected {
        let prefix = format!("{}: {problem}", path.display());
        assert!(
            lines.iter().any(|l| l.starts_with(&prefix)),
            "missing {prefix:?} in:\n{text}"
        );
    }
}

/// `sandbox` on its own, with an OAuth client from the command line: a
/// gateway process with a refreshing credential gets its access token there,
/// the refresh token rotated, and uploads with it.
#[tokio::test]
async fn the_standalone_sandbox_serves_a_refreshing_credential() {
    use crate::creds::{BOB_CLIENT, BOB_REFRESH, BOB_SECRET, credentials_with_bob};
    let h = Harness::start().await; // GatewayToml::write wants a sandbox
    let dir = tempfile::tempdir().unwrap();
    let sb_port = free_port();
    let ca = dir.path().join("standalone-ca.pem");
    let mut sandbox = Command::new(BIN)
        .args([
            "sandbox",
            "--listen",
            &format!("127.0.0.1:{sb_port}"),
            "--cert-out",
        ])
        .arg(&ca)
        .arg("--oauth-client")
        .arg(format!(
            "{BOB_CLIENT}:{BOB_SECRET}:{BOB_REFRESH}={}/{}",
            BOB.0, BOB.1
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sb_addr: std::net::SocketAddr = format!("127.0.0.1:{sb_port}").parse().unwrap();
    wait_for_async(async || ca.exists() && tokio::net::TcpStream::connect(sb_addr).await.is_ok())
        .await;
    let (port, admin) = (free_port(), free_port());
    let config = serve_config(port, admin)
        .set("upstream.base_url", format!("https://localhost:{sb_port}"))
        .set("upstream.ca_file", "standalone-ca.pem")
        .write(dir.path(), &h.sandbox, &credentials_with_bob(BOB_REFRESH));
    let mut gateway = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_admin_ready(admin).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..2 {
        let r = upload_to(
            addr,
            &jwt(BOB.0, BOB.1),
            "/api/image/v1.0/receipt",
            "image/jpeg",
            Payload::Full(JPEG.to_vec()),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // The refresh went to the standalone sandbox, not the in-process one.
    assert_eq!(h.sandbox.token_requests(), 0);
    assert!(h.uploads().is_empty());
    let _ = gateway.kill();
    let _ = sandbox.kill();
    let _ = gateway.wait();
    let _ = sandbox.wait();
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    // A long drain: only the second signal can end it quickly.
    let config = serve_config(port, admin)
        .set("server.drain_delay_s", 60)
        .write(dir.path(), &h.sandbox, CREDENTIALS);
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_admin_ready(admin).await;
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    // Draining: not ready, still serving.
    let admin_addr = format!("127.0.0.1:{admin}").parse().unwrap();
    wait_for_async(async || {
        request(admin_addr, "GET", "/readyz", &[], Payload::Full(vec![]))
            .await
            .status
            == 503
    })
    .await;
    assert!(child.try_wait().unwrap().is_none(), "still draining");
    let started = std::time::Instant::now();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(status.code(), Some(130));
}

/// Spawns `serve` with its stderr in `log` (a file: a pipe could fill up).
fn spawn_serve(
    config: &std::path::Path,
    log: &std::path::Path,
    crash_after_persist: bool,
) -> std::process::Child {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    if crash_after_persist {
        cmd.env(
            concur_gateway::credentials::refresh::CRASH_AFTER_PERSIST_ENV,
            "1",
        );
    }
    cmd.spawn().unwrap()
}

#[tokio::test]
async fn a_crash_between_persisting_and_using_a_rotated_token_loses_nothing() {
    use crate::creds::{BOB_CLIENT, BOB_REFRESH, BOB_SECRET, bob_client, credentials_with_bob};
    let h = Harness::builder()
        .oauth_client(bob_client(BOB_REFRESH))
        .start()
        .await; // for its sandbox
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("state")).unwrap();
    let configure = |port: u16, admin: u16| {
        serve_config(port, admin)
            .set("credentials.state_dir", "state")
            .write(dir.path(), &h.sandbox, &credentials_with_bob(BOB_REFRESH))
    };
    let upload = |port: u16| async move {
        let token = jwt(BOB.0, BOB.1);
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        // Spawned: when the process aborts mid-request, `request` panics.
        tokio::spawn(async move {
            upload_to(
                addr,
                &token,
                "/api/image/v1.0/receipt",
                "image/jpeg",
                Payload::Full(JPEG.to_vec()),
            )
            .await
            .status
            .as_u16()
        })
        .await
        .ok()
    };
    let wait = |mut child: std::process::Child| async move {
        tokio::time::timeout(
            Duration::from_secs(20),
            tokio::task::spawn_blocking(move || child.wait().unwrap()),
        )
        .await
        .expect("the process exits")
        .unwrap()
    };

    // First run: the refresh rotates the token at Concur, the gateway persists
    // the new one, then aborts before using the new access token.
    let (port, admin) = (free_port(), free_port());
    let config = configure(port, admin);
    let log1 = dir.path().join("run1.log");
    let child = spawn_serve(&config, &log1, true);
    wait_admin_ready(admin).await;
    assert_eq!(upload(port).await, None, "no answer: the process aborted");
    let exit = wait(child).await;
    assert!(!exit.success(), "aborted: {exit:?}");
    assert_eq!(h.sandbox.token_requests(), 1);
    let rotated = h.sandbox.current_refresh_token(BOB_CLIENT).unwrap();
    assert_ne!(rotated, BOB_REFRESH, "the file's refresh token is now dead");
    assert!(
        h.uploads().is_empty(),
        "the new access token was never used"
    );

    // Second run: the persisted token is used, and works.
    let (port, admin) = (free_port(), free_port());
    let config = configure(port, admin);
    let log2 = dir.path().join("run2.log");
    let child = spawn_serve(&config, &log2, false);
    wait_admin_ready(admin).await;
    assert_eq!(upload(port).await, Some(201));
    assert_eq!(h.sandbox.token_requests(), 2);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(wait(child).await.code(), Some(0));

    // No secret in any log line of either run.
    let logs = std::fs::read_to_string(&log1).unwrap() + &std::fs::read_to_string(&log2).unwrap();
    assert!(logs.contains("rotated refresh token persisted"), "{logs}");
    assert!(logs.contains("acme/bob@acme.example"), "{logs}");
    let access = h.uploads().pop().unwrap().token.unwrap();
    let latest = h.sandbox.current_refresh_token(BOB_CLIENT).unwrap();
    for secret in [
        BOB_REFRESH,
        rotated.as_str(),
        latest.as_str(),
        BOB_SECRET,
        access.as_str(),
    ] {
        assert!(!logs.contains(secret), "secret {secret:.8}… in the logs");
    }
}
