//! Warm start: a starting node reads the shared buckets back from Redis before it serves, so a
//! restarted node continues its counters instead of handing its clients full buckets again, and
//! a node joining a busy cluster starts from what the others spent.

use super::clock_check::check_clock_of;
use super::conn::{self, Conn, ConnError};
use super::layout;
use super::transport::{HashReply, Scripts};
use crate::app::node::{Node, Runtime};
use crate::config::RedisConfig;
use crate::limit::bucket::Counters;
use crate::limit::store::{split_store_key, store_key};
use crate::limit::window::WindowAt;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long a starting node may spend reading its own fields back before it serves.
const WARM_START_BUDGET: Duration = Duration::from_secs(3);

/// Why the warm start stopped short; `loaded` buckets were loaded before it did.
#[derive(Debug, thiserror::Error)]
pub enum WarmStartError {
    /// No runtime to run the reads on.
    #[error("cannot start a runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// No connection to Redis.
    #[error("{source} (after loading {loaded} buckets)")]
    Connect { source: ConnError, loaded: usize },
    /// A read failed (the clock check, SCAN, or a batch of hashes).
    #[error("{source} (after loading {loaded} buckets)")]
    Redis {
        source: redis::RedisError,
        loaded: usize,
    },
    /// The time budget ran out; the buckets not read yet are read on first use.
    #[error("time budget of {budget:?} spent (after loading {loaded} buckets; the rest are read on first use)")]
    OutOfTime { budget: Duration, loaded: usize },
}

impl WarmStartError {
    /// When Redis could not be reached at all (rather than refusing a command or answering
    /// slowly enough to spend the budget), why, in words that say where to look.
    pub fn unreachable(&self) -> Option<&'static str> {
        const TIMEOUT: &str = "no answer within redis.timeout_ms: check the network and firewalls";
        let e = match self {
            WarmStartError::Connect { source, .. } => match source {
                ConnError::Cluster(e) | ConnError::Manager(e) => e,
                ConnError::ClusterTimeout => return Some(TIMEOUT),
                _ => return None,
            },
            WarmStartError::Redis { source, .. } => source,
            _ => return None,
        };
        let text = e.to_string();
        if e.is_connection_refusal() {
            Some("connection refused: nothing listens at that host and port")
        } else if text.contains("lookup address") || text.contains("not known") {
            Some("the host name does not resolve")
        } else if e.is_timeout() {
            Some(TIMEOUT)
        } else if e.is_io_error() || e.is_connection_dropped() {
            Some("the connection failed")
        } else {
            None
        }
    }
}

/// A step of the warm start that failed, before the count of loaded buckets is added.
enum Failed {
    Connect(ConnError),
    Redis(redis::RedisError),
}

impl From<redis::RedisError> for Failed {
    fn from(e: redis::RedisError) -> Self {
        Failed::Redis(e)
    }
}

impl Failed {
    fn after(self, loaded: usize) -> WarmStartError {
        match self {
            Failed::Connect(source) => WarmStartError::Connect { source, loaded },
            Failed::Redis(source) => WarmStartError::Redis { source, loaded },
        }
    }
}

/// Reads the shared buckets back before it serves (`docs/shared-state.md`: a restarted node
/// continues its counters, a joining one sees what the others spent). Corrects the clock
/// against Redis first, then SCANs the bucket keys (every primary of a cluster), reads them in
/// batches, and loads each bucket that holds counted fields into memory, rebased on what the
/// store holds. Bounded by a time budget and by
/// `max_buckets`; what it does not reach (and keys stored as `h:` digests, which cannot be
/// mapped back to a client key) is read on first use, before the bucket's first push.
/// Returns the number of buckets loaded, or why it could not.
pub fn warm_start(node: &Node) -> Result<usize, WarmStartError> {
    let rt = node.runtime();
    let Some(cfg) = rt.config.redis.as_ref() else {
        return Ok(0);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(WarmStartError::Runtime)?;
    let max = usize::try_from(rt.config.max_buckets).unwrap_or(usize::MAX);
    runtime.block_on(async {
        let loaded = AtomicUsize::new(0);
        let work = async {
            let mut con = conn::open(cfg).await.map_err(Failed::Connect)?;
            check_clock_of(node, &mut con).await?;
            let prefix = format!("{}:", cfg.key_prefix);
            let keys = con.scan(&format!("{prefix}*"), max).await?;
            let scripts = Scripts::new();
            let own_names = layout::node_field_names(&rt.config.node_id);
            for batch in keys.chunks(512) {
                let replies = read_batch(&mut con, &scripts, &own_names, batch).await?;
                for (k, reply) in batch.iter().zip(replies) {
                    if let Ok(hash) = reply {
                        if load(node, &rt, cfg, k, &hash) {
                            loaded.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            Ok::<(), Failed>(())
        };
        let n = || loaded.load(Ordering::Relaxed);
        match tokio::time::timeout(WARM_START_BUDGET, work).await {
            Ok(Ok(())) => Ok(n()),
            Ok(Err(e)) => Err(e.after(n())),
            Err(_) => Err(WarmStartError::OutOfTime {
                budget: WARM_START_BUDGET,
                loaded: n(),
            }),
        }
    })
}

/// Reads a batch of bucket hashes (this node's fields alone from an oversized one).
pub(super) async fn read_batch(
    con: &mut Conn,
    scripts: &Scripts,
    own_names: &[String],
    batch: &[String],
) -> redis::RedisResult<Vec<HashReply>> {
    let invs: Vec<redis::ScriptInvocation<'_>> = batch
        .iter()
        .map(|k| {
            let mut inv = scripts.read.prepare_invoke();
            inv.key(k).arg(layout::MAX_FIELDS);
            for f in own_names {
                inv.arg(f);
            }
            inv
        })
        .collect();
    Ok(match con {
        Conn::Single(_) => {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            pipe.load_script(&scripts.read).ignore();
            for inv in &invs {
                pipe.invoke_script(inv);
            }
            pipe.query_async(con).await?
        }
        Conn::Cluster(c) => {
            futures::future::join_all(invs.iter().map(|inv| {
                let mut c = c.clone();
                async move { inv.invoke_async(&mut c).await }
            }))
            .await
        }
    })
}

/// Loads one bucket's hash (Redis key `k`) into the store when it holds counted fields and its
/// key maps back to one client key (not a digest). Returns whether it did.
pub(super) fn load(
    node: &Node,
    rt: &Runtime,
    cfg: &RedisConfig,
    k: &str,
    hash: &HashMap<String, String>,
) -> bool {
    let node_id = rt.config.node_id.as_str();
    let Some((limit, key)) = k
        .strip_prefix(cfg.key_prefix.as_str())
        .and_then(|rest| rest.strip_prefix(':'))
        .and_then(split_store_key)
    else {
        return false;
    };
    let Some(spec) = rt.limit_named(limit).and_then(|l| l.for_key(key).bucket()) else {
        return false;
    };
    if layout::redis_key(&cfg.key_prefix, limit, key) != k {
        return false;
    }
    // A quota's fields of the window the node is in (its clock is corrected by now).
    let window = spec
        .params
        .window()
        .map(|w| WindowAt::of(w, node.store.now_ns()));
    let (nodes, _) = layout::parse_hash_at(hash, window.as_ref());
    let counters: BTreeMap<String, Counters> = nodes
        .iter()
        .filter(|(_, f)| f.counted)
        .map(|(n, f)| (n.clone(), f.counters))
        .collect();
    if counters.is_empty() {
        return false;
    }
    let sk = store_key(limit, key);
    let window = window.map(|w| w.index);
    node.store.preload(&sk, node_id, (&counters, window), spec);
    let (own_credit, others_credit) = layout::credits(&nodes, node_id);
    node.store
        .absorb_credit((&sk, &spec.params), own_credit, others_credit, window);
    true
}
