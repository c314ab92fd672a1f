//! concur-gateway: an authenticating, inspecting reverse proxy in front of SAP
//! Concur's Image API v1.0.
//!
//! The request path, in order (see `stack.rs` for the layers, `proxy.rs` for
//! the terminal service):
//!
//! 1. [`stack`]: request id, access log and metrics, panic safety;
//! 2. [`auth`]: the caller's JWT becomes an [`auth::Identity`] (company, user);
//! 3. [`rate_limit`]: keyed limits per user and per company;
//! 4. [`route`]: `(method, path)` → one of four routes and a checked target ID;
//! 5. [`credentials`]: the Concur token that may act for this caller and route;
//! 6. [`inspect`]: the body is validated *as a stream*, its tail held back until
//!    the verdict is known; chunked bodies are [`spool`]ed to get a length;
//!    with `[scan]`, the same stream goes to ClamAV ([`scan`]) and the tail
//!    also waits for clamd's verdict;
//! 7. [`upstream`]: the request to Concur over TLS;
//! 8. [`transform`]: Concur's XML answer becomes JSON; errors map through [`error`].
//!
//! Around it: [`config`] (typed, validated once), [`server`] (accept loop,
//! graceful drain), [`admin`] (health, readiness, metrics), [`sandbox`] (the
//! Concur emulator behind `demo`, the tests and the benches).
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cli;
pub mod concurrency;
pub mod config;
pub mod connections;
pub mod credentials;
pub mod demo;
pub mod error;
pub mod framing;
pub mod gateway;
pub mod inspect;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod rate_limit;
pub mod request_id;
pub mod route;
pub mod sandbox;
pub mod scan;
pub mod server;
pub mod spool;
pub mod stack;
pub mod transform;
pub mod upstream;
