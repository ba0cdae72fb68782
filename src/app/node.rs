//! A gateway node: the long-lived state shared by the proxy, the admin API and the
//! background services. The running config is compiled into a [`Runtime`] and swapped
//! atomically on reload (build fully, validate, then swap; on failure keep the old one).

use crate::app::history::History;
use crate::app::metrics::Metrics;
use crate::config::{Config, ConfigError, ConfigErrors, LimitId, UpstreamId};
use crate::http::upstream::{load_ca, UpstreamPool};
use crate::limit::bucket::BucketParams;
use crate::limit::clock::{Clock, OffsetClock};
use crate::limit::overrides::Own;
use crate::limit::store::{split_store_key, LimitSpec, Store};
use crate::shared::status::SyncStatus;
use arc_swap::ArcSwap;
use std::borrow::Cow;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Everything the request path needs from one config, built once per (re)load.
pub struct Runtime {
    pub config: Config,
    /// Per limit, by [`LimitId`] (see [`Runtime::limit_spec`]).
    pub limits: Vec<LimitSpec>,
    /// `RateLimit-Policy` value per limit, by [`LimitId`].
    pub policies: Vec<String>,
    /// The same, as header values (cloned per response without copying).
    pub policy_values: Vec<http::HeaderValue>,
    /// Per upstream, by [`UpstreamId`].
    pub pools: Vec<UpstreamPool>,
    /// The request path's metric handles for this config, made on first use.
    pub metrics: std::sync::OnceLock<crate::app::metrics::RequestMetrics>,
    /// When this config was loaded (the status page shows it).
    pub loaded_at: std::time::SystemTime,
}

fn error(config: &Config, path: String, message: String) -> ConfigError {
    ConfigError {
        file: config.source.clone(),
        line: None,
        col: None,
        path,
        message,
    }
}

impl Runtime {
    /// Compiles a validated config; resolves upstream server names (an unresolvable name is
    /// an error here rather than a 502 on every request).
    pub fn build(config: Config) -> Result<Runtime, ConfigErrors> {
        let mut errors = Vec::new();
        let limits: Vec<LimitSpec> = config.limits.iter().map(|l| l.spec()).collect();
        let policies: Vec<String> = limits
            .iter()
            .map(|l| crate::http::headers::policy_value(&l.name, &l.params))
            .collect();
        let mut pools = Vec::with_capacity(config.upstreams.len());
        for u in &config.upstreams {
            let mut servers = Vec::new();
            for (i, s) in u.servers.iter().enumerate() {
                match s.to_socket_addrs() {
                    Ok(addrs) => servers.extend(addrs.take(1)),
                    Err(e) => errors.push(error(
                        &config,
                        format!("upstreams.{}.servers[{i}]", u.name),
                        format!("cannot resolve {s:?}: {e}"),
                    )),
                }
            }
            let ca = match &u.ca_file {
                None => None,
                Some(path) => match load_ca(path) {
                    Ok(ca) => Some(ca),
                    Err(e) => {
                        let path = format!("upstreams.{}.ca_file", u.name);
                        errors.push(error(&config, path, e.to_string()));
                        None
                    }
                },
            };
            pools.push(UpstreamPool::new(u.name.clone(), servers, ca));
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Runtime {
            config,
            limits,
            policy_values: policies
                .iter()
                .map(|p| {
                    http::HeaderValue::from_str(p)
                        .unwrap_or_else(|_| http::HeaderValue::from_static(""))
                })
                .collect(),
            policies,
            pools,
            metrics: std::sync::OnceLock::new(),
            loaded_at: std::time::SystemTime::now(),
        })
    }

    /// The request path's metric handles (see [`crate::app::metrics::RequestMetrics`]).
    pub fn request_metrics(
        &self,
        m: &crate::app::metrics::Metrics,
    ) -> &crate::app::metrics::RequestMetrics {
        self.metrics.get_or_init(|| {
            m.request_metrics(
                self.config.routes.iter().map(|r| r.name.clone()).collect(),
                self.limits.iter().map(|l| l.name.clone()).collect(),
            )
        })
    }

    /// What the store charges for the limit `id`.
    #[inline]
    pub fn limit_spec(&self, id: LimitId) -> &LimitSpec {
        &self.limits[id.index()]
    }

    /// The limit `id`'s `RateLimit-Policy` value.
    pub fn policy(&self, id: LimitId) -> &str {
        &self.policies[id.index()]
    }

    /// The same, as a header value.
    #[inline]
    pub fn policy_value(&self, id: LimitId) -> &http::HeaderValue {
        &self.policy_values[id.index()]
    }

    /// The parameters a `RateLimit-Policy` of limit `id` must be built from per response, if
    /// the value built with the config will not do: the key's own (`own`, an override), or a
    /// monthly quota's, whose `w` changes (see [`crate::http::headers::fresh_policy`]).
    fn policy_params<'a>(
        &'a self,
        id: LimitId,
        own: Option<&'a BucketParams>,
    ) -> Option<&'a BucketParams> {
        own.or_else(|| {
            let p = &self.limit_spec(id).params;
            crate::http::headers::fresh_policy(p).then_some(p)
        })
    }

    /// The `RateLimit-Policy` value of limit `id` for a key with parameters `own` (an
    /// override) or the limit's.
    pub fn policy_for(&self, id: LimitId, own: Option<&BucketParams>) -> Cow<'_, str> {
        match self.policy_params(id, own) {
            None => Cow::Borrowed(self.policy(id)),
            Some(p) => Cow::Owned(crate::http::headers::policy_value(
                &self.limit_spec(id).name,
                p,
            )),
        }
    }

    /// The `RateLimit-Policy` value of limit `id` for a key with its own bucket `own` (an
    /// override) or the limit's, when it is not the one built with the config
    /// ([`Runtime::policy_value`]): an override's (kept with it), or a monthly quota's. `None`
    /// costs the request path no copy.
    pub fn own_policy_value(&self, id: LimitId, own: Option<&Own>) -> Option<http::HeaderValue> {
        match own {
            Some(o) => Some(crate::http::headers::own_policy_header(o)),
            None => (self.policy_params(id, None))
                .map(|p| crate::http::headers::policy_header(&self.limit_spec(id).name, p)),
        }
    }

    /// The upstream `id`'s pool.
    #[inline]
    pub fn pool(&self, id: UpstreamId) -> &UpstreamPool {
        &self.pools[id.index()]
    }

    /// The limit named `name` (names from the store's keys, or from another config).
    pub fn limit_named(&self, name: &str) -> Option<&LimitSpec> {
        self.config.limit_id(name).map(|id| self.limit_spec(id))
    }

    /// What the bucket of store key `LIMIT:KEY` is charged as: its limit, or the key's
    /// override (`None` when the limit is gone, or the key is unlimited or denied: no bucket).
    pub fn spec_at(&self, store_key: &str) -> Option<&LimitSpec> {
        let (limit, key) = split_store_key(store_key)?;
        self.limit_named(limit)?.for_key(key).bucket()
    }

    /// The parameters of the bucket of store key `LIMIT:KEY`, for the store's sweeps.
    pub fn params_of(&self, store_key: &str) -> Option<BucketParams> {
        self.spec_at(store_key).map(|l| l.params.clone())
    }
}

/// Why a node could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The metrics registry refused a metric.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// What a reload changed.
#[derive(Debug, Default)]
pub struct ReloadSummary {
    pub limits_rebased: Vec<String>,
    pub limits_removed: Vec<String>,
}

/// The node: running config, buckets, metrics.
pub struct Node {
    runtime: ArcSwap<Runtime>,
    pub store: Store,
    /// The store's clock, corrected against Redis `TIME` by the sync loop.
    pub clock: Arc<OffsetClock>,
    pub metrics: Metrics,
    /// What the sync loop knows of the shared store (shared mode).
    pub sync_status: SyncStatus,
    /// Recent traffic, sampled in the background (the status page's chart), and the start.
    pub history: History,
    pub config_path: PathBuf,
    reload_lock: Mutex<()>,
}

impl Node {
    pub fn new(
        runtime: Runtime,
        config_path: &Path,
        clock: Arc<dyn Clock>,
    ) -> Result<Node, NodeError> {
        let shared = runtime.config.redis.is_some();
        let metrics = Metrics::new(shared)?;
        let clock = Arc::new(OffsetClock::new(clock));
        let node = Node {
            runtime: ArcSwap::from_pointee(runtime),
            store: Store::new(clock.clone(), shared),
            clock,
            metrics,
            sync_status: SyncStatus::default(),
            history: History::new(),
            config_path: config_path.to_path_buf(),
            reload_lock: Mutex::new(()),
        };
        node.publish_limit_metrics(&node.runtime());
        node.store
            .set_max_buckets(node.runtime().config.max_buckets);
        node.store.set_quiet(node.runtime().config.quiet_buckets());
        Ok(node)
    }

    /// The running config (a cheap snapshot: hold it for the whole request).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// The running config's `preserve_header_case`, without taking a reference to it.
    pub fn preserve_header_case(&self) -> bool {
        self.runtime.load().config.preserve_header_case
    }

    fn publish_limit_metrics(&self, rt: &Runtime) {
        for l in &rt.limits {
            let cap = i64::try_from(l.params.capacity()).unwrap_or(i64::MAX);
            self.metrics
                .limit_capacity
                .with_label_values(&[&l.name])
                .set(cap);
            self.metrics
                .limit_refill_per_second
                .with_label_values(&[&l.name])
                .set(l.params.refill_per_second());
            if rt.config.redis.is_some() {
                // Present from the start (0 until nodes are seen to disagree), so dashboards
                // and alerts have a series for every limit.
                let drift = self.metrics.config_drift.with_label_values(&[&l.name]);
                drift.set(drift.get());
            }
        }
    }

    /// Reloads the config file: load, validate, compile, swap. On any error the running
    /// config stays and the errors are returned (and counted).
    pub fn reload(&self) -> Result<ReloadSummary, ConfigErrors> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let result = Config::load(&self.config_path).and_then(|cfg| {
            let old = self.runtime();
            check_restart_only(&old.config, &cfg)?;
            let mut new = Runtime::build(cfg)?;
            // Health and the round-robin position survive a reload that keeps a pool.
            for pool in &mut new.pools {
                if let Some(was) = old.pools.iter().find(|p| p.name == pool.name) {
                    pool.keep_state_of(was);
                }
            }
            check_shared_rates(&old, &new)?;
            Ok(new)
        });
        let new = match result {
            Ok(rt) => rt,
            Err(e) => {
                self.metrics
                    .config_reloads_total
                    .with_label_values(&["failure"])
                    .inc();
                tracing::warn!(errors = %e, "config reload failed; keeping the running config");
                return Err(e);
            }
        };
        let old = self.runtime();
        let mut summary = ReloadSummary::default();
        for ol in &old.limits {
            match new.limit_named(&ol.name) {
                // Shared buckets keep their counters: a new capacity applies at the next
                // decision (the rate cannot change, see check_shared_rates).
                Some(nl)
                    if (nl.params != ol.params || nl.overrides != ol.overrides)
                        && old.config.redis.is_none() =>
                {
                    self.store
                        .rebase(&ol.name, |k| ol.params_for(k), |k| nl.params_for(k));
                    summary.limits_rebased.push(ol.name.clone());
                }
                Some(_) => {}
                None => {
                    summary.limits_removed.push(ol.name.clone());
                    for m in [
                        &self.metrics.limit_capacity,
                        &self.metrics.buckets_active,
                        &self.metrics.bucket_tokens_min,
                    ] {
                        let _ = m.remove_label_values(&[&ol.name]);
                    }
                    let _ = self
                        .metrics
                        .limit_refill_per_second
                        .remove_label_values(&[&ol.name]);
                }
            }
        }
        self.publish_limit_metrics(&new);
        self.store.set_max_buckets(new.config.max_buckets);
        self.store.set_quiet(new.config.quiet_buckets());
        self.runtime.store(Arc::new(new));
        if !summary.limits_removed.is_empty() {
            let rt = self.runtime();
            self.store.evict_idle(|n| rt.params_of(n));
        }
        self.metrics
            .config_reloads_total
            .with_label_values(&["success"])
            .inc();
        tracing::info!(
            rebased = ?summary.limits_rebased,
            removed = ?summary.limits_removed,
            "config reloaded"
        );
        Ok(summary)
    }

    /// Refreshes the bucket gauges (called on each scrape of /metrics).
    pub fn refresh_bucket_gauges(&self) {
        let overflows = self.store.overflows();
        let seen = self.metrics.buckets_overflow_total.get();
        self.metrics
            .buckets_overflow_total
            .inc_by(overflows.saturating_sub(seen));
        let rt = self.runtime();
        let stats = self.store.stats(|n| rt.params_of(n));
        for l in &rt.limits {
            let (count, min) = stats
                .get(&l.name)
                .copied()
                .unwrap_or((0, l.params.capacity()));
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            let min = i64::try_from(min).unwrap_or(i64::MAX);
            self.metrics
                .buckets_active
                .with_label_values(&[&l.name])
                .set(count);
            self.metrics
                .bucket_tokens_min
                .with_label_values(&[&l.name])
                .set(min);
        }
    }
}

/// In shared mode a limit's refill rate cannot change on reload: the counters in Redis are
/// credited in units of that rate on every node (see `bucket`), so a new rate would turn them
/// into a different number of tokens. Use a new limit name for a new rate. Nor can its kind
/// (a quota of another window has the same rate as a token bucket of the quota's average, but
/// counts one window at a time). The same holds for each key with an override: its rate and
/// kind (the override's, or the limit's when it has none) must stay; its capacity may change,
/// and a key may become unlimited or denied, or stop being so.
fn check_shared_rates(old: &Runtime, new: &Runtime) -> Result<(), ConfigErrors> {
    if old.config.redis.is_none() {
        return Ok(());
    }
    let mut errors: Vec<ConfigError> = Vec::new();
    for nl in &new.limits {
        let Some(ol) = old.limit_named(&nl.name) else {
            continue;
        };
        if ol.params.rate_q() != nl.params.rate_q() {
            errors.push(error(
                &new.config,
                format!("limits.{}.refill_per_second", nl.name),
                "the refill rate of a shared limit cannot change on reload: give the limit a new name".into(),
            ));
            continue;
        }
        if !same_kind(&ol.params, &nl.params) {
            errors.push(error(
                &new.config,
                format!("limits.{}", nl.name),
                "the kind of a shared limit (token bucket, quota and its window, concurrency) cannot change on reload: its counters in Redis and in memory are of that kind; give the limit a new name".into(),
            ));
            continue;
        }
        let keys = ol
            .overrides
            .iter()
            .chain(nl.overrides.iter())
            .map(|(k, _)| k);
        let mut changed: Vec<&str> = keys
            .filter(|k| match (ol.params_for(k), nl.params_for(k)) {
                (Some(o), Some(n)) => o.rate_q() != n.rate_q() || !same_kind(o, n),
                _ => false,
            })
            .collect();
        changed.sort_unstable();
        changed.dedup();
        if let Some(first) = changed.first() {
            errors.push(error(
                &new.config,
                format!("limits.{}.overrides", nl.name),
                format!(
                    "the refill rate of a shared key cannot change on reload ({} key(s), first {first:?}): its counters in Redis are in units of the rate; change its capacity, or restart every node with the new rate once its hash has expired",
                    changed.len()
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Whether two parameters are of one kind of limit: a token bucket, a quota of one kind of
/// window (its counters count that window), or a concurrency limit.
fn same_kind(a: &BucketParams, b: &BucketParams) -> bool {
    a.window() == b.window() && a.is_slots() == b.is_slots()
}

/// Settings bound to sockets or to the node's identity cannot change on reload.
fn check_restart_only(old: &Config, new: &Config) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    let old_l: Vec<_> = old
        .listeners
        .iter()
        .map(|l| (l.address, l.tls.is_some()))
        .collect();
    let new_l: Vec<_> = new
        .listeners
        .iter()
        .map(|l| (l.address, l.tls.is_some()))
        .collect();
    if old_l != new_l {
        errors.push(error(
            new,
            "listeners".into(),
            "listeners cannot change on reload: restart the node".into(),
        ));
    }
    if old.admin.address != new.admin.address {
        errors.push(error(
            new,
            "admin.address".into(),
            "the admin address cannot change on reload: restart the node".into(),
        ));
    }
    if old.node_id != new.node_id {
        errors.push(error(
            new,
            "node_id".into(),
            "node_id cannot change on reload: restart the node".into(),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}
