//! Refreshing OAuth2 credentials end to end: refresh ahead of expiry, single
//! flight, rotation persisted and preferred after a restart, Secret swaps,
//! 403s, dead refresh tokens. Time moves through injected clocks (the
//! gateway's `ManualClock` and the sandbox's offset), never by sleeping.

use std::sync::Arc;
use std::time::Duration;

use concur_gateway::auth::ManualClock;
use concur_gateway::credentials::Reload;
use concur_gateway::sandbox::{Fault, OAuthClient};

use crate::support::*;

pub const BOB_CLIENT: &str = "bob-client-id";
pub const BOB_SECRET: &str = "bob-client-secret-5ecret";
pub const BOB_REFRESH: &str = "bob-refresh-token-initial-0001";

pub fn bob_client(refresh_token: &str) -> OAuthClient {
    OAuthClient {
        client_id: BOB_CLIENT.into(),
        client_secret: BOB_SECRET.into(),
        company: BOB.0.into(),
        user: Some(BOB.1.into()),
        refresh_token: refresh_token.into(),
    }
}

/// The harness credentials plus bob's refreshing credential.
pub fn credentials_with_bob(refresh_token: &str) -> String {
    format!(
        "{CREDENTIALS}\n[[credential]]\ncompany = \"{}\"\nuser = \"{}\"\nrefresh_token = \"{refresh_token}\"\nclient_id = \"{BOB_CLIENT}\"\nclient_secret = \"{BOB_SECRET}\"\n",
        BOB.0, BOB.1
    )
}

async fn harness(file_refresh: &str, state_dir: bool, ttl: Duration) -> Harness {
    let mut gateway = Harness::builder()
        .credentials(credentials_with_bob(file_refresh))
        .oauth_client(bob_client(BOB_REFRESH))
        .access_token_ttl(ttl)
        .clock(Arc::new(ManualClock::new(now())));
    if state_dir {
        gateway = gateway.set("credentials.state_dir", "state");
    }
    gateway.start().await
}

async fn upload_as_bob(h: &Harness) -> Reply {
    h.upload_as(BOB, "/api/image/v1.0/receipt", "image/jpeg", JPEG)
        .await
}

/// The token bob's last upload reached Concur with.
fn last_bob_token(h: &Harness) -> String {
    let r = h
        .uploads()
        .into_iter()
        .rev()
        .find(|r| r.user.as_deref() == Some(BOB.1))
        .expect("an upload by bob");
    assert_eq!(r.auth_scheme.as_deref(), Some("Bearer"));
    r.token.unwrap()
}

fn state_files(h: &Harness) -> Vec<serde_json::Value> {
    std::fs::read_dir(h.dir().join("state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

/// Replaces `credentials.toml` by a symlink to a new version, as Kubernetes does.
fn swap_credentials(h: &Harness, version: &str, text: &str) {
    let dir = h.dir();
    let v = dir.join(format!("..{version}"));
    std::fs::create_dir(&v).unwrap();
    std::fs::write(v.join("credentials.toml"), text).unwrap();
    let link = dir.join("credentials.toml");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(v.join("credentials.toml"), &link).unwrap();
}

#[tokio::test]
async fn an_access_token_is_obtained_before_first_use_and_refreshed_ahead_of_expiry() {
    let h = harness(BOB_REFRESH, false, Duration::from_secs(1000)).await;
    assert_eq!(h.sandbox.token_requests(), 0, "nothing before first use");
    let r = upload_as_bob(&h).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(h.sandbox.token_requests(), 1);
    let first = last_bob_token(&h);

    // 70% of its life: still used.
    h.advance(Duration::from_secs(700));
    assert_eq!(upload_as_bob(&h).await.status, 201);
    assert_eq!(h.sandbox.token_requests(), 1);
    assert_eq!(last_bob_token(&h), first);

    // 85%: refreshed first, and the rotated refresh token works (the sandbox
    // has invalidated the first one).
    h.advance(Duration::from_secs(150));
    assert_eq!(upload_as_bob(&h).await.status, 201);
    assert_eq!(h.sandbox.token_requests(), 2);
    let second = last_bob_token(&h);
    assert_ne!(second, first);
    assert_ne!(
        h.sandbox.current_refresh_token(BOB_CLIENT).unwrap(),
        BOB_REFRESH
    );

    // The static credentials are untouched by all this.
    assert_eq!(h.upload("/api/image/v1.0/receipt", JPEG).await.status, 201);
    let m = h.admin_get("/metrics").await.text();
    assert!(
        m.contains("concur_gateway_credential_refreshes_total{result=\"ok\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn the_geolocation_becomes_the_credentials_base_url() {
    let h = harness(BOB_REFRESH, false, Duration::ZERO).await;
    let port = h.sandbox.local_addr().port();
    h.sandbox
        .set_geolocation(Some(format!("https://127.0.0.1:{port}")));
    assert_eq!(upload_as_bob(&h).await.status, 201);
    let bob = h
        .uploads()
        .into_iter()
        .find(|r| r.user.as_deref() == Some(BOB.1))
        .unwrap();
    let host = bob.headers.iter().find(|(k, _)| k == "host").unwrap();
    assert_eq!(host.1, format!("127.0.0.1:{port}"));
    // Alice's static token still goes to upstream.base_url.
    assert_eq!(h.upload("/api/image/v1.0/receipt", JPEG).await.status, 201);
    let alice = h.uploads().pop().unwrap();
    let host = alice.headers.iter().find(|(k, _)| k == "host").unwrap();
    assert_eq!(host.1, format!("localhost:{port}"));
}

#[tokio::test]
async fn a_hundred_concurrent_requests_share_one_refresh() {
    let h = Arc::new(harness(BOB_REFRESH, false, Duration::from_secs(1000)).await);
    for round in 1..=2u64 {
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let h = h.clone();
                tokio::spawn(async move { upload_as_bob(&h).await.status.as_u16() })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 201);
        }
        assert_eq!(h.sandbox.token_requests(), round, "round {round}");
        h.advance(Duration::from_secs(850));
    }
}

#[tokio::test]
async fn a_rotated_refresh_token_is_persisted_and_used_after_a_restart() {
    let mut h = harness(BOB_REFRESH, true, Duration::ZERO).await;
    assert_eq!(upload_as_bob(&h).await.status, 201);
    let rotated = h.sandbox.current_refresh_token(BOB_CLIENT).unwrap();
    assert_ne!(rotated, BOB_REFRESH);
    let states = state_files(&h);
    assert_eq!(states.len(), 1);
    assert_eq!(states[0]["refresh_token"], rotated.as_str());
    assert_eq!(states[0]["user"], BOB.1);

    // The file's token is dead at Concur now; after a restart the persisted one is used.
    h.restart().await;
    assert_eq!(upload_as_bob(&h).await.status, 201);
    assert_eq!(h.sandbox.token_requests(), 2);
    let again = h.sandbox.current_refresh_token(BOB_CLIENT).unwrap();
    assert_ne!(again, rotated);
    assert_eq!(state_files(&h)[0]["refresh_token"], again.as_str());
}

#[tokio::test]
async fn a_new_refresh_token_in_the_file_wins_and_an_invalid_file_is_ignored() {
    let mut h = harness(BOB_REFRESH, true, Duration::ZERO).await;
    assert_eq!(upload_as_bob(&h).await.status, 201);

    // While the gateway is down, the operator gets a new refresh token (which
    // invalidates the rotated chain) and updates the Secret.
    h.sandbox
        .add_oauth_client(bob_client("bob-refresh-token-operator-0002"));
    swap_credentials(
        &h,
        "v2",
        &credentials_with_bob("bob-refresh-token-operator-0002"),
    );
    h.restart().await;
    let r = upload_as_bob(&h).await;
    assert_eq!(
        r.status,
        201,
        "the file's newer token wins at start-up: {}",
        r.text()
    );
    assert_eq!(h.sandbox.token_requests(), 2);

    // And while it runs: the symlink swap is picked up, the cached access
    // token dropped, the new refresh token used.
    h.sandbox
        .add_oauth_client(bob_client("bob-refresh-token-operator-0003"));
    swap_credentials(
        &h,
        "v3",
        &credentials_with_bob("bob-refresh-token-operator-0003"),
    );
    assert!(matches!(
        h.gateway.reload_credentials(),
        Reload::Replaced { credentials: 4 }
    ));
    let r = upload_as_bob(&h).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(h.sandbox.token_requests(), 3);

    // An invalid new file is refused; the credential keeps working.
    swap_credentials(
        &h,
        "v4",
        "[[credential]]\ncompany = \"acme\"\nuser = \"bob@acme.example\"\nrefresh_token = \"x\"\n",
    );
    assert!(matches!(h.gateway.reload_credentials(), Reload::Refused(_)));
    assert_eq!(upload_as_bob(&h).await.status, 201);
    assert_eq!(h.sandbox.token_requests(), 3);
    // So is an empty one (a truncating editor, a torn write): every caller
    // keeps its credential, and the gateway stays ready.
    swap_credentials(&h, "v5", "");
    assert!(matches!(h.gateway.reload_credentials(), Reload::Refused(_)));
    assert_eq!(upload_as_bob(&h).await.status, 201);
    assert_eq!(h.admin_get("/readyz").await.status, 200);
}

#[tokio::test]
async fn a_403_from_concur_makes_the_next_request_refresh_first() {
    let h = harness(BOB_REFRESH, false, Duration::ZERO).await;
    assert_eq!(upload_as_bob(&h).await.status, 201);
    h.sandbox.push_fault(Fault::Status {
        status: 403,
        message: "The access token has been revoked.".into(),
        retry_after: None,
    });
    let r = upload_as_bob(&h).await;
    r.problem(403, "concur_error");
    assert_eq!(h.sandbox.token_requests(), 1, "no replay of the upload");
    let r = upload_as_bob(&h).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(h.sandbox.token_requests(), 2);
}

#[tokio::test]
async fn a_dead_refresh_token_makes_the_credential_unusable_until_the_file_changes() {
    let h = harness("bob-refresh-token-revoked-9999", false, Duration::ZERO).await;
    upload_as_bob(&h).await.problem(502, "upstream_auth_failed");
    assert_eq!(h.sandbox.token_requests(), 1);
    // No retry storm: the next request fails at once, without the body being sent.
    upload_as_bob(&h).await.problem(502, "upstream_auth_failed");
    assert_eq!(h.sandbox.token_requests(), 1);
    assert!(h.uploads().is_empty(), "bob's uploads never reached Concur");
    // Other callers are served; readiness names the credential, not its secret.
    assert_eq!(h.upload("/api/image/v1.0/receipt", JPEG).await.status, 201);
    let ready = h.admin_get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert!(
        ready
            .text()
            .contains("credential acme/bob@acme.example unusable"),
        "{}",
        ready.text()
    );
    assert!(!ready.text().contains("revoked-9999"));
    let m = h.admin_get("/metrics").await.text();
    assert!(m.contains("concur_gateway_credentials_unusable 1"), "{m}");
    assert!(
        m.contains("concur_gateway_credential_refreshes_total{result=\"rejected\"} 1"),
        "{m}"
    );

    // The operator provides a valid refresh token.
    swap_credentials(&h, "v2", &credentials_with_bob(BOB_REFRESH));
    assert!(matches!(
        h.gateway.reload_credentials(),
        Reload::Replaced { .. }
    ));
    assert_eq!(upload_as_bob(&h).await.status, 201);
    assert!(!h.admin_get("/readyz").await.text().contains("unusable"));
    let m = h.admin_get("/metrics").await.text();
    assert!(m.contains("concur_gateway_credentials_unusable 0"), "{m}");
}

#[tokio::test]
async fn failing_refreshes_back_off_and_a_fixed_file_recovers() {
    // A token_url where the sandbox answers 404 (and records the request).
    let broken = |base: &str| {
        format!(
            "{}token_url = \"{base}/broken/oauth2/v0/token\"\n",
            credentials_with_bob(BOB_REFRESH)
        )
    };
    let h = harness(BOB_REFRESH, false, Duration::ZERO).await;
    swap_credentials(&h, "v2", &broken(&h.sandbox.base_url()));
    assert!(matches!(
        h.gateway.reload_credentials(),
        Reload::Replaced { .. }
    ));
    let attempts = |h: &Harness| {
        h.uploads()
            .iter()
            .filter(|r| r.path == "/broken/oauth2/v0/token")
            .count()
    };
    upload_as_bob(&h).await.problem(502, "upstream_unavailable");
    assert_eq!(attempts(&h), 1);
    // Within the backoff (at least 1 s after a first failure): no new attempt.
    upload_as_bob(&h).await.problem(502, "upstream_unavailable");
    assert_eq!(attempts(&h), 1);
    h.advance(Duration::from_secs(2));
    upload_as_bob(&h).await.problem(502, "upstream_unavailable");
    assert_eq!(attempts(&h), 2);
    // The second backoff is 1 to 2 s, the third 2 to 4 s.
    upload_as_bob(&h).await.problem(502, "upstream_unavailable");
    assert_eq!(attempts(&h), 2);
    h.advance(Duration::from_secs(2));
    upload_as_bob(&h).await;
    assert_eq!(attempts(&h), 3);
    h.advance(Duration::from_secs(1));
    upload_as_bob(&h).await;
    assert_eq!(attempts(&h), 3, "still backing off");
    let m = h.admin_get("/metrics").await.text();
    assert!(
        m.contains("concur_gateway_credential_refreshes_total{result=\"failed\"} 3"),
        "{m}"
    );
    assert_eq!(h.sandbox.token_requests(), 0);

    // The operator fixes the file: the backoff is reset, the refresh succeeds.
    swap_credentials(&h, "v3", &credentials_with_bob(BOB_REFRESH));
    assert!(matches!(
        h.gateway.reload_credentials(),
        Reload::Replaced { .. }
    ));
    assert_eq!(upload_as_bob(&h).await.status, 201);
    assert_eq!(h.sandbox.token_requests(), 1);
}
