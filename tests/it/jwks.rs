//! `auth.jwks_url`: keys fetched over HTTPS at start (readiness waits), a
//! rotation picked up through an unknown `kid`, the last good set kept while
//! the IdP is down.

use jsonwebtoken::Algorithm;

use crate::support::*;

/// Only the RSA key of the test keys, under the kid `kid`.
fn rsa_only(kid: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&keys().jwks).unwrap();
    let rsa = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kty"] == "RSA")
        .unwrap()
        .clone();
    let mut rsa = rsa;
    rsa["kid"] = kid.into();
    v["keys"] = serde_json::json!([rsa]);
    v.to_string()
}

#[tokio::test]
async fn keys_come_from_the_idp_and_follow_its_rotation() {
    let idp = JwksServer::start(&rsa_only("k1")).await;
    let h = Harness::builder()
        .jwks_from(&idp)
        .set("auth.jwks_min_refetch_s", 0.2)
        .start()
        .await;
    wait_for_async(async || h.admin_get("/readyz").await.status == 200).await;
    let c = claims("acme", "alice@acme.example");
    let post = |token: String| {
        let h = &h;
        async move {
            h.upload_with_token(&token, "/api/image/v1.0/report/R1", "image/jpeg", JPEG)
                .await
        }
    };
    assert_eq!(
        post(sign(Algorithm::RS256, Some("k1"), &c)).await.status,
        201
    );

    // The IdP rotates to a new kid: the first token naming it is refused and
    // triggers a refetch; once fetched, it verifies; the old kid is gone.
    idp.publish(Some(rsa_only("k2")));
    let before = idp.fetches();
    post(sign(Algorithm::RS256, Some("k2"), &c))
        .await
        .problem(401, "invalid_token");
    wait_for_async(async || idp.fetches() > before).await;
    wait_for_async(async || post(sign(Algorithm::RS256, Some("k2"), &c)).await.status == 201).await;
    post(sign(Algorithm::RS256, Some("k1"), &c))
        .await
        .problem(401, "invalid_token");

    // The IdP goes down: the last good key set stays in use.
    idp.publish(None);
    let before = idp.fetches();
    post(sign(Algorithm::RS256, Some("k9"), &c))
        .await
        .problem(401, "invalid_token");
    wait_for_async(async || idp.fetches() > before).await;
    assert_eq!(
        post(sign(Algorithm::RS256, Some("k2"), &c)).await.status,
        201
    );
    assert_eq!(h.admin_get("/readyz").await.status, 200);
    let m = h.admin_get("/metrics").await.text();
    assert!(
        m.contains("concur_gateway_jwks_reloads_total{result=\"error\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn not_ready_until_the_first_key_set_arrives() {
    let idp = JwksServer::start(&rsa_only("k1")).await;
    idp.publish(None);
    let h = Harness::builder().jwks_from(&idp).start().await;
    // The IdP has been asked (and has failed): still not ready.
    wait_for(|| idp.fetches() > 0).await;
    let r = h.admin_get("/readyz").await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("keys"), "{}", r.text());
    let token = sign(
        Algorithm::RS256,
        Some("k1"),
        &claims("acme", "alice@acme.example"),
    );
    h.upload_with_token(&token, "/api/image/v1.0/report/R1", "image/jpeg", JPEG)
        .await
        .problem(401, "invalid_token");
    idp.publish(Some(rsa_only("k1")));
    // The start-up retry backs off from 1 s.
    wait_for_async(async || h.admin_get("/readyz").await.status == 200).await;
}
