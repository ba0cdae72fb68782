//! Prometheus metrics (`docs/metrics.md`), in a registry owned by the node rather than a global,
//! so that two nodes can run in one test process. Handles are created once; the request path
//! only increments. No label carries a client-supplied value: labels are route and limit names
//! from the config, and fixed outcome words.

use std::sync::OnceLock;

use crate::config::{LimitId, RouteId};
use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The number of `outcome` label values of `requests_total`.
pub const OUTCOMES: usize = 7;

/// The children of the labelled metrics that every request touches, for one config: a label
/// lookup hashes the label values and takes a lock on every call, so each child is looked up
/// once, on its first use (a series still appears only once it has counted something).
pub struct RequestMetrics {
    routes: Vec<String>,
    limits: Vec<String>,
    /// `requests_total{route, outcome}`, by route and outcome index.
    requests: Vec<[OnceLock<IntCounter>; OUTCOMES]>,
    /// `request_duration_seconds{route}`, by route.
    duration: Vec<OnceLock<Histogram>>,
    /// `tokens_consumed_total{limit}`, by limit.
    consumed: Vec<OnceLock<IntCounter>>,
    /// `tokens_refunded_total{limit}`, by limit.
    refunded: Vec<OnceLock<IntCounter>>,
}

impl RequestMetrics {
    /// `requests_total{route, outcome}`; `outcome` is the index of `outcome_label` in the
    /// caller's fixed list.
    pub fn requests(
        &self,
        m: &Metrics,
        route: RouteId,
        outcome: usize,
        outcome_label: &str,
    ) -> &IntCounter {
        let route = route.index();
        self.requests[route][outcome].get_or_init(|| {
            m.requests_total
                .with_label_values(&[&self.routes[route], outcome_label])
        })
    }

    /// `request_duration_seconds{route}`.
    pub fn duration(&self, m: &Metrics, route: RouteId) -> &Histogram {
        let route = route.index();
        self.duration[route].get_or_init(|| {
            m.request_duration_seconds
                .with_label_values(&[&self.routes[route]])
        })
    }

    /// `tokens_consumed_total{limit}`.
    pub fn consumed(&self, m: &Metrics, limit: LimitId) -> &IntCounter {
        self.by_limit(&self.consumed, &m.tokens_consumed_total, limit)
    }

    /// `tokens_refunded_total{limit}`.
    pub fn refunded(&self, m: &Metrics, limit: LimitId) -> &IntCounter {
        self.by_limit(&self.refunded, &m.tokens_refunded_total, limit)
    }

    /// The series of `family` for `limit`, resolved once into `cache`.
    fn by_limit<'s>(
        &'s self,
        cache: &'s [OnceLock<IntCounter>],
        family: &IntCounterVec,
        limit: LimitId,
    ) -> &'s IntCounter {
        let limit = limit.index();
        cache[limit].get_or_init(|| family.with_label_values(&[&self.limits[limit]]))
    }
}

/// Every metric the gateway exports.
pub struct Metrics {
    pub registry: Registry,
    pub requests_total: IntCounterVec,
    pub rate_limited_total: IntCounterVec,
    pub tokens_consumed_total: IntCounterVec,
    pub tokens_refunded_total: IntCounterVec,
    pub response_cost_missing_total: IntCounterVec,
    pub config_reloads_total: IntCounterVec,
    pub sync_errors_total: IntCounter,
    pub request_duration_seconds: HistogramVec,
    pub sync_duration_seconds: Histogram,
    pub buckets_active: IntGaugeVec,
    pub bucket_tokens_min: IntGaugeVec,
    pub limit_capacity: IntGaugeVec,
    pub limit_refill_per_second: GaugeVec,
    pub sync_lag_seconds: Gauge,
    pub redis_up: IntGauge,
    pub config_drift: IntGaugeVec,
    pub duplicate_node_id: IntGauge,
    pub nodes_live: IntGauge,
    pub clock_offset_seconds: Gauge,
    pub quiet_buckets_total: IntCounterVec,
    pub upstream_server_up: IntGaugeVec,
    pub buckets_overflow_total: IntCounter,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("tollgate")
}

/// Registers each metric in `registry`; the caller keeps its own handles (clones share the
/// metric).
fn register_all(registry: &Registry, metrics: Vec<Box<dyn Collector>>) -> prometheus::Result<()> {
    metrics.into_iter().try_for_each(|m| registry.register(m))
}

/// What every request counts: its outcome and duration, the limits that rejected it, the
/// tokens it took, and refusals because its bucket could not be created.
struct RequestGroup {
    requests_total: IntCounterVec,
    rate_limited_total: IntCounterVec,
    tokens_consumed_total: IntCounterVec,
    tokens_refunded_total: IntCounterVec,
    response_cost_missing_total: IntCounterVec,
    request_duration_seconds: HistogramVec,
    buckets_overflow_total: IntCounter,
}

impl RequestGroup {
    fn new() -> prometheus::Result<Self> {
        Ok(RequestGroup {
            requests_total: IntCounterVec::new(
                opts("requests_total", "Requests by route and outcome (allowed, limited, shadow_limited, no_route, upstream_error, bad_request, denied)"),
                &["route", "outcome"],
            )?,
            rate_limited_total: IntCounterVec::new(
                opts("rate_limited_total", "Requests rejected (or, for shadow limits, that would have been) by route and limit"),
                &["route", "limit"],
            )?,
            tokens_consumed_total: IntCounterVec::new(
                opts(
                    "tokens_consumed_total",
                    "Tokens taken from buckets by this node, by limit",
                ),
                &["limit"],
            )?,
            tokens_refunded_total: IntCounterVec::new(
                opts(
                    "tokens_refunded_total",
                    "Tokens given back by this node, by limit: to requests answered with one of their route's refund_statuses, and reserves settled lower by a response cost",
                ),
                &["limit"],
            )?,
            response_cost_missing_total: IntCounterVec::new(
                opts(
                    "response_cost_missing_total",
                    "Responses without a valid cost header for a limit charged by response cost (the reserve was kept), by route and limit",
                ),
                &["route", "limit"],
            )?,
            request_duration_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "request_duration_seconds",
                    "Time from request start to the end of the response, by route",
                )
                .namespace("tollgate")
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0,
                ]),
                &["route"],
            )?,
            buckets_overflow_total: IntCounter::with_opts(opts(
                "buckets_overflow_total",
                "Requests refused because their bucket could not be created: max_buckets reached",
            ))?,
        })
    }

    fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        register_all(
            registry,
            vec![
                Box::new(self.requests_total.clone()),
                Box::new(self.rate_limited_total.clone()),
                Box::new(self.tokens_consumed_total.clone()),
                Box::new(self.tokens_refunded_total.clone()),
                Box::new(self.response_cost_missing_total.clone()),
                Box::new(self.request_duration_seconds.clone()),
                Box::new(self.buckets_overflow_total.clone()),
            ],
        )
    }
}

/// The gauges of each limit: its buckets in memory, their lowest tokens, and its configured
/// capacity and refill rate.
struct BucketGauges {
    buckets_active: IntGaugeVec,
    bucket_tokens_min: IntGaugeVec,
    limit_capacity: IntGaugeVec,
    limit_refill_per_second: GaugeVec,
}

impl BucketGauges {
    fn new() -> prometheus::Result<Self> {
        Ok(BucketGauges {
            buckets_active: IntGaugeVec::new(
                opts("buckets_active", "Buckets held in memory, by limit"),
                &["limit"],
            )?,
            bucket_tokens_min: IntGaugeVec::new(
                opts(
                    "bucket_tokens_min",
                    "Lowest whole tokens among the active buckets of a limit",
                ),
                &["limit"],
            )?,
            limit_capacity: IntGaugeVec::new(
                opts("limit_capacity", "Configured capacity of a limit"),
                &["limit"],
            )?,
            limit_refill_per_second: GaugeVec::new(
                opts(
                    "limit_refill_per_second",
                    "Configured refill rate of a limit",
                ),
                &["limit"],
            )?,
        })
    }

    fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        register_all(
            registry,
            vec![
                Box::new(self.buckets_active.clone()),
                Box::new(self.bucket_tokens_min.clone()),
                Box::new(self.limit_capacity.clone()),
                Box::new(self.limit_refill_per_second.clone()),
            ],
        )
    }
}

/// The Redis sync: its errors, round trips and lag, whether Redis answers, and what the
/// shared registry tells about the other nodes and the clock.
struct SyncMetrics {
    sync_errors_total: IntCounter,
    sync_duration_seconds: Histogram,
    sync_lag_seconds: Gauge,
    redis_up: IntGauge,
    config_drift: IntGaugeVec,
    duplicate_node_id: IntGauge,
    nodes_live: IntGauge,
    clock_offset_seconds: Gauge,
    quiet_buckets_total: IntCounterVec,
}

impl SyncMetrics {
    fn new() -> prometheus::Result<Self> {
        Ok(SyncMetrics {
            sync_errors_total: IntCounter::with_opts(opts(
                "sync_errors_total",
                "Failed synchronisations with Redis",
            ))?,
            sync_duration_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "sync_duration_seconds",
                    "Duration of one Redis sync round trip",
                )
                .namespace("tollgate")
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                ]),
            )?,
            sync_lag_seconds: Gauge::with_opts(opts(
                "sync_lag_seconds",
                "Seconds since the last successful Redis sync",
            ))?,
            redis_up: IntGauge::with_opts(opts("redis_up", "1 while Redis answers, 0 otherwise"))?,
            config_drift: IntGaugeVec::new(
                opts(
                    "config_drift",
                    "1 while nodes disagree on a limit's parameters",
                ),
                &["limit"],
            )?,
            duplicate_node_id: IntGauge::with_opts(opts(
                "duplicate_node_id",
                "1 while another live node writes this node's fields (two nodes share one node_id)",
            ))?,
            nodes_live: IntGauge::with_opts(opts(
                "nodes_live",
                "Nodes seen in the shared registry recently, this one included (pacing shares)",
            ))?,
            clock_offset_seconds: Gauge::with_opts(opts(
                "clock_offset_seconds",
                "Correction applied to this host's clock to follow Redis TIME (positive: host behind)",
            ))?,
            quiet_buckets_total: {
                let v = IntCounterVec::new(
                    opts(
                        "quiet_buckets_total",
                        "Quiet buckets checked against Redis, by result: forgotten (no node wrote the key) or synced (another node did)",
                    ),
                    &["result"],
                )?;
                for r in ["forgotten", "synced"] {
                    v.with_label_values(&[r]);
                }
                v
            },
        })
    }

    fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        register_all(
            registry,
            vec![
                Box::new(self.sync_errors_total.clone()),
                Box::new(self.sync_duration_seconds.clone()),
                Box::new(self.sync_lag_seconds.clone()),
                Box::new(self.redis_up.clone()),
                Box::new(self.config_drift.clone()),
                Box::new(self.duplicate_node_id.clone()),
                Box::new(self.nodes_live.clone()),
                Box::new(self.clock_offset_seconds.clone()),
                Box::new(self.quiet_buckets_total.clone()),
            ],
        )
    }
}

/// `config_reloads_total{result}`, with both results present from the start.
fn config_reloads() -> prometheus::Result<IntCounterVec> {
    let reloads = IntCounterVec::new(
        opts(
            "config_reloads_total",
            "Config reloads by result (success, failure)",
        ),
        &["result"],
    )?;
    for r in ["success", "failure"] {
        reloads.with_label_values(&[r]);
    }
    Ok(reloads)
}

/// `upstream_server_up{upstream, server}`.
fn upstream_server_up() -> prometheus::Result<IntGaugeVec> {
    IntGaugeVec::new(
        opts(
            "upstream_server_up",
            "1 while an upstream server passes its health checks (servers with checks only)",
        ),
        &["upstream", "server"],
    )
}

impl Metrics {
    /// Creates and registers every metric. The Redis sync metrics are exported only with
    /// `shared` (a standalone node has no Redis to be down). Fails only on a programming error
    /// (a duplicate name), which the test suite would catch.
    pub fn new(shared: bool) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = RequestGroup::new()?;
        requests.register(&registry)?;
        let buckets = BucketGauges::new()?;
        buckets.register(&registry)?;
        let sync = SyncMetrics::new()?;
        if shared {
            sync.register(&registry)?;
        }
        let config_reloads_total = config_reloads()?;
        registry.register(Box::new(config_reloads_total.clone()))?;
        let upstream_server_up = upstream_server_up()?;
        registry.register(Box::new(upstream_server_up.clone()))?;
        Ok(Metrics {
            registry,
            requests_total: requests.requests_total,
            rate_limited_total: requests.rate_limited_total,
            tokens_consumed_total: requests.tokens_consumed_total,
            tokens_refunded_total: requests.tokens_refunded_total,
            response_cost_missing_total: requests.response_cost_missing_total,
            config_reloads_total,
            sync_errors_total: sync.sync_errors_total,
            request_duration_seconds: requests.request_duration_seconds,
            sync_duration_seconds: sync.sync_duration_seconds,
            buckets_active: buckets.buckets_active,
            bucket_tokens_min: buckets.bucket_tokens_min,
            limit_capacity: buckets.limit_capacity,
            limit_refill_per_second: buckets.limit_refill_per_second,
            sync_lag_seconds: sync.sync_lag_seconds,
            redis_up: sync.redis_up,
            config_drift: sync.config_drift,
            duplicate_node_id: sync.duplicate_node_id,
            nodes_live: sync.nodes_live,
            clock_offset_seconds: sync.clock_offset_seconds,
            quiet_buckets_total: sync.quiet_buckets_total,
            upstream_server_up,
            buckets_overflow_total: requests.buckets_overflow_total,
        })
    }

    /// Handles for the request path of one config (see [`RequestMetrics`]): the route names
    /// by [`RouteId`], the limit names by [`LimitId`].
    pub fn request_metrics(&self, routes: Vec<String>, limits: Vec<String>) -> RequestMetrics {
        RequestMetrics {
            requests: routes.iter().map(|_| Default::default()).collect(),
            duration: routes.iter().map(|_| OnceLock::new()).collect(),
            consumed: limits.iter().map(|_| OnceLock::new()).collect(),
            refunded: limits.iter().map(|_| OnceLock::new()).collect(),
            routes,
            limits,
        }
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for I/O; a metric family error would be a bug.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        buf
    }
}
