//! Warm start: a starting node reads its own fields back from Redis before it serves, so a
//! restarted node continues its counters instead of handing its clients full buckets again.

use super::clock_check::check_clock_of;
use super::conn::{self, Conn};
use super::layout;
use super::transport::{HashReply, Scripts};
use crate::app::node::{Node, Runtime};
use crate::config::RedisConfig;
use crate::limit::bucket::Counters;
use crate::limit::store::{split_store_key, store_key};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
        let loaded = AtomicUsize::new(0);
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
            Ok::<(), String>(())
        };
        let n = || loaded.load(Ordering::Relaxed);
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

/// Reads a batch of bucket hashes (this node's fields alone from an oversized one).
async fn read_batch(
    con: &mut Conn,
    scripts: &Scripts,
    own_names: &[String],
    batch: &[String],
) -> Result<Vec<HashReply>, String> {
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
            pipe.query_async(con).await.map_err(|e| e.to_string())?
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

/// Loads one bucket's hash (Redis key `k`) into the store when it holds fields of this node
/// and its key maps back to one client key (not a digest). Returns whether it did.
fn load(
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
    let Some(spec) = rt.limits.iter().find(|l| l.name == limit) else {
        return false;
    };
    if layout::redis_key(&cfg.key_prefix, limit, key) != k {
        return false;
    }
    let (nodes, _) = layout::parse_hash(hash);
    if !nodes.contains_key(node_id) {
        return false;
    }
    let counters: BTreeMap<String, Counters> =
        nodes.iter().map(|(n, f)| (n.clone(), f.counters)).collect();
    node.store
        .preload(&store_key(limit, key), node_id, &counters, &spec.params);
    true
}
