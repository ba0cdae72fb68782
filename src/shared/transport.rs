//! Sending a sync round over the connection: the scripts, the registry commands and every
//! bucket command in one round trip (in a cluster, the same commands concurrently, pipelined
//! per shard by the client), and the replies turned into what [`round::apply`] takes.

use super::conn::Conn;
use super::{batch, layout, registry, round};
use std::collections::HashMap;

/// The scripts: a bucket new to this node is read and its counters (not its waste) merged
/// ([`layout::fresh_script`], which answers the hash as it was, for the rebase), then pushed
/// whole on the next sync; a known one has this node's fields max-merged, the merged hash
/// read back and its TTL extended ([`layout::merge_script`]); a starting node reads its
/// buckets back ([`layout::read_script`]). All trim a hash over [`layout::MAX_FIELDS`] to this
/// node's fields.
pub struct Scripts {
    pub merge: redis::Script,
    pub fresh: redis::Script,
    pub read: redis::Script,
    /// The checks of quiet buckets ([`layout::check_script`]).
    pub check: redis::Script,
    /// Every bucket of a round in one call ([`batch::batch_script`]; a single server).
    pub batch: redis::Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            merge: redis::Script::new(&layout::merge_script()),
            fresh: redis::Script::new(&layout::fresh_script()),
            read: redis::Script::new(&layout::read_script()),
            check: redis::Script::new(&layout::check_script()),
            batch: redis::Script::new(&batch::batch_script()),
        }
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}

pub(super) type HashReply = redis::RedisResult<HashMap<String, String>>;

/// Sends the registry commands and the bucket commands; returns the registry's HGETALL
/// reply (None when it failed) and one reply per op. An error for the whole round trip
/// (Redis unreachable) is an `Err`.
async fn round_trip(
    con: &mut Conn,
    registry: redis::Pipeline,
    scripts: (&Scripts, bool),
    ops: &[round::Op],
) -> redis::RedisResult<(Option<HashMap<String, String>>, Vec<round::Reply>)> {
    match con {
        Conn::Single(_) => single_round_trip(con, registry, scripts, ops).await,
        Conn::Cluster(c) => {
            let mut c = c.clone();
            cluster_round_trip(&mut c, registry, scripts.0, ops).await
        }
    }
}

/// [`round_trip`] to a single server.
async fn single_round_trip(
    con: &mut Conn,
    mut registry: redis::Pipeline,
    (scripts, load): (&Scripts, bool),
    ops: &[round::Op],
) -> redis::RedisResult<(Option<HashMap<String, String>>, Vec<round::Reply>)> {
    // One pipeline: the registry, the scripts when Redis may not have them yet (so
    // EVALSHA finds them), the buckets in calls of the batch script, one per set of field
    // names (see `batch::groups`).
    if load {
        registry.load_script(&scripts.merge).ignore();
        registry.load_script(&scripts.fresh).ignore();
        registry.load_script(&scripts.read).ignore();
        registry.load_script(&scripts.batch).ignore();
    }
    let groups = batch::groups(ops);
    for g in &groups {
        let members: Vec<&round::Op> = g.iter().map(|&i| &ops[i]).collect();
        if let Some(inv) = batch::invocation(&scripts.batch, &members) {
            registry.invoke_script(&inv);
        }
    }
    let mut out: Vec<redis::RedisResult<redis::Value>> = registry.query_async(con).await?;
    if out.is_empty() {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "empty pipeline reply",
        )));
    }
    let reg = out
        .remove(0)
        .ok()
        .and_then(|v| redis::from_redis_value(v).ok());
    // Each group's reply, put back in the order of the ops (a missing one fails its ops).
    let mut replies: Vec<Option<round::Reply>> = vec![None; ops.len()];
    let mut out = out.into_iter();
    for g in &groups {
        let reply = out.next().unwrap_or_else(|| {
            Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "no batch reply",
            )))
        });
        for (&i, r) in g.iter().zip(batch::replies(reply, g.len())) {
            replies[i] = Some(r);
        }
    }
    let missing = || {
        Err(round::Refusal {
            message: "no reply".into(),
            no_script: false,
        })
    };
    Ok((
        reg,
        replies
            .into_iter()
            .map(|r| r.unwrap_or_else(missing))
            .collect(),
    ))
}

/// [`round_trip`] to a cluster.
async fn cluster_round_trip(
    c: &mut redis::cluster_async::ClusterConnection,
    registry: redis::Pipeline,
    scripts: &Scripts,
    ops: &[round::Op],
) -> redis::RedisResult<(Option<HashMap<String, String>>, Vec<round::Reply>)> {
    // Keys span slots: commands go concurrently, pipelined per shard by the client.
    let reg = async {
        let mut c = c.clone();
        let r: redis::RedisResult<Vec<HashReply>> = registry.query_async(&mut c).await;
        r
    };
    let each = futures::future::join_all(ops.iter().map(|op| {
        let mut c = c.clone();
        async move { invocation(scripts, op).invoke_async(&mut c).await }
    }));
    let (reg, each): (_, Vec<HashReply>) = futures::join!(reg, each);
    let first = reg?
        .into_iter()
        .next()
        .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "empty registry reply")))?;
    // The registry failing to answer means the cluster is unreachable.
    if let Err(e) = &first {
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "redis cluster unreachable",
                e.to_string(),
            )));
        }
    }
    Ok((
        first.ok(),
        each.into_iter().map(|r| r.map_err(refusal)).collect(),
    ))
}

/// Sends a round: the registry (read, then this node's entry) and every bucket command, in
/// one round trip. Returns the registry as it was (None when that read failed) and one
/// reply per bucket command; an error for the whole round trip (Redis unreachable) is an
/// `Err`.
pub(super) async fn send(
    con: &mut Conn,
    ctx: &round::Context<'_>,
    (instance, scripts_loaded): (u64, bool),
    scripts: &Scripts,
    round: &round::Round,
) -> redis::RedisResult<(Option<HashMap<String, String>>, Vec<round::Reply>)> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let registry_key = registry::key(ctx.key_prefix);
    // Read before writing: another process's instance under our node_id means a twin.
    pipe.hgetall(&registry_key);
    pipe.hset(
        &registry_key,
        ctx.node_id,
        registry::entry(ctx.now_ms, instance),
    )
    .ignore();
    pipe.pexpire(&registry_key, registry::TTL_MS as i64)
        .ignore();
    round_trip(con, pipe, (scripts, !scripts_loaded), &round.ops).await
}

/// The hashes of quiet buckets to check, in order (empty: no node wrote the bucket): one
/// script call for all of them ([`layout::check_script`]), or in a cluster one per key, sent
/// concurrently (the keys span slots). `invoke_async` loads the script when Redis does not
/// have it.
pub(super) async fn check(
    con: &mut Conn,
    scripts: &Scripts,
    checks: &[round::Check],
) -> redis::RedisResult<Vec<HashMap<String, String>>> {
    let mut out = vec![HashMap::new(); checks.len()];
    if checks.is_empty() {
        return Ok(out);
    }
    match con {
        Conn::Single(_) => {
            let mut inv = scripts.check.prepare_invoke();
            for c in checks {
                inv.key(&c.redis_key);
            }
            let found: Vec<redis::Value> = inv.arg(layout::MAX_FIELDS).invoke_async(con).await?;
            fill_found(&mut out, 0, found)?;
        }
        Conn::Cluster(c) => {
            let each = futures::future::join_all(checks.iter().map(|k| {
                let mut c = c.clone();
                async move {
                    let found: redis::RedisResult<Vec<redis::Value>> = scripts
                        .check
                        .key(&k.redis_key)
                        .arg(layout::MAX_FIELDS)
                        .invoke_async(&mut c)
                        .await;
                    found
                }
            }));
            for (at, found) in each.await.into_iter().enumerate() {
                fill_found(&mut out, at, found?)?;
            }
        }
    }
    Ok(out)
}

/// Puts the (position from 1, hash) pairs of a check reply into `out`, positions counted
/// from `offset`. A reply that is not such pairs is an error (the round's checks come back).
fn fill_found(
    out: &mut [HashMap<String, String>],
    offset: usize,
    found: Vec<redis::Value>,
) -> redis::RedisResult<()> {
    let bad = || redis::RedisError::from((redis::ErrorKind::Parse, "bad check reply"));
    let mut it = found.into_iter();
    while let (Some(i), Some(flat)) = (it.next(), it.next()) {
        let i: usize = redis::from_redis_value(i).map_err(|_| bad())?;
        let flat: Vec<String> = redis::from_redis_value(flat).map_err(|_| bad())?;
        let slot = i
            .checked_sub(1)
            .and_then(|i| out.get_mut(offset + i))
            .ok_or_else(bad)?;
        let mut pairs = flat.into_iter();
        while let (Some(f), Some(v)) = (pairs.next(), pairs.next()) {
            slot.insert(f, v);
        }
    }
    Ok(())
}

/// The script call of one bucket command.
fn invocation<'s>(scripts: &'s Scripts, op: &round::Op) -> redis::ScriptInvocation<'s> {
    let script = if op.bucket.fresh {
        &scripts.fresh
    } else {
        &scripts.merge
    };
    let mut inv = script.prepare_invoke();
    inv.key(&op.redis_key)
        .arg(op.ttl_ms)
        .arg(layout::MAX_FIELDS);
    for (f, v) in &op.fields {
        inv.arg(f).arg(v);
    }
    inv
}

/// A command Redis refused, as the round sees it.
fn refusal(e: redis::RedisError) -> round::Refusal {
    round::Refusal {
        no_script: e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
            || e.to_string().contains("NOSCRIPT"),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_check_reply_fills_the_hashes_that_exist_and_a_bad_one_is_an_error() {
        let mut out = vec![HashMap::new(); 3];
        let found = vec![
            Value::Int(2),
            Value::Array(vec![bulk("n1:consumed"), bulk("4")]),
        ];
        fill_found(&mut out, 0, found).expect("pairs");
        assert!(out[0].is_empty() && out[2].is_empty());
        assert_eq!(out[1].get("n1:consumed").map(String::as_str), Some("4"));
        for bad in [
            vec![Value::Int(0), Value::Array(vec![])],
            vec![Value::Int(4), Value::Array(vec![])],
            vec![bulk("x"), Value::Array(vec![])],
            vec![Value::Int(1), Value::Int(3)],
        ] {
            assert!(fill_found(&mut out, 0, bad).is_err());
        }
    }
}
