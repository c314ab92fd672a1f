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

/// A gateway on `idp`'s key set (refetched at most every 0.2 s), ready.
async fn gateway_on(idp: &JwksServer) -> Harness {
    let h = Harness::builder()
        .jwks_from(idp)
        .set("auth.jwks_min_refetch_s", 0.2)
        .start()
        .await;
    wait_for_async(async || h.admin_get("/readyz").await.status == 200).await;
    h
}

/// An upload carrying `token`.
async fn upload_signed(h: &Harness, token: String) -> Reply {
    h.upload_with_token(&token, "/api/image/v1.0/report/R1", "image/jpeg", JPEG)
        .await
}

#[tokio::test]
async fn keys_come_from_the_idp_and_follow_its_rotation() {
    let idp = JwksServer::start(&rsa_only("k1")).await;
    let h = gateway_on(&idp).await;
    let c = claims("acme", "alice@acme.example");
    let post = |token: String| upload_signed(&h, token);
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
    upload_signed(&h, token).await.problem(401, "invalid_token");
    idp.publish(Some(rsa_only("k1")));
    // The start-up retry backs off from 1 s.
    wait_for_async(async || h.admin_get("/readyz").await.status == 200).await;
}

/// The test key set with more keys added.
fn with_keys(extra: &[serde_json::Value]) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&keys().jwks).unwrap();
    v["keys"]
        .as_array_mut()
        .unwrap()
        .extend(extra.iter().cloned());
    v.to_string()
}

/// Keys the gateway cannot verify with (a P-521 or secp256k1 curve, a `kty`
/// it does not know, an RSA key whose `alg` is for encryption) are skipped
/// (RFC 7517 §5): the others keep working, at start and on a refetch. A
/// set of only such keys is refused and the last good one kept.
#[tokio::test]
async fn keys_the_gateway_cannot_use_are_skipped() {
    let coord = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA";
    let rsa = serde_json::from_str::<serde_json::Value>(&rsa_only("x")).unwrap()["keys"][0].clone();
    let mut oaep = rsa.clone();
    oaep["kid"] = "oaep".into();
    oaep["alg"] = "RSA-OAEP".into();
    oaep.as_object_mut().unwrap().remove("use");
    let unusable = [
        serde_json::json!({"kty": "EC", "crv": "P-521", "kid": "p521", "x": coord, "y": coord}),
        serde_json::json!({"kty": "EC", "crv": "secp256k1", "kid": "k1", "x": coord, "y": coord}),
        serde_json::json!({"kty": "FOO", "kid": "foo", "z": 1}),
        oaep,
    ];
    let idp = JwksServer::start(&with_keys(&unusable)).await;
    let h = gateway_on(&idp).await;
    let c = claims("acme", "alice@acme.example");
    let post = |token: String| upload_signed(&h, token);
    for (alg, kid) in [
        (Algorithm::ES256, "es"),
        (Algorithm::RS256, "rsa"),
        (Algorithm::EdDSA, "ed"),
    ] {
        assert_eq!(post(sign(alg, Some(kid), &c)).await.status, 201, "{kid}");
    }
    post(sign(Algorithm::ES256, Some("p521"), &c))
        .await
        .problem(401, "invalid_token");

    // Rotation to a set that adds a key under a new kid and an unusable
    // one: the new kid is picked up.
    let mut es2 =
        serde_json::from_str::<serde_json::Value>(&keys().jwks).unwrap()["keys"][0].clone();
    es2["kid"] = "es-next".into();
    let mut extra = unusable.to_vec();
    extra.push(es2);
    idp.publish(Some(with_keys(&extra)));
    wait_for_async(async || {
        post(sign(Algorithm::ES256, Some("es-next"), &c))
            .await
            .status
            == 201
    })
    .await;

    // Nothing usable: refused, the last good set stays.
    let before = idp.fetches();
    idp.publish(Some(serde_json::json!({"keys": unusable}).to_string()));
    post(sign(Algorithm::ES256, Some("unknown-kid"), &c))
        .await
        .problem(401, "invalid_token");
    wait_for_async(async || idp.fetches() > before).await;
    assert_eq!(
        post(sign(Algorithm::ES256, Some("es"), &c)).await.status,
        201
    );
}

/// Two keys published under one `kid` (an IdP mid-rotation): a token signed
/// by either verifies; by neither, it is refused.
#[tokio::test]
async fn two_keys_under_one_kid_are_both_tried() {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = other.public_key_raw();
    let other_key = jsonwebtoken::EncodingKey::from_ec_der(&other.serialize_der());
    let mut es =
        serde_json::from_str::<serde_json::Value>(&keys().jwks).unwrap()["keys"][0].clone();
    es["kid"] = "same".into();
    let twin = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "same", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65])});
    let idp = JwksServer::start(&serde_json::json!({"keys": [es, twin]}).to_string()).await;
    let h = gateway_on(&idp).await;
    let c = claims("acme", "alice@acme.example");
    let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
    header.kid = Some("same".into());
    let by_twin = jsonwebtoken::encode(&header, &c, &other_key).unwrap();
    for token in [sign(Algorithm::ES256, Some("same"), &c), by_twin] {
        let r = upload_signed(&h, token).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // Signed by a third key under the same kid: neither verifies.
    let third = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let forged = jsonwebtoken::encode(
        &header,
        &c,
        &jsonwebtoken::EncodingKey::from_ec_der(&third.serialize_der()),
    )
    .unwrap();
    upload_signed(&h, forged)
        .await
        .problem(401, "invalid_token");
}

/// A JWKS key published without `kid`, and tokens that carry one all the
/// same (some issuers do): checked against the keys without a `kid`.
#[tokio::test]
async fn a_token_kid_with_a_key_published_without_one() {
    let mut v: serde_json::Value = serde_json::from_str(&rsa_only("x")).unwrap();
    v["keys"][0].as_object_mut().unwrap().remove("kid");
    let idp = JwksServer::start(&v.to_string()).await;
    let h = gateway_on(&idp).await;
    let c = claims("acme", "alice@acme.example");
    for kid in [None, Some("issuer-key-1")] {
        let r = upload_signed(&h, sign(Algorithm::RS256, kid, &c)).await;
        assert_eq!(r.status, 201, "{kid:?}: {}", r.text());
    }
    // Signed by another key under a kid the set does not hold: refused.
    upload_signed(&h, sign(Algorithm::ES256, Some("issuer-key-1"), &c))
        .await
        .problem(401, "invalid_token");
}
