//! Shared buckets over a real Redis Cluster (three primaries joined with
//! `redis-cli --cluster create`) and over `rediss://` with a private CA.

mod common;

use common::{free_port, get, wait_until, Gateway, Upstream};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// A redis-server process killed on drop.
struct Server {
    port: u16,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (scripts/test.sh installs redis-tools)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn spawn(dir: &Path, args: &[&str]) -> Child {
    let log = std::fs::File::create(dir.join(format!("redis-{}.log", args.join("_").len())))
        .expect("log file");
    Command::new("redis-server")
        .args(args)
        .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone"))
        .stderr(log)
        .spawn()
        .expect("spawn redis-server")
}

/// A free port whose cluster bus port (port + 10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// Three primaries, slots assigned, `cluster_state:ok` on each.
fn start_cluster(dir: &Path) -> Vec<Server> {
    start_cluster_with(dir, 0)
}

/// Three primaries and `replicas` replicas of each (the first three servers are the
/// primaries); a one-second node timeout, and replicas that may always take over, so that a
/// failover is quick.
fn start_cluster_with(dir: &Path, replicas: usize) -> Vec<Server> {
    let servers: Vec<Server> = (0..3 * (1 + replicas))
        .map(|i| {
            let port = free_cluster_port();
            let d = dir.join(format!("n{i}"));
            std::fs::create_dir_all(&d).expect("dir");
            let child = spawn(
                &d,
                &[
                    "--port",
                    &port.to_string(),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-replica-validity-factor",
                    "0",
                ],
            );
            Server { port, child }
        })
        .collect();
    for s in &servers {
        assert!(
            wait_until(WAIT, || cli(s.port, &["PING"]).trim() == "PONG"),
            "redis on {} did not start",
            s.port
        );
    }
    let addrs: Vec<String> = servers
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let out = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
        .output()
        .expect("redis-cli --cluster create");
    assert!(
        out.status.success(),
        "cluster create: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for s in &servers {
        assert!(
            wait_until(WAIT, || cli(s.port, &["CLUSTER", "INFO"])
                .contains("cluster_state:ok")),
            "cluster not ok on {}",
            s.port
        );
    }
    servers
}

/// Every change is written (no quiet buckets: see `limit::store_quiet`): these tests follow
/// each request's count through the cluster and TLS transports.
fn config(up: &Upstream, mut redis: Value, node: &str) -> Value {
    redis["quiet_buckets"] = json!(false);
    json!({
        "node_id": node,
        "redis": redis,
        "upstreams": { "api": { "servers": [up.addr.to_string()] } },
        "limits": { "per-key": { "capacity": 3, "refill_per_second": 0.001, "key": ["header:x-api-key"] } },
        "routes": [{ "name": "r", "match": { "path_prefix": "/" }, "upstream": "api", "limits": ["per-key"] }],
    })
}

#[test]
fn buckets_are_shared_through_a_redis_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let servers = start_cluster(dir.path());
    let up = Upstream::start();
    let redis = json!({
        "cluster": true,
        "urls": [format!("redis://127.0.0.1:{}", servers[0].port)],
        "sync_interval_ms": 50,
        "timeout_ms": 500,
    });
    let a = Gateway::builder(config(&up, redis.clone(), "node-a")).start();
    let b = Gateway::builder(config(&up, redis.clone(), "node-b")).start();
    assert!(
        wait_until(WAIT, || get(a.admin, "/health", &[]).json()["status"]
            == "ok"),
        "{}",
        a.log()
    );
    // Twenty keys land on every shard. Node A spends two tokens of each at once: a bucket new
    // to a node may spend the whole of it, although B is live.
    // A sees B and is settled in the cluster.
    a.settle(2);
    let keys: Vec<String> = (0..20).map(|i| format!("key-{i}")).collect();
    for k in &keys {
        let statuses: Vec<u16> = (0..2)
            .map(|_| get(a.addr, "/x", &[("x-api-key", k)]).status)
            .collect();
        assert_eq!(statuses, vec![200, 200], "key {k}");
    }
    // Every bucket reaches its shard (read through the cluster, following redirects).
    let consumed = |k: &str| -> Option<u64> {
        let port = servers[0].port.to_string();
        let out = Command::new("redis-cli")
            .args([
                "-c",
                "-p",
                &port,
                "HGET",
                &format!("tollgate:per-key:{k}"),
                "node-a:consumed",
            ])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    assert!(
        wait_until(WAIT, || keys.iter().all(|k| consumed(k) == Some(2))),
        "{}",
        a.log()
    );
    let shards_used = servers
        .iter()
        .filter(|s| cli(s.port, &["DBSIZE"]).trim().parse::<u64>().unwrap_or(0) > 0)
        .count();
    assert!(shards_used >= 2, "keys on {shards_used} shard(s)");
    // Node B has served none of these keys and read none back (it holds no fields of its own
    // in Redis), so its first request on each is decided on a full local bucket: admitted,
    // three tokens less one, and one token refills in 1000 s. Its sync then merges A's two:
    // B sees the bucket empty (3 - 2 - 1), its count reaches Redis, and the next request is
    // refused.
    for k in &keys {
        let url = format!("/rating?limit=per-key&key={k}");
        let r = get(b.addr, "/x", &[("x-api-key", k)]);
        assert_eq!(
            (r.status, r.header("ratelimit")),
            (200, Some("\"per-key\";r=2;t=1000")),
            "key {k}: B's first request"
        );
        assert!(
            wait_until(WAIT, || get(b.admin, &url, &[]).json()["remaining"] == 0),
            "key {k}: B sees {}",
            get(b.admin, &url, &[]).json()
        );
        let r = get(b.addr, "/x", &[("x-api-key", k)]);
        assert_eq!(r.status, 429, "key {k}: B's second request: {}", r.text());
    }
    let b_consumed = |k: &str| -> Option<u64> {
        let port = servers[0].port.to_string();
        let out = Command::new("redis-cli")
            .args(["-c", "-p", &port, "HGET"])
            .arg(format!("tollgate:per-key:{k}"))
            .arg("node-b:consumed")
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    assert!(
        wait_until(WAIT, || keys.iter().all(|k| b_consumed(k) == Some(1))),
        "B's counts in Redis: {:?}\n{}",
        keys.iter().map(|k| b_consumed(k)).collect::<Vec<_>>(),
        b.log()
    );
    // inspect scans every primary.
    let cfg_path = dir.path().join("inspect.json");
    let mut inspect_cfg = config(&up, redis, "inspector");
    inspect_cfg["listeners"] = json!([{ "address": "127.0.0.1:1" }]);
    std::fs::write(&cfg_path, inspect_cfg.to_string()).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["inspect", "-c"])
        .arg(&cfg_path)
        .args(["--json"])
        .output()
        .expect("inspect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).expect("inspect json");
    assert_eq!(listed.as_array().map(Vec::len), Some(20), "{listed}");
}

/// A self-signed certificate for 127.0.0.1 and localhost: (cert PEM, key PEM).
fn certificate() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    (ck.cert.pem(), ck.key_pair.serialize_pem())
}

#[test]
fn rediss_with_a_private_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = certificate();
    let (cert_path, key_path) = (dir.path().join("redis.crt"), dir.path().join("redis.key"));
    std::fs::write(&cert_path, &cert).expect("write cert");
    std::fs::write(&key_path, &key).expect("write key");
    let port = free_port();
    let server = Server {
        port,
        child: spawn(
            dir.path(),
            &[
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                cert_path.to_str().unwrap(),
                "--tls-key-file",
                key_path.to_str().unwrap(),
                "--tls-auth-clients",
                "no",
            ],
        ),
    };
    let tls_ping = || {
        Command::new("redis-cli")
            .args(["--tls", "--cacert"])
            .arg(&cert_path)
            .args(["-h", "127.0.0.1", "-p", &server.port.to_string(), "PING"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
    };
    assert!(wait_until(WAIT, tls_ping), "redis with TLS did not start");
    let up = Upstream::start();
    let url = format!("rediss://127.0.0.1:{port}");
    let redis =
        json!({ "url": url, "ca_file": cert_path, "sync_interval_ms": 50, "timeout_ms": 500 });
    let a = Gateway::builder(config(&up, redis, "node-a")).start();
    assert_eq!(get(a.addr, "/x", &[("x-api-key", "k")]).status, 200);
    let field = || {
        Command::new("redis-cli")
            .args(["--tls", "--cacert"])
            .arg(&cert_path)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["HGET", "tollgate:per-key:k", "node-a:consumed"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    assert!(wait_until(WAIT, || field() == "1"), "{}", a.log());
    assert_eq!(get(a.admin, "/health", &[]).json()["status"], "ok");

    // Without the CA the server's certificate is not trusted: the node runs degraded.
    let redis = json!({ "url": url, "sync_interval_ms": 50, "timeout_ms": 500 });
    let b = Gateway::builder(config(&up, redis, "node-b")).start();
    assert_eq!(get(b.addr, "/x", &[("x-api-key", "k")]).status, 200);
    let metrics = || get(b.admin, "/metrics", &[]).text();
    assert!(
        wait_until(WAIT, || metrics().contains("tollgate_sync_errors_total ")
            && !metrics().contains("tollgate_sync_errors_total 0")),
        "{}",
        metrics()
    );
    assert!(metrics().contains("tollgate_redis_up 0"));
    assert_eq!(get(b.admin, "/health", &[]).json()["status"], "degraded");
}

#[test]
fn a_cluster_failover_loses_no_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut servers = start_cluster_with(dir.path(), 1);
    let up = Upstream::start();
    let seeds: Vec<String> = servers
        .iter()
        .map(|s| format!("redis://127.0.0.1:{}", s.port))
        .collect();
    let redis =
        json!({ "cluster": true, "urls": seeds, "sync_interval_ms": 50, "timeout_ms": 500 });
    let mut cfg = config(&up, redis, "node-a");
    cfg["limits"]["per-key"]["capacity"] = json!(1000);
    let a = Gateway::builder(cfg).start();
    let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    let send_all = |n: usize| {
        for k in &keys {
            for _ in 0..n {
                let s = get(a.addr, "/x", &[("x-api-key", k)]).status;
                assert!(s == 200 || s == 429, "status {s} during the failover");
            }
        }
    };
    let survivor = servers[1].port;
    let consumed = |k: &str| -> u64 {
        Command::new("redis-cli")
            .args(["-c", "-p", &survivor.to_string(), "HGET"])
            .arg(format!("tollgate:per-key:{k}"))
            .arg("node-a:consumed")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(0)
    };
    send_all(3);
    assert!(
        wait_until(WAIT, || keys.iter().all(|k| consumed(k) == 3)),
        "{}",
        a.log()
    );
    // The first primary dies; its replica takes over its slots.
    drop(servers.remove(0));
    assert!(
        wait_until(Duration::from_secs(30), || {
            let nodes = cli(survivor, &["CLUSTER", "NODES"]);
            let live_primaries = nodes
                .lines()
                .filter(|l| l.contains("master") && !l.contains("fail"))
                .count();
            nodes.contains("master,fail")
                && live_primaries == 3
                && cli(survivor, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
        }),
        "no failover: {}",
        cli(survivor, &["CLUSTER", "NODES"])
    );
    // Requests are decided all along; afterwards every count reaches the cluster, none lower.
    send_all(2);
    assert!(
        wait_until(WAIT, || keys.iter().all(|k| consumed(k) == 5)),
        "counts after the failover: {:?}\n{}",
        keys.iter().map(|k| consumed(k)).collect::<Vec<_>>(),
        a.log()
    );
    assert!(wait_until(WAIT, || get(a.admin, "/health", &[]).json()
        ["status"]
        == "ok"));
}
