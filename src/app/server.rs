//! Assembles the pingora server: the proxy service on the configured listeners, the admin
//! service, the housekeeping service (idle-bucket eviction, SIGHUP reload), and the sampler
//! of the status page's history.

use crate::admin::AdminApp;
use crate::app::node::Node;
use crate::http::proxy::Gateway;
use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::sync::Arc;
use std::time::Duration;

/// How often idle (full) buckets are evicted from memory.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Periodic housekeeping and the SIGHUP reload handler.
pub struct Housekeeping {
    pub node: Arc<Node>,
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; use POST /reload instead");
                None
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = std::time::Instant::now();
        let mut overflows = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {
                    // Every 10 s, or every second while the store refuses new buckets.
                    let now_overflows = self.node.store.overflows();
                    let full = now_overflows > overflows;
                    if full {
                        tracing::warn!(
                            refused = now_overflows - overflows,
                            max_buckets = self.node.runtime().config.max_buckets,
                            "bucket store full: requests for new keys were refused (429); full buckets are evicted as they refill; raise max_buckets if this is not a flood"
                        );
                        overflows = now_overflows;
                    }
                    if full || last_sweep.elapsed() >= SWEEP_INTERVAL {
                        last_sweep = std::time::Instant::now();
                        let rt = self.node.runtime();
                        let n = self.node.store.evict_idle(|name| rt.params_of(name));
                        if n > 0 {
                            tracing::debug!(evicted = n, "evicted idle buckets");
                        }
                    }
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading config");
                    // Errors are logged and counted by reload itself.
                    let _ = self.node.reload();
                }
            }
        }
    }
}

/// Samples the node's counters into its history (the status page's chart and rates).
pub struct HistorySampler {
    pub node: Arc<Node>,
}

#[async_trait]
impl BackgroundService for HistorySampler {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.node.history.run(&self.node.metrics, shutdown).await;
    }
}

/// Why the server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A TLS listener's certificate or key cannot be loaded.
    #[error("listener {addr}: TLS settings: {source}")]
    ListenerTls {
        addr: String,
        source: Box<pingora::Error>,
    },
}

/// pingora's settings for the gateway's server.
fn server_conf(cfg: &crate::config::Config) -> ServerConf {
    let first_port = cfg.listeners.first().map_or(0, |l| l.address.port());
    ServerConf {
        threads: cfg.threads,
        // Each worker thread keeps the connections it was given, as nginx's workers do:
        // pingora runs one single-threaded runtime per thread instead of tokio's work-stealing
        // scheduler (about 1,000 fewer instructions per proxied request at one thread, and no
        // task moves between CPUs).
        work_stealing: false,
        // Idle upstream connections kept for reuse, per proxy thread (pingora's default is
        // 128): a client multiplexing over HTTP/2 has far more requests in flight than that, and
        // each connection the pool could not keep was closed and another opened for a later
        // request (32 per 1,000 requests at 200 streams in flight in `scripts/bench.sh`).
        // nginx's `keepalive` and Envoy's pools are sized by the operator, HAProxy's by its
        // server limits; 1,024 covers what one thread serves at once.
        upstream_keepalive_pool_size: 1024,
        grace_period_seconds: Some(cfg.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(cfg.grace_period_seconds.max(1)),
        pid_file: format!("/tmp/tollgate-{}-{first_port}.pid", cfg.node_id),
        upgrade_sock: format!("/tmp/tollgate-{}-{first_port}.upgrade.sock", cfg.node_id),
        ..Default::default()
    }
}

/// Builds the pingora server for `node`. Fails (before any socket opens) on TLS files that
/// cannot be loaded.
pub fn build(node: Arc<Node>, upgrade: bool) -> Result<Server, BuildError> {
    let rt = node.runtime();
    let cfg = &rt.config;
    let conf = server_conf(cfg);
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Gateway { node: node.clone() },
        "tollgate proxy",
    );
    for l in &cfg.listeners {
        let addr = l.address.to_string();
        match &l.tls {
            None => proxy.add_tcp(&addr),
            Some(tls) => {
                let (cert, key) = (tls.cert.to_string_lossy(), tls.key.to_string_lossy());
                let mut settings = TlsSettings::intermediate(&cert, &key).map_err(|source| {
                    BuildError::ListenerTls {
                        addr: addr.clone(),
                        source,
                    }
                })?;
                settings.enable_h2();
                proxy.add_tls_with_settings(&addr, None, settings);
            }
        }
    }

    let mut admin = Service::new(
        "tollgate admin".to_string(),
        HttpServer::new_app(AdminApp { node: node.clone() }),
    );
    admin.add_tcp(&cfg.admin.address.to_string());
    // One thread for the admin API: pingora gives every service `threads` threads of its own
    // (its own runtime), and the admin API serves a few requests a minute.
    admin.threads = Some(1);

    let shared = cfg.redis.is_some();
    let housekeeping =
        background_service("tollgate housekeeping", Housekeeping { node: node.clone() });
    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(housekeeping);
    server.add_service(background_service(
        "tollgate history",
        HistorySampler { node: node.clone() },
    ));
    server.add_service(background_service(
        "tollgate health checks",
        crate::http::health::HealthChecks { node: node.clone() },
    ));
    if shared {
        server.add_service(background_service(
            "tollgate redis sync",
            crate::shared::sync::SyncLoop { node },
        ));
    }
    Ok(server)
}

/// Runs the server until SIGTERM/SIGINT (graceful) completes.
pub fn run(server: Server) {
    server.run(RunArgs::default());
}
