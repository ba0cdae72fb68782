//! Active health checks of upstream servers: every `health_check.interval_ms`, an HTTP GET of
//! `health_check.path` to each server of a pool (over TLS with the pool's SNI and CA when the
//! upstream uses TLS). A server that fails (connect error, timeout, status other than 2xx) is
//! skipped by the round robin until a check passes again; when every server of a pool is down
//! the gateway answers 503 with a JSON body. Transitions are logged once, and
//! `upstream_server_up{upstream,server}` shows the state.
//!
//! Besides these checks, a request whose connection to a server fails is retried once on the
//! next healthy server of the pool (see `proxy`), so a server that dies between two checks
//! costs no failed request.

use crate::app::node::{Node, Runtime};
use crate::config::UpstreamId;
use crate::http::upstream::UpstreamPool;
use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::lb::Backend;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the service looks for checks that are due.
const TICK: Duration = Duration::from_millis(100);

/// The health-check background service.
pub struct HealthChecks {
    pub node: Arc<Node>,
}

/// A pool's checker and when it last ran.
struct Due {
    check: Arc<HttpHealthCheck>,
    interval: Duration,
    last: Option<Instant>,
}

/// The checker of the upstream `id`'s pool, from its config; None when the upstream has no
/// `health_check`.
fn checker(rt: &Runtime, id: UpstreamId) -> Option<Due> {
    let up = rt.config.upstream(id);
    let hc = up.health_check.as_ref()?;
    let p = rt.pool(id);
    // The Host header: the TLS name when there is one, else the first server as configured.
    let host = if up.sni.is_empty() {
        up.servers.first().cloned().unwrap_or_default()
    } else {
        up.sni.clone()
    };
    let mut check = HttpHealthCheck::new(&host, up.tls);
    let mut req = RequestHeader::build("GET", hc.path.as_bytes(), None).ok()?;
    req.insert_header("Host", host.as_str()).ok()?;
    req.insert_header("User-Agent", "tollgate-health-check")
        .ok()?;
    check.req = req;
    // Bounded by the upstream's timeouts and by the interval, so checks never pile up.
    let cap = hc.interval.max(Duration::from_millis(100));
    check.peer_template.sni = up.sni.clone();
    check.peer_template.options.connection_timeout = Some(up.connect_timeout.min(cap));
    check.peer_template.options.total_connection_timeout = Some(up.connect_timeout.min(cap));
    check.peer_template.options.read_timeout = Some(up.read_timeout.min(cap));
    check.peer_template.options.ca = p.ca.clone();
    Some(Due {
        check: Arc::new(check),
        interval: hc.interval,
        last: None,
    })
}

impl HealthChecks {
    /// Checks every server of `pool` concurrently and records the results.
    async fn run(&self, pool: &UpstreamPool, check: &HttpHealthCheck) {
        let results = futures::future::join_all(pool.servers.iter().map(|addr| async move {
            let backend = match Backend::new(&addr.to_string()) {
                Ok(b) => b,
                Err(e) => return Err(e.to_string()),
            };
            check.check(&backend).await.map_err(|e| e.to_string())
        }))
        .await;
        for (i, r) in results.into_iter().enumerate() {
            let server = pool.servers[i].to_string();
            let up = r.is_ok();
            if pool.set_health(i, up) {
                match &r {
                    Ok(()) => {
                        tracing::info!(upstream = %pool.name, %server, "upstream server passes its health check again")
                    }
                    Err(e) => {
                        tracing::warn!(upstream = %pool.name, %server, error = %e, "upstream server fails its health check: skipped until it passes")
                    }
                }
            }
            self.node
                .metrics
                .upstream_server_up
                .with_label_values(&[&pool.name, &server])
                .set(i64::from(up));
        }
    }
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut current: Option<Arc<Runtime>> = None;
        let mut due: HashMap<UpstreamId, Due> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {}
            }
            let rt = self.node.runtime();
            if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &rt)) {
                // A reload built new pools (a pool that kept its servers kept their health):
                // new checkers, checked right away.
                due = rt
                    .config
                    .upstreams_by_id()
                    .filter_map(|(id, _)| checker(&rt, id).map(|d| (id, d)))
                    .collect();
                current = Some(rt.clone());
            }
            let now = Instant::now();
            let ready: Vec<UpstreamId> = due
                .iter()
                .filter(|(_, d)| d.last.is_none_or(|l| now.duration_since(l) >= d.interval))
                .map(|(&i, _)| i)
                .collect();
            if ready.is_empty() {
                continue;
            }
            let runs = ready.iter().filter_map(|id| {
                let d = due.get_mut(id)?;
                d.last = Some(now);
                let check = d.check.clone();
                let pool = rt.pool(*id);
                Some(async move { self.run(pool, &check).await })
            });
            futures::future::join_all(runs).await;
        }
    }
}
