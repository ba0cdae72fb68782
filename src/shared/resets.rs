//! How the other nodes learn of a reset (`POST /reset`) at once, rather than when they next
//! charge the key: the resetting node writes its credit into the bucket's hash itself, then
//! announces the bucket in a sorted set, `{key_prefix}:resets` (store key -> Unix ms, entries
//! older than [`KEEP_MS`] trimmed, the set expiring [`KEEP_MS`] after the last reset). Every
//! sync round reads the entries since its last read alongside its other commands; each
//! announced bucket a node holds is listed for its next round, whose push reads the hash back,
//! credit included. A node that misses the announcement (Redis down meanwhile) still merges
//! the credit at its next sync of the bucket: the set only makes it prompt.

use super::conn::Conn;
use super::layout;
use super::transport::Scripts;
use crate::limit::window::WindowAt;

/// How long an announcement is kept.
pub const KEEP_MS: u64 = 600_000;

/// The sorted set of announced resets.
pub fn key(prefix: &str) -> String {
    format!("{prefix}:resets")
}

/// Writes this node's credit of the bucket (`redis_key`, field `NODE:credit`, a quota's naming
/// the window `at` it credits, max-merged like every field, TTL `ttl_ms`), then announces
/// `store_key` at `now_ms`.
pub async fn announce(
    con: &mut Conn,
    prefix: &str,
    (redis_key, ttl_ms): (&str, u64),
    (node, credit, at): (&str, u64, Option<&WindowAt>),
    (store_key, now_ms): (&str, u64),
) -> redis::RedisResult<()> {
    let scripts = Scripts::new();
    let (field, value) = layout::credit_field(node, credit, at);
    let mut merge = scripts.merge.prepare_invoke();
    merge
        .key(redis_key)
        .arg(ttl_ms)
        .arg(layout::MAX_FIELDS)
        .arg(field)
        .arg(value);
    let _: redis::Value = merge.invoke_async(con).await?;
    let set = key(prefix);
    let mut pipe = redis::pipe();
    pipe.cmd("ZADD")
        .arg(&set)
        .arg(now_ms)
        .arg(store_key)
        .ignore();
    pipe.cmd("ZREMRANGEBYSCORE")
        .arg(&set)
        .arg("-inf")
        .arg(format!("({}", now_ms.saturating_sub(KEEP_MS)))
        .ignore();
    pipe.cmd("PEXPIRE").arg(&set).arg(KEEP_MS).ignore();
    pipe.query_async(con).await
}

/// The buckets announced at or after `since_ms`, with the latest time among them.
pub async fn since(
    con: &mut Conn,
    prefix: &str,
    since_ms: u64,
) -> redis::RedisResult<(Vec<String>, Option<u64>)> {
    let found: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
        .arg(key(prefix))
        .arg(since_ms)
        .arg("+inf")
        .arg("WITHSCORES")
        .query_async(con)
        .await?;
    let latest = found.iter().map(|(_, s)| *s as u64).max();
    Ok((found.into_iter().map(|(k, _)| k).collect(), latest))
}
