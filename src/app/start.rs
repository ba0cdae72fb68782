//! `tollgate run`: load the config, build the node, read its buckets back from Redis, and
//! serve until stopped.

use crate::app::node::Node;
use crate::cli::check::load;
use crate::config::{mask_url_password, Config};
use crate::limit::clock::{Clock, SkewedClock, SystemClock};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
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

/// Binds every listener and the admin address for a moment, one after the other, and lets them
/// go: a port already taken, an address this host does not have or a port it may not open is
/// reported here, with what to do, rather than by pingora (which retries a taken port for 30 s
/// and then panics in the service's thread).
fn check_addresses(config: &Config, file: &Path) -> Result<(), String> {
    let listeners = config
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (l.address, format!("listeners[{i}].address")));
    let admin = std::iter::once((config.admin.address, "admin.address".to_string()));
    for (addr, key) in listeners.chain(admin) {
        TcpListener::bind(addr).map_err(|e| cannot_listen(addr, &e, &key, file))?;
    }
    Ok(())
}

/// Why `addr` (the config's `key` in `file`) cannot be listened on, and what to do.
fn cannot_listen(addr: SocketAddr, e: &std::io::Error, key: &str, file: &Path) -> String {
    let file = file.display();
    let port = addr.port();
    let (problem, fix) = match e.kind() {
        ErrorKind::AddrInUse => (
            "address already in use".to_string(),
            format!("another process holds the port (see `ss -ltnp 'sport = :{port}'`): stop it, or change {key} in {file}"),
        ),
        ErrorKind::AddrNotAvailable => (
            "no interface of this host has that address".to_string(),
            format!("use one it has (`ip -brief address`), or 0.0.0.0 for all, in {key} in {file}"),
        ),
        ErrorKind::PermissionDenied => (
            "permission denied".to_string(),
            format!("a port below 1024 needs root or the CAP_NET_BIND_SERVICE capability: grant it, or change {key} in {file} to a port from 1024 up"),
        ),
        _ => (e.to_string(), format!("check {key} in {file}")),
    };
    format!("cannot listen on {addr}: {problem}: {fix}")
}

/// Reads the shared buckets back before serving (a restart continues its counters). A Redis
/// that cannot be reached does not stop the start: the node serves degraded, limiting from its
/// own view, and syncs once Redis answers (`docs/shared-state.md`); the log says what to check.
fn read_back(node: &Node, config: &Path) {
    let rt = node.runtime();
    let Some(redis) = rt.config.redis.as_ref() else {
        return;
    };
    let e = match crate::shared::warm_start::warm_start(node) {
        Ok(n) => {
            tracing::info!(buckets = n, "read this node's buckets back from redis");
            return;
        }
        Err(e) => e,
    };
    let Some(why) = e.unreachable() else {
        tracing::warn!(error = %e, "could not read this node's buckets back from redis before serving; each is read on first use instead");
        return;
    };
    let first = redis.urls.first().map_or("", String::as_str);
    let url = mask_url_password(first);
    let password = if url == first {
        ""
    } else {
        " (with the password for ***)"
    };
    let cli = if redis.cluster {
        "redis-cli -c"
    } else {
        "redis-cli"
    };
    tracing::warn!(
        error = %e,
        "redis unreachable at start ({why}): serving degraded, limiting from this node's own view; it syncs once redis answers. Check redis.url in {} ({url}), that redis-server runs there, and `{cli} -u '{url}' ping`{password} from this host",
        config.display()
    );
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
    if !upgrade {
        // An upgrade takes the sockets over from the running process, which holds them.
        if let Err(e) = check_addresses(&rt.config, config) {
            eprintln!("tollgate: {e}");
            return ExitCode::FAILURE;
        }
    }
    let node = match Node::new(rt, config, host_clock()) {
        Ok(n) => Arc::new(n),
        Err(e) => {
            eprintln!("tollgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    read_back(&node, config);
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
