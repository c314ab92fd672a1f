//! The command line: `serve`, `demo`, `sandbox`, `check-config`, `scan`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

use crate::config::{self, Config};
use crate::gateway::Gateway;
use crate::sandbox::{OAuthClient, Sandbox, SandboxConfig, SandboxToken};
use crate::server;

#[derive(Debug, Parser)]
#[command(
    name = "concur-gateway",
    version,
    about = "Authenticating, inspecting reverse proxy for SAP Concur's Image API v1.0"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// The TOML configuration file.
        #[arg(long, env = "CONCUR_GATEWAY_CONFIG")]
        config: PathBuf,
    },
    /// Run the gateway wired to the built-in Concur sandbox, with generated keys
    /// and certificates, and print a ready `curl` command. Needs no files.
    Demo {
        #[arg(long, default_value = config::DEFAULT_LISTEN)]
        listen: SocketAddr,
        #[arg(long, default_value = config::DEFAULT_ADMIN_LISTEN)]
        admin_listen: SocketAddr,
    },
    /// Run only the Concur sandbox (an emulator of the Image v1.0 POST API).
    Sandbox {
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// PEM certificate chain to serve (default: a generated self-signed one).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Write the certificate to trust (PEM) to this file.
        #[arg(long)]
        cert_out: Option<PathBuf>,
        /// A token Concur accepts: TOKEN=COMPANY/USER, or TOKEN=COMPANY for the
        /// company's admin token. Repeatable.
        #[arg(long = "token", value_name = "TOKEN=COMPANY[/USER]")]
        tokens: Vec<String>,
        /// An OAuth2 client of the token endpoint (refresh-token grant, the
        /// refresh token rotated on every use): CLIENT_ID:CLIENT_SECRET:
        /// REFRESH_TOKEN=COMPANY/USER, or =COMPANY for a company-level client.
        /// Repeatable. (Neither the id nor the secret may hold a `:`.)
        #[arg(
            long = "oauth-client",
            value_name = "ID:SECRET:REFRESH_TOKEN=COMPANY[/USER]"
        )]
        oauth_clients: Vec<String>,
    },
    /// Validate everything `serve` would load; exit 0, or print every problem and exit 2.
    CheckConfig {
        #[arg(long, env = "CONCUR_GATEWAY_CONFIG")]
        config: PathBuf,
    },
    /// Run the body inspection on files.
    Scan {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// The declared type (default: sniffed from the first bytes).
        #[arg(long)]
        content_type: Option<String>,
        /// Pixel limit, as `inspect.max_pixels` (more than 0).
        #[arg(long, default_value_t = config::DEFAULT_MAX_PIXELS,
              value_parser = clap::value_parser!(u64).range(1..))]
        max_pixels: u64,
        /// Accept PDF active content, as `inspect.pdf_active_content = "allow"`.
        #[arg(long)]
        allow_pdf_active_content: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Process exit status.
pub type ExitCode = i32;

pub async fn serve(config: PathBuf) -> ExitCode {
    let config = match Config::load(&config) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!("config: {e}");
            }
            return 2;
        }
    };
    let gw = match Gateway::new(config) {
        Ok(gw) => Arc::new(gw),
        Err(problems) => {
            for p in &problems {
                tracing::error!("{p}");
            }
            return 2;
        }
    };
    let (listener, admin) = match bind(&gw).await {
        Ok(pair) => pair,
        Err(e) => {
            tracing::error!("{e}");
            return 1;
        }
    };
    if let Err(e) = server::run(gw, listener, admin, server::shutdown_signal()).await {
        tracing::error!("cannot start the connection workers (server.workers): {e}");
        return 1;
    }
    0
}

/// Binds the gateway and admin listeners, logging the addresses.
pub async fn bind(gw: &Gateway) -> Result<(TcpListener, TcpListener), String> {
    let listen = gw.config.server.listen;
    let admin_listen = gw.config.server.admin_listen;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let admin = TcpListener::bind(admin_listen)
        .await
        .map_err(|e| format!("cannot listen on {admin_listen} (admin): {e}"))?;
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        admin = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        upstream = %gw.config.upstream.base_url,
        "concur-gateway listening"
    );
    Ok((listener, admin))
}

pub async fn check_config(path: PathBuf, out: &mut dyn std::io::Write) -> ExitCode {
    let problems = crate::gateway::check(&path).await;
    if problems.is_empty() {
        let _ = writeln!(out, "{}: OK", path.display());
        0
    } else {
        for p in &problems {
            let _ = writeln!(out, "{}: {p}", path.display());
        }
        2
    }
}

/// Parses `TOKEN=COMPANY[/USER]`.
pub fn parse_token(spec: &str) -> Result<SandboxToken, String> {
    let (token, owner) = spec
        .split_once('=')
        .ok_or_else(|| "expected TOKEN=COMPANY[/USER]".to_owned())?;
    let (company, user) = match owner.split_once('/') {
        Some((c, u)) => (c, Some(u.to_owned())),
        None => (owner, None),
    };
    if token.is_empty() || company.is_empty() {
        return Err("expected TOKEN=COMPANY[/USER]".into());
    }
    Ok(SandboxToken {
        token: token.to_owned(),
        company: company.to_owned(),
        user,
    })
}

/// `--oauth-client ID:SECRET:REFRESH_TOKEN=COMPANY[/USER]`.
pub fn parse_oauth_client(spec: &str) -> Result<OAuthClient, String> {
    const EXPECTED: &str = "expected CLIENT_ID:CLIENT_SECRET:REFRESH_TOKEN=COMPANY[/USER]";
    let (client, owner) = spec.rsplit_once('=').ok_or(EXPECTED)?;
    let mut parts = client.splitn(3, ':');
    let (Some(client_id), Some(client_secret), Some(refresh_token)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(EXPECTED.into());
    };
    let owner = parse_token(&format!("x={owner}")).map_err(|_| EXPECTED.to_owned())?;
    if [client_id, client_secret, refresh_token]
        .iter()
        .any(|s| s.is_empty())
    {
        return Err(EXPECTED.into());
    }
    Ok(OAuthClient {
        client_id: client_id.to_owned(),
        client_secret: client_secret.to_owned(),
        company: owner.company,
        user: owner.user,
        refresh_token: refresh_token.to_owned(),
    })
}

pub async fn sandbox(
    listen: SocketAddr,
    tls: Option<(PathBuf, PathBuf)>,
    cert_out: Option<PathBuf>,
    tokens: Vec<String>,
    oauth_clients: Vec<String>,
) -> ExitCode {
    let mut config = SandboxConfig::default();
    for spec in &tokens {
        match parse_token(spec) {
            Ok(t) => config.tokens.push(t),
            Err(e) => {
                eprintln!("--token: {e}");
                return 2;
            }
        }
    }
    for spec in &oauth_clients {
        match parse_oauth_client(spec) {
            Ok(c) => config.oauth_clients.push(c),
            Err(e) => {
                eprintln!("--oauth-client: {e}");
                return 2;
            }
        }
    }
    if let Some((cert, key)) = tls {
        match (
            std::fs::read_to_string(&cert),
            std::fs::read_to_string(&key),
        ) {
            (Ok(c), Ok(k)) => config.tls = Some((c, k)),
            (Err(e), _) => {
                eprintln!("{}: {e}", cert.display());
                return 2;
            }
            (_, Err(e)) => {
                eprintln!("{}: {e}", key.display());
                return 2;
            }
        }
    }
    let sandbox = match Sandbox::start(listen, config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sandbox: cannot listen on {listen}: {e}");
            return 1;
        }
    };
    if let Some(path) = cert_out
        && let Err(e) = std::fs::write(&path, sandbox.ca_cert_pem())
    {
        eprintln!("{}: {e}", path.display());
        return 2;
    }
    tracing::info!(base_url = %sandbox.base_url(), "Concur sandbox listening");
    server::shutdown_signal().await;
    sandbox.shutdown().await;
    0
}

pub fn scan(
    files: &[PathBuf],
    content_type: Option<&str>,
    json: bool,
    max_pixels: u64,
    allow_pdf_active_content: bool,
) -> ExitCode {
    use crate::inspect::{ActiveContentPolicy, Limits};
    let limits = Limits {
        max_pixels,
        pdf_active_content: if allow_pdf_active_content {
            ActiveContentPolicy::Allow
        } else {
            ActiveContentPolicy::Reject
        },
        ..Limits::default()
    };
    crate::scan_cmd::run_scan(
        files,
        content_type,
        json,
        &limits,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_refuses_a_pixel_limit_of_zero() {
        use clap::Parser as _;
        let args =
            |n: &str| Cli::try_parse_from(["concur-gateway", "scan", "--max-pixels", n, "f"]);
        let err = args("0").unwrap_err();
        assert_eq!(err.exit_code(), 2, "a usage error");
        assert!(args("1").is_ok());
    }

    #[test]
    fn oauth_clients_on_the_command_line() {
        let c = parse_oauth_client("id-1:s3cret:rt:with:colons=acme/bob@acme.example").unwrap();
        assert_eq!(
            (
                c.client_id.as_str(),
                c.client_secret.as_str(),
                c.refresh_token.as_str()
            ),
            ("id-1", "s3cret", "rt:with:colons")
        );
        assert_eq!(
            (c.company.as_str(), c.user.as_deref()),
            ("acme", Some("bob@acme.example"))
        );
        let c = parse_oauth_client("id:s:rt=globex").unwrap();
        assert_eq!((c.company.as_str(), c.user), ("globex", None));
        for bad in [
            "id:s:rt",
            "id:s=acme",
            "id::rt=acme",
            ":s:rt=acme",
            "id:s:=acme",
            "id:s:rt=",
        ] {
            assert!(parse_oauth_client(bad).is_err(), "{bad}");
        }
    }
}
