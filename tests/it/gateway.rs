//! The whole request path over real sockets: client → gateway (port 0) →
//! sandbox (real TLS, certificate generated at test time). Every test asserts on
//! what actually arrived upstream, not only on what the client saw.

use std::time::Duration;

use concur_gateway::sandbox::Fault;
use jsonwebtoken::Algorithm;

use crate::support::*;

fn auth(token: &str) -> String {
    format!("Bearer {token}")
}

/// Asserts nothing of the caller's JWT, and no gateway-side header, reached Concur.
fn assert_clean_upstream_headers(record: &concur_gateway::sandbox::UploadRecord, jwt: &str) {
    // Origin form, as to any server (not the absolute form meant for proxies).
    assert!(
        record.target.starts_with('/'),
        "request-target {}",
        record.target
    );
    for (name, value) in &record.headers {
        assert!(!value.contains(jwt), "JWT leaked upstream in {name}");
        assert!(
            !value.contains("eyJ"),
            "something JWT-like upstream in {name}: {value}"
        );
        assert!(
            !matches!(
                name.as_str(),
                "cookie" | "x-forwarded-for" | "proxy-authorization"
            ),
            "{name} forwarded"
        );
    }
}

#[tokio::test]
async fn receipt_happy_path_uses_the_callers_own_token() {
    let h = Harness::start().await;
    let token = jwt(ALICE.0, ALICE.1);
    let r = h
        .post(
            "/api/image/v1.0/receipt?x=1",
            &[
                ("authorization", &auth(&token)),
                ("content-type", "image/jpeg"),
                ("cookie", "session=abc"),
                ("x-request-id", "client-chosen-id-1"),
            ],
            JPEG.to_vec(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-request-id"), Some("client-chosen-id-1"));
    let v = r.json();
    let id = v["Image"]["Id"].as_str().expect("an image id");
    assert_eq!(v, serde_json::json!({"Image": {"Id": id, "Url": null}}));

    let ups = h.uploads();
    assert_eq!(ups.len(), 1);
    let u = &ups[0];
    assert_eq!(u.path, "/api/image/v1.0/receipt", "query string dropped");
    assert_eq!(u.auth_scheme.as_deref(), Some("OAuth"));
    assert_eq!(u.token.as_deref(), Some(ALICE_TOKEN));
    assert_eq!(u.user.as_deref(), Some(ALICE.1));
    assert_eq!(u.content_type.as_deref(), Some("image/jpeg"));
    assert_eq!(u.content_length, Some(JPEG.len() as u64));
    assert!(u.complete && !u.chunked);
    assert_eq!(u.sha256_hex, sha256_hex(JPEG));
    assert_eq!(u.image_id.as_deref(), Some(id));
    assert_clean_upstream_headers(u, &token);
    // The digest of the bytes delivered (RFC 9530).
    let expected = format!(
        "sha-256=:{}:",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, JPEG).as_ref()
        )
    );
    assert_eq!(r.header("repr-digest"), Some(expected.as_str()));
}

#[tokio::test]
async fn entry_invoice_and_report_routes_keep_their_ids() {
    let h = Harness::start().await;
    for (path, kind, id) in [
        (
            "/api/image/v1.0/expenseentry/E$1-a_B",
            "expenseentry",
            "E$1-a_B",
        ),
        ("/api/image/v1.0/invoice/INV1", "invoice", "INV1"),
        ("/api/image/v1.1/invoice/INV2", "invoice", "INV2"),
        ("/api/image/v1.0/report/R-9", "report", "R-9"),
    ] {
        let r = h.upload(path, JPEG).await;
        assert_eq!(r.status, 201, "{path}: {}", r.text());
        assert_eq!(r.json()["Image"]["Id"], id);
        let u = h.uploads().pop().unwrap();
        assert_eq!((u.path.as_str(), u.kind.as_str()), (path, kind));
        assert_eq!(u.token.as_deref(), Some(ALICE_TOKEN));
        assert!(u.complete);
    }
}

#[tokio::test]
async fn selection_policy_falls_back_to_the_admin_token_except_for_receipts() {
    let h = Harness::start().await;
    // Receipts never use the admin's token: the image would land in the wrong store.
    let r = h
        .upload_as(
            BOB,
            "/api/image/v1.0/receipt",
            "image/png; charset=binary",
            JPEG,
        )
        .await;
    r.problem(403, "no_credential");
    assert!(h.uploads().is_empty());
    // Entries use the company's admin token, with its own scheme.
    let r = h
        .upload_as(BOB, "/api/image/v1.0/expenseentry/E1", "image/jpeg", JPEG)
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let u = h.uploads().pop().unwrap();
    assert_eq!(u.auth_scheme.as_deref(), Some("Bearer"));
    assert_eq!(u.token.as_deref(), Some(ADMIN_TOKEN));
    // A company with no admin credential and a user without one: 403.
    let r = h
        .upload_as(
            ("globex", "gus@globex.example"),
            "/api/image/v1.0/report/R1",
            "image/jpeg",
            JPEG,
        )
        .await;
    r.problem(403, "no_credential");
    assert_eq!(h.uploads().len(), 1);
}

#[tokio::test]
async fn every_auth_failure_is_401_and_nothing_goes_upstream() {
    let h = Harness::start().await;
    let now = now();
    let mut c = claims(ALICE.0, ALICE.1);
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c2 = c.clone();
        f(&mut c2);
        sign(Algorithm::ES256, Some("es"), &c2)
    };
    let expired = with(&|c| {
        c["exp"] = (now - 3600).into();
        c["nbf"] = (now - 7200).into();
    });
    let not_yet = with(&|c| c["nbf"] = (now + 3600).into());
    let wrong_iss = with(&|c| c["iss"] = "https://evil.example".into());
    let wrong_aud = with(&|c| c["aud"] = "someone-else".into());
    let no_exp = with(&|c| {
        c.as_object_mut().unwrap().remove("exp");
    });
    let no_company = with(&|c| {
        c.as_object_mut().unwrap().remove("company");
    });
    let numeric_user = with(&|c| c["sub"] = 42.into());
    let unknown_kid = sign(Algorithm::ES256, Some("nope"), &c);
    let valid = sign(Algorithm::ES256, Some("es"), &c);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // alg: none, unsigned.
    let none = {
        let header = base64::Engine::encode(&b64, br#"{"alg":"none","typ":"JWT"}"#);
        let payload = base64::Engine::encode(&b64, c.to_string());
        format!("{header}.{payload}.")
    };
    // HS256 "signed" with the RSA public key: the classic key-confusion attack.
    let hs_confusion = {
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some("rsa".into());
        jsonwebtoken::encode(
            &header,
            &c,
            &jsonwebtoken::EncodingKey::from_secret(keys().rsa_public_pem.as_bytes()),
        )
        .unwrap()
    };
    // An RS256 token presented under the EC key's kid.
    let kid_type_mismatch = sign(Algorithm::RS256, Some("es"), &c);
    // Payload tampered after signing (company changed).
    let tampered = {
        let parts: Vec<&str> = valid.split('.').collect();
        c["company"] = "globex".into();
        let payload = base64::Engine::encode(&b64, c.to_string());
        format!("{}.{payload}.{}", parts[0], parts[2])
    };
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "missing_token"),
        (
            "basic scheme",
            Some("Basic YWxpY2U6cHc=".into()),
            "missing_token",
        ),
        ("garbage", Some(auth("not.a.jwt")), "invalid_token"),
        ("expired", Some(auth(&expired)), "invalid_token"),
        ("not yet valid", Some(auth(&not_yet)), "invalid_token"),
        ("wrong iss", Some(auth(&wrong_iss)), "invalid_token"),
        ("wrong aud", Some(auth(&wrong_aud)), "invalid_token"),
        ("no exp", Some(auth(&no_exp)), "invalid_token"),
        ("no company", Some(auth(&no_company)), "invalid_token"),
        ("numeric user", Some(auth(&numeric_user)), "invalid_token"),
        ("alg none", Some(auth(&none)), "invalid_token"),
        (
            "HS256 with RSA public key",
            Some(auth(&hs_confusion)),
            "invalid_token",
        ),
        (
            "RS256 under EC kid",
            Some(auth(&kid_type_mismatch)),
            "invalid_token",
        ),
        ("unknown kid", Some(auth(&unknown_kid)), "invalid_token"),
        ("tampered payload", Some(auth(&tampered)), "invalid_token"),
    ];
    for (name, authorization, code) in cases {
        let mut headers = vec![("content-type", "image/jpeg")];
        if let Some(a) = &authorization {
            headers.push(("authorization", a.as_str()));
        }
        let r = h
            .post("/api/image/v1.0/receipt", &headers, JPEG.to_vec())
            .await;
        let v = r.problem(401, code);
        let www = r
            .header("www-authenticate")
            .unwrap_or_else(|| panic!("{name}: no WWW-Authenticate"));
        assert!(
            www.starts_with("Bearer ") && www.contains("error="),
            "{name}: {www}"
        );
        if let Some(a) = &authorization {
            let token = a.split(' ').nth(1).unwrap();
            assert!(!r.text().contains(token), "{name}: token echoed in {v}");
        }
    }
    // The token in the query string only: never read.
    let r = h
        .post(
            &format!("/api/image/v1.0/receipt?access_token={valid}"),
            &[("content-type", "image/jpeg")],
            JPEG.to_vec(),
        )
        .await;
    r.problem(401, "missing_token");
    assert!(h.uploads().is_empty(), "nothing reached Concur");
}

/// RFC 7515 §4.1.11: the gateway understands no JWS extension, so a `crit`
/// header parameter (in any form, even empty or `null`) makes a correctly signed
/// token invalid; so does `b64` (RFC 7797 requires it to be listed in `crit`).
#[tokio::test]
async fn a_jws_crit_header_is_401_and_nothing_goes_upstream() {
    let h = Harness::start().await;
    let c = claims(ALICE.0, ALICE.1);
    let headers = [
        r#"{"alg":"ES256","kid":"es","crit":["exp"],"exp":1}"#,
        r#"{"alg":"ES256","kid":"es","crit":["foo"],"foo":true}"#,
        r#"{"alg":"ES256","kid":"es","b64":false,"crit":["b64"]}"#,
        r#"{"alg":"ES256","kid":"es","crit":[]}"#,
        r#"{"alg":"ES256","kid":"es","crit":null}"#,
        r#"{"alg":"ES256","kid":"es","cr\u0069t":["foo"]}"#,
        r#"{"alg":"ES256","kid":"es","b64":false}"#,
    ];
    for header in headers {
        let token = sign_es256_with_raw_header(header, &c);
        let r = h
            .upload_with_token(&token, "/api/image/v1.0/receipt", "image/jpeg", JPEG)
            .await;
        let v = r.problem(401, "invalid_token");
        let www = r.header("www-authenticate").unwrap_or_default();
        assert!(www.contains("error=\"invalid_token\""), "{header}: {www}");
        assert!(!r.text().contains(&token), "{header}: token echoed in {v}");
    }
    assert!(h.uploads().is_empty(), "nothing reached Concur");
    // The same helper without `crit` makes a token the gateway accepts.
    let token = sign_es256_with_raw_header(r#"{"alg":"ES256","kid":"es","typ":"JWT"}"#, &c);
    let r = h
        .upload_with_token(&token, "/api/image/v1.0/receipt", "image/jpeg", JPEG)
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.text());
    assert_eq!(h.uploads().len(), 1);
}

#[tokio::test]
async fn every_jwks_key_family_verifies() {
    let h = Harness::start().await;
    let c = claims(ALICE.0, ALICE.1);
    for (alg, kid) in [
        (Algorithm::ES256, Some("es")),
        (Algorithm::RS256, Some("rsa")),
        (Algorithm::RS512, Some("rsa")),
        (Algorithm::PS256, Some("rsa")),
        (Algorithm::EdDSA, Some("ed")),
        // Without kid: the only key of the fitting type.
        (Algorithm::EdDSA, None),
    ] {
        let token = sign(alg, kid, &c);
        let r = h
            .upload_with_token(&token, "/api/image/v1.0/report/R1", "image/jpeg", JPEG)
            .await;
        assert_eq!(r.status, 201, "{alg:?}/{kid:?}: {}", r.text());
    }
}

#[tokio::test]
async fn bad_paths_ids_and_methods_never_reach_concur() {
    let h = Harness::start().await;
    let long = "a".repeat(129);
    let cases = [
        (
            "POST",
            "/api/image/v1.0/expenseentry/..".to_owned(),
            400,
            "invalid_id",
        ),
        (
            "POST",
            "/api/image/v1.0/expenseentry/a%2Fb".to_owned(),
            400,
            "invalid_id",
        ),
        (
            "POST",
            "/api/image/v1.0/expenseentry/a.b".to_owned(),
            400,
            "invalid_id",
        ),
        (
            "POST",
            format!("/api/image/v1.0/report/{long}"),
            400,
            "invalid_id",
        ),
        (
            "POST",
            "/api/image/v1.0/expenseentry/a/b".to_owned(),
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/image/v1.0/expenseentry/".to_owned(),
            400,
            "invalid_id",
        ),
        (
            "POST",
            "/api/image/v2.0/receipt".to_owned(),
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/expense/v1.0/report".to_owned(),
            404,
            "not_found",
        ),
        ("POST", "/oauth2/v0/token".to_owned(), 404, "not_found"),
        (
            "GET",
            "/api/image/v1.0/receipt".to_owned(),
            405,
            "method_not_allowed",
        ),
        (
            "PUT",
            "/api/image/v1.0/report/R1".to_owned(),
            405,
            "method_not_allowed",
        ),
    ];
    let token = jwt(ALICE.0, ALICE.1);
    for (method, path, status, code) in cases {
        let r = request(
            h.addr,
            method,
            &path,
            &[
                ("authorization", &auth(&token)),
                ("content-type", "image/jpeg"),
            ],
            Payload::Full(JPEG.to_vec()),
        )
        .await;
        r.problem(status, code);
        if status == 405 {
            assert_eq!(r.header("allow"), Some("POST"));
        }
    }
    assert!(h.uploads().is_empty());
}

#[tokio::test]
async fn body_limits_and_media_types() {
    let h = Harness::builder()
        .set("server.max_body_bytes", 100_000)
        .start()
        .await;
    let token = jwt(ALICE.0, ALICE.1);
    let a = auth(&token);
    let post = |ct: &'static str, body: Vec<u8>| {
        h.upload_with_token(&token, "/api/image/v1.0/receipt", ct, body)
    };
    post("text/plain", JPEG.to_vec())
        .await
        .problem(415, "unsupported_media_type");
    post("image/gif", JPEG.to_vec())
        .await
        .problem(415, "unsupported_media_type");
    h.post(
        "/api/image/v1.0/receipt",
        &[("authorization", &a)],
        JPEG.to_vec(),
    )
    .await
    .problem(415, "unsupported_media_type");
    post("image/jpeg", Vec::new())
        .await
        .problem(400, "empty_body");
    post("image/jpeg", big_jpeg(150_000))
        .await
        .problem(413, "body_too_large");
    // Case-insensitive type with parameters, and image/jpg, are accepted.
    assert_eq!(post("IMAGE/JPG; q=1", JPEG.to_vec()).await.status, 201);
    // Chunked over the limit: refused as the bytes arrive.
    let pieces: Vec<Vec<u8>> = big_jpeg(150_000)
        .chunks(16_384)
        .map(<[u8]>::to_vec)
        .collect();
    let r = upload_to(
        h.addr,
        &token,
        "/api/image/v1.0/receipt",
        "image/jpeg",
        Payload::Chunked(pieces),
    )
    .await;
    r.problem(413, "body_too_large");
    // A chunked body with no data at all.
    let r = upload_to(
        h.addr,
        &token,
        "/api/image/v1.0/receipt",
        "image/jpeg",
        Payload::Chunked(vec![]),
    )
    .await;
    r.problem(400, "empty_body");
    assert_eq!(
        h.uploads().len(),
        1,
        "only the accepted upload reached Concur"
    );
}

#[tokio::test]
async fn chunked_uploads_arrive_with_content_length_and_the_same_bytes() {
    // A spool threshold below the body size exercises the temp-file path too.
    let h = Harness::with_config("[server]\nspool_memory_bytes = 65536").await;
    let token = jwt(ALICE.0, ALICE.1);
    for size in [JPEG.len(), 300_000] {
        let body = if size == JPEG.len() {
            JPEG.to_vec()
        } else {
            big_jpeg(size)
        };
        let pieces: Vec<Vec<u8>> = body.chunks(7_001).map(<[u8]>::to_vec).collect();
        let r = upload_to(
            h.addr,
            &token,
            "/api/image/v1.0/report/R1",
            "image/jpeg",
            Payload::Chunked(pieces),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
        let u = h.uploads().pop().unwrap();
        assert!(!u.chunked, "Concur never sees a chunked upload");
        assert_eq!(u.content_length, Some(body.len() as u64));
        assert_eq!(u.sha256_hex, sha256_hex(&body));
        assert!(u.complete);
    }
}

#[tokio::test]
async fn a_large_upload_streams_byte_identical() {
    let h = Harness::start().await;
    let body = big_jpeg(9 * 1024 * 1024);
    let r = h.upload("/api/image/v1.0/receipt", &body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let u = h.uploads().pop().unwrap();
    assert_eq!(u.received_bytes, body.len() as u64);
    assert_eq!(u.sha256_hex, sha256_hex(&body));
}

#[tokio::test]
async fn a_type_mismatch_never_opens_the_concur_exchange() {
    let h = Harness::start().await;
    let r = h
        .upload_as(ALICE, "/api/image/v1.0/receipt", "image/png", JPEG)
        .await;
    r.problem(422, "content_mismatch");
    let r = h
        .upload_as(
            ALICE,
            "/api/image/v1.0/receipt",
            "application/pdf",
            b"<html><script>alert(1)</script></html>",
        )
        .await;
    r.problem(422, "content_mismatch");
    assert!(h.uploads().is_empty());
}

#[tokio::test]
async fn concur_errors_map_as_specified() {
    let h = Harness::with_config("[upstream]\ntimeout_s = 1").await;
    let path = "/api/image/v1.0/report/R1";

    h.sandbox.push_fault(Fault::Status {
        status: 400,
        message: "Bad & broken".into(),
        retry_after: None,
    });
    let r = h.upload(path, JPEG).await;
    let v = r.problem(400, "concur_error");
    assert_eq!(v["detail"], "Bad & broken");
    assert_eq!(v["concur"]["Error"]["Message"], "Bad & broken");
    assert!(v["concur"]["Error"]["Server-Time"].is_string());
    assert!(v["concur"]["Error"]["Id"].is_string());

    h.sandbox.push_fault(Fault::Status {
        status: 401,
        message: "token rejected".into(),
        retry_after: None,
    });
    h.upload(path, JPEG)
        .await
        .problem(502, "upstream_auth_failed");

    h.sandbox.push_fault(Fault::Reset);
    h.upload(path, JPEG)
        .await
        .problem(502, "upstream_unavailable");

    h.sandbox.push_fault(Fault::MalformedXml);
    h.upload(path, JPEG)
        .await
        .problem(502, "upstream_invalid_response");

    h.sandbox.push_fault(Fault::Raw {
        status: 201,
        content_type: "application/xml".into(),
        body: "<!DOCTYPE x [<!ENTITY a \"b\">]><Image><Id>&a;</Id></Image>".into(),
        retry_after: None,
        location: None,
    });
    h.upload(path, JPEG)
        .await
        .problem(502, "upstream_invalid_response");

    h.sandbox.push_fault(Fault::Raw {
        status: 502,
        content_type: "text/html".into(),
        body: "<html>bad gateway</html>".into(),
        retry_after: None,
        location: None,
    });
    // HTML that is XML-shaped enough to parse is still Concur's answer.
    let r = h.upload(path, JPEG).await;
    assert_eq!(r.status, 502);

    h.sandbox.push_fault(Fault::Delay { millis: 2_500 });
    h.upload(path, JPEG).await.problem(504, "upstream_timeout");

    // A second image on the same entry: Concur's own 400.
    let entry = "/api/image/v1.0/expenseentry/E77";
    assert_eq!(h.upload(entry, JPEG).await.status, 201);
    let v = h.upload(entry, JPEG).await.problem(400, "concur_error");
    assert!(v["detail"].as_str().unwrap().contains("already"), "{v}");

    // Last, as it also pauses acme's traffic (see concur_throttling_…).
    h.sandbox.push_fault(Fault::Status {
        status: 503,
        message: "busy".into(),
        retry_after: Some("7".into()),
    });
    let r = h.upload(path, JPEG).await;
    r.problem(503, "concur_error");
    assert_eq!(r.header("retry-after"), Some("7"));
}

#[tokio::test]
async fn concur_unreachable_is_upstream_unavailable() {
    let h = Harness::start().await;
    // Point a second gateway at a closed port by shutting the sandbox down.
    let addr = h.addr;
    let token = jwt(ALICE.0, ALICE.1);
    let Harness { sandbox, .. } = h;
    sandbox.shutdown().await;
    let r = request(
        addr,
        "POST",
        "/api/image/v1.0/receipt",
        &[
            ("authorization", &auth(&token)),
            ("content-type", "image/jpeg"),
        ],
        Payload::Full(JPEG.to_vec()),
    )
    .await;
    r.problem(502, "upstream_unavailable");
}

/// The inodes of this machine's TCP sockets connected to `port` (the client
/// ends: remote port `port`) in `state` (`/proc/net/tcp`'s hex code: `01`
/// established, `08` close-wait: the peer closed, this end not yet).
fn sockets_to(port: u16, state: &str) -> Vec<String> {
    let remote = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    (f.len() > 9 && f[2].ends_with(&remote) && f[3] == state)
                        .then(|| f[9].to_owned())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Whether this process still holds the socket with this inode open.
fn holds_socket(inode: &str) -> bool {
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir("/proc/self/fd")
        .map(|fds| {
            fds.filter_map(Result::ok)
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .any(|target| target.to_string_lossy() == wanted)
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn uploads_reuse_a_connection_to_concur_and_replace_one_concur_closed() {
    // One connection worker: one pool (each worker keeps its own, below).
    let h = Harness::with_config("[server]\nworkers = 1").await;
    assert_eq!(h.upload("/api/image/v1.0/receipt", JPEG).await.status, 201);
    let opened = h.sandbox.connections();
    for _ in 0..3 {
        assert_eq!(h.upload("/api/image/v1.0/receipt", JPEG).await.status, 201);
    }
    assert_eq!(
        h.sandbox.connections(),
        opened,
        "the next uploads went on the first one's connection"
    );
    // Concur closes its idle keep-alive connections: the next upload finds
    // the pooled one closed, goes on a new one, and arrives whole.
    let port = h.sandbox.local_addr().port();
    assert_eq!(sockets_to(port, "01").len(), 1, "the pooled connection");
    h.sandbox.close_connections();
    // The close has reached the gateway's end (no longer established).
    wait_for(|| sockets_to(port, "01").is_empty()).await;
    let r = h.upload("/api/image/v1.0/receipt", JPEG).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(h.sandbox.connections(), opened + 1);
    let ups = h.uploads();
    assert_eq!(ups.len(), 5);
    assert!(ups.iter().all(|u| u.complete
        && u.sha256_hex == sha256_hex(JPEG)
        && u.target == "/api/image/v1.0/receipt"));
}

#[tokio::test]
async fn each_connection_worker_reuses_its_own_connection_to_concur() {
    let h = Harness::with_config("[server]\nworkers = 2").await;
    // One client connection per upload: they go to the two workers in
    // turn, and each worker opens one connection to Concur and reuses it.
    for _ in 0..8 {
        let r = h.upload("/api/image/v1.0/receipt", JPEG).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    assert_eq!(h.sandbox.connections(), 2, "one per worker");
    let ups = h.wait_for_uploads(8).await;
    assert!(
        ups.iter()
            .all(|u| u.complete && u.sha256_hex == sha256_hex(JPEG))
    );
}

#[tokio::test]
async fn concurrent_uploads_reuse_their_connections_to_concur() {
    let h = std::sync::Arc::new(Harness::with_config("[server]\nworkers = 1").await);
    let body = big_jpeg(300_000);
    let callers = (0..4).map(|_| {
        let (h, body) = (h.clone(), body.clone());
        tokio::spawn(async move {
            for _ in 0..10 {
                let r = h.upload("/api/image/v1.0/receipt", &body).await;
                assert_eq!(r.status, 201, "{}", r.text());
            }
        })
    });
    for caller in callers.collect::<Vec<_>>() {
        caller.await.unwrap();
    }
    // Never more than four uploads at once, and each connection goes back
    // to the pool before its caller has the answer: four connections at most.
    let opened = h.sandbox.connections();
    assert!(
        (1..=4).contains(&opened),
        "{opened} connections for 40 uploads"
    );
    let ups = h.wait_for_uploads(40).await;
    assert!(
        ups.iter()
            .all(|u| u.complete && u.sha256_hex == sha256_hex(&body))
    );
}

#[tokio::test]
async fn an_idle_connection_concur_closed_is_closed_here_too() {
    let h = Harness::start().await;
    assert_eq!(h.upload("/api/image/v1.0/receipt", JPEG).await.status, 201);
    // The gateway's pooled connection to Concur, and its socket.
    let inodes = sockets_to(h.sandbox.local_addr().port(), "01");
    assert_eq!(inodes.len(), 1, "{inodes:?}");
    let socket = &inodes[0];
    assert!(holds_socket(socket));
    // Concur closes the idle connection. With no upload to prompt it, the
    // pool notices when it next looks at its idle connections (every 5 s)
    // and lets the socket go.
    h.sandbox.close_connections();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while holds_socket(socket) {
        assert!(
            std::time::Instant::now() < deadline,
            "the pooled connection Concur closed is still open here"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_connection_whose_upload_was_cut_short_is_not_reused() {
    let h = Harness::start().await;
    assert_eq!(h.upload("/api/image/v1.0/receipt", JPEG).await.status, 201);
    let opened = h.sandbox.connections();
    // Rejected at its end, after 300 kB went to Concur: that exchange is cut
    // off mid-body, so its connection cannot carry another request.
    let mut polyglot = big_jpeg(300_000);
    polyglot.extend_from_slice(b"PK\x03\x04\x14\x00\x00\x00\x08\x00payload.exe");
    h.upload("/api/image/v1.0/receipt", &polyglot)
        .await
        .problem(422, "malformed_image");
    let r = h.upload("/api/image/v1.0/receipt", JPEG).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        h.sandbox.connections(),
        opened + 1,
        "the cut exchange's connection was dropped, the next upload opened one"
    );
    let ups = h.wait_for_uploads(3).await;
    assert!(ups[0].complete && ups[2].complete);
    assert!(!ups[1].complete, "{:?}", ups[1]);
}

#[tokio::test]
async fn xml_clients_get_concurs_answer_verbatim() {
    let h = Harness::start().await;
    let token = jwt(ALICE.0, ALICE.1);
    let r = h
        .post(
            "/api/image/v1.0/report/R1",
            &[
                ("authorization", &auth(&token)),
                ("content-type", "image/jpeg"),
                ("accept", "application/xml, application/json;q=0.5"),
            ],
            JPEG.to_vec(),
        )
        .await;
    assert_eq!(r.status, 201);
    // Byte for byte what the sandbox sends for report R1.
    assert_eq!(
        r.header("content-type"),
        Some("application/xml; charset=utf-8")
    );
    assert_eq!(r.text(), crate::sandbox::image_xml("R1"));
    // An answer whose layout a re-serialisation would change (whitespace,
    // attribute quotes, an empty element not self-closed): still verbatim,
    // with Concur's Content-Type.
    let sent = "<?xml version='1.0'?>\n<Image  xmlns='http://www.concursolutions.com/api/image/2011/02'>\n  <Id>R2</Id>\n  <Url></Url>\n</Image>\n";
    h.sandbox.push_fault(Fault::Raw {
        status: 201,
        content_type: "text/xml".into(),
        body: sent.into(),
        retry_after: None,
        location: None,
    });
    let r = h
        .post(
            "/api/image/v1.0/report/R2",
            &[
                ("authorization", &auth(&token)),
                ("content-type", "image/jpeg"),
                ("accept", "application/xml"),
            ],
            JPEG.to_vec(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/xml"));
    assert_eq!(r.body, sent.as_bytes());
}

#[tokio::test]
async fn request_ids_are_generated_and_unsafe_ones_replaced() {
    let h = Harness::start().await;
    let r = h.post("/nope", &[], vec![]).await;
    let id = r.header("x-request-id").unwrap().to_owned();
    assert!(id.len() >= 16, "{id}");
    r.problem(404, "not_found");
    let r = h
        .post(
            "/nope",
            &[("x-request-id", "has spaces and {braces}")],
            vec![],
        )
        .await;
    r.problem(404, "not_found");
    let replaced = r.header("x-request-id").expect("a request id");
    assert_ne!(replaced, "has spaces and {braces}");
    assert!(
        replaced.len() >= 16 && !replaced.contains(' '),
        "{replaced}"
    );
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_before_the_body_is_read() {
    let h = Harness::with_config(
        "[rate_limit]\nuser_per_second = 0.5\nuser_burst = 2\ncompany_per_second = 1000.0\ncompany_burst = 1000",
    )
    .await;
    let path = "/api/image/v1.0/report/R1";
    assert_eq!(h.upload(path, JPEG).await.status, 201);
    assert_eq!(h.upload(path, JPEG).await.status, 201);
    let r = h.upload(path, JPEG).await;
    r.problem(429, "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Another user of the same company is unaffected.
    let r = h.upload_as(BOB, path, "image/jpeg", JPEG).await;
    assert_eq!(r.status, 201);
    assert_eq!(h.uploads().len(), 3);
}

#[tokio::test]
async fn a_stalled_body_gets_408() {
    let h = Harness::with_config("[server]\nbody_idle_timeout_s = 0.3").await;
    let token = jwt(ALICE.0, ALICE.1);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Stalled before the first chunk is complete (1000 bytes of the first
    // 16 KiB checked), then after it (20 KiB of 200 KiB).
    let big = big_jpeg(200 * 1024);
    for (body, sent) in [(JPEG, 1000), (&big[..], 20 * 1024)] {
        let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        let head = format!(
            "POST /api/image/v1.0/report/R1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: image/jpeg\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body[..sent]).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("the gateway answers and closes")
            .unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("\"code\":\"body_timeout\""), "{text}");
    }
    // The first never reached Concur (its first chunk was never checked); the
    // second's exchange had started, and Concur never got the whole body.
    let ups = h.wait_for_uploads(1).await;
    assert_eq!(ups[0].content_length, Some(big.len() as u64));
    assert!(!ups[0].complete, "{ups:?}");
    assert!(ups[0].received_bytes < big.len() as u64, "{ups:?}");
}

#[tokio::test]
async fn admin_endpoints_and_drain() {
    let mut h = Harness::with_config("[server]\ndrain_delay_s = 1").await;
    assert_eq!(h.admin_get("/healthz").await.status, 200);
    assert_eq!(h.admin_get("/readyz").await.status, 200);
    assert_eq!(h.upload("/api/image/v1.0/receipt", JPEG).await.status, 201);
    let m = h.admin_get("/metrics").await.text();
    assert!(
        m.contains("concur_gateway_requests_total{route=\"receipt\",status=\"201\",code=\"ok\"} 1"),
        "{m}"
    );
    assert!(m.contains("concur_gateway_build_info"));
    assert!(!m.contains(ALICE_TOKEN) && !m.contains("alice@acme"));
    // The Prometheus text format unless OpenMetrics is asked for (SPEC:
    // "Prometheus text format"; Prometheus itself asks for OpenMetrics).
    let scrape = async |accept: &[(&str, &str)]| {
        let r = request(
            h.admin,
            "GET",
            "/metrics",
            accept,
            Payload::Full(Vec::new()),
        )
        .await;
        assert_eq!(r.status, 200);
        (
            r.header("content-type").unwrap_or_default().to_owned(),
            r.text(),
        )
    };
    let (plain, text) = scrape(&[]).await;
    assert_eq!(plain, "text/plain; version=0.0.4; charset=utf-8");
    assert!(
        text.contains("# TYPE concur_gateway_requests_total counter\n") && !text.contains("# EOF"),
        "{text}"
    );
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    for (accept, openmetrics) in [
        (prometheus, true),
        ("application/openmetrics-text", true),
        ("text/plain", false),
        ("application/openmetrics-text;q=0, text/plain", false),
    ] {
        let (content_type, text) = scrape(&[("accept", accept)]).await;
        assert_eq!(
            content_type.starts_with("application/openmetrics-text; version=1.0.0"),
            openmetrics,
            "{accept}: {content_type}"
        );
        assert_eq!(text.ends_with("# EOF\n"), openmetrics, "{accept}");
    }
    // Another method: 405 naming the ones allowed (RFC 9110 §15.5.6).
    let r = request(h.admin, "POST", "/healthz", &[], Payload::Full(Vec::new())).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    // A path it does not serve is not found, whatever the method.
    for method in ["GET", "POST"] {
        let r = request(h.admin, method, "/foo", &[], Payload::Full(Vec::new())).await;
        assert_eq!(r.status, 404, "{method}");
    }
    h.begin_shutdown();
    wait_for_async(async || h.admin_get("/readyz").await.status == 503).await;
    let r = h.admin_get("/readyz").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("draining"));
    h.stop().await;
}

#[tokio::test]
async fn a_new_credential_file_is_picked_up_and_an_invalid_one_refused() {
    use concur_gateway::credentials::Reload;
    let h = Harness::start().await;
    let upload_as_bob = || h.upload_as(BOB, "/api/image/v1.0/receipt", "image/jpeg", JPEG);
    upload_as_bob().await.problem(403, "no_credential");

    // Kubernetes updates a mounted Secret by swapping a symlink: do the same.
    let dir = h.dir();
    let v2 = dir.join("..v2");
    std::fs::create_dir(&v2).unwrap();
    let with_bob = format!(
        "{CREDENTIALS}\n[[credential]]\ncompany = \"acme\"\nuser = \"bob@acme.example\"\naccess_token = \"{ALICE_TOKEN}\"\n"
    );
    std::fs::write(v2.join("credentials.toml"), with_bob).unwrap();
    let link = dir.join("credentials.toml");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(v2.join("credentials.toml"), &link).unwrap();
    assert_eq!(
        h.gateway.reload_credentials(),
        Reload::Replaced { credentials: 4 }
    );
    let r = upload_as_bob().await;
    assert_eq!(r.status, 201, "{}", r.text());

    // An invalid file is refused; the previous set stays in use.
    let v3 = dir.join("..v3");
    std::fs::create_dir(&v3).unwrap();
    std::fs::write(
        v3.join("credentials.toml"),
        "[[credential]]\ncompany = \"acme\"\n",
    )
    .unwrap();
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(v3.join("credentials.toml"), &link).unwrap();
    assert!(matches!(h.gateway.reload_credentials(), Reload::Refused(_)));
    assert_eq!(h.gateway.reload_credentials(), Reload::Unchanged);
    let r = upload_as_bob().await;
    assert_eq!(r.status, 201, "{}", r.text());
    let m = h.admin_get("/metrics").await.text();
    assert!(
        m.contains("concur_gateway_credential_reloads_total{result=\"refused\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn a_rejected_upload_never_reaches_concur_complete() {
    let h = Harness::start().await;
    // Valid for its first 300 kB (so the exchange with Concur starts and bytes
    // flow), then a ZIP after EOI: only the end of the body decides.
    let mut polyglot = big_jpeg(300_000);
    polyglot.extend_from_slice(b"PK\x03\x04\x14\x00\x00\x00\x08\x00payload.exe");
    let mut truncated = big_jpeg(300_000);
    truncated.truncate(truncated.len() - 2); // no EOI
    // A PDF one byte into the trailer (a signature anywhere in it counts).
    let mut pdf_inside = big_jpeg(300_000);
    pdf_inside.extend_from_slice(b"X%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\n");
    for body in [polyglot, truncated, pdf_inside] {
        let r = h.upload("/api/image/v1.0/expenseentry/E1", &body).await;
        r.problem(422, "malformed_image");
    }
    // Each upload had started streaming to Concur, and was cut short.
    let ups = h.wait_for_uploads(3).await;
    for u in &ups {
        assert!(!u.complete, "{u:?}");
        assert!(u.received_bytes < u.content_length.unwrap());
        assert!(u.image_id.is_none());
    }
    // Concur created nothing: the entry can still take its one image.
    assert_eq!(
        h.upload("/api/image/v1.0/expenseentry/E1", JPEG)
            .await
            .status,
        201
    );
}

/// A 10 x 10 8-bit grey PNG with 300 kB of `tEXt` before its image data
/// (so that the exchange with Concur starts before the data is seen), whose
/// IDAT chunks (8 KiB each) hold `zdata`.
fn png_with_data(zdata: &[u8]) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let ihdr = [
        &10u32.to_be_bytes()[..],
        &10u32.to_be_bytes(),
        &[8, 0, 0, 0, 0],
    ]
    .concat();
    v.extend(png_chunk_bytes(b"IHDR", &ihdr));
    v.extend(png_chunk_bytes(
        b"tEXt",
        &[&b"Comment\0"[..], &vec![b'x'; 300_000]].concat(),
    ));
    for part in zdata.chunks(8192) {
        v.extend(png_chunk_bytes(b"IDAT", part));
    }
    v.extend(png_chunk_bytes(b"IEND", b""));
    v
}

#[tokio::test]
async fn a_png_whose_data_is_a_bomb_or_not_an_image_never_reaches_concur_complete() {
    let h = Harness::start().await;
    let upload = |body: Vec<u8>| h.upload_as(ALICE, "/api/image/v1.0/receipt", "image/png", body);
    // The 110 bytes its rows need: accepted, byte-identical upstream.
    let rows: Vec<u8> = (0..10u8)
        .flat_map(|r| [&[r % 5][..], &[r; 10]].concat())
        .collect();
    let good = png_with_data(&zlib(&rows));
    let r = upload(good.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let u = h.uploads().pop().unwrap();
    assert!(u.complete);
    assert_eq!(u.sha256_hex, sha256_hex(&good));
    // 64 MiB of zeros behind the 10 x 10 image; HTML where the image data
    // should be; the image's rows and then a ZIP after the zlib stream.
    let bomb = png_with_data(&zlib(&vec![0; 64 << 20]));
    let html = png_with_data(b"<html><script>alert(1)</script></html>");
    let zip = png_with_data(&[&zlib(&rows)[..], b"PK\x03\x04\x14\0payload.exe"].concat());
    let details = [
        "PNG image data (IDAT chunks from offset 300053): inflates to more than the 110 bytes \
         a 10 x 10 image of this type needs",
        "PNG image data (IDAT chunks from offset 300053): not a valid zlib stream (corrupt data \
         or checksum)",
        "PNG image data (IDAT chunks from offset 300053): data after the end of its zlib stream",
    ];
    for (body, detail) in [bomb, html, zip].into_iter().zip(details) {
        let r = upload(body).await;
        let p = r.problem(422, "malformed_image");
        assert_eq!(p["detail"], detail);
    }
    // Each had started streaming to Concur (the text chunk is past the
    // first 64 KiB chunk), and was cut short.
    let ups = h.wait_for_uploads(4).await;
    for u in &ups[1..] {
        assert!(!u.complete, "{u:?}");
        assert!(u.received_bytes < u.content_length.unwrap(), "{u:?}");
        assert!(u.image_id.is_none());
    }
}

/// Alice's upload of `JPEG` to report R1, with request id `id`, its first
/// 2000 bytes sent, once the gateway counts it in flight.
async fn half_sent_upload(h: &Harness, id: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let token = jwt(ALICE.0, ALICE.1);
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let head = format!(
        "POST /api/image/v1.0/report/R1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nx-request-id: {id}\r\ncontent-type: image/jpeg\r\ncontent-length: {}\r\n\r\n",
        JPEG.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&JPEG[..2000]).await.unwrap();
    wait_for(|| h.gateway.store.local_in_flight().current(&identity(ALICE)) == (1, 1)).await;
    s
}

#[tokio::test]
async fn an_upload_in_flight_when_the_drain_starts_completes() {
    let mut h = Harness::with_config("[server]\ndrain_delay_s = 0.2\nshutdown_grace_s = 10").await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = half_sent_upload(&h, "drain-then-finish").await;
    h.begin_shutdown();
    // Past the drain delay: accept has stopped, but this upload goes on.
    let addr = h.addr;
    wait_for_async(async || tokio::net::TcpStream::connect(addr).await.is_err()).await;
    s.write_all(&JPEG[2000..]).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    assert!(
        h.uploads()
            .iter()
            .any(|u| u.complete && u.sha256_hex == sha256_hex(JPEG))
    );
    h.stop().await;
}

/// An upload still running when `shutdown_grace_s` runs out is cut by the
/// gateway: its access line says so (`shutting_down`), not `client_closed`,
/// and Concur never got it complete.
#[tokio::test]
async fn an_upload_cut_by_the_shutdown_grace_is_logged_as_such() {
    let capture = capture_logs().await;
    let mut h = Harness::with_config("[server]\ndrain_delay_s = 0\nshutdown_grace_s = 0.5").await;
    let s = half_sent_upload(&h, "cut-by-the-grace").await;
    h.begin_shutdown();
    // The grace (0.5 s) runs out with the body half sent.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(h.uploads().iter().all(|u| !u.complete), "{:?}", h.uploads());
    h.stop().await;
    let logs = capture.finish();
    // Other tests log into the same capture: this request's lines only.
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("cut-by-the-grace"))
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("request cut short by the shutdown")
            && l.contains("shutting_down")),
        "{lines:?}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("request abandoned by the client")),
        "{lines:?}"
    );
    drop(s);
}

#[tokio::test]
async fn ratelimit_headers_follow_the_ietf_draft() {
    let h = Harness::with_config(
        "[rate_limit]\nuser_per_second = 1.0\nuser_burst = 3\ncompany_per_second = 10.0\ncompany_burst = 20",
    )
    .await;
    let r = h.upload("/api/image/v1.0/report/R1", JPEG).await;
    assert_eq!(r.status, 201);
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"user\";q=3;w=3, \"company\";q=20;w=2")
    );
    assert_eq!(
        r.header("ratelimit"),
        Some("\"user\";r=2;t=1, \"company\";r=19;t=1")
    );
    h.upload("/api/image/v1.0/report/R1", JPEG).await;
    h.upload("/api/image/v1.0/report/R1", JPEG).await;
    let r = h.upload("/api/image/v1.0/report/R1", JPEG).await;
    r.problem(429, "rate_limited");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("ratelimit"), Some("\"user\";r=0;t=1"));
    assert!(r.header("ratelimit-policy").is_some());
}

#[tokio::test]
async fn concur_throttling_pauses_that_company_only() {
    let h = Harness::start().await;
    h.sandbox.push_fault(Fault::Status {
        status: 429,
        message: "Too many requests".into(),
        retry_after: Some("30".into()),
    });
    let r = h.upload("/api/image/v1.0/report/R1", JPEG).await;
    r.problem(429, "concur_error");
    assert_eq!(r.header("retry-after"), Some("30"));
    // acme's callers now wait, without reaching Concur.
    let r = h.upload("/api/image/v1.0/report/R2", JPEG).await;
    let v = r.problem(429, "rate_limited");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .starts_with("Concur asked for uploads with this credential to pause"),
        "{v}"
    );
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((28..=30).contains(&wait), "{wait}");
    assert_eq!(h.uploads().len(), 1);
    // Another company is unaffected.
    let r = h
        .upload_as(GINA, "/api/image/v1.0/receipt", "image/jpeg", JPEG)
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
}

/// `Retry-After` may be an HTTP-date (RFC 9110): it pauses the company too.
#[tokio::test]
async fn concur_throttling_with_a_date_pauses_the_company_too() {
    let h = Harness::start().await;
    let then = std::time::SystemTime::now() + Duration::from_secs(60);
    let date = httpdate::fmt_http_date(then);
    h.sandbox.push_fault(Fault::Status {
        status: 503,
        message: "Service unavailable".into(),
        retry_after: Some(date.clone()),
    });
    let r = h.upload("/api/image/v1.0/report/R1", JPEG).await;
    r.problem(503, "concur_error");
    assert_eq!(r.header("retry-after"), Some(date.as_str()));
    let r = h.upload("/api/image/v1.0/report/R2", JPEG).await;
    r.problem(429, "rate_limited");
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((55..=61).contains(&wait), "{wait}");
    assert_eq!(
        h.uploads().len(),
        1,
        "the second upload never reached Concur"
    );
}

#[tokio::test]
async fn a_full_upstream_queue_answers_503_overloaded() {
    let h = Harness::with_config("[upstream]\nmax_in_flight = 1\nqueue_timeout_s = 0.2").await;
    h.sandbox.push_fault(Fault::Delay { millis: 1_500 });
    let (first, r) = tokio::join!(h.upload("/api/image/v1.0/report/R1", JPEG), async {
        // The first upload has reached Concur (its record is written before
        // the delay) and holds the one slot.
        wait_for(|| h.uploads().len() == 1).await;
        h.upload("/api/image/v1.0/report/R2", JPEG).await
    });
    r.problem(503, "overloaded");
    assert!(r.header("retry-after").is_some());
    assert_eq!(first.status, 201);
    assert_eq!(
        h.uploads().len(),
        1,
        "the refused request never reached Concur"
    );
}

#[tokio::test]
async fn slowloris_heads_are_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::with_config("[server]\nheader_read_timeout_s = 0.3").await;
    // A head that never ends: the connection is closed.
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"POST /api/image/v1.0/receipt HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf))
        .await
        .expect("the gateway closes a slow head")
        .unwrap();
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_at_once_when_all_are_busy() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::with_config("[server]\nmax_connections = 1").await;
    // The one connection is busy: an upload whose body is still coming.
    let token = jwt(ALICE.0, ALICE.1);
    let mut busy = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let head = format!(
        "POST /api/image/v1.0/report/R1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: image/jpeg\r\ncontent-length: {}\r\n\r\n",
        JPEG.len()
    );
    busy.write_all(head.as_bytes()).await.unwrap();
    busy.write_all(&JPEG[..100]).await.unwrap();
    wait_for(|| h.gateway.store.local_in_flight().current(&identity(ALICE)) == (1, 1)).await;
    let mut refused = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), refused.read(&mut buf))
        .await
        .expect("closed promptly")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    // The busy upload is unaffected and completes.
    busy.write_all(&JPEG[100..]).await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let n = busy.read(&mut chunk).await.unwrap();
        assert!(n > 0, "answered");
        answer.extend_from_slice(&chunk[..n]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 201"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    drop(busy);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        h.upload("/api/image/v1.0/report/R2", JPEG).await.status,
        201
    );
    assert!(
        h.admin_get("/metrics")
            .await
            .text()
            .contains("concur_gateway_connections_refused_total 1")
    );
}

#[tokio::test]
async fn pdfs_through_the_gateway_encrypted_and_active_content_refused() {
    use crate::inspect_pdf::{PS_JS, PS_SHAPES, gs, qpdf, tools_available};
    if !tools_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let plain = gs(dir.path(), "plain", PS_SHAPES);
    let encrypted = qpdf(
        dir.path(),
        &plain,
        &["--encrypt", "user", "owner", "256", "--"],
    );
    let javascript = gs(dir.path(), "js", PS_JS);
    let h = Harness::start().await;
    let post =
        |body: Vec<u8>| h.upload_as(ALICE, "/api/image/v1.0/report/R1", "application/pdf", body);
    let r = post(plain.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(h.uploads().pop().unwrap().sha256_hex, sha256_hex(&plain));
    h.sandbox.clear_uploads();
    // Each fits in the first chunk the gateway checks, so each is judged
    // whole before Concur is contacted: nothing of them goes upstream.
    for refused in [&encrypted, &javascript] {
        assert!(refused.len() <= concur_gateway::body::COALESCE);
    }
    post(encrypted).await.problem(422, "pdf_encrypted");
    post(javascript).await.problem(422, "pdf_active_content");
    settle().await;
    assert!(h.uploads().is_empty(), "{:?}", h.uploads());
}

/// A Concur that reads a request's head and then keeps the connection open
/// without reading the rest of the body; with `answer`, it first answers
/// `400` (allowed by HTTP/1.1; a server under load may do it). Its URL and CA.
async fn concur_reading_only_the_head(answer: bool) -> (String, String) {
    let (acceptor, ca) = localhost_tls();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let xml = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
                           <Error><Message>Image too large</Message></Error>";
                let early = format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/xml\r\n\
                     content-length: {}\r\n\r\n{xml}",
                    xml.len()
                );
                if answer
                    && (tls.write_all(early.as_bytes()).await.is_err()
                        || tls.flush().await.is_err())
                {
                    return;
                }
                // Open, and not reading: the gateway's writes stall.
                tokio::time::sleep(Duration::from_secs(120)).await;
                drop(tls);
            });
        }
    });
    (format!("https://localhost:{port}"), ca)
}

#[tokio::test]
async fn a_connection_concur_answered_while_the_upload_was_still_going_is_closed() {
    let (url, ca) = concur_reading_only_the_head(true).await;
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let h = Harness::builder()
        .file("early-ca.pem", ca)
        .set("upstream.base_url", url.as_str())
        .set("upstream.ca_file", "early-ca.pem")
        .start()
        .await;
    // Far more than the socket buffers hold while Concur does not read.
    let body = big_jpeg(8 << 20);
    let r = h.upload("/api/image/v1.0/receipt", &body).await;
    assert_eq!(r.status, 400, "{}", r.text());
    // The answer has ended but the upload on that connection has not: it
    // can never carry another request. The gateway closes it at once rather
    // than pooling it (holding the caller's body and the socket until the
    // pool's idle limit).
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let open = sockets_to(port, "01")
            .iter()
            .filter(|inode| holds_socket(inode))
            .count();
        if open == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{open} connection(s) to the Concur that answered early still open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `upstream.timeout_s` bounds how long Concur keeps the gateway waiting,
/// not how long the caller takes: an upload sent slowly (at a pace the body
/// limits allow) for longer than the timeout goes through, while a Concur
/// that stops taking the body, or does not answer, gets `504`.
#[tokio::test]
async fn the_upstream_timeout_counts_concurs_time_not_the_callers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h =
        Harness::with_config("[upstream]\ntimeout_s = 1\n[server]\nbody_idle_timeout_s = 5").await;
    let body = big_jpeg(200 << 10);
    let head = format!(
        "POST /api/image/v1.0/receipt HTTP/1.1\r\nhost: gw.test\r\nauthorization: Bearer {}\r\n\
         content-type: image/jpeg\r\ncontent-length: {}\r\n\r\n",
        jwt(ALICE.0, ALICE.1),
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    // 200 KiB over about 3 s: three times the timeout, pauses of 1.5 s
    // (longer than the timeout) included.
    let started = std::time::Instant::now();
    for (i, piece) in body.chunks(20 << 10).enumerate() {
        s.write_all(piece).await.unwrap();
        let pause = if i == 4 { 1_500 } else { 150 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n{") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(started.elapsed() > Duration::from_millis(2_500));
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let ups = h.wait_for_uploads(1).await;
    assert!(ups[0].complete, "{ups:?}");
    assert_eq!(ups[0].sha256_hex, sha256_hex(&body));

    // Concur does not answer in time: 504, as before.
    h.sandbox.push_fault(Fault::Delay { millis: 2_500 });
    h.upload("/api/image/v1.0/receipt", JPEG)
        .await
        .problem(504, "upstream_timeout");

    // Concur stops taking the body: 504 once it has kept the gateway
    // waiting for the timeout.
    let (url, ca) = concur_reading_only_the_head(false).await;
    let h = Harness::builder()
        .file("stall-ca.pem", ca)
        .set("upstream.base_url", url.as_str())
        .set("upstream.ca_file", "stall-ca.pem")
        .set("upstream.timeout_s", 1)
        .start()
        .await;
    let started = std::time::Instant::now();
    h.upload("/api/image/v1.0/receipt", &big_jpeg(8 << 20))
        .await
        .problem(504, "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// A load balancer in front of Concur answers its own HTML page: Concur's
/// status and `Retry-After` are kept (the client's back-off hint), without a
/// translated body; XML that Concur means as its error still goes through
/// the XML rules (a DOCTYPE there is refused).
#[tokio::test]
async fn an_html_error_page_before_concur_keeps_its_status_and_retry_after() {
    let h = Harness::start().await;
    let path = "/api/image/v1.0/receipt";
    // Concur's own XML error with a DOCTYPE: refused as rule 7 says (first:
    // the 503 below pauses the company).
    h.sandbox.push_fault(Fault::Raw {
        status: 400,
        content_type: "application/xml".into(),
        body: "<!DOCTYPE Error [<!ENTITY a \"b\">]><Error><Message>&a;</Message></Error>".into(),
        retry_after: None,
        location: None,
    });
    h.upload(path, JPEG)
        .await
        .problem(502, "upstream_invalid_response");
    let nginx_503 = "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n\
                     <body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n\
                     <hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
    for (status, content_type, body) in [
        (
            502,
            "text/html",
            "<!DOCTYPE html>\n<html><body>Bad gateway<br></body></html>",
        ),
        (
            504,
            "application/octet-stream",
            "\u{feff}  <!doctype HTML><p>timeout",
        ),
        (503, "text/html; charset=utf-8", nginx_503),
    ] {
        h.sandbox.push_fault(Fault::Raw {
            status,
            content_type: content_type.into(),
            body: body.into(),
            retry_after: Some("3".into()),
            location: None,
        });
        let r = h.upload(path, JPEG).await;
        let v = r.problem(status, "concur_error");
        assert_eq!(r.header("retry-after"), Some("3"), "{status}");
        assert!(v.get("concur").is_none(), "{v}");
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .contains("without an XML error body"),
            "{v}"
        );
    }
}

/// A 2xx that is not Concur's XML: a login page answered with a 200 is no
/// upload Concur confirmed (502); a 204 has nothing to translate.
#[tokio::test]
async fn a_2xx_without_concurs_xml() {
    let h = Harness::start().await;
    let path = "/api/image/v1.0/receipt";
    h.sandbox.push_fault(Fault::Raw {
        status: 200,
        content_type: "text/html".into(),
        body: "<html><body><p>Please log in</p></body></html>".into(),
        retry_after: None,
        location: None,
    });
    h.upload(path, JPEG)
        .await
        .problem(502, "upstream_invalid_response");
    h.sandbox.push_fault(Fault::Raw {
        status: 204,
        content_type: "application/xml".into(),
        body: String::new(),
        retry_after: None,
        location: None,
    });
    let r = h.upload(path, JPEG).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.text().is_empty());
    // 205 (Reset Content) has no content either.
    h.sandbox.push_fault(Fault::Raw {
        status: 205,
        content_type: "application/xml".into(),
        body: String::new(),
        retry_after: None,
        location: None,
    });
    let reset = h.upload(path, JPEG).await;
    assert_eq!(reset.status, 205, "{}", reset.text());
    assert!(reset.text().is_empty());
    // A success all the same: it carries the digest of what Concur
    // received, as a 201 of the same bytes does.
    let created = h.upload(path, JPEG).await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert!(created.header("repr-digest").is_some());
    assert_eq!(r.header("repr-digest"), created.header("repr-digest"));
}

/// A Concur error message that quotes the access token the gateway sent:
/// the token is redacted before the answer reaches the client or the log.
#[tokio::test]
async fn a_concur_answer_that_quotes_the_token_is_redacted() {
    let h = Harness::start().await;
    let token = "concur-alice-token-0001"; // alice's, in the test credentials
    h.sandbox.push_fault(Fault::Raw {
        status: 400,
        content_type: "application/xml".into(),
        body: format!(
            "<Error><Message>Invalid token: OAuth {token} (token {token})</Message></Error>"
        ),
        retry_after: None,
        location: None,
    });
    let capture = capture_logs().await;
    let r = h.upload("/api/image/v1.0/receipt", JPEG).await;
    let logs = capture.finish();
    let v = r.problem(400, "concur_error");
    assert_eq!(
        v["detail"], "Invalid token: OAuth [redacted] (token [redacted])",
        "{v}"
    );
    assert!(!r.text().contains(token), "{}", r.text());
    assert!(logs.contains("[redacted]"), "the answer was logged: {logs}");
    assert!(!logs.contains(token), "the token in the log: {logs}");
    // What Concur was sent did carry it (the fault answered that request).
    let ups = h.wait_for_uploads(1).await;
    assert!(
        ups[0]
            .headers
            .iter()
            .any(|(k, v)| k == "authorization" && v.ends_with(token))
    );
}

/// Concur's `Location` quoting the access token (a URL with it in the
/// query): redacted as the body is, or, percent-encoded, not passed on; the
/// record kept for a retry holds no token either.
#[tokio::test]
async fn a_concur_location_that_quotes_the_token_is_redacted() {
    let h = Harness::start().await;
    let token = "concur-alice-token-0001";
    let auth = format!("Bearer {}", jwt("acme", "alice@acme.example"));
    let cases = [
        (
            format!("https://concur.example/img/1?access_token={token}&x=1"),
            Some("https://concur.example/img/1?access_token=[redacted]&x=1"),
        ),
        (
            "https://concur.example/img/2?t=concur%2Dalice%2dtoken-0001".to_owned(),
            None,
        ),
        (
            "https://concur.example/img/3".to_owned(),
            Some("https://concur.example/img/3"),
        ),
    ];
    for (k, (location, expected)) in cases.iter().enumerate() {
        h.sandbox.push_fault(Fault::Raw {
            status: 201,
            content_type: "application/xml".into(),
            body: "<Image><Id>L1</Id><Url/></Image>".into(),
            retry_after: None,
            location: Some(location.clone()),
        });
        let key = format!("location-{k}");
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "image/jpeg"),
            ("idempotency-key", key.as_str()),
        ];
        let path = "/api/image/v1.0/receipt";
        let first = h.post(path, &headers, JPEG.to_vec()).await;
        assert_eq!(first.status, 201, "{}", first.text());
        // The retry is the kept record, replayed.
        let replay = h.post(path, &headers, JPEG.to_vec()).await;
        assert_eq!(replay.header("idempotent-replayed"), Some("true"));
        for r in [&first, &replay] {
            assert_eq!(r.header("location"), *expected, "{location}");
            for (name, value) in &r.headers {
                let value = String::from_utf8_lossy(value.as_bytes());
                assert!(!value.contains("alice-token"), "{name}: {value}");
                assert!(!value.contains("alice%2"), "{name}: {value}");
            }
        }
    }
    assert_eq!(h.uploads().len(), 3, "the replays reached Concur");
}

/// A Concur status that is no final answer (101 without an `Upgrade` asked
/// for, a code HTTP does not define) is not passed on as the client's.
#[tokio::test]
async fn a_concur_status_that_is_no_final_answer_is_invalid() {
    let h = Harness::start().await;
    for status in [600, 999, 304] {
        h.sandbox.push_fault(Fault::Raw {
            status,
            content_type: "application/xml".into(),
            body: if status == 304 {
                String::new()
            } else {
                "<Image><Id>X</Id></Image>".into()
            },
            retry_after: None,
            location: None,
        });
        let r = h.upload("/api/image/v1.0/receipt", JPEG).await;
        let v = r.problem(502, "upstream_invalid_response");
        assert!(
            v["detail"].as_str().unwrap().contains(&status.to_string()),
            "{v}"
        );
    }
}

/// A caller that puts its JWT in the path (as a target ID, after an unknown
/// path) is answered as usual; the access log shows the path without it.
#[tokio::test]
async fn a_jwt_in_the_path_stays_out_of_the_log() {
    let h = Harness::start().await;
    let token = jwt("acme", "alice@acme.example");
    let auth = format!("Bearer {token}");
    let capture = capture_logs().await;
    for (k, (path, status)) in [
        (format!("/api/image/v1.0/report/{token}"), 400),
        (format!("/nope/{token}"), 404),
        (format!("/api/image/v1.0/receipt;jwt={token}"), 404),
    ]
    .iter()
    .enumerate()
    {
        let id = format!("jwt-in-path-{k}");
        let r = h
            .post(
                path,
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "image/jpeg"),
                    ("x-request-id", id.as_str()),
                ],
                JPEG.to_vec(),
            )
            .await;
        assert_eq!(r.status, *status, "{path}: {}", r.text());
        assert!(!r.text().contains(&token[..20]));
    }
    let logs = capture.finish();
    for k in 0..3 {
        let id = format!("request_id=jwt-in-path-{k} ");
        let line = logs
            .lines()
            .find(|l| l.contains(&id))
            .unwrap_or_else(|| panic!("no access line for {id}: {logs}"));
        assert!(line.contains("[redacted]"), "{line}");
        assert!(!line.contains(&token[..20]), "{line}");
    }
    assert!(h.uploads().is_empty());
}

/// The token hidden from a byte search by XML's own escapes (a character
/// reference, a CDATA section, a comment or an element splitting it) would
/// come out whole once translated: such an answer is not passed on, on
/// success as on error, and nothing of it reaches the log.
#[tokio::test]
async fn a_concur_answer_that_quotes_the_token_in_escaped_form_is_not_passed_on() {
    let h = Harness::start().await;
    let token = "concur-alice-token-0001";
    let hidden = [
        "concur&#45;alice-token-0001",
        "concur<![CDATA[-alice]]>-token-0001",
        "concur<!---->-alice-token-0001",
        "concur-alice<b/>-token-0001",
    ];
    for (k, quoted) in hidden.iter().enumerate() {
        let capture = capture_logs().await;
        for accept in ["application/json", "application/xml"] {
            let (status, body) = if k % 2 == 0 {
                (
                    403,
                    format!("<Error><Message>Token {quoted} is not valid</Message></Error>"),
                )
            } else {
                (201, format!("<Image><Id>{quoted}</Id><Url/></Image>"))
            };
            h.sandbox.push_fault(Fault::Raw {
                status,
                content_type: "application/xml".into(),
                body,
                retry_after: None,
                location: None,
            });
            let auth = format!("Bearer {}", jwt("acme", "alice@acme.example"));
            let r = h
                .post(
                    "/api/image/v1.0/receipt",
                    &[
                        ("authorization", &auth),
                        ("content-type", "image/jpeg"),
                        ("accept", accept),
                    ],
                    JPEG.to_vec(),
                )
                .await;
            let v = r.problem(502, "upstream_invalid_response");
            assert!(
                v["detail"].as_str().unwrap().contains("escaped form"),
                "{quoted}: {v}"
            );
            assert!(!r.text().contains(token), "{}", r.text());
        }
        let logs = capture.finish();
        assert!(!logs.contains(token), "the token in the log: {logs}");
    }
}

/// Concur's `Retry-After` reaches the client when it is one (seconds or an
/// HTTP-date), and not when it is anything else.
#[tokio::test]
async fn only_a_well_formed_retry_after_from_concur_is_passed_on() {
    let h = Harness::start().await;
    let path = "/api/image/v1.0/report/R1";
    for (value, passed) in [
        ("soon<script>", false),
        ("1.5", false),
        ("Sun, 06 Nov 1994 08:49:37 GMT", true),
        ("120", true),
    ] {
        h.sandbox.push_fault(Fault::Status {
            status: 400,
            message: "try later".into(),
            retry_after: Some(value.into()),
        });
        let r = h.upload(path, JPEG).await;
        r.problem(400, "concur_error");
        assert_eq!(r.header("retry-after"), passed.then_some(value), "{value}");
    }
}

/// Without `[scan]` and without a Redis store, their health gauges are not
/// exported: `clamd_up 0` would fire a "clamd down" alert for a gateway that
/// scans nothing (the `[scan]` and Redis tests read them when configured).
#[tokio::test]
async fn health_gauges_of_features_that_are_off_are_not_exported() {
    let h = Harness::start().await;
    let m = h.admin_get("/metrics").await.text();
    assert!(m.contains("concur_gateway_in_flight_requests"), "{m}");
    for name in [
        "concur_gateway_clamd_up",
        "concur_gateway_store_up",
        "concur_gateway_scan_duration_seconds",
    ] {
        assert!(!m.contains(name), "{name} in {m}");
    }
}

/// The route's path and method are read before the token: a `GET` on a
/// route is `405` and an unknown path `404`, with a token or without; on a
/// route, a missing token is `401`.
#[tokio::test]
async fn a_wrong_path_or_method_is_answered_before_the_token_is_asked_for() {
    let h = Harness::start().await;
    let r = request(
        h.addr,
        "GET",
        "/api/image/v1.0/receipt",
        &[],
        Payload::Full(Vec::new()),
    )
    .await;
    r.problem(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST"));
    h.post("/api/image/v1.0/nothing", &[], JPEG.to_vec())
        .await
        .problem(404, "not_found");
    h.post("/api/image/v1.0/receipt", &[], JPEG.to_vec())
        .await
        .problem(401, "missing_token");
    // A bad target ID is judged after authentication.
    h.post("/api/image/v1.0/report/a.b", &[], JPEG.to_vec())
        .await
        .problem(401, "missing_token");
    assert!(h.uploads().is_empty());
    // Counted under the route the path names, whatever the method or ID.
    let r = h.upload("/api/image/v1.0/report/a.b", JPEG).await;
    r.problem(400, "invalid_id");
    let m = h.admin_get("/metrics").await.text();
    for line in [
        "concur_gateway_requests_total{route=\"receipt\",status=\"401\",code=\"missing_token\"} 1",
        "concur_gateway_requests_total{route=\"report\",status=\"401\",code=\"missing_token\"} 1",
        "concur_gateway_requests_total{route=\"receipt\",status=\"405\",code=\"method_not_allowed\"} 1",
        "concur_gateway_requests_total{route=\"none\",status=\"404\",code=\"not_found\"} 1",
        "concur_gateway_requests_total{route=\"report\",status=\"400\",code=\"invalid_id\"} 1",
    ] {
        assert!(m.contains(line), "{line} in {m}");
    }
}
