//! The production surface with real processes: HTTPS and HTTP/2 on a TLS listener, upstreams
//! over TLS with certificate verification (passing and failing), health-checked pools that
//! fail over, SIGTERM with a request in flight and a final flush, and a graceful upgrade
//! (SIGQUIT) that drops no request.

mod common;

use common::{free_port, get, wait_until, Conn, Gateway, RedisServer, Upstream};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// A self-signed certificate for localhost and 127.0.0.1, written into `dir`.
fn certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, ck.cert.pem()).expect("write cert");
    std::fs::write(&k, ck.key_pair.serialize_pem()).expect("write key");
    (c, k)
}

fn route_config(upstream: Value) -> Value {
    json!({
        "upstreams": { "api": upstream },
        "limits": { "per-ip": { "capacity": 1000, "refill_per_second": 1000, "key": ["client_ip"] } },
        "routes": [{ "name": "r", "match": { "path_prefix": "/" }, "upstream": "api", "limits": ["per-ip"] }],
    })
}

/// A gateway with a TLS listener in front of `up`; returns it and its TLS address.
fn tls_gateway(up: &Upstream, cert: &Path, key: &Path) -> (Gateway, SocketAddr) {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut cfg = route_config(json!({ "servers": [up.addr.to_string()] }));
    cfg["listeners"] =
        json!([{ "address": addr.to_string(), "tls": { "cert": cert, "key": key } }]);
    (Gateway::builder(cfg).start(), addr)
}

fn tls_client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("pem")).expect("add root");
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// One HTTP/1.1 GET over TLS; returns (status line, negotiated ALPN).
fn https_get(addr: SocketAddr, ca: &Path, path: &str) -> (String, Option<Vec<u8>>) {
    let cfg = tls_client_config(ca, &[b"http/1.1"]);
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(cfg, name).expect("client");
    let sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    let alpn = tls.conn.alpn_protocol().map(<[u8]>::to_vec);
    let text = String::from_utf8_lossy(&out).into_owned();
    (text.lines().next().unwrap_or("").to_string(), alpn)
}

/// One HTTP/2 GET over TLS (ALPN h2); returns the status and the RateLimit header.
/// What an HTTP/2 response came to: its status, its `ratelimit` field, its body.
type H2Answer = (u16, Option<String>, String);

/// GETs `paths` over one HTTP/2 connection, all at once (one stream each).
fn h2_get(addr: SocketAddr, ca: &Path, paths: &[&str]) -> Vec<H2Answer> {
    let cfg = tls_client_config(ca, &[b"h2"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .expect("tls handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (client, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut client = client.ready().await.expect("ready");
        let pending: Vec<_> = paths
            .iter()
            .map(|path| {
                let req = http::Request::builder()
                    .uri(format!("https://localhost{path}"))
                    .body(())
                    .expect("request");
                let (resp, _) = client.send_request(req, true).expect("send");
                resp
            })
            .collect();
        let mut answers = Vec::new();
        for resp in pending {
            let resp = resp.await.expect("response");
            let rl = resp
                .headers()
                .get("ratelimit")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut bytes = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.expect("body");
                let _ = body.flow_control().release_capacity(chunk.len());
                bytes.extend_from_slice(&chunk);
            }
            answers.push((status, rl, String::from_utf8(bytes).expect("utf-8 body")));
        }
        answers
    })
}

#[test]
fn https_and_http2_on_a_tls_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = certificate(dir.path(), "server");
    let up = Upstream::start();
    let (_gw, addr) = tls_gateway(&up, &cert, &key);
    let (status, alpn) = https_get(addr, &cert, "/rating/1");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    // Three requests at once on one connection, each answered whole: the upstream's body,
    // /big's 5,000 bytes in their JSON (11 more).
    let answers = h2_get(addr, &cert, &["/rating/1", "/rating/2", "/big?bytes=5000"]);
    for (i, (status, rl, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "{i}: {body}");
        assert!(
            rl.as_ref().is_some_and(|v| v.starts_with("\"per-ip\";r=")),
            "{rl:?}"
        );
        if i < 2 {
            assert!(body.contains(&format!("\"item\":\"{}\"", i + 1)), "{body}");
        }
    }
    let big = &answers[2].2;
    assert_eq!(big.len(), 5011, "{}", big.len());
    assert!(
        big.starts_with("{\"data\":\"") && big.ends_with("\"}"),
        "{big}"
    );
}

#[test]
fn upstream_tls_is_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = certificate(dir.path(), "server");
    let (other, _) = certificate(dir.path(), "other");
    let up = Upstream::start();
    // The TLS upstream: a gateway with a TLS listener in front of the example upstream.
    let (_tls_up, tls_addr) = tls_gateway(&up, &cert, &key);
    let front = |sni: &str, ca: &Path| {
        Gateway::builder(route_config(json!({
            "servers": [tls_addr.to_string()], "tls": true, "sni": sni, "ca_file": ca,
            "connect_timeout_ms": 2000, "read_timeout_ms": 5000,
        })))
        .start()
    };
    let ok = front("localhost", &cert);
    assert_eq!(get(ok.addr, "/rating/1", &[]).status, 200, "{}", ok.log());
    // A server certificate from an unknown issuer: refused, 502.
    let wrong_ca = front("localhost", &other);
    let r = get(wrong_ca.addr, "/rating/1", &[]);
    assert_eq!(r.status, 502, "{}", r.text());
    // (The error is logged once the response is written: poll.)
    assert!(
        wait_until(WAIT, || wrong_ca.log().contains("invalid peer certificate")),
        "{}",
        wrong_ca.log()
    );
    // The right issuer but a name the certificate does not carry: refused, 502.
    let wrong_name = front("api.example.com", &cert);
    assert_eq!(get(wrong_name.addr, "/rating/1", &[]).status, 502);
}

fn server_of(r: &common::Response) -> String {
    let v = r.json();
    v["server"]
        .as_str()
        .or(v["request"]["server"].as_str())
        .unwrap_or("")
        .to_string()
}

#[test]
fn health_checked_pool_fails_over_then_answers_503() {
    let mut a = Upstream::start();
    let mut b = Upstream::start();
    let gw = Gateway::builder(route_config(json!({
        "servers": [a.addr.to_string(), b.addr.to_string()],
        "health_check": { "path": "/health", "interval_ms": 100 },
        "connect_timeout_ms": 500,
    })))
    .start();
    let served: std::collections::HashSet<String> = (0..6)
        .map(|_| server_of(&get(gw.addr, "/echo", &[])))
        .collect();
    assert_eq!(served.len(), 2, "round robin over both: {served:?}");
    a.kill();
    // No request fails: a refused connection is retried on the other server, with the
    // same X-Forwarded-For as a first attempt.
    for _ in 0..10 {
        let r = get(gw.addr, "/echo", &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(server_of(&r), b.addr.to_string());
        let echo = r.json();
        let xff: Vec<&str> = echo["request"]["headers"]
            .as_array()
            .expect("echoed headers")
            .iter()
            .filter(|p| p[0] == "x-forwarded-for")
            .filter_map(|p| p[1].as_str())
            .collect();
        assert_eq!(xff, ["127.0.0.1"], "{}", r.text());
    }
    let metrics = || get(gw.admin, "/metrics", &[]).text();
    let down = format!(
        "tollgate_upstream_server_up{{server=\"{}\",upstream=\"api\"}} 0",
        a.addr
    );
    assert!(
        wait_until(WAIT, || metrics().contains(&down)),
        "{}",
        metrics()
    );
    assert!(gw.log().contains("fails its health check"));
    b.kill();
    assert!(
        wait_until(WAIT, || get(gw.addr, "/echo", &[]).status == 503),
        "{}",
        gw.log()
    );
    let r = get(gw.addr, "/echo", &[]);
    assert_eq!(
        r.json()["error"],
        "no healthy upstream server",
        "{}",
        r.text()
    );
}

/// An upstream that tells when a request arrived and answers only when released.
fn held_upstream() -> (SocketAddr, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (arrived_tx, arrived_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = arrived_tx.send(());
        let _ = release_rx.recv_timeout(Duration::from_secs(30));
        let _ =
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndone");
    });
    (addr, arrived_rx, release_tx)
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_flushes_and_exits() {
    let redis = RedisServer::start();
    let (up, arrived, release) = held_upstream();
    let mut cfg = route_config(json!({ "servers": [up.to_string()], "read_timeout_ms": 30000 }));
    cfg["node_id"] = json!("node-a");
    cfg["grace_period_seconds"] = json!(10);
    // A sync interval far longer than the test: only the final flush can write the count.
    cfg["redis"] = json!({ "url": redis.url, "sync_interval_ms": 60000 });
    let mut gw = Gateway::builder(cfg).start();
    let addr = gw.addr;
    let client = std::thread::spawn(move || Conn::open(addr).request("GET", "/slow", &[], b""));
    arrived
        .recv_timeout(WAIT)
        .expect("the request reached the upstream");
    gw.signal("TERM");
    // The listener stops accepting while the request is still in flight.
    assert!(
        wait_until(WAIT, || TcpStream::connect_timeout(
            &addr,
            Duration::from_millis(200)
        )
        .is_err()),
        "still accepting after SIGTERM"
    );
    release.send(()).expect("release");
    let r = client.join().expect("client").expect("response");
    assert_eq!((r.status, r.text()), (200, "done".to_string()));
    let status = gw.wait_exit(WAIT).expect("exited");
    assert!(status.success(), "{status:?}\n{}", gw.log());
    let consumed = redis.cmd(&["HGET", "tollgate:per-ip:127.0.0.1", "node-a:consumed"]);
    assert_eq!(consumed.trim(), "1", "{}", gw.log());
}

/// A connection waiting for its next request when the shutdown starts is not closed at once:
/// a request that comes within the wait (half the grace period, at most 1 s) is served, with
/// `Connection: close`, and the connection ends with it. (Closed at once, a connection the
/// gateway accepted in the moment before an upgrade's shutdown dropped the request its client
/// was sending.)
#[test]
fn a_request_that_comes_just_after_the_shutdown_starts_is_served() {
    let up = Upstream::start();
    let mut cfg = route_config(json!({ "servers": [up.addr.to_string()] }));
    cfg["grace_period_seconds"] = json!(2);
    let mut gw = Gateway::builder(cfg).start();
    let mut c = Conn::open(gw.addr);
    let first = c.request("GET", "/rating/1", &[], b"").expect("first");
    assert_eq!(first.status, 200);
    assert_ne!(first.header("connection"), Some("close"));
    gw.signal("TERM");
    // The proxy service has stopped accepting and told its waiting connections.
    assert!(
        wait_until(WAIT, || gw
            .log()
            .contains("service 'tollgate proxy' exited")),
        "{}",
        gw.log()
    );
    let second = (c.request("GET", "/rating/1", &[], b""))
        .unwrap_or_else(|e| panic!("closed unanswered: {e}\n{}", gw.log()));
    assert_eq!(second.status, 200);
    assert_eq!(second.header("connection"), Some("close"));
    assert!(c.is_closed_by_peer(WAIT));
    let status = gw.wait_exit(WAIT).expect("exited");
    assert!(status.success(), "{status:?}\n{}", gw.log());
}

#[test]
fn graceful_upgrade_drops_no_request() {
    let up = Upstream::start();
    let mut cfg = route_config(json!({ "servers": [up.addr.to_string()] }));
    cfg["grace_period_seconds"] = json!(1);
    // A limit the load never reaches: the load runs as fast as the loopback allows (5,000
    // requests a second on an idle machine) for as long as the handover takes (over a
    // second when pingora retries it), and a 429 would be the limit at work, not a request
    // the upgrade dropped.
    cfg["limits"]["per-ip"] =
        json!({ "capacity": 1_000_000_000u64, "refill_per_second": 1e9, "key": ["client_ip"] });
    let mut old = Gateway::builder(cfg).start();
    let (addr, admin) = (old.addr, old.admin);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                // A new connection each time: light load, every request a fresh accept.
                match Conn::try_open(addr, Duration::from_secs(5)).and_then(|mut c| {
                    c.request("GET", "/rating/1", &[("Connection", "close")], b"")
                }) {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("{:?}", other.map(|r| r.status)));
                    }
                }
            }
            errors
        })
    };
    assert!(wait_until(WAIT, || ok.load(Ordering::Relaxed) >= 20));
    // The new process waits for the listeners; SIGQUIT makes the old one hand them over.
    let new_log_path = old.config_path.with_extension("upgrade.log");
    let log = std::fs::File::create(&new_log_path).expect("log");
    let mut new = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["run", "--upgrade", "-c"])
        .arg(&old.config_path)
        .env("TOLLGATE_LOG", "info")
        .stdout(log.try_clone().expect("clone"))
        .stderr(log)
        .spawn()
        .expect("spawn the new process");
    let new_log = || std::fs::read_to_string(&new_log_path).unwrap_or_default();
    // The new process is up to the point of asking for the sockets once it logged its start.
    assert!(
        wait_until(WAIT, || new_log().contains("tollgate starting")),
        "{}",
        new_log()
    );
    old.signal("QUIT");
    let status = old
        .wait_exit(Duration::from_secs(30))
        .expect("the old process exits");
    assert!(status.success(), "{status:?}\n{}", old.log());
    let before = ok.load(Ordering::Relaxed);
    assert!(wait_until(WAIT, || ok.load(Ordering::Relaxed) >= before + 20));
    stop.store(true, Ordering::Relaxed);
    let errors = load.join().expect("load thread");
    let _ = new.kill();
    let _ = new.wait();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests: {errors:?}\nold:\n{}\nnew:\n{}",
        old.log(),
        new_log()
    );
    assert!(ok.load(Ordering::Relaxed) >= 40);
    let _ = admin;
}

/// An upstream whose first connection answers one request, then reads the next and closes
/// without an answer; every later connection answers each request. Each answer's body is the
/// request's `X-Forwarded-For`; the heads it read are sent to the returned channel.
fn dropping_upstream() -> (SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (heads_tx, heads_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(stream) = conn else { return };
            let heads = heads_tx.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
                let mut writer = stream;
                for served in 0.. {
                    let Some(head) = common::read_request_head(&mut reader) else {
                        return;
                    };
                    let _ = heads.send(head.clone());
                    if n == 0 && served == 1 {
                        return;
                    }
                    let xff = head
                        .lines()
                        .find_map(|l| l.strip_prefix("x-forwarded-for: "))
                        .unwrap_or("-")
                        .to_string();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{xff}",
                        xff.len()
                    );
                    if writer.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads_rx)
}

#[test]
fn a_request_retried_after_a_reused_upstream_connection_closed_keeps_its_forwarded_for() {
    // pingora puts a connection back into its pool from a spawned task: on a loaded machine
    // the second request may find the pool still empty and open a new connection, which does
    // not exercise the retry. Each attempt starts afresh; one must retry.
    for attempt in 1..=10 {
        let (up, heads) = dropping_upstream();
        let gw = Gateway::builder(route_config(json!({ "servers": [up.to_string()] }))).start();
        let first = get(gw.addr, "/one", &[]);
        assert_eq!((first.status, first.text()), (200, "127.0.0.1".to_string()));
        // The pooled connection takes the second request and closes: it is sent again, on a
        // new connection, with the same X-Forwarded-For.
        let second = get(gw.addr, "/two", &[]);
        assert_eq!(
            (second.status, second.text()),
            (200, "127.0.0.1".to_string())
        );
        let seen: Vec<String> = heads.try_iter().collect();
        let twos: Vec<&String> = seen.iter().filter(|h| h.starts_with("GET /two ")).collect();
        for head in &twos {
            assert!(head.contains("x-forwarded-for: 127.0.0.1\r\n"), "{head}");
        }
        match twos.len() {
            2 => return,
            1 => eprintln!("attempt {attempt}: the pool was still empty, no retry"),
            n => panic!("/two sent {n} times: {seen:?}"),
        }
    }
    panic!("no attempt reused the pooled connection");
}
