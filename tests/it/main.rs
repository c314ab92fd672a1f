//! One integration test binary (see ARCHITECTURE.md): modules by area.

mod clamav;
mod creds;
mod gateway;
mod h2;
mod hardening;
mod idempotency;
mod inspect_img;
mod inspect_pdf;
mod jwks;
mod process;
mod sandbox;
mod store;
mod support;
mod tracing;
