//! Logging: `TOLLGATE_LOG` takes a tracing filter (default `info`), `TOLLGATE_LOG_FORMAT=json`
//! switches to JSON lines. pingora logs through the `log` crate; it is bridged into tracing so
//! that there is one stream.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once (tracing-subscriber's `tracing-log` feature installs the
/// `log` bridge with it); later calls do nothing.
pub fn init() {
    let filter = EnvFilter::try_from_env("TOLLGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("TOLLGATE_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
