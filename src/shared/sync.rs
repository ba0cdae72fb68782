//! The sync loop (`docs/shared-state.md`): a background service that, every `sync_interval_ms`, makes
//! one pipelined round trip to Redis. For every bucket that changed since the last sync it
//! max-merges this node's fields into the bucket's hash ([`layout::merge_script`]), reads the
//! merged hash back, refreshes the key's TTL, and merges the other nodes' counters into memory.
//! Buckets created since the last read are read first, their counters merged in the same
//! call ([`layout::fresh_script`]), and pushed whole on the next sync, so a restarted node, or
//! a bucket evicted from memory, continues its stored counters.
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
//! the same commands go out concurrently, pipelined per shard. What a round sends and what it
//! makes of the replies are the pure steps of [`round`]; the clock check is [`check_clock_of`].

use super::clock_check::check_clock_of;
use super::conn::{self, Conn};
use super::transport::{check, send, Scripts};
use super::{layout, registry, resets, round};
use crate::app::node::Node;
use crate::limit::store_key::StoreKey;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The Redis sync background service.
pub struct SyncLoop {
    pub node: Arc<Node>,
}

/// Syncs without a sign of another process writing this node's fields before
/// `duplicate_node_id` goes back to 0.
const TWIN_QUIET_SYNCS: u32 = 100;

/// Most buckets one round sends. A round is one pipeline, answered as a whole: a round of tens
/// of thousands of buckets outlives its interval and the Redis timeout, fails, and is sent
/// again whole, so that nothing ever goes through. What is over stays listed for the next
/// rounds: at ten rounds a second, a node syncs up to about 5,000 changed buckets a second
/// (a round of 512 takes Redis about 15 ms; 2,048 still timed out on a loaded 2-core machine).
const MAX_BUCKETS_PER_ROUND: usize = 512;

/// Most quiet buckets asked about in one round (one `EXISTS` each: see
/// [`crate::limit::store_quiet`]); the rest wait for the next.
const MAX_CHECKS_PER_ROUND: usize = 4096;

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
    /// Resets announced from this time on (Unix ms) are still to read (see [`resets`]); set
    /// by the first round, so a starting node does not replay older ones (its warm start read
    /// their credits).
    resets_since_ms: Option<u64>,
    /// The read of the announcements in flight, and where it starts.
    resets_poll: Option<(u64, ResetsPoll)>,
}

type ResetsPoll = tokio::task::JoinHandle<redis::RedisResult<(Vec<String>, Option<u64>)>>;

impl Link {
    fn new() -> Link {
        Link {
            con: None,
            run_id: None,
            failing: false,
            last_ok: Instant::now(),
            drifting: Default::default(),
            instance: registry::instance_id(),
            registered: false,
            clock_checked: None,
            refusing: false,
            oversized: Default::default(),
            scripts_loaded: false,
            twin_quiet: 0,
            resets_since_ms: None,
            resets_poll: None,
        }
    }
}

/// What the registry read by a round says (see [`registry::read`]), and the other nodes it
/// holds live (none read: `None`, every node counts).
fn read_registry(
    reg: Option<&HashMap<String, String>>,
    ctx: &round::Context<'_>,
    link: &Link,
    sync_interval: Duration,
) -> (registry::View, Option<HashSet<String>>) {
    let window = registry::live_window_ms(sync_interval);
    let Some(reg) = reg else {
        let alone = registry::View {
            live: 1,
            twin: false,
            others_synced_ms: 0,
        };
        return (alone, None);
    };
    let who = (ctx.node_id, link.instance);
    let view = registry::read(reg, who, link.registered, ctx.now_ms, window);
    let live = registry::live_others(reg, ctx.node_id, ctx.now_ms, window);
    (view, Some(live))
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
        let mut con = self.con(link).await?.clone();
        self.check_link(link, &mut con).await?;
        let ctx = round::Context {
            node_id: rt.config.node_id.as_str(),
            key_prefix: &cfg.key_prefix,
            sync_interval: cfg.sync_interval,
            limits: &rt.limits,
            now_ms: u64::try_from(self.node.store.now_ns() / 1_000_000).unwrap_or(0),
            live_others: None,
        };
        let dirty = self.node.store.take_dirty_up_to(MAX_BUCKETS_PER_ROUND);
        let round = round::build(&ctx, dirty);
        let due = (self.node.store).take_quiet_due(|n| rt.params_of(n), MAX_CHECKS_PER_ROUND);
        let checks = round::checks(&ctx, due);
        self.poll_resets(link, &con, cfg.key_prefix.as_str(), ctx.now_ms)
            .await;
        let mut check_con = con.clone();
        let started = Instant::now();
        let (sent, answers) = futures::join!(
            send(
                &mut con,
                &ctx,
                (link.instance, link.scripts_loaded),
                scripts,
                &round,
            ),
            check(&mut check_con, scripts, &checks)
        );
        let (forgotten, synced) =
            round::settle(&self.node.store, &ctx, checks, answers.map_err(|_| ()));
        let quiet = &self.node.metrics.quiet_buckets_total;
        quiet.with_label_values(&["forgotten"]).inc_by(forgotten);
        quiet.with_label_values(&["synced"]).inc_by(synced);
        let (registry, replies) = match sent {
            Ok(r) => r,
            Err(e) => {
                link.scripts_loaded = false;
                let keys = round.ops.into_iter().map(|op| op.bucket.store_key);
                self.node.store.requeue(keys);
                return Err(e);
            }
        };
        link.scripts_loaded = true;
        let (view, live_others) = read_registry(registry.as_ref(), &ctx, link, cfg.sync_interval);
        link.registered = true;
        self.set_cluster(view.live, cfg.sync_interval);
        let others_synced_ns = i64::try_from(view.others_synced_ms)
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000);
        self.node.store.set_others_synced(others_synced_ns);
        self.node
            .metrics
            .sync_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        let ctx = round::Context {
            live_others: live_others.as_ref(),
            ..ctx
        };
        let seen = round::apply(&self.node.store, &ctx, &round, replies, &link.oversized);
        let bad = seen.requeue.len();
        self.report(link, ctx.node_id, seen, view.twin, bad);
        Ok(round.ops.len())
    }

    /// Resets announced (see [`resets`]): the buckets this node holds are read back by this
    /// round. The read runs beside the rounds, in a task of its own, and its answer is taken
    /// by the first round after it came: it never holds a round up, whatever Redis does.
    async fn poll_resets(&self, link: &mut Link, con: &Conn, prefix: &str, now_ms: u64) {
        if let Some((since, task)) = link.resets_poll.take() {
            if !task.is_finished() {
                link.resets_poll = Some((since, task));
                return;
            }
            if let Ok(Ok((keys, latest))) = task.await {
                link.resets_since_ms = Some(latest.map_or(since, |l| l + 1));
                let keys = keys.iter().map(|k| StoreKey::from(k.as_str()));
                self.node.store.requeue(keys);
            }
        }
        let since = link.resets_since_ms.unwrap_or(now_ms);
        let (mut con, prefix) = (con.clone(), prefix.to_string());
        let task = tokio::spawn(async move { resets::since(&mut con, &prefix, since).await });
        link.resets_poll = Some((since, task));
    }

    /// After a failure, or on the first round: whether Redis restarted empty (then every
    /// bucket is pushed again); every few seconds: the clock check.
    async fn check_link(&self, link: &mut Link, con: &mut Conn) -> redis::RedisResult<()> {
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
        Ok(())
    }

    /// What the registry said: the live nodes, for pacing.
    fn set_cluster(&self, live: usize, sync_interval: Duration) {
        self.node.sync_status.set_live_nodes(live);
        self.node
            .metrics
            .nodes_live
            .set(i64::try_from(live).unwrap_or(i64::MAX));
        let interval_ns = i64::try_from(sync_interval.as_nanos()).unwrap_or(i64::MAX);
        self.node
            .store
            .set_cluster(u32::try_from(live).unwrap_or(u32::MAX), interval_ns);
    }

    /// Reports what a round saw: drift, twins, oversized hashes, refused updates (each
    /// logged once per incident, counted per round); lists failed buckets again.
    fn report(&self, link: &mut Link, node_id: &str, seen: round::Seen, twin: bool, bad: usize) {
        if seen.no_script {
            link.scripts_loaded = false;
        }
        for key in &seen.resized {
            link.oversized.remove(key);
            tracing::info!(bucket = %key, "the bucket's hash in redis is back to a normal size");
        }
        self.report_drift(link, &seen.drift);
        self.report_twin(link, node_id, seen.duplicate || twin);
        if !seen.requeue.is_empty() {
            self.node.store.requeue(seen.requeue);
        }
        if let Some((which, n)) = seen.too_big {
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
        if bad > 0 {
            // Counted once per sync; logged once per incident (until every bucket goes through).
            self.node.metrics.sync_errors_total.inc();
            if !link.refusing {
                tracing::warn!(
                    buckets = bad,
                    first = seen.first_error.as_deref().unwrap_or("no reply"),
                    "redis refused some bucket updates (a key that is not a hash: WRONGTYPE; a user without the rights: NOPERM); they are kept, decided locally and retried every sync"
                );
            }
            link.refusing = true;
        } else if link.refusing {
            tracing::info!("redis accepts every bucket update again");
            link.refusing = false;
        }
    }

    fn report_drift(&self, link: &mut Link, drift: &std::collections::BTreeMap<String, bool>) {
        for (limit, &differs) in drift {
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
    }

    fn report_twin(&self, link: &mut Link, node_id: &str, twin: bool) {
        let status = &self.node.sync_status;
        let gauge = &self.node.metrics.duplicate_node_id;
        if twin {
            if !status.set_duplicate_node_id(true) {
                tracing::error!(node_id, "another live node writes this node's fields: two nodes share one node_id, so the shared buckets under-count; give every node its own node_id");
            }
            gauge.set(1);
            link.twin_quiet = 0;
        } else if status.duplicate_node_id() {
            // Cleared once nothing has shown a twin for a while (a graceful upgrade runs two
            // processes with one node_id for a few seconds).
            link.twin_quiet += 1;
            if link.twin_quiet >= TWIN_QUIET_SYNCS {
                tracing::info!(node_id, "no other node writes this node's fields any more");
                status.set_duplicate_node_id(false);
                gauge.set(0);
            }
        }
    }
}

impl SyncLoop {
    /// Reports how a round (or the final flush) went: status, metrics, one log line per
    /// outage.
    fn note_result(&self, link: &mut Link, result: redis::RedisResult<usize>) {
        let metrics = &self.node.metrics;
        match result {
            Ok(_) => {
                if link.failing {
                    tracing::info!("redis is reachable again; queued bucket state pushed");
                }
                link.failing = false;
                link.last_ok = Instant::now();
                self.node.sync_status.set_connected(true);
                self.node.store.set_connected(true);
                metrics.redis_up.set(1);
            }
            Err(e) => {
                metrics.sync_errors_total.inc();
                self.node.sync_status.set_connected(false);
                self.node.store.set_connected(false);
                metrics.redis_up.set(0);
                if !link.failing {
                    tracing::warn!(error = %e, "redis sync failed; deciding from the last merged view until it returns");
                }
                link.failing = true;
            }
        }
    }

    /// A stopping node leaves the registry, so that the others take back its share.
    async fn leave_registry(&self, link: &mut Link) {
        let rt = self.node.runtime();
        if let Some(cfg) = rt.config.redis.as_ref() {
            let registry = super::registry::key(&cfg.key_prefix);
            if let Some(con) = link.con.as_mut() {
                let _: redis::RedisResult<i64> = redis::cmd("HDEL")
                    .arg(&registry)
                    .arg(&rt.config.node_id)
                    .query_async(con)
                    .await;
            }
        }
    }

    /// A bucket new to this node listed for a sync wakes the loop for a round at once (see
    /// `Store::set_waker`; the loop runs at most one early round per tenth of an interval).
    fn woken_by_new_buckets(&self) -> Arc<tokio::sync::Notify> {
        let woken = Arc::new(tokio::sync::Notify::new());
        let waker = woken.clone();
        self.node.store.set_waker(move || waker.notify_one());
        woken
    }
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
        let mut link = Link::new();
        let metrics = &self.node.metrics;
        metrics.redis_up.set(0);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let woken = self.woken_by_new_buckets();
        let mut last_round = Instant::now();
        loop {
            let early = last_round.elapsed() >= interval / 10;
            let stopping = tokio::select! {
                _ = shutdown.changed() => true,
                _ = tick.tick() => false,
                _ = woken.notified(), if early => false,
            };
            last_round = Instant::now();
            if stopping {
                // A stopping node writes everything it holds, quiet buckets included.
                self.node.store.wake_quiet();
            }
            let mut result = self.sync_once(&mut link, &scripts).await;
            // The final flush: rounds until nothing is left (a round carries at most
            // MAX_BUCKETS_PER_ROUND; buckets rebased in a round are pushed by the next).
            let mut flushes = 0;
            while stopping && result.is_ok() && flushes < 1_000 && self.node.store.has_dirty() {
                result = self.sync_once(&mut link, &scripts).await;
                flushes += 1;
            }
            self.note_result(&mut link, result);
            metrics
                .sync_lag_seconds
                .set(link.last_ok.elapsed().as_secs_f64());
            if stopping {
                self.leave_registry(&mut link).await;
                tracing::info!("final sync done; sync loop stopped");
                break;
            }
        }
    }
}
