//! `tollgate run`: load the config, build the node, read its buckets back from Redis, and
//! serve until stopped.

use crate::app::node::Node;
use crate::cli::check::load;
use crate::limit::clock::{Clock, SkewedClock, SystemClock};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// The host's clock. `TOLLGATE_CLOCK_OFFSET_MS` shifts it, to simulate a host whose clock is
/// wrong (tests and drills of the clock-skew correction; see `docs/shared-state.md`, "Clocks").
fn host_clock() -> Arc<dyn Clock> {
    let skew_ms: i64 = std::env::var("TOLLGATE_CLOCK_OFFSET_MS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if skew_ms == 0 {
        return Arc::new(SystemClock);
    }
    tracing::warn!(
        skew_ms,
        "TOLLGATE_CLOCK_OFFSET_MS: this process's clock is shifted on purpose"
    );
    Arc::new(SkewedClock {
        base: Arc::new(SystemClock),
        skew_ns: skew_ms.saturating_mul(1_000_000),
    })
}

/// `tollgate run -c FILE [--upgrade]`.
pub fn command(config: &Path, upgrade: bool) -> ExitCode {
    crate::app::logging::init();
    let rt = match load(config) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let listeners: Vec<String> = rt
        .config
        .listeners
        .iter()
        .map(|l| {
            format!(
                "{}{}",
                l.address,
                if l.tls.is_some() { " (tls)" } else { "" }
            )
        })
        .collect();
    let redis_mode = match &rt.config.redis {
        None => "standalone (no redis)".to_string(),
        Some(r) => format!(
            "redis {}",
            r.urls
                .iter()
                .map(|u| crate::config::mask_url_password(u))
                .collect::<Vec<_>>()
                .join(",")
        ),
    };
    tracing::info!(
        node_id = %rt.config.node_id,
        listeners = %listeners.join(", "),
        admin = %rt.config.admin.address,
        redis = %redis_mode,
        config = %config.display(),
        "tollgate starting"
    );
    let node = match Node::new(rt, config, host_clock()) {
        Ok(n) => Arc::new(n),
        Err(e) => {
            eprintln!("tollgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    if node.runtime().config.redis.is_some() {
        // Read this node's counters back before serving (a restart continues them).
        match crate::shared::warm_start::warm_start(&node) {
            Ok(n) => {
                tracing::info!(buckets = n, "read this node's buckets back from redis")
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read this node's buckets back from redis before serving; each is read on first use instead")
            }
        }
    }
    let server = match crate::app::server::build(node, upgrade) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tollgate: {e}");
            return ExitCode::from(2);
        }
    };
    crate::app::server::run(server);
    tracing::info!("tollgate stopped");
    ExitCode::SUCCESS
}
