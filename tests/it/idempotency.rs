//! `Idempotency-Key` with the memory backend (the Redis backend, across
//! replicas, is in `store.rs`): a retried upload never becomes a duplicate
//! receipt. Every test asserts on what reached the sandbox.

use concur_gateway::sandbox::Fault;

use crate::support::*;

const ALICE: (&str, &str) = ("acme", "alice@acme.example");
const GINA: (&str, &str) = ("globex", "gina@globex.example");

/// POSTs `body` as `who` with an `Idempotency-Key` (and extra headers).
pub async fn keyed(
    addr: std::net::SocketAddr,
    who: (&str, &str),
    path: &str,
    key: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> Reply {
    let auth = format!("Bearer {}", jwt(who.0, who.1));
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "image/jpeg"),
        ("idempotency-key", key),
    ];
    headers.extend_from_slice(extra);
    request(addr, "POST", path, &headers, Payload::Full(body.to_vec())).await
}

#[tokio::test]
async fn a_retry_gets_the_same_answer_and_concur_sees_one_upload() {
    let h = Harness::start().await;
    let key = "\"8e03978e-40d5-43e8-bc93-6894a57f9324\"";
    let first = keyed(h.addr, ALICE, "/api/image/v1.0/report/R1", key, JPEG, &[]).await;
    assert_eq!(first.status, 201, "{}", first.text());
    assert!(first.header("idempotent-replayed").is_none());
    // The same request again, the key bare this time (the same key).
    let again = keyed(
        h.addr,
        ALICE,
        "/api/image/v1.0/report/R1",
        "8e03978e-40d5-43e8-bc93-6894a57f9324",
        JPEG,
        &[],
    )
    .await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json(), first.json(), "the same Image.Id");
    assert_eq!(again.header("repr-digest"), first.header("repr-digest"));
    assert_ne!(again.header("x-request-id"), first.header("x-request-id"));
    // Replayed as XML for a client that asks for it.
    let xml = keyed(
        h.addr,
        ALICE,
        "/api/image/v1.0/report/R1",
        key,
        JPEG,
        &[("accept", "application/xml")],
    )
    .await;
    assert_eq!(xml.status, 201);
    assert_eq!(xml.header("idempotent-replayed"), Some("true"));
    assert!(
        xml.text().starts_with("<?xml") || xml.text().starts_with("<Image"),
        "{}",
        xml.text()
    );
    assert!(xml.text().contains("<Id>R1</Id>") || xml.text().contains("R1"));
    assert_eq!(h.uploads().len(), 1, "Concur saw exactly one upload");
    let m = h.admin_get("/metrics").await.text();
    assert!(
        m.contains("concur_gateway_idempotency_total{result=\"stored\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("concur_gateway_idempotency_total{result=\"replayed\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn the_same_key_with_another_request_is_refused() {
    let h = Harness::start().await;
    let key = "reuse-1";
    assert_eq!(
        keyed(h.addr, ALICE, "/api/image/v1.0/report/R1", key, JPEG, &[])
            .await
            .status,
        201
    );
    let other_body = big_jpeg(20 * 1024);
    for (path, body) in [
        ("/api/image/v1.0/report/R1", other_body.as_slice()),
        ("/api/image/v1.0/report/R2", JPEG),
        ("/api/image/v1.0/invoice/R1", JPEG),
    ] {
        keyed(h.addr, ALICE, path, key, body, &[])
            .await
            .problem(422, "idempotency_key_reused");
    }
    // `image/jpg` (with a parameter) is `image/jpeg`: the same fingerprint.
    let auth = format!("Bearer {}", jwt(ALICE.0, ALICE.1));
    let r = h
        .post(
            "/api/image/v1.0/report/R1",
            &[
                ("authorization", &auth),
                ("content-type", "image/jpg; q=1"),
                ("idempotency-key", key),
            ],
            JPEG.to_vec(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    assert_eq!(h.uploads().len(), 1, "nothing more reached Concur");
}

#[tokio::test]
async fn a_key_in_flight_is_a_conflict() {
    let h = Harness::start().await;
    // The first request is held at Concur.
    h.sandbox.push_fault(Fault::Delay { millis: 1500 });
    let addr = h.addr;
    let first = tokio::spawn(async move {
        keyed(
            addr,
            ALICE,
            "/api/image/v1.0/report/R1",
            "slow-1",
            JPEG,
            &[],
        )
        .await
    });
    h.wait_for_uploads(1).await;
    let second = keyed(
        h.addr,
        ALICE,
        "/api/image/v1.0/report/R1",
        "slow-1",
        JPEG,
        &[],
    )
    .await;
    second.problem(409, "idempotency_conflict");
    assert!(second.header("retry-after").is_some());
    // Another body with the key in flight: a conflict too (its body is not
    // read; the first one's fingerprint is not known yet).
    keyed(
        h.addr,
        ALICE,
        "/api/image/v1.0/report/R9",
        "slow-1",
        &big_jpeg(20_000),
        &[],
    )
    .await
    .problem(409, "idempotency_conflict");
    assert_eq!(first.await.unwrap().status, 201);
    let third = keyed(
        h.addr,
        ALICE,
        "/api/image/v1.0/report/R1",
        "slow-1",
        JPEG,
        &[],
    )
    .await;
    assert_eq!(third.header("idempotent-replayed"), Some("true"));
    assert_eq!(h.uploads().len(), 1);
}

/// A client that gives up waiting (its connection closed while Concur is
/// still answering) is the one that retries: the upload runs on to Concur's
/// answer, kept under the key, so the retry gets a `409` while it runs and
/// then that answer, never a second upload.
#[tokio::test]
async fn a_client_that_leaves_before_the_answer_gets_it_on_its_retry() {
    let capture = capture_logs().await;
    let h = Harness::start().await;
    h.sandbox.push_fault(Fault::Delay { millis: 1500 });
    let addr = h.addr;
    let gone = tokio::spawn(async move {
        keyed(
            addr,
            ALICE,
            "/api/image/v1.0/report/R1",
            "left-1",
            JPEG,
            &[("x-request-id", "left-before-its-answer")],
        )
        .await
    });
    h.wait_for_uploads(1).await;
    // The client gives up: its connection closes with the request unanswered,
    // which the gateway notices (the request leaves the in-flight gauge).
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    wait_for(|| h.gateway.metrics.in_flight.get() == 0).await;
    keyed(
        h.addr,
        ALICE,
        "/api/image/v1.0/report/R1",
        "left-1",
        JPEG,
        &[],
    )
    .await
    .problem(409, "idempotency_conflict");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let retry = loop {
        let r = keyed(
            h.addr,
            ALICE,
            "/api/image/v1.0/report/R1",
            "left-1",
            JPEG,
            &[],
        )
        .await;
        if r.status != 409 || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(retry.status, 201, "{}", retry.text());
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    let uploads = h.uploads();
    assert_eq!(uploads.len(), 1, "Concur saw one upload: {uploads:?}");
    assert!(uploads[0].complete, "the whole body reached Concur");
    // Other tests log into the same capture: this request's lines only.
    let logs = capture.finish();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("left-before-its-answer"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("request abandoned by the client")
                && (l.contains("route=\"report\"") || l.contains("route=report"))),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(
            |l| l.contains("keyed upload finished after its client left") && l.contains("stored")
        ),
        "{lines:?}"
    );
}

/// An HTTP/1.1 client that half-closes its connection right after a small
/// body: hyper reads the whole request, then the end of the connection, and
/// drops the request's future before polling it. The gateway took it all the
/// same, as it does any request of a client that left: each has its access
/// line, and a keyed one runs on to Concur's answer, kept for the retry.
/// (hyper's `oneshot` adapter called the stack only when first polled: such
/// requests left no trace, and a keyed one never reached Concur.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_after_a_small_body_is_one_that_left() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let capture = capture_logs().await;
    let h = Harness::start().await;
    let auth = jwt(ALICE.0, ALICE.1);
    const N: usize = 20;
    for i in 0..N {
        let key = if i % 2 == 0 {
            format!("idempotency-key: half-{i}\r\n")
        } else {
            String::new()
        };
        let head = format!(
            "POST /api/image/v1.0/report/R1 HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {auth}\r\n\
             content-type: image/jpeg\r\ncontent-length: {}\r\nx-request-id: half-closed-{i}\r\n{key}\r\n",
            JPEG.len()
        );
        let mut c = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(JPEG);
        c.write_all(&bytes).await.unwrap();
        c.shutdown().await.unwrap();
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer).await;
    }
    // The keyed uploads (every other one) reach Concur whole and are kept.
    let keyed_ids = (0..N).step_by(2).map(|i| format!("half-closed-{i}"));
    let keyed_ids: Vec<String> = keyed_ids.collect();
    wait_for(|| {
        let logs = capture.snapshot();
        keyed_ids.iter().all(|id| {
            logs.lines().any(|l| {
                l.contains(&format!("request_id={id} "))
                    && l.contains("keyed upload finished after its client left")
            })
        })
    })
    .await;
    for i in (0..N).step_by(2) {
        let retry = keyed(
            h.addr,
            ALICE,
            "/api/image/v1.0/report/R1",
            &format!("half-{i}"),
            JPEG,
            &[],
        )
        .await;
        assert_eq!(retry.status, 201, "{}", retry.text());
        assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    }
    let logs = capture.finish();
    for i in 0..N {
        let id = format!("request_id=half-closed-{i} ");
        assert!(
            logs.lines()
                .any(|l| l.contains(&id) && l.contains("concur_gateway::access")),
            "no access line for half-closed-{i}: {logs}"
        );
    }
    let complete = h.uploads().iter().filter(|u| u.complete).count();
    assert!(complete >= N / 2, "{complete} complete uploads");
}

/// A final Concur answer the gateway cannot pass on (it quotes the access
/// token in escaped form, or it is over the 1 MiB cap) is still Concur's
/// answer: the image may exist. It is kept under the key without its body,
/// and the retry gets the same `502` replayed instead of a second upload.
#[tokio::test]
async fn a_final_answer_that_cannot_be_passed_on_is_still_kept() {
    let h = Harness::start().await;
    let big = format!("<Image><Id>{}</Id></Image>", "A".repeat(1024 * 1024));
    for (i, (status, body, detail)) in [
        (
            201,
            "<Image><Id>concur&#45;alice-token-0001</Id><Url/></Image>".to_owned(),
            "escaped form",
        ),
        (
            400,
            "<Error><Message>concur<![CDATA[-alice]]>-token-0001</Message></Error>".to_owned(),
            "escaped form",
        ),
        (201, big, "larger than"),
    ]
    .into_iter()
    .enumerate()
    {
        h.sandbox.push_fault(Fault::Raw {
            status,
            content_type: "application/xml".into(),
            body,
            retry_after: None,
            location: None,
        });
        let key = format!("unpassable-{i}");
        let path = "/api/image/v1.0/report/R1";
        let first = keyed(h.addr, ALICE, path, &key, JPEG, &[]).await;
        let v = first.problem(502, "upstream_invalid_response");
        assert!(v["detail"].as_str().unwrap().contains(detail), "{v}");
        let again = keyed(h.addr, ALICE, path, &key, JPEG, &[]).await;
        let w = again.problem(502, "upstream_invalid_response");
        assert_eq!(w["detail"], v["detail"]);
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert!(!again.text().contains("token-0001"), "{}", again.text());
        assert_eq!(h.uploads().len(), i + 1, "Concur saw one upload per key");
    }
}

/// The shutdown waits for a keyed upload whose client left, as for a
/// connection: its answer is kept before the process ends. One still running
/// when the grace is over is cut, and says so.
#[tokio::test]
async fn the_shutdown_waits_for_keyed_uploads_whose_client_left() {
    for (grace, delay, line) in [
        ("10", 1500, "keyed upload finished after its client left"),
        ("0.3", 4000, "keyed upload cut short by the shutdown"),
    ] {
        let capture = capture_logs().await;
        let mut h = Harness::with_config(&format!(
            "[server]\ndrain_delay_s = 0\nshutdown_grace_s = {grace}"
        ))
        .await;
        h.sandbox.push_fault(Fault::Delay { millis: delay });
        let addr = h.addr;
        let gone = tokio::spawn(async move {
            let id = [("x-request-id", "bye-before-the-shutdown")];
            keyed(addr, ALICE, "/api/image/v1.0/report/R1", "bye-1", JPEG, &id).await
        });
        h.wait_for_uploads(1).await;
        gone.abort();
        let _ = gone.await;
        let started = std::time::Instant::now();
        h.begin_shutdown();
        h.stop().await;
        let took = started.elapsed();
        let logs = capture.finish();
        let lines: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("bye-before-the-shutdown") && l.contains(line))
            .collect();
        assert_eq!(lines.len(), 1, "grace {grace}: {logs}");
        if grace == "10" {
            assert!(lines[0].contains("stored"), "{lines:?}");
            assert!(took >= std::time::Duration::from_millis(1000), "{took:?}");
        } else {
            assert!(took < std::time::Duration::from_millis(3500), "{took:?}");
        }
    }
}

/// While Concur's back-off pauses a company (a Concur 429 with
/// `Retry-After`), a retry whose answer is kept is still replayed: nothing
/// of it goes to Concur. A new upload waits out the pause.
#[tokio::test]
async fn a_replay_is_served_during_concurs_back_off() {
    let h = Harness::start().await;
    let first = keyed(
        h.addr,
        ALICE,
        "/api/image/v1.0/report/R1",
        "kept-1",
        JPEG,
        &[],
    )
    .await;
    assert_eq!(first.status, 201, "{}", first.text());
    h.sandbox.push_fault(Fault::Status {
        status: 429,
        message: "slow down".into(),
        retry_after: Some("2".into()),
    });
    keyed(
        h.addr,
        ALICE,
        "/api/image/v1.0/report/R2",
        "other-1",
        JPEG,
        &[],
    )
    .await
    .problem(429, "concur_error");
    // The pause holds for a new upload, keyed or not…
    keyed(
        h.addr,
        ALICE,
        "/api/image/v1.0/report/R3",
        "new-1",
        JPEG,
        &[],
    )
    .await
    .problem(429, "rate_limited");
    // …but not for a replay.
    let again = keyed(
        h.addr,
        ALICE,
        "/api/image/v1.0/report/R1",
        "kept-1",
        JPEG,
        &[],
    )
    .await;
    assert_eq!(again.status, 201, "{}", again.text());
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json(), first.json());
    assert_eq!(h.uploads().len(), 2, "nothing more reached Concur");
    // The refused new key was not left in flight: after the pause (2 s) it
    // goes to Concur, not a 409.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let later = keyed(
        h.addr,
        ALICE,
        "/api/image/v1.0/report/R3",
        "new-1",
        JPEG,
        &[],
    )
    .await;
    assert_eq!(later.status, 201, "{}", later.text());
    assert!(later.header("idempotent-replayed").is_none());
}

/// `max_records` makes room by dropping the oldest *final* records: a key
/// still in flight is never dropped, or its retry would reach Concur twice.
#[tokio::test]
async fn a_key_in_flight_is_kept_past_max_records() {
    let h = Harness::with_config("[idempotency]\nmax_records = 1").await;
    let addr = h.addr;
    let mut slow = Vec::new();
    for key in ["held-1", "held-2"] {
        h.sandbox.push_fault(Fault::Delay { millis: 1500 });
        slow.push(tokio::spawn(async move {
            keyed(addr, ALICE, "/api/image/v1.0/report/R1", key, JPEG, &[]).await
        }));
        h.wait_for_uploads(slow.len()).await;
    }
    // Two records in flight with room for one: the first is still there.
    keyed(
        h.addr,
        ALICE,
        "/api/image/v1.0/report/R1",
        "held-1",
        JPEG,
        &[],
    )
    .await
    .problem(409, "idempotency_conflict");
    for first in slow {
        assert_eq!(first.await.unwrap().status, 201);
    }
    assert_eq!(h.uploads().len(), 2, "no upload went to Concur twice");
}

#[tokio::test]
async fn keys_are_scoped_to_the_caller() {
    let h = Harness::start().await;
    let r1 = keyed(
        h.addr,
        ALICE,
        "/api/image/v1.0/receipt",
        "shared-key",
        JPEG,
        &[],
    )
    .await;
    let r2 = keyed(
        h.addr,
        GINA,
        "/api/image/v1.0/receipt",
        "shared-key",
        JPEG,
        &[],
    )
    .await;
    let r3 = keyed(
        h.addr,
        ("acme", "bob@acme.example"),
        "/api/image/v1.0/report/B1",
        "shared-key",
        JPEG,
        &[],
    )
    .await;
    for r in [&r1, &r2, &r3] {
        assert_eq!(r.status, 201, "{}", r.text());
        assert!(r.header("idempotent-replayed").is_none());
    }
    assert_eq!(h.uploads().len(), 3, "three independent requests");
}

#[tokio::test]
async fn concur_errors_are_replayed_and_gateway_refusals_are_not_recorded() {
    let h = Harness::start().await;
    // An expense entry takes one image: the second is Concur's 400.
    assert_eq!(
        h.upload("/api/image/v1.0/expenseentry/E1", JPEG)
            .await
            .status,
        201
    );
    let first = keyed(
        h.addr,
        ALICE,
        "/api/image/v1.0/expenseentry/E1",
        "entry-2",
        JPEG,
        &[],
    )
    .await;
    let v = first.problem(400, "concur_error");
    let again = keyed(
        h.addr,
        ALICE,
        "/api/image/v1.0/expenseentry/E1",
        "entry-2",
        JPEG,
        &[],
    )
    .await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.problem(400, "concur_error")["concur"], v["concur"]);
    assert_eq!(h.uploads().len(), 2, "the replay did not reach Concur");

    // Concur's Retry-After on a final answer comes back with its replay.
    h.sandbox.push_fault(Fault::Status {
        status: 400,
        message: "try again later".into(),
        retry_after: Some("2".into()),
    });
    let path = "/api/image/v1.0/report/R400";
    let first = keyed(h.addr, ALICE, path, "later", JPEG, &[]).await;
    first.problem(400, "concur_error");
    assert_eq!(first.header("retry-after"), Some("2"));
    let again = keyed(h.addr, ALICE, path, "later", JPEG, &[]).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    again.problem(400, "concur_error");
    assert_eq!(again.header("retry-after"), Some("2"));
    assert_eq!(h.uploads().len(), 3);

    // Concur's 403 is its refusal of this request: final (SPEC), replayed.
    h.sandbox.push_fault(Fault::Status {
        status: 403,
        message: "not your report".into(),
        retry_after: None,
    });
    let path = "/api/image/v1.0/report/R403";
    keyed(h.addr, ALICE, path, "forbidden", JPEG, &[])
        .await
        .problem(403, "concur_error");
    let again = keyed(h.addr, ALICE, path, "forbidden", JPEG, &[]).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        again.problem(403, "concur_error")["detail"],
        "not your report"
    );

    // The gateway's own 422: no record; the corrected body goes through.
    let mut broken = JPEG.to_vec();
    broken.truncate(broken.len() - 2);
    keyed(
        h.addr,
        ALICE,
        "/api/image/v1.0/report/R7",
        "fix-me",
        &broken,
        &[],
    )
    .await
    .problem(422, "malformed_image");
    let fixed = keyed(
        h.addr,
        ALICE,
        "/api/image/v1.0/report/R7",
        "fix-me",
        JPEG,
        &[],
    )
    .await;
    assert_eq!(fixed.status, 201, "{}", fixed.text());
    assert!(fixed.header("idempotent-replayed").is_none());

    // Answers that are not final drop the record, and the retry goes to
    // Concur again: a 5xx; Concur refusing the gateway's token (401 says
    // nothing of the upload; the retry succeeds once the token is good); a
    // lost answer (reset).
    let not_final = [
        (
            Fault::Status {
                status: 503,
                message: "busy".into(),
                retry_after: None,
            },
            "R8",
            503,
            "concur_error",
        ),
        (
            Fault::Status {
                status: 401,
                message: "token refused".into(),
                retry_after: None,
            },
            "RA",
            502,
            "upstream_auth_failed",
        ),
        (Fault::Reset, "R9", 502, "upstream_unavailable"),
    ];
    for (fault, id, status, code) in not_final {
        let path = format!("/api/image/v1.0/report/{id}");
        let key = format!("not-final-{id}");
        h.sandbox.push_fault(fault);
        keyed(h.addr, ALICE, &path, &key, JPEG, &[])
            .await
            .problem(status, code);
        let retry = keyed(h.addr, ALICE, &path, &key, JPEG, &[]).await;
        assert_eq!(retry.status, 201, "{id}: {}", retry.text());
        assert!(retry.header("idempotent-replayed").is_none(), "{id}");
    }
}

#[tokio::test]
async fn malformed_keys_and_required_keys() {
    let h = Harness::with_config("[idempotency]\nrequired = true").await;
    h.upload("/api/image/v1.0/report/R1", JPEG)
        .await
        .problem(400, "invalid_idempotency_key");
    for bad in ["\"unterminated", "has space", &"k".repeat(256)] {
        keyed(h.addr, ALICE, "/api/image/v1.0/report/R1", bad, JPEG, &[])
            .await
            .problem(400, "invalid_idempotency_key");
    }
    assert!(h.uploads().is_empty());
    assert_eq!(
        keyed(
            h.addr,
            ALICE,
            "/api/image/v1.0/report/R1",
            "ok-key",
            JPEG,
            &[]
        )
        .await
        .status,
        201
    );
}
