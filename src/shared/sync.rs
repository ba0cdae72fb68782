//! The sync loop (`docs/shared-state.md`): a background service that, every `sync_interval_ms`, makes
//! one pipelined round trip to Redis. For every bucket that changed since the last sync it
//! max-merges this node's fields into the bucket's hash ([`layout::merge_script`]), reads the
//! merged hash back, refreshes the key's TTL, and merges the other nodes' counters into memory.
//! Buckets created since the last read are read first ([`layout::read_script`]) and pushed on the next sync,
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
//! Redis Cluster and TLS are the connection's business ([`crate::shared::conn`]): in a cluster
//! the same commands go out concurrently, pipelined per shard.
//!
//! # Clocks
//!
//! Refill is computed from time, on every node, against the same counters: a node whose clock
//! runs Δ ahead sees Δ x rate more tokens than the others. Every few seconds the loop reads
//! Redis `TIME` three times, takes the sample with the shortest round trip, and estimates this
//! host's offset as `TIME - (sent + received) / 2` (error at most half that round trip). The
//! store's clock is corrected by the estimate whenever it moves by more than its error (and at
//! least 1 ms), so every node refills on Redis's time line; an offset over 50 ms is logged,
//! and `clock_offset_seconds` shows it. In a cluster, `TIME` comes from one of the primaries.

use crate::app::node::Node;
use crate::limit::store::DirtyBucket;
use crate::shared::conn::{self, Conn};
use crate::shared::layout;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The Redis sync background service.
pub struct SyncLoop {
    pub node: Arc<Node>,
}

/// Syncs without a sign of another process writing this node's fields before
/// `duplicate_node_id` goes back to 0.
const TWIN_QUIET_SYNCS: u32 = 100;

/// How often the clock offset against Redis `TIME` is measured.
const CLOCK_CHECK_EVERY: Duration = Duration::from_secs(5);

/// How the last round trip went.
struct Link {
    /// None until a cluster connection could be made (a standalone one is lazy).
    con: Option<Conn>,
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
    /// When the clock offset was last measured.
    clock_checked: Option<Instant>,
    /// Redis refused some bucket updates in the last sync (logged once per incident).
    refusing: bool,
    /// The scripts were loaded on this connection and Redis has not restarted since (a
    /// NOSCRIPT reply or any failure loads them again).
    scripts_loaded: bool,
    /// Syncs in a row without a sign of a twin (see [`TWIN_QUIET_SYNCS`]).
    twin_quiet: u32,
    /// Buckets whose hash was over [`layout::MAX_FIELDS`] when last synced (logged once each).
    oversized: std::collections::HashSet<String>,
}

/// The two scripts of a round trip: a bucket new to this node is read first (and pushed on
/// the next sync); a known one has this node's fields max-merged, the merged hash read back
/// and its TTL extended. Both trim a hash over [`layout::MAX_FIELDS`] to this node's fields.
pub struct Scripts {
    pub merge: redis::Script,
    pub read: redis::Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            merge: redis::Script::new(&layout::merge_script()),
            read: redis::Script::new(&layout::read_script()),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

type HashReply = redis::RedisResult<HashMap<String, String>>;

/// Sends the registry commands and the bucket commands; returns the registry's HGETALL
/// reply followed by one reply per op. An error for the whole round trip (Redis unreachable)
/// is an `Err`.
async fn round_trip(
    con: &mut Conn,
    mut registry: redis::Pipeline,
    (scripts, load): (&Scripts, bool),
    ops: &[redis::ScriptInvocation<'_>],
) -> redis::RedisResult<Vec<HashReply>> {
    match con {
        Conn::Single(_) => {
            // One pipeline: the registry, the scripts when Redis may not have them yet (so
            // EVALSHA finds them), every bucket.
            if load {
                registry.load_script(&scripts.merge).ignore();
                registry.load_script(&scripts.read).ignore();
            }
            for inv in ops {
                registry.invoke_script(inv);
            }
            registry.query_async(con).await
        }
        Conn::Cluster(c) => {
            // Keys span slots: commands go concurrently, pipelined per shard by the client.
            let reg = async {
                let mut c = c.clone();
                let r: redis::RedisResult<Vec<HashReply>> = registry.query_async(&mut c).await;
                r
            };
            let each = futures::future::join_all(ops.iter().map(|inv| {
                let mut c = c.clone();
                async move { inv.invoke_async(&mut c).await }
            }));
            let (reg, each): (_, Vec<HashReply>) = futures::join!(reg, each);
            let mut out = reg?;
            out.truncate(1);
            if out.is_empty() {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "empty registry reply",
                )));
            }
            // The registry failing to answer means the cluster is unreachable.
            if let Some(Err(e)) = out.first() {
                if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "redis cluster unreachable",
                        e.to_string(),
                    )));
                }
            }
            out.extend(each);
            Ok(out)
        }
    }
}

impl SyncLoop {
    /// The connection, made on first use (a standalone one connects lazily anyway).
    async fn con<'l>(&self, link: &'l mut Link) -> redis::RedisResult<&'l mut Conn> {
        if link.con.is_none() {
            let rt = self.node.runtime();
            let Some(cfg) = rt.config.redis.as_ref() else {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "no redis configured",
                )));
            };
            let con = conn::connect(cfg).await.map_err(|e| {
                redis::RedisError::from((redis::ErrorKind::Io, "cannot connect", e))
            })?;
            link.con = Some(con);
        }
        link.con.as_mut().ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Client, "no redis connection"))
        })
    }

    /// One round trip: push and read every dirty bucket. On error the buckets are queued again.
    async fn sync_once(&self, link: &mut Link, scripts: &Scripts) -> redis::RedisResult<usize> {
        let rt = self.node.runtime();
        let Some(cfg) = rt.config.redis.as_ref() else {
            return Ok(0);
        };
        let node_id = rt.config.node_id.as_str();
        let mut con = self.con(link).await?.clone();
        let con = &mut con;
        if link.failing || link.run_id.is_none() {
            let id = con.run_ids().await?;
            if link.run_id.is_some() && id != link.run_id {
                tracing::warn!(
                    "redis restarted empty (new run_id): pushing every bucket in memory again"
                );
                self.node.store.mark_all_dirty();
                link.scripts_loaded = false;
            }
            link.run_id = id;
        }
        if link
            .clock_checked
            .is_none_or(|t| t.elapsed() >= CLOCK_CHECK_EVERY)
        {
            check_clock_of(&self.node, con).await?;
            link.clock_checked = Some(Instant::now());
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
        let mut sent: Vec<&DirtyBucket> = Vec::with_capacity(dirty.len());
        let mut ops: Vec<redis::ScriptInvocation<'_>> = Vec::with_capacity(dirty.len());
        let own_names = layout::node_field_names(node_id);
        for d in &dirty {
            let Some((limit, key)) = d.store_key.split_once(':') else {
                continue;
            };
            let Some(spec) = rt.limits.iter().find(|l| l.name == limit) else {
                continue;
            };
            let rkey = layout::redis_key(&cfg.key_prefix, limit, key);
            if d.fresh {
                let mut inv = scripts.read.prepare_invoke();
                inv.key(rkey).arg(layout::MAX_FIELDS);
                for f in &own_names {
                    inv.arg(f);
                }
                ops.push(inv);
            } else {
                let p = &spec.params;
                let ttl_ms = p.state_ttl_ms(cfg.sync_interval);
                let mut inv = scripts.merge.prepare_invoke();
                inv.key(rkey).arg(ttl_ms).arg(layout::MAX_FIELDS);
                for (f, v) in layout::node_fields(node_id, &d.own, p.capacity(), p.rate_q(), now) {
                    inv.arg(f).arg(v);
                }
                ops.push(inv);
            }
            sent.push(d);
        }
        let started = Instant::now();
        let mut replies: Vec<HashReply> =
            match round_trip(con, pipe, (scripts, !link.scripts_loaded), &ops).await {
                Ok(r) => {
                    link.scripts_loaded = true;
                    r
                }
                Err(e) => {
                    link.scripts_loaded = false;
                    self.node
                        .store
                        .requeue(dirty.into_iter().map(|d| d.store_key));
                    return Err(e);
                }
            };
        drop(ops);
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
        let mut first_error: Option<String> = None;
        let mut too_big: Option<(String, String)> = None;
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
                    if let Some(n) = hash.get(layout::TOO_BIG) {
                        too_big.get_or_insert_with(|| (d.store_key.clone(), n.clone()));
                    } else if link.oversized.remove(&d.store_key) {
                        tracing::info!(bucket = %d.store_key, "the bucket's hash in redis is back to a normal size");
                    }
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
                    let counters: std::collections::BTreeMap<
                        String,
                        crate::limit::bucket::Counters,
                    > = nodes.iter().map(|(n, f)| (n.clone(), f.counters)).collect();
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
                Some(Err(e)) => {
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                        || e.to_string().contains("NOSCRIPT")
                    {
                        // Redis lost its scripts (SCRIPT FLUSH, failover): load them again.
                        link.scripts_loaded = false;
                    }
                    bad_replies += 1;
                    if first_error.is_none() {
                        first_error = Some(format!("{}: {e}", d.store_key));
                    }
                    requeue.push(d.store_key.clone());
                }
                None => {
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
            link.twin_quiet = 0;
        } else if self.node.metrics.duplicate_node_id.get() == 1 {
            // Cleared once nothing has shown a twin for a while (a graceful upgrade runs two
            // processes with one node_id for a few seconds).
            link.twin_quiet += 1;
            if link.twin_quiet >= TWIN_QUIET_SYNCS {
                tracing::info!(node_id, "no other node writes this node's fields any more");
                self.node.metrics.duplicate_node_id.set(0);
            }
        }
        if !requeue.is_empty() {
            self.node.store.requeue(requeue);
        }
        if let Some((which, n)) = too_big {
            // Counted once per sync that meets one; logged once per key until it is repaired.
            self.node.metrics.sync_errors_total.inc();
            if link.oversized.insert(which.clone()) {
                tracing::warn!(
                    bucket = %which,
                    fields = %n,
                    max_fields = layout::MAX_FIELDS,
                    "a bucket's hash in redis has far more fields than nodes write: reading only this node's fields from it and deciding that bucket locally; delete or repair the key"
                );
            }
        }
        if bad_replies > 0 {
            // Counted once per sync; logged once per incident (until every bucket goes through).
            self.node.metrics.sync_errors_total.inc();
            if !link.refusing {
                tracing::warn!(
                    buckets = bad_replies,
                    first = first_error.as_deref().unwrap_or("no reply"),
                    "redis refused some bucket updates (a key that is not a hash: WRONGTYPE; a user without the rights: NOPERM); they are kept, decided locally and retried every sync"
                );
            }
            link.refusing = true;
        } else if link.refusing {
            tracing::info!("redis accepts every bucket update again");
            link.refusing = false;
        }
        Ok(sent.len())
    }
}

/// Measures this node's clock against Redis `TIME` (three samples, the shortest round
/// trip wins) and corrects the store's clock when the estimate moved by more than its
/// error: refill is computed from time, so every node must agree on it.
async fn check_clock_of(node: &Node, con: &mut Conn) -> redis::RedisResult<()> {
    let clock = &node.clock;
    let mut samples = Vec::with_capacity(3);
    for _ in 0..3 {
        let t0 = clock.base_ns();
        let r = con.time_ns().await?;
        let t1 = clock.base_ns();
        samples.push((t0, t1, r));
    }
    if let Some((offset, error)) = crate::limit::clock::estimate_offset(&samples) {
        let old = clock.offset_ns();
        if (offset - old).abs() > error.max(1_000_000) {
            clock.set_offset_ns(offset);
            if (offset - old).abs() > 50_000_000 {
                tracing::warn!(
                    offset_ms = offset / 1_000_000,
                    error_ms = error / 1_000_000,
                    "this host's clock differs from redis TIME: refill now follows redis's clock (check NTP on this host)"
                );
            }
        }
        node.metrics
            .clock_offset_seconds
            .set(clock.offset_ns() as f64 / 1e9);
    }
    Ok(())
}

/// How long a starting node may spend reading its own fields back before it serves.
const WARM_START_BUDGET: Duration = Duration::from_secs(3);

/// Reads this node's fields back before it serves (`docs/shared-state.md`: a restarted node continues
/// its counters). Corrects the clock against Redis first, then SCANs the bucket keys (every
/// primary of a cluster), reads them in batches, and loads each bucket that holds fields of
/// this node into memory, rebased on what the store holds. Bounded by a time budget and by
/// `max_buckets`; what it does not reach (and keys stored as `h:` digests, which cannot be
/// mapped back to a client key) is read on first use, before the bucket's first push.
/// Returns the number of buckets loaded, or why it could not.
pub fn warm_start(node: &Node) -> Result<usize, String> {
    let rt = node.runtime();
    let Some(cfg) = rt.config.redis.as_ref() else {
        return Ok(0);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let max = usize::try_from(rt.config.max_buckets).unwrap_or(usize::MAX);
    runtime.block_on(async {
        let loaded = std::sync::atomic::AtomicUsize::new(0);
        let work = async {
            let mut con = conn::connect(cfg).await?;
            check_clock_of(node, &mut con)
                .await
                .map_err(|e| e.to_string())?;
            let prefix = format!("{}:", cfg.key_prefix);
            let keys = con
                .scan(&format!("{prefix}*"), max)
                .await
                .map_err(|e| e.to_string())?;
            let node_id = rt.config.node_id.as_str();
            let scripts = Scripts::new();
            let own_names = layout::node_field_names(node_id);
            for batch in keys.chunks(512) {
                let invs: Vec<redis::ScriptInvocation<'_>> = batch
                    .iter()
                    .map(|k| {
                        let mut inv = scripts.read.prepare_invoke();
                        inv.key(k).arg(layout::MAX_FIELDS);
                        for f in &own_names {
                            inv.arg(f);
                        }
                        inv
                    })
                    .collect();
                let replies: Vec<HashReply> = match &mut con {
                    Conn::Single(_) => {
                        let mut pipe = redis::pipe();
                        pipe.ignore_errors();
                        pipe.load_script(&scripts.read).ignore();
                        for inv in &invs {
                            pipe.invoke_script(inv);
                        }
                        pipe.query_async(&mut con).await.map_err(|e| e.to_string())?
                    }
                    Conn::Cluster(c) => {
                        futures::future::join_all(invs.iter().map(|inv| {
                            let mut c = c.clone();
                            async move { inv.invoke_async(&mut c).await }
                        }))
                        .await
                    }
                };
                for (k, reply) in batch.iter().zip(replies) {
                    let Ok(hash) = reply else { continue };
                    let Some((limit, key)) = k
                        .strip_prefix(&prefix)
                        .and_then(|rest| rest.split_once(':'))
                    else {
                        continue;
                    };
                    let Some(spec) = rt.limits.iter().find(|l| l.name == limit) else {
                        continue;
                    };
                    // Only keys that map back to one client key (not digests).
                    if layout::redis_key(&cfg.key_prefix, limit, key) != *k {
                        continue;
                    }
                    let (nodes, _) = layout::parse_hash(&hash);
                    if !nodes.contains_key(node_id) {
                        continue;
                    }
                    let counters: std::collections::BTreeMap<String, crate::limit::bucket::Counters> =
                        nodes.iter().map(|(n, f)| (n.clone(), f.counters)).collect();
                    let store_key = crate::limit::store::store_key(limit, key);
                    node.store
                        .preload(&store_key, node_id, &counters, &spec.params);
                    loaded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Ok::<(), String>(())
        };
        let n = || loaded.load(std::sync::atomic::Ordering::Relaxed);
        match tokio::time::timeout(WARM_START_BUDGET, work).await {
            Ok(Ok(())) => Ok(n()),
            Ok(Err(e)) => Err(format!("{e} (after loading {} buckets)", n())),
            Err(_) => Err(format!(
                "time budget of {:?} spent (after loading {} buckets; the rest are read on first use)",
                WARM_START_BUDGET,
                n()
            )),
        }
    })
}

/// A number that tells this process from another one with the same node_id.
fn instance_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
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
        let scripts = Scripts::new();
        let mut link = Link {
            con: None,
            run_id: None,
            failing: false,
            last_ok: Instant::now(),
            drifting: Default::default(),
            instance: instance_id(),
            registered: false,
            clock_checked: None,
            refusing: false,
            oversized: Default::default(),
            scripts_loaded: false,
            twin_quiet: 0,
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
            let mut result = self.sync_once(&mut link, &scripts).await;
            if stopping && result.is_ok() {
                // Buckets read for the first time in that round are pushed by a second one.
                result = self.sync_once(&mut link, &scripts).await;
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
                    if let Some(con) = link.con.as_mut() {
                        let _: redis::RedisResult<i64> = redis::cmd("HDEL")
                            .arg(&registry)
                            .arg(&rt.config.node_id)
                            .query_async(con)
                            .await;
                    }
                }
                tracing::info!("final sync done; sync loop stopped");
                break;
            }
        }
    }
}
