//! concur-gateway: an authenticating, inspecting reverse proxy in front of SAP
//! Concur's Image API v1.0.
//!
//! The request path, in order. This numbering is the one every module's
//! first line uses, and `ARCHITECTURE.md` explains it:
//!
//! 1. [`server`]: accept, the connection table ([`connections`]: the
//!    longest-idle connection makes room at the limit), the hand-off to a
//!    connection worker ([`workers`]: a thread per core), graceful drain;
//! 2. [`stack`]: the request context ([`context`], [`request_id`]), the
//!    access log and metrics, panic safety;
//! 3. [`framing`]: the RFC 9112 checks hyper leaves to us;
//! 4. [`auth`]: the caller's JWT becomes an [`auth::Identity`];
//! 5. [`rate_limit`] and [`concurrency`]: request rate and uploads in flight,
//!    per user and per company;
//! 6. [`route`]: `(method, path)` → one of four routes and a checked target ID
//!    (from here on, phases of [`proxy`]);
//! 7. [`credentials`]: the Concur credential that may act for this caller,
//!    its access token refreshed if needed;
//! 8. [`body`]: the body checked *as a stream* by the sans-IO scanners of
//!    [`inspect`] (and by ClamAV, [`clamav`]), its tail held back until the
//!    verdict; chunked bodies are [`spool`]ed to get a length;
//! 9. [`upstream`]: the exchange with Concur over TLS, on a fair slot;
//! 10. [`transform`]: Concur's XML answer becomes JSON; errors map through
//!     [`error`].
//!
//! Around it: [`config`] (typed, validated once), [`gateway`] (the shared
//! state), [`admin`] (health, readiness, metrics), [`cli`] and [`demo`],
//! [`scan_cmd`] (the `scan` command), [`sandbox`] (the Concur emulator behind
//! `demo`, the tests and the benches). With the `testkit` feature,
//! `testkit` holds the builders the tests and benches share.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod body;
pub mod clamav;
pub mod cli;
pub mod concurrency;
pub mod config;
pub mod connections;
pub mod context;
pub mod credentials;
pub mod demo;
pub mod error;
pub mod framing;
pub mod gateway;
pub mod h2_watch;
pub mod head_watch;
pub mod idempotency;
pub mod inspect;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod rate_limit;
pub mod request_id;
pub mod route;
pub mod sandbox;
pub mod scan_cmd;
pub mod sealing;
pub mod server;
pub mod spool;
pub mod stack;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod transform;
pub mod upstream;
pub mod workers;
