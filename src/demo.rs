//! `concur-gateway demo`: the gateway wired to the built-in Concur sandbox.
//!
//! Everything is generated at start and written to a temporary folder that is
//! removed on exit: the sandbox's TLS certificate, an ES256 signing key and its
//! JWKS, Concur tokens for a demo user and their company's admin, the gateway's
//! config, and a sample receipt. A JWT for the demo user (valid one hour) is
//! printed inside a ready `curl` command, on one line starting with `curl `.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::cli::{self, ExitCode};
use crate::config::Config;
use crate::gateway::Gateway;
use crate::sandbox::{Sandbox, SandboxConfig, SandboxToken};
use crate::server;

/// A sample receipt (240×320 baseline JPEG made with Pillow).
pub const SAMPLE_RECEIPT: &[u8] = include_bytes!("demo/receipt.jpg");

pub const DEMO_COMPANY: &str = "acme";
pub const DEMO_USER: &str = "alice@acme.example";
pub const ISSUER: &str = "https://idp.demo.invalid";
pub const AUDIENCE: &str = "concur-gateway";

/// A freshly generated ES256 key: its JWKS and a way to mint tokens.
pub struct SigningKey {
    pkcs8: Vec<u8>,
    pub kid: String,
    pub jwks: String,
}

impl SigningKey {
    pub fn generate(kid: &str) -> Result<Self, String> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| e.to_string())?;
        let raw = key.public_key_raw();
        if raw.len() != 65 || raw[0] != 4 {
            return Err("unexpected P-256 public key encoding".into());
        }
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
        }]});
        Ok(Self {
            pkcs8: key.serialize_der(),
            kid: kid.to_owned(),
            jwks: jwks.to_string(),
        })
    }

    /// Mints a token for `company`/`user`, valid for `ttl_s` seconds.
    pub fn mint(&self, company: &str, user: &str, ttl_s: u64) -> Result<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let claims = serde_json::json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": user, "company": company,
            "iat": now, "nbf": now, "exp": now + ttl_s,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_der(&self.pkcs8),
        )
        .map_err(|e| e.to_string())
    }
}

fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 18];
    aws_lc_rs::rand::fill(&mut bytes).expect("system randomness");
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

pub async fn run(listen: SocketAddr, admin_listen: SocketAddr) -> ExitCode {
    match setup(listen, admin_listen).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("demo: {e}");
            1
        }
    }
}

async fn setup(listen: SocketAddr, admin_listen: SocketAddr) -> Result<ExitCode, String> {
    let user_token = random_token("demo-user-");
    let admin_token = random_token("demo-admin-");
    let sandbox = Sandbox::start(
        "127.0.0.1:0".parse().expect("literal address"),
        SandboxConfig {
            tokens: vec![
                SandboxToken {
                    token: user_token.clone(),
                    company: DEMO_COMPANY.into(),
                    user: Some(DEMO_USER.into()),
                },
                SandboxToken {
                    token: admin_token.clone(),
                    company: DEMO_COMPANY.into(),
                    user: None,
                },
            ],
            ..SandboxConfig::default()
        },
    )
    .await
    .map_err(|e| format!("starting the sandbox: {e}"))?;

    let dir = tempfile::Builder::new()
        .prefix("concur-gateway-demo-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let key = SigningKey::generate("demo-es256")?;
    let write = |name: &str, contents: &[u8]| {
        std::fs::write(dir.path().join(name), contents).map_err(|e| format!("{name}: {e}"))
    };
    write("ca.pem", sandbox.ca_cert_pem().as_bytes())?;
    write("jwks.json", key.jwks.as_bytes())?;
    write("receipt.jpg", SAMPLE_RECEIPT)?;
    write(
        "credentials.toml",
        format!(
            "[[credential]]\ncompany = \"{DEMO_COMPANY}\"\nuser = \"{DEMO_USER}\"\naccess_token = \"{user_token}\"\n\n\
             [[credential]]\ncompany = \"{DEMO_COMPANY}\"\naccess_token = \"{admin_token}\"\n"
        )
        .as_bytes(),
    )?;
    let config_text = format!(
        "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin_listen}\"\ndrain_delay_s = 0\nshutdown_grace_s = 5\n\n\
         [upstream]\nbase_url = \"{}\"\nca_file = \"ca.pem\"\n\n\
         [auth]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\njwks_file = \"jwks.json\"\n\n\
         [credentials]\nfile = \"credentials.toml\"\n",
        sandbox.base_url()
    );
    write("gateway.toml", config_text.as_bytes())?;
    let config = Config::load(&dir.path().join("gateway.toml")).map_err(|e| e.to_string())?;
    let gw = Arc::new(Gateway::new(config).map_err(|ps| ps.join("; "))?);
    let (listener, admin) = cli::bind(&gw).await?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;
    let jwt = key.mint(DEMO_COMPANY, DEMO_USER, 3600)?;
    let receipt = dir.path().join("receipt.jpg");
    eprintln!(
        "\nconcur-gateway demo: gateway on http://{addr} (admin http://{admin_addr}), Concur sandbox on {}\n\
         config and keys in {} (removed on exit). Upload the sample receipt with:\n",
        sandbox.base_url(),
        dir.path().display()
    );
    // The one line a user (or a test) copies: stdout, starting with `curl `.
    #[allow(clippy::print_stdout)]
    {
        println!(
            "curl -sS -X POST http://{addr}/api/image/v1.0/receipt -H 'Authorization: Bearer {jwt}' -H 'Content-Type: image/jpeg' --data-binary @{}",
            receipt.display()
        );
    }
    let served = server::run(gw, listener, admin, server::shutdown_signal()).await;
    sandbox.shutdown().await;
    drop(dir);
    served.map_err(|e| format!("cannot start the connection workers: {e}"))?;
    Ok(0)
}
