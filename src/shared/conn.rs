//! The connection to Redis, standalone or Redis Cluster, plain or TLS (`rediss://`, with an
//! optional private CA from `redis.ca_file`), with the connect and response timeouts of the
//! config. Shared by the sync loop, the startup read and `tollgate inspect`.
//!
//! - Standalone: a `ConnectionManager`, created lazily (a Redis that is down at startup is
//!   retried by every use) that reconnects by itself with backoff.
//! - Cluster: a cluster connection (seed URLs from `redis.urls`), created on first use and
//!   again after a failure to connect. A pipeline whose keys span hash slots is refused by
//!   Redis Cluster, so the sync loop sends its per-bucket commands concurrently instead: the
//!   cluster connection keeps one multiplexed connection per shard and writes the commands for
//!   one shard back to back, which is one pipelined round trip per shard.
//! - SCAN runs on every primary of a cluster ([`Conn::scan`]).

use crate::config::RedisConfig;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use std::path::PathBuf;
use std::time::Duration;

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// `redis.ca_file` cannot be read.
    #[error("redis.ca_file {}: cannot read: {source}", path.display())]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The cluster client refused the seeds, or the cluster could not be reached.
    #[error("redis cluster: {0}")]
    Cluster(#[source] RedisError),
    /// Discovering the cluster's slots took longer than five response timeouts.
    #[error("redis cluster: timed out connecting")]
    ClusterTimeout,
    /// The config names no URL.
    #[error("no redis url")]
    NoUrl,
    /// The client refused the URL.
    #[error("redis url: {0}")]
    Url(#[source] RedisError),
    /// The connection manager could not be made.
    #[error("redis: {0}")]
    Manager(#[source] RedisError),
}

/// A connection to Redis.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The TLS roots for `rediss://`: the config's CA file, else the system's.
fn certificates(cfg: &RedisConfig) -> Result<Option<redis::TlsCertificates>, ConnError> {
    let Some(ca) = &cfg.ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(ca).map_err(|source| ConnError::CaFile {
        path: ca.clone(),
        source,
    })?;
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// [`open`], with the error as text, for a caller that passes it on as text (the sync loop
/// makes a `RedisError` of it). Goes once that caller takes [`ConnError`].
pub async fn connect(cfg: &RedisConfig) -> Result<Conn, String> {
    open(cfg).await.map_err(|e| e.to_string())
}

/// Connects (standalone: lazily, so this succeeds while Redis is down).
pub async fn open(cfg: &RedisConfig) -> Result<Conn, ConnError> {
    let certs = certificates(cfg)?;
    if cfg.cluster {
        let mut b = redis::cluster::ClusterClientBuilder::new(cfg.urls.iter().map(String::as_str))
            .connection_timeout(cfg.timeout)
            .response_timeout(cfg.timeout)
            .retries(1);
        if let Some(c) = certs {
            b = b.certs(c);
        }
        let client = b.build().map_err(ConnError::Cluster)?;
        // Connecting discovers the slots: bound it like any other round trip.
        let con = tokio::time::timeout(
            cfg.timeout.saturating_mul(5).max(Duration::from_secs(1)),
            client.get_async_connection(),
        )
        .await
        .map_err(|_| ConnError::ClusterTimeout)?
        .map_err(ConnError::Cluster)?;
        return Ok(Conn::Cluster(con));
    }
    let url = cfg.urls.first().ok_or(ConnError::NoUrl)?;
    let client = match certs {
        Some(c) => redis::Client::build_with_tls(url.as_str(), c),
        None => redis::Client::open(url.as_str()),
    }
    .map_err(ConnError::Url)?;
    let conf = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(cfg.timeout))
        .set_response_timeout(Some(cfg.timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_lazy_with_config(client, conf)
        .map(Conn::Single)
        .map_err(ConnError::Manager)
}

/// Every string inside a reply (nested arrays and maps included), for replies that a cluster
/// aggregates from several nodes.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::BulkString(b) => out.push(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => out.push(s.clone()),
        Value::VerbatimString { text, .. } => out.push(text.clone()),
        Value::Array(a) | Value::Set(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Map(m) => m.iter().for_each(|(k, x)| {
            strings(k, out);
            strings(x, out);
        }),
        _ => {}
    }
}

impl Conn {
    /// The `run_id` of the server, or of every primary of a cluster (sorted, joined): it
    /// changes when a server restarts, which may have emptied it.
    pub async fn run_ids(&mut self) -> RedisResult<Option<String>> {
        let v: Value = redis::cmd("INFO").arg("server").query_async(self).await?;
        let mut texts = Vec::new();
        strings(&v, &mut texts);
        let mut ids: Vec<String> = texts
            .iter()
            .flat_map(|t| t.lines())
            .filter_map(|l| l.strip_prefix("run_id:"))
            .map(|s| s.trim().to_string())
            .collect();
        ids.sort();
        ids.dedup();
        Ok((!ids.is_empty()).then(|| ids.join(",")))
    }

    /// Redis `TIME`, in nanoseconds since the Unix epoch.
    pub async fn time_ns(&mut self) -> RedisResult<i64> {
        let (s, us): (i64, i64) = redis::cmd("TIME").query_async(self).await?;
        Ok(s.saturating_mul(1_000_000_000)
            .saturating_add(us.saturating_mul(1_000)))
    }

    /// The primaries of a cluster as (host, port); empty for a standalone server.
    async fn primaries(&mut self) -> RedisResult<Vec<(String, u16)>> {
        let Conn::Cluster(c) = self else {
            return Ok(Vec::new());
        };
        let text: String = redis::cmd("CLUSTER").arg("NODES").query_async(c).await?;
        Ok(parse_cluster_nodes(&text))
    }

    /// Keys matching `pattern`, at most `max`, from SCAN on the server or on every primary
    /// of a cluster (never KEYS).
    pub async fn scan(&mut self, pattern: &str, max: usize) -> RedisResult<Vec<String>> {
        let mut out = Vec::new();
        let targets: Vec<Option<(String, u16)>> = match self {
            Conn::Single(_) => vec![None],
            Conn::Cluster(_) => self.primaries().await?.into_iter().map(Some).collect(),
        };
        for target in targets {
            let mut cursor = 0u64;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000);
                let v: Value = match (&mut *self, &target) {
                    (Conn::Cluster(c), Some((host, port))) => {
                        c.route_command(
                            cmd,
                            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                                host: host.clone(),
                                port: *port,
                            }),
                        )
                        .await?
                    }
                    (con, _) => cmd.query_async(con).await?,
                };
                let (next, keys): (u64, Vec<String>) = redis::from_redis_value(v)?;
                out.extend(keys);
                if out.len() >= max {
                    out.truncate(max);
                    return Ok(out);
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// The reachable primaries in a `CLUSTER NODES` reply: `ID HOST:PORT@CPORT[,HOSTNAME] FLAGS ...`.
pub fn parse_cluster_nodes(text: &str) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(_id), Some(addr), Some(flags)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"master") || flags.iter().any(|x| x.starts_with("fail")) {
            continue;
        }
        let addr = addr.split(['@', ',']).next().unwrap_or("");
        let Some((host, port)) = addr.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse() else { continue };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            continue;
        }
        out.push((host.to_string(), port));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lists_reachable_primaries() {
        let text = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@31003,node-3 master - 0 1426238318243 3 connected 10923-16383
6ec2 127.0.0.1:30005@31005 master,fail - 1426238316232 0 5 disconnected
e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
garbage
";
        assert_eq!(
            parse_cluster_nodes(text),
            vec![
                ("127.0.0.1".to_string(), 30002),
                ("127.0.0.1".to_string(), 30003),
                ("127.0.0.1".to_string(), 30001),
            ]
        );
    }

    #[test]
    fn strings_walks_nested_replies() {
        let v = Value::Map(vec![(
            Value::SimpleString("a:1".into()),
            Value::Array(vec![
                Value::BulkString(b"run_id:x\r\n".to_vec()),
                Value::Nil,
            ]),
        )]);
        let mut out = Vec::new();
        strings(&v, &mut out);
        assert_eq!(out, vec!["a:1".to_string(), "run_id:x\r\n".to_string()]);
    }
}
