//! Upstream faults: a refused connection, a response cut mid-body, an upstream slower than
//! `read_timeout_ms`, garbage instead of HTTP, and a close without any answer. Each must give
//! the client a prompt JSON 502/504 (or, once the response head is out, a cut connection),
//! leave the gateway serving, and leak no connection (file descriptors of the gateway process
//! return to their baseline, and every upstream connection is closed by the gateway).

mod common;

use common::{free_port, get, wait_until, Conn, Gateway, Response, Upstream};
use serde_json::json;
use std::io::{BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the faulty upstream does after reading a request head.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `Content-Length: 1000`, 10 bytes of body, then close.
    ResetMidBody,
    /// Never answers; holds the connection until the gateway closes it.
    Silent,
    /// Bytes that are not an HTTP response, then close.
    Garbage,
    /// Closes without a byte.
    CloseWithoutAnswer,
    /// Answers `200 ok` as a keep-alive response, then closes the connection a moment later
    /// (as a server whose keep-alive timeout is very short).
    AnswerThenClose,
}

/// A `std::net` upstream that misbehaves as told; counts connections still open.
struct FaultyUpstream {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

impl FaultyUpstream {
    fn start(fault: Fault) -> FaultyUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind faulty upstream");
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (o, a) = (open.clone(), accepted.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                std::thread::spawn(move || {
                    misbehave(stream, fault);
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        FaultyUpstream {
            addr,
            open,
            accepted,
        }
    }

    fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

fn misbehave(stream: TcpStream, fault: Fault) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    if common::read_request_head(&mut reader).is_none() {
        return;
    }
    match fault {
        Fault::ResetMidBody => {
            let _ = writer.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n0123456789",
            );
        }
        Fault::Silent => {
            // Wait for the gateway to give up and close (EOF or error ends the wait).
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut reader, &mut sink);
        }
        Fault::Garbage => {
            let _ = writer.write_all(b"\x00\x01\x02 this is not HTTP at all\r\n\r\n\xff\xfe");
        }
        Fault::CloseWithoutAnswer => {}
        Fault::AnswerThenClose => {
            let _ = writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            // After the gateway has had the time to put the connection back into its pool.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let _ = writer.shutdown(std::net::Shutdown::Both);
}

struct Setup {
    gw: Gateway,
    _good: Upstream,
    reset: FaultyUpstream,
    silent: FaultyUpstream,
    garbage: FaultyUpstream,
    empty: FaultyUpstream,
}

/// One gateway with a route per fault (`/refused`, `/reset`, `/slow`, `/garbage`, `/empty`)
/// and a healthy catch-all; upstream read timeout 300 ms, connect timeout 500 ms.
fn setup() -> Setup {
    let good = Upstream::start();
    let reset = FaultyUpstream::start(Fault::ResetMidBody);
    let silent = FaultyUpstream::start(Fault::Silent);
    let garbage = FaultyUpstream::start(Fault::Garbage);
    let empty = FaultyUpstream::start(Fault::CloseWithoutAnswer);
    let refused: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let up = |addr: SocketAddr| json!({ "servers": [addr.to_string()], "connect_timeout_ms": 500, "read_timeout_ms": 300, "write_timeout_ms": 1000 });
    let route = |name: &str| json!({ "name": name, "match": { "path_prefix": format!("/{name}") }, "upstream": name, "limits": ["lim"] });
    let gw = Gateway::builder(json!({
        "node_id": "faults-test",
        "upstreams": {
            "refused": up(refused), "reset": up(reset.addr), "slow": up(silent.addr),
            "garbage": up(garbage.addr), "empty": up(empty.addr), "good": up(good.addr),
        },
        "limits": { "lim": { "capacity": 1000000, "refill_per_second": 1000, "key": ["client_ip"] } },
        "routes": [
            route("refused"), route("reset"), route("slow"), route("garbage"), route("empty"),
            { "name": "good", "match": { "path_prefix": "/" }, "upstream": "good", "limits": ["lim"] }
        ],
    })).start();
    Setup {
        gw,
        _good: good,
        reset,
        silent,
        garbage,
        empty,
    }
}

/// A JSON error the gateway wrote itself, with status `want`, within `within`.
fn assert_json_error(gw: &Gateway, target: &str, want: u16, within: Duration) {
    let t0 = Instant::now();
    let r = get(gw.addr, target, &[]);
    let took = t0.elapsed();
    assert_eq!(r.status, want, "{target}: {}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{target}"
    );
    assert_eq!(r.json()["status"], want, "{target}");
    assert!(took < within, "{target} took {took:?}");
}

fn assert_serves(gw: &Gateway) {
    let r = get(gw.addr, "/healthy", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(gw.admin, "/health", &[]).status, 200);
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the gateway's /proc/PID/fd")
        .count()
}

/// The response of a request whose upstream dies mid-body: the head may already be out, so
/// the client sees a 200 cut short (an error or a short body), or a 502 if nothing was sent.
fn reset_request(gw: &Gateway) -> std::io::Result<Response> {
    let t0 = Instant::now();
    let r = Conn::open(gw.addr).request("GET", "/reset", &[], b"");
    if let Err(e) = &r {
        // A cut, not a hang: the client's own read timeout must not be what ended it.
        assert!(
            !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "the client was left hanging: {e}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "cut after {:?}",
            t0.elapsed()
        );
    }
    r
}

#[test]
fn refused_upstream_is_a_prompt_json_502() {
    let s = setup();
    assert_json_error(&s.gw, "/refused", 502, Duration::from_secs(2));
    assert_serves(&s.gw);
}

#[test]
fn upstream_reset_mid_body_cuts_the_client_response_and_the_gateway_stays_healthy() {
    let s = setup();
    match reset_request(&s.gw) {
        Err(_) => {}
        Ok(r) => {
            assert_eq!(r.status, 502, "a cut body was passed as complete: {r:?}");
            assert_eq!(r.json()["status"], 502);
        }
    }
    assert!(s.reset.accepted.load(Ordering::SeqCst) >= 1);
    assert_serves(&s.gw);
}

#[test]
fn upstream_slower_than_read_timeout_is_a_prompt_json_504() {
    let s = setup();
    assert_json_error(&s.gw, "/slow", 504, Duration::from_secs(3));
    // The gateway gives up on the upstream connection too.
    assert!(wait_until(Duration::from_secs(5), || s
        .silent
        .open_connections()
        == 0));
    assert_serves(&s.gw);
}

#[test]
fn garbage_or_no_answer_from_upstream_is_a_json_502() {
    let s = setup();
    assert_json_error(&s.gw, "/garbage", 502, Duration::from_secs(2));
    assert_json_error(&s.gw, "/empty", 502, Duration::from_secs(2));
    assert!(s.garbage.accepted.load(Ordering::SeqCst) >= 1);
    assert!(s.empty.accepted.load(Ordering::SeqCst) >= 1);
    assert_serves(&s.gw);
}

/// 50 faulty requests of every kind, plus clients that hang up while the gateway waits on a
/// silent upstream: afterwards the gateway's open file descriptors return to near their
/// baseline and no upstream connection is left open.
#[test]
fn a_batch_of_faults_leaks_no_connections() {
    let s = setup();
    let gw = &s.gw;
    // Warm up (listeners, pools, lazily opened files), then take the baseline.
    for target in ["/refused", "/garbage", "/empty", "/slow", "/healthy"] {
        let _ = get(gw.addr, target, &[]);
    }
    let _ = reset_request(gw);
    assert!(wait_until(Duration::from_secs(5), || s
        .silent
        .open_connections()
        == 0));
    let baseline = open_fds(gw.pid());
    let targets = ["/refused", "/reset", "/slow", "/garbage", "/empty"];
    let mut hung_up = Vec::new();
    for i in 0..50 {
        let target = targets[i % targets.len()];
        if target == "/reset" {
            let _ = reset_request(gw);
        } else if i % 10 == 2 {
            // A client that leaves while the gateway waits on the silent upstream.
            let mut c = Conn::open(gw.addr);
            c.write_raw(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            hung_up.push(c);
        } else {
            let r = get(gw.addr, target, &[]);
            assert!(
                r.status == 502 || r.status == 504,
                "{target}: {} {}",
                r.status,
                r.text()
            );
        }
    }
    drop(hung_up);
    assert_serves(gw);
    let settled = wait_until(Duration::from_secs(15), || {
        open_fds(gw.pid()) <= baseline + 5
            && s.silent.open_connections() == 0
            && s.reset.open_connections() == 0
            && s.garbage.open_connections() == 0
            && s.empty.open_connections() == 0
    });
    assert!(
        settled,
        "fds {} (baseline {baseline}); upstream connections open: silent {}, reset {}, garbage {}, empty {}",
        open_fds(gw.pid()),
        s.silent.open_connections(),
        s.reset.open_connections(),
        s.garbage.open_connections(),
        s.empty.open_connections(),
    );
    assert_serves(gw);
}

/// An upstream that closes every connection a moment after answering on it: each request
/// finds the connection the previous one left in the pool closed by the server (the test
/// waits for the close), and is served all the same, on a new connection; the closed ones
/// do not pile up in the gateway.
#[test]
fn an_upstream_closing_idle_connections_costs_no_request() {
    let closing = FaultyUpstream::start(Fault::AnswerThenClose);
    let gw = Gateway::builder(json!({
        "node_id": "idle-close-test",
        "upstreams": { "closing": { "servers": [closing.addr.to_string()] } },
        "limits": { "lim": { "capacity": 1000000, "refill_per_second": 1000, "key": ["client_ip"] } },
        "routes": [{ "name": "all", "match": { "path_prefix": "/" }, "upstream": "closing", "limits": ["lim"] }],
    }))
    .start();
    let served = |i: usize| {
        let r = get(gw.addr, "/x", &[]);
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "request {i}");
        let closed = wait_until(Duration::from_secs(5), || closing.open_connections() == 0);
        assert!(
            closed,
            "the upstream closed its connection after request {i}"
        );
    };
    served(0);
    let baseline = open_fds(gw.pid());
    for i in 1..=30 {
        served(i);
    }
    assert_eq!(
        closing.accepted.load(Ordering::SeqCst),
        31,
        "one connection per request"
    );
    let fds = open_fds(gw.pid());
    assert!(fds <= baseline + 2, "fds {fds}, baseline {baseline}");
}
