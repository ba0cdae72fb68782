//! The sync loop (SPEC section 5): a background service that, every `sync_interval_ms`, makes
//! one pipelined round trip to Redis. For every bucket that changed since the last sync it
//! max-merges this node's fields into the bucket's hash ([`layout::MERGE_SCRIPT`]), reads the
//! merged hash back, refreshes the key's TTL, and merges the other nodes' counters into memory.
//! Buckets created since the last read are read first (HGETALL) and pushed on the next sync,
//! so a restarted node, or a bucket evicted from memory, continues its stored counters.
//!
//! The request path never waits on Redis. When Redis is down, nodes keep deciding from their
//! last merged view; failed pushes stay queued, and everything is pushed when Redis returns.
//! When Redis comes back empty (a new `run_id`), every bucket in memory is pushed again.
//!
//! The same round trip maintains a registry of live nodes (`{prefix}:nodes`, node -> "ms:instance")
//! that pacing uses for equal shares and that reveals two processes sharing one node_id.
//! Config drift (nodes with other parameters for a limit) is reported from the hashes read.
//!
//! Not yet here (tracked in the sync issue): Redis Cluster, `rediss://` with a custom CA,
//! clock-skew correction against Redis `TIME`.

use crate::layout;
use crate::limiter::DirtyBucket;
use crate::node::Node;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The Redis sync background service.
pub struct SyncLoop {
    pub node: Arc<Node>,
}

/// How the last round trip went.
struct Link {
    con: ConnectionManager,
    run_id: Option<String>,
    /// An error was seen since the last success: check `run_id` on recovery, log once.
    failing: bool,
    last_ok: Instant,
    /// Limits whose parameters differ between nodes, as last seen.
    drifting: std::collections::HashSet<String>,
    /// This process's identity in the registry (`NODE -> "ms:instance"`).
    instance: u64,
    /// Whether this process has written its registry entry yet.
    registered: bool,
}

impl SyncLoop {
    /// Connects lazily: a Redis that is down at startup is retried by every sync.
    fn connect(&self) -> Result<ConnectionManager, String> {
        let rt = self.node.runtime();
        let Some(cfg) = rt.config.redis.as_ref() else {
            return Err("no redis configured".into());
        };
        let url = cfg.urls.first().ok_or("no redis url")?;
        let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
        let conf = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        ConnectionManager::new_lazy_with_config(client, conf).map_err(|e| e.to_string())
    }

    async fn run_id(con: &mut ConnectionManager) -> redis::RedisResult<Option<String>> {
        let info: String = redis::cmd("INFO").arg("server").query_async(con).await?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|s| s.trim().to_string()))
    }

    /// One round trip: push and read every dirty bucket. On error the buckets are queued again.
    async fn sync_once(
        &self,
        link: &mut Link,
        script: &redis::Script,
    ) -> redis::RedisResult<usize> {
        let rt = self.node.runtime();
        let Some(cfg) = rt.config.redis.as_ref() else {
            return Ok(0);
        };
        let node_id = rt.config.node_id.as_str();
        if link.failing || link.run_id.is_none() {
            let id = Self::run_id(&mut link.con).await?;
            if link.run_id.is_some() && id != link.run_id {
                tracing::warn!(
                    "redis restarted empty (new run_id): pushing every bucket in memory again"
                );
                self.node.store.mark_all_dirty();
            }
            link.run_id = id;
        }
        let dirty: Vec<DirtyBucket> = self.node.store.take_dirty();
        // The node's clock, as the buckets see it.
        let now = u64::try_from(self.node.store.now_ns() / 1_000_000).unwrap_or(0);
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        // The registry of live nodes (for pacing shares), in the same round trip.
        let registry = format!("{}:nodes", cfg.key_prefix);
        // Read before writing: another process's instance under our node_id means a twin.
        pipe.hgetall(&registry);
        pipe.hset(&registry, node_id, format!("{now}:{:x}", link.instance))
            .ignore();
        pipe.pexpire(&registry, 3_600_000).ignore();
        pipe.load_script(script).ignore();
        let mut sent: Vec<&DirtyBucket> = Vec::with_capacity(dirty.len());
        for d in &dirty {
            let Some((limit, key)) = d.store_key.split_once(':') else {
                continue;
            };
            let Some(spec) = rt.limits.iter().find(|l| l.name == limit) else {
                continue;
            };
            let rkey = layout::redis_key(&cfg.key_prefix, limit, key);
            if d.fresh {
                pipe.hgetall(rkey);
            } else {
                let p = &spec.params;
                let ttl_ms = ttl_ms(p.seconds_to_fill(), cfg.sync_interval);
                let mut inv = script.prepare_invoke();
                inv.key(rkey).arg(ttl_ms);
                for (f, v) in layout::node_fields(node_id, &d.own, p.capacity(), p.rate_q(), now) {
                    inv.arg(f).arg(v);
                }
                pipe.invoke_script(&inv);
            }
            sent.push(d);
        }
        let started = Instant::now();
        let mut replies: Vec<redis::RedisResult<HashMap<String, String>>> =
            match pipe.query_async(&mut link.con).await {
                Ok(r) => r,
                Err(e) => {
                    self.node
                        .store
                        .requeue(dirty.into_iter().map(|d| d.store_key));
                    return Err(e);
                }
            };
        if replies.is_empty() {
            self.node
                .store
                .requeue(dirty.into_iter().map(|d| d.store_key));
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "empty pipeline reply",
            )));
        }
        let live_window = (cfg.sync_interval.as_millis() as u64)
            .saturating_mul(10)
            .max(3_000);
        let (live, twin) = match replies.remove(0) {
            Ok(reg) => {
                let parse = |v: &String| -> Option<(u64, String)> {
                    let (ms, inst) = v.split_once(':')?;
                    Some((ms.parse().ok()?, inst.to_string()))
                };
                let others = reg
                    .iter()
                    .filter(|(n, _)| n.as_str() != node_id)
                    .filter_map(|(_, v)| parse(v))
                    .filter(|(seen, _)| seen.saturating_add(live_window) >= now)
                    .count();
                let mine = format!("{:x}", link.instance);
                let twin = link.registered
                    && reg
                        .get(node_id)
                        .and_then(parse)
                        .is_some_and(|(_, inst)| inst != mine);
                (others + 1, twin)
            }
            Err(_) => (1, false),
        };
        link.registered = true;
        self.node
            .metrics
            .nodes_live
            .set(i64::try_from(live).unwrap_or(i64::MAX));
        let interval_ns = i64::try_from(cfg.sync_interval.as_nanos()).unwrap_or(i64::MAX);
        self.node
            .store
            .set_cluster(u32::try_from(live).unwrap_or(u32::MAX), interval_ns);
        self.node
            .metrics
            .sync_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        let mut bad_replies = 0usize;
        let mut requeue = Vec::new();
        let mut drift_seen: HashMap<&str, bool> = HashMap::new();
        let mut duplicate = false;
        for (d, reply) in sent.iter().zip(
            replies
                .into_iter()
                .map(Some)
                .chain(std::iter::repeat_with(|| None)),
        ) {
            match reply {
                Some(Ok(hash)) => {
                    let (nodes, _ignored) = layout::parse_hash(&hash);
                    let own = nodes.get(node_id).map(|f| f.counters);
                    let limit = d.store_key.split_once(':').map_or("", |(l, _)| l);
                    if let Some(spec) = rt.limits.iter().find(|l| l.name == limit) {
                        let p = &spec.params;
                        let differs = nodes.iter().any(|(n, f)| {
                            n.as_str() != node_id
                                && (f.capacity.is_some_and(|c| c != p.capacity())
                                    || f.rate_q.is_some_and(|r| r != p.rate_q()))
                        });
                        let e = drift_seen.entry(spec.name.as_str()).or_insert(false);
                        *e |= differs;
                    }
                    // After a push the hash holds max(stored, ours): more than we pushed means
                    // another live node writes our fields.
                    if !d.fresh
                        && own.is_some_and(|o| {
                            o.consumed > d.own.consumed || o.attempts > d.own.attempts
                        })
                    {
                        duplicate = true;
                    }
                    let counters: std::collections::BTreeMap<String, crate::bucket::Counters> =
                        nodes.iter().map(|(n, f)| (n.clone(), f.counters)).collect();
                    if let Some(spec) = rt.limits.iter().find(|l| l.name == limit) {
                        self.node.store.absorb(
                            &d.store_key,
                            node_id,
                            &counters,
                            &spec.params,
                            !d.fresh,
                        );
                    }
                }
                _ => {
                    bad_replies += 1;
                    requeue.push(d.store_key.clone());
                }
            }
        }
        for (limit, differs) in drift_seen {
            self.node
                .metrics
                .config_drift
                .with_label_values(&[limit])
                .set(i64::from(differs));
            if differs && link.drifting.insert(limit.to_string()) {
                tracing::warn!(limit, "nodes disagree on this limit's capacity or rate: compare their configs (tollgate inspect, HGETALL)");
            } else if !differs {
                link.drifting.remove(limit);
            }
        }
        if duplicate || twin {
            if self.node.metrics.duplicate_node_id.get() == 0 {
                tracing::error!(node_id, "another live node writes this node's fields: two nodes share one node_id, so the shared buckets under-count; give every node its own node_id");
            }
            self.node.metrics.duplicate_node_id.set(1);
        }
        if !requeue.is_empty() {
            self.node.store.requeue(requeue);
        }
        if bad_replies > 0 {
            // One line per sync, not per bucket; counted as a sync error.
            self.node.metrics.sync_errors_total.inc();
            tracing::warn!(
                buckets = bad_replies,
                "redis refused some bucket updates (e.g. WRONGTYPE); they are kept and retried"
            );
        }
        Ok(sent.len())
    }
}

/// A number that tells this process from another one with the same node_id.
fn instance_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// How long an idle bucket's hash lives: a full refill (after which its state says nothing),
/// plus ten sync intervals, at least ten seconds.
pub fn ttl_ms(seconds_to_fill: f64, sync_interval: Duration) -> u64 {
    let fill = if seconds_to_fill.is_finite() {
        (seconds_to_fill * 1000.0).ceil()
    } else {
        0.0
    };
    let fill = if fill < u64::MAX as f64 {
        fill as u64
    } else {
        u64::MAX
    };
    let margin = (sync_interval.as_millis() as u64)
        .saturating_mul(10)
        .max(10_000);
    fill.saturating_add(margin)
}

#[async_trait]
impl BackgroundService for SyncLoop {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(interval) = self
            .node
            .runtime()
            .config
            .redis
            .as_ref()
            .map(|r| r.sync_interval)
        else {
            return;
        };
        let script = redis::Script::new(layout::MERGE_SCRIPT);
        let mut link = match self.connect() {
            Ok(con) => Link {
                con,
                run_id: None,
                failing: false,
                last_ok: Instant::now(),
                drifting: Default::default(),
                instance: instance_id(),
                registered: false,
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot set up the redis client; running standalone");
                return;
            }
        };
        let metrics = &self.node.metrics;
        metrics.redis_up.set(0);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = shutdown.changed() => true,
                _ = tick.tick() => false,
            };
            let mut result = self.sync_once(&mut link, &script).await;
            if stopping && result.is_ok() {
                // Buckets read for the first time in that round are pushed by a second one.
                result = self.sync_once(&mut link, &script).await;
            }
            match result {
                Ok(_) => {
                    if link.failing {
                        tracing::info!("redis is reachable again; queued bucket state pushed");
                    }
                    link.failing = false;
                    link.last_ok = Instant::now();
                    metrics.redis_up.set(1);
                }
                Err(e) => {
                    metrics.sync_errors_total.inc();
                    metrics.redis_up.set(0);
                    if !link.failing {
                        tracing::warn!(error = %e, "redis sync failed; deciding from the last merged view until it returns");
                    }
                    link.failing = true;
                }
            }
            metrics
                .sync_lag_seconds
                .set(link.last_ok.elapsed().as_secs_f64());
            if stopping {
                let rt = self.node.runtime();
                if let Some(cfg) = rt.config.redis.as_ref() {
                    // Leave the registry so that the others take back this node's share.
                    let registry = format!("{}:nodes", cfg.key_prefix);
                    let _: redis::RedisResult<i64> = redis::cmd("HDEL")
                        .arg(&registry)
                        .arg(&rt.config.node_id)
                        .query_async(&mut link.con)
                        .await;
                }
                tracing::info!("final sync done; sync loop stopped");
                break;
            }
        }
    }
}
