//! One bucket read from the shared store on demand (`POST /reset` on a key this node may not
//! hold yet): the warm start's read and load, for a single key.

use super::conn;
use super::layout;
use super::transport::Scripts;
use super::warm_start::{load, read_batch};
use crate::app::node::Node;

/// Reads the hash of `key` under the limit named `limit` and merges it into the store, so
/// that a decision made next (a reset) starts from what every node has written. `Ok(false)`
/// when the store holds nothing for it (a full bucket) or the key is kept as a digest;
/// `Err` when Redis cannot be read.
pub async fn load_key(node: &Node, limit: &str, key: &str) -> Result<bool, String> {
    let rt = node.runtime();
    let Some(cfg) = rt.config.redis.as_ref() else {
        return Ok(false);
    };
    let redis_key = layout::redis_key(&cfg.key_prefix, limit, key);
    let mut con = conn::open(cfg).await.map_err(|e| e.to_string())?;
    let own_names = layout::node_field_names(&rt.config.node_id);
    let scripts = Scripts::new();
    let timeout = cfg.timeout;
    let read = read_batch(
        &mut con,
        &scripts,
        &own_names,
        std::slice::from_ref(&redis_key),
    );
    let replies = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| format!("no answer from Redis within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    match replies.into_iter().next() {
        Some(Ok(hash)) => Ok(load(node, &rt, cfg, &redis_key, &hash)),
        Some(Err(e)) => Err(e.to_string()),
        None => Ok(false),
    }
}
