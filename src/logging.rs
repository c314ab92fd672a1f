//! Logging: JSON lines (one object per event) unless stderr is a terminal, then
//! human-readable; the level comes from `RUST_LOG` (default `info`).
//! Logs go to stderr; stdout is kept for command output (`scan`, `demo`'s curl line).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    }
}
