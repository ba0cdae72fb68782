//! HTTP/1 framing abuse against the gateway: request smuggling shapes (Content-Length with
//! Transfer-Encoding, conflicting lengths), oversized heads, stalled heads, huge declared
//! bodies on per-byte routes, garbage and a connection flood.
//!
//! The upstream here is a recorder written on `std::net`: it keeps every byte it receives, so
//! a test can prove what was (and was not) forwarded. Expected everywhere: a clear 4xx or a
//! closed connection, never an ambiguous request upstream, and a gateway that keeps serving.

mod common;

use common::{get, wait_until, Conn, Gateway, Response};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Practically no refill during a test.
const RATE: f64 = 0.001;

/// One request as the recorder read it.
#[derive(Debug, Clone)]
struct Recorded {
    head: String,
    body: Vec<u8>,
}

impl Recorded {
    fn target(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("")
    }

    fn headers_named(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

/// An upstream that records the raw bytes and the requests it receives and answers `200 ok`.
struct Recorder {
    addr: SocketAddr,
    wire: Arc<Mutex<Vec<u8>>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
        let addr = listener.local_addr().unwrap();
        let wire = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (w, r) = (wire.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (w, r) = (w.clone(), r.clone());
                std::thread::spawn(move || record(stream, &w, &r));
            }
        });
        Recorder {
            addr,
            wire,
            requests,
        }
    }

    fn wire(&self) -> String {
        String::from_utf8_lossy(&self.wire.lock().unwrap()).into_owned()
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// The recorded requests whose target contains `marker`.
    fn saw(&self, marker: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.target().contains(marker))
            .collect()
    }
}

/// Reads requests off one upstream connection (Content-Length or chunked framing), records
/// them, answers each; every byte read is also appended to `wire`.
fn record(stream: TcpStream, wire: &Mutex<Vec<u8>>, requests: &Mutex<Vec<Recorded>>) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let _ = read_half.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    let line = |reader: &mut BufReader<TcpStream>| -> Option<String> {
        let mut buf = Vec::new();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                wire.lock().unwrap().extend_from_slice(&buf);
                Some(String::from_utf8_lossy(&buf).into_owned())
            }
        }
    };
    loop {
        let mut head = String::new();
        loop {
            let Some(l) = line(&mut reader) else { return };
            let end = l == "\r\n";
            head.push_str(&l);
            if end {
                break;
            }
        }
        let mut rec = Recorded {
            head,
            body: Vec::new(),
        };
        let chunked = rec
            .headers_named("transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let Some(size_line) = line(&mut reader) else {
                    requests.lock().unwrap().push(rec);
                    return;
                };
                let size = usize::from_str_radix(
                    size_line.trim().split(';').next().unwrap_or("").trim(),
                    16,
                )
                .unwrap_or(0);
                if size == 0 {
                    while line(&mut reader).is_some_and(|l| l != "\r\n") {}
                    break;
                }
                let mut chunk = vec![0; size + 2];
                if reader.read_exact(&mut chunk).is_err() {
                    requests.lock().unwrap().push(rec);
                    return;
                }
                wire.lock().unwrap().extend_from_slice(&chunk);
                rec.body.extend_from_slice(&chunk[..size]);
            }
        } else {
            let len = rec
                .headers_named("content-length")
                .first()
                .and_then(|v| v.split(',').next()?.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            let complete = reader.read_exact(&mut body).is_ok();
            wire.lock().unwrap().extend_from_slice(&body);
            rec.body = body;
            if !complete {
                requests.lock().unwrap().push(rec);
                return;
            }
        }
        requests.lock().unwrap().push(rec);
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

fn config(upstream: SocketAddr, limits: Value, routes: Value) -> Value {
    json!({
        "node_id": "abuse-test",
        "upstreams": { "api": { "servers": [upstream.to_string()], "connect_timeout_ms": 500, "read_timeout_ms": 5000 } },
        "limits": limits,
        "routes": routes,
    })
}

/// `/rating` limited by `header:x-api-key` (capacity 100, cost `cost`), everything else free.
fn gateway(up: &Recorder, cost: Value) -> Gateway {
    Gateway::builder(config(
        up.addr,
        json!({ "lim": { "capacity": 100, "refill_per_second": RATE, "key": ["header:x-api-key"] } }),
        json!([
            { "name": "rating", "match": { "path_prefix": "/rating" }, "upstream": "api", "limits": ["lim"], "cost": cost },
            { "name": "free", "match": { "path_prefix": "/" }, "upstream": "api" }
        ]),
    )).start()
}

fn remaining(gw: &Gateway, key: &str) -> u64 {
    let r = get(gw.admin, &format!("/rating?limit=lim&key={key}"), &[]);
    r.json()["remaining"].as_u64().expect("remaining")
}

/// What a client got for a raw request: a response, or the connection closed without one.
#[derive(Debug)]
enum Outcome {
    Answered(Response),
    Closed,
}

fn send(addr: SocketAddr, bytes: &[u8]) -> Outcome {
    let mut conn = Conn::open(addr);
    match conn.send_raw(bytes) {
        Ok(r) => Outcome::Answered(r),
        Err(e) => {
            assert!(
                !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "no answer and no close: {e}"
            );
            Outcome::Closed
        }
    }
}

/// Refused: a 4xx answer or a closed connection.
fn assert_refused(outcome: &Outcome, what: &str) {
    match outcome {
        Outcome::Answered(r) => assert!(
            (400..500).contains(&r.status),
            "{what}: {} {}",
            r.status,
            r.text()
        ),
        Outcome::Closed => {}
    }
}

/// The gateway process is alive and both listeners answer.
fn assert_alive(gw: &Gateway) {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", gw.pid()))
        .expect("the gateway process is gone");
    let state = stat.rsplit(')').next().unwrap_or("").trim_start();
    assert!(!state.starts_with('Z'), "the gateway exited: {stat}");
    assert_eq!(get(gw.admin, "/health", &[]).status, 200);
    assert_eq!(get(gw.addr, "/alive", &[]).status, 200);
}

/// No forwarded request ever carries both framings.
fn assert_unambiguous(up: &Recorder) {
    for r in up.requests() {
        let te = r.headers_named("transfer-encoding");
        let cl = r.headers_named("content-length");
        assert!(
            te.is_empty() || cl.is_empty(),
            "forwarded with both framings: {}",
            r.head
        );
        let mut lengths: Vec<&str> = cl
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        lengths.dedup();
        assert!(
            lengths.len() <= 1,
            "forwarded with conflicting lengths: {}",
            r.head
        );
    }
}

// ---------------------------------------------------------------------------------------------

/// Content-Length together with Transfer-Encoding (RFC 9112 6.1, 6.3): pingora lets the
/// chunked framing win, drops Content-Length, and closes the connection after the response;
/// a final encoding other than `chunked`, a malformed TE header or TE on HTTP/1.0 is refused
/// 400. Either way the request that rides behind the body (`/smuggled`) never reaches the
/// upstream, and no forwarded request carries both framings.
#[test]
fn content_length_with_transfer_encoding_never_smuggles() {
    let up = Recorder::start();
    let gw = gateway(&up, json!(1));
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    // Served with the chunked framing; the connection closes after the answer.
    for (i, framing) in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
        "Content-Length: 40\r\nTransfer-Encoding: Chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n",
    ]
    .iter()
    .enumerate()
    {
        let marker = format!("/te-ok-{i}");
        let mut conn = Conn::open(gw.addr);
        let req = format!("POST {marker} HTTP/1.1\r\nHost: t\r\n{framing}\r\n0\r\n\r\n{smuggled}");
        let r = conn.send_raw(req.as_bytes()).unwrap();
        assert_eq!(r.status, 200, "{framing:?}: {}", r.text());
        assert!(
            conn.is_closed_by_peer(Duration::from_secs(5)),
            "{framing:?}: connection kept open after a CL+TE request"
        );
        let seen = up.saw(&marker);
        assert_eq!(seen.len(), 1, "{framing:?}");
        assert!(seen[0].headers_named("content-length").is_empty());
        assert!(seen[0].body.is_empty());
    }
    // Refused outright.
    for (i, framing) in [
        "Transfer-Encoding: chunked, identity\r\nContent-Length: 4\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\nContent-Length: 4\r\n",
        "Transfer-Encoding: xchunked\r\nContent-Length: 4\r\n",
        "Transfer-Encoding: identity\r\n",
        "Transfer-Encoding : chunked\r\nContent-Length: 4\r\n",
        "Transfer-Encoding:\x0bchunked\r\nContent-Length: 4\r\n",
        "Transfer-Encoding: chunked\r\n Content-Length: 4\r\n",
    ]
    .iter()
    .enumerate()
    {
        let marker = format!("/te-bad-{i}");
        let req = format!("POST {marker} HTTP/1.1\r\nHost: t\r\n{framing}\r\n0\r\n\r\n{smuggled}");
        let outcome = send(gw.addr, req.as_bytes());
        assert_refused(&outcome, framing);
        assert!(up.saw(&marker).is_empty(), "{framing:?} was forwarded");
    }
    // Transfer-Encoding on HTTP/1.0 is faulty framing (RFC 9112 6.1): 400.
    let req = format!(
        "POST /te-http10 HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{smuggled}"
    );
    assert_refused(&send(gw.addr, req.as_bytes()), "TE on HTTP/1.0");
    assert!(up.saw("/te-http10").is_empty());
    // A malformed chunk size after a forwarded head: the body is cut, never reinterpreted.
    let req = format!(
        "POST /te-badchunk HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{smuggled}"
    );
    let mut conn = Conn::open(gw.addr);
    if let Ok(r) = conn.send_raw(req.as_bytes()) {
        assert!(r.status >= 400, "malformed chunk answered {}", r.status);
    }
    assert!(conn.is_closed_by_peer(Duration::from_secs(10)));
    assert!(!up.wire().contains("/smuggled"), "smuggled: {}", up.wire());
    assert_unambiguous(&up);
    assert_alive(&gw);
}

/// Content-Length must be one decimal number (RFC 9110 8.6): conflicting or malformed values
/// are refused 400 and never forwarded.
#[test]
fn duplicate_or_malformed_content_length_is_refused() {
    let up = Recorder::start();
    let gw = gateway(&up, json!(1));
    for (i, cl) in [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 6\r\nContent-Length: 5\r\n",
        "Content-Length: 5, 6\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: -5\r\n",
        "Content-Length: 0x5\r\n",
        "Content-Length: 5 5\r\n",
        "Content-Length: 5a\r\n",
        "Content-Length: \r\n",
        "Content-Length: 99999999999999999999999\r\n",
    ]
    .iter()
    .enumerate()
    {
        let marker = format!("/cl-bad-{i}");
        let req = format!("POST {marker} HTTP/1.1\r\nHost: t\r\n{cl}\r\nhelloGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n");
        let outcome = send(gw.addr, req.as_bytes());
        assert_refused(&outcome, cl);
        assert!(up.saw(&marker).is_empty(), "{cl:?} was forwarded");
    }
    assert!(!up.wire().contains("/smuggled"));
    assert_unambiguous(&up);
    assert_alive(&gw);
}

/// Identical duplicate lengths (two lines, or the list `5, 5`) are valid framing (RFC 9110
/// 8.6: a recipient may collapse them), and pingora accepts them, but forwards them as they
/// came. An upstream that reads `5, 5` as anything but 5 (an `atoi`-style parser gets 5, a
/// strict one 400, a naive one 0) would take the body for the next request on the pooled
/// connection: the gateway must forward a single `Content-Length: 5`.
#[test]
fn identical_duplicate_content_lengths_are_forwarded_as_one() {
    let up = Recorder::start();
    let gw = gateway(&up, json!(1));
    for (i, cl) in [
        "Content-Length: 5\r\nContent-Length: 5\r\n",
        "Content-Length: 5, 5\r\n",
        "Content-Length: 5,5\r\nContent-Length: 5\r\n",
    ]
    .iter()
    .enumerate()
    {
        let marker = format!("/cl-dup-{i}");
        let req = format!("POST {marker} HTTP/1.1\r\nHost: t\r\n{cl}\r\nhello");
        match send(gw.addr, req.as_bytes()) {
            Outcome::Answered(r) => assert_eq!(r.status, 200, "{cl:?}: {}", r.text()),
            Outcome::Closed => panic!("{cl:?}: closed"),
        }
        let seen = up.saw(&marker);
        assert_eq!(seen.len(), 1, "{cl:?}");
        assert_eq!(seen[0].headers_named("content-length"), vec!["5"], "{cl:?}");
        assert_eq!(seen[0].body, b"hello", "{cl:?}");
    }
    assert_alive(&gw);
}

/// Heads: pingora accepts up to 1 MiB of request line and headers and at most 256 header
/// lines. Past that: 400, nothing forwarded. Within it, a huge value is forwarded and, as a
/// key, still charged (a second request with the same 100 KB key is limited).
#[test]
fn oversized_heads_are_refused_and_big_keys_still_pay() {
    let up = Recorder::start();
    let gw = gateway(&up, json!(60));
    let huge = "a".repeat(2 * 1024 * 1024);
    let cases = [
        (
            "2 MiB header",
            format!("GET /big-h HTTP/1.1\r\nHost: t\r\nX-Big: {huge}\r\n\r\n"),
        ),
        (
            "2 MiB request line",
            format!("GET /big-l?{huge} HTTP/1.1\r\nHost: t\r\n\r\n"),
        ),
        (
            "300 header lines",
            format!(
                "GET /many-h HTTP/1.1\r\nHost: t\r\n{}\r\n",
                (0..300)
                    .map(|i| format!("X-H{i}: v\r\n"))
                    .collect::<String>()
            ),
        ),
    ];
    for (what, req) in &cases {
        assert_refused(&send(gw.addr, req.as_bytes()), what);
    }
    assert!(up.saw("/big-").is_empty() && up.saw("/many-h").is_empty());
    // A 100 KB key is forwarded once and then limited like any other key (cost 60 of 100).
    let key = "k".repeat(100 * 1024);
    let req = format!("GET /rating/1 HTTP/1.1\r\nHost: t\r\nx-api-key: {key}\r\n\r\n");
    match send(gw.addr, req.as_bytes()) {
        Outcome::Answered(r) => assert_eq!(r.status, 200, "{}", r.text()),
        Outcome::Closed => panic!("100 KB key: closed"),
    }
    match send(gw.addr, req.as_bytes()) {
        Outcome::Answered(r) => assert_eq!(r.status, 429, "{}", r.text()),
        Outcome::Closed => panic!("100 KB key: closed"),
    }
    assert_eq!(up.saw("/rating/1").len(), 1);
    assert_alive(&gw);
}

/// How long pingora waits for the rest of a head: its downstream keep-alive timeout, 60 s per
/// read, set by pingora before the first request (tollgate has no hook to shorten it). A
/// client that stalls mid-head on a new connection is closed within that bound.
#[test]
fn a_stalled_first_head_is_closed_within_a_bounded_time() {
    let up = Recorder::start();
    let gw = gateway(&up, json!(1));
    let mut conn = Conn::open(gw.addr);
    conn.write_raw(b"GET /stalled HTTP/1.1\r\nHost: t\r\nX-Half: ")
        .unwrap();
    let t0 = Instant::now();
    assert!(
        conn.is_closed_by_peer(Duration::from_secs(75)),
        "a stalled head was kept open for 75 s"
    );
    assert!(t0.elapsed() < Duration::from_secs(75));
    assert!(up.saw("/stalled").is_empty());
    assert_alive(&gw);
}

/// The same stall on a reused keep-alive connection. After an HTTP/1.1 request without a
/// `Keep-Alive` header pingora's keep-alive becomes "infinite" (pingora-core
/// `respect_keepalive`), and that wait also covers the next head (a FIXME in pingora's
/// `read_request_buf`): a client that sends half a second request holds the connection and
/// its task forever. tollgate must put a bound back on each request.
#[test]
fn a_stalled_head_on_a_reused_connection_is_closed_within_a_bounded_time() {
    let up = Recorder::start();
    let gw = gateway(&up, json!(1));
    let mut conn = Conn::open(gw.addr);
    let r = conn
        .send_raw(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(r.status, 200);
    conn.write_raw(b"GET /stalled-again HTTP/1.1\r\nHost: t\r\nX-Half: ")
        .unwrap();
    assert!(
        conn.is_closed_by_peer(Duration::from_secs(75)),
        "a stalled second head was kept open for 75 s"
    );
    assert!(up.saw("/stalled-again").is_empty());
    assert_alive(&gw);
}

/// `{"per_bytes": 1000}` against capacity 100: the cost comes from the declared
/// Content-Length before any body is read. A declared gigabyte is 413 at once (without
/// waiting for the body, even with `Expect: 100-continue`) and closes the connection; a
/// chunked body (no declared length, also when a Content-Length rides along) is 411 and
/// charges nothing; a length past u64 is 400 (pingora); a body longer than declared is cut
/// at the declared length and the excess never becomes a request.
#[test]
fn per_byte_costs_read_the_declared_length() {
    let up = Recorder::start();
    let gw = gateway(&up, json!({ "per_bytes": 1000 }));
    let t0 = Instant::now();
    let mut conn = Conn::open(gw.addr);
    let r = conn
        .send_raw(b"POST /rating/huge HTTP/1.1\r\nHost: t\r\nx-api-key: b\r\nExpect: 100-continue\r\nContent-Length: 1000000000\r\n\r\n")
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["cost"], 1_000_000);
    assert!(conn.is_closed_by_peer(Duration::from_secs(5)));
    assert!(t0.elapsed() < Duration::from_secs(5));
    let r = Conn::open(gw.addr)
        .send_raw(b"POST /rating/max HTTP/1.1\r\nHost: t\r\nx-api-key: b\r\nContent-Length: 18446744073709551615\r\n\r\n")
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert_refused(
        &send(
            gw.addr,
            b"POST /rating/over HTTP/1.1\r\nHost: t\r\nx-api-key: b\r\nContent-Length: 18446744073709551616\r\n\r\n",
        ),
        "length past u64",
    );
    assert_eq!(remaining(&gw, "b"), 100);
    // 50,000 bytes: 50 tokens.
    let body = vec![b'x'; 50_000];
    let mut req =
        b"POST /rating/fifty HTTP/1.1\r\nHost: t\r\nx-api-key: b\r\nContent-Length: 50000\r\n\r\n"
            .to_vec();
    req.extend_from_slice(&body);
    assert_eq!(Conn::open(gw.addr).send_raw(&req).unwrap().status, 200);
    assert_eq!(remaining(&gw, "b"), 50);
    assert_eq!(up.saw("/rating/fifty")[0].body.len(), 50_000);
    // Chunked, with or without a Content-Length: 411, nothing charged, nothing forwarded.
    for framing in [
        "Transfer-Encoding: chunked\r\n",
        "Content-Length: 10\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let mut req =
            format!("POST /rating/chunked HTTP/1.1\r\nHost: t\r\nx-api-key: b\r\n{framing}\r\n")
                .into_bytes();
        for _ in 0..64 {
            req.extend_from_slice(b"400\r\n");
            req.extend_from_slice(&[b'y'; 1024]);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        match send(gw.addr, &req) {
            Outcome::Answered(r) => assert_eq!(r.status, 411, "{framing:?}: {}", r.text()),
            Outcome::Closed => panic!("{framing:?}: closed without 411"),
        }
    }
    assert!(up.saw("/rating/chunked").is_empty());
    assert_eq!(remaining(&gw, "b"), 50);
    // Declares 10 bytes, sends 10 then a request: charged 1, the tail never forwarded.
    let r = Conn::open(gw.addr)
        .send_raw(b"POST /rating/liar HTTP/1.1\r\nHost: t\r\nx-api-key: b\r\nContent-Length: 10\r\n\r\n0123456789GET /rating/tail HTTP/1.1\r\nHost: t\r\nx-api-key: c\r\n\r\n")
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(remaining(&gw, "b"), 49);
    assert_eq!(up.saw("/rating/liar")[0].body, b"0123456789");
    assert!(up.saw("/rating/tail").is_empty());
    assert_eq!(remaining(&gw, "c"), 100);
    assert_unambiguous(&up);
    assert_alive(&gw);
}

/// Bytes that are not HTTP/1.x (TLS and HTTP/2 prefaces, HTTP/0.9, an unknown version, NULs,
/// random binary, bare line ends) are refused with 4xx or a close; none is forwarded.
#[test]
fn garbage_is_refused_and_the_gateway_survives() {
    let up = Recorder::start();
    let gw = gateway(&up, json!(1));
    let mut noise = Vec::with_capacity(8192);
    let mut x: u32 = 0x1234_5678;
    for _ in 0..8192 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push((x >> 24) as u8);
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "TLS ClientHello",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage/g1".to_vec(),
        ),
        (
            "HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ),
        ("HTTP/0.9", b"GET /g2\r\n\r\n".to_vec()),
        ("HTTP/9.9", b"GET /g3 HTTP/9.9\r\nHost: t\r\n\r\n".to_vec()),
        (
            "NUL in method",
            b"G\x00ET /g4 HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
        ),
        (
            "NUL header line",
            b"GET /g5 HTTP/1.1\r\nHost: t\r\n\x00\r\n\r\n".to_vec(),
        ),
        (
            "header without colon",
            b"GET /g6 HTTP/1.1\r\nHost: t\r\nnocolon\r\n\r\n".to_vec(),
        ),
        ("random binary", noise),
    ];
    for (what, bytes) in &cases {
        assert_refused(&send(gw.addr, bytes), what);
    }
    // Line ends alone and a peer that closes mid-head are no requests at all.
    for bytes in [&b"\r\n\r\n\r\n\r\n"[..], b"GET /g7 HTTP/1.1\r\nHo"] {
        let mut conn = Conn::open(gw.addr);
        conn.write_raw(bytes).unwrap();
        drop(conn);
    }
    for marker in ["/g1", "/g2", "/g3", "/g4", "/g5", "/g6", "/g7"] {
        assert!(up.saw(marker).is_empty(), "{marker} was forwarded");
    }
    assert_alive(&gw);
}

/// 500 connections opened at once (half of them stalled mid-head, half idle), then a normal
/// request on a new connection is still answered promptly, and the gateway survives them.
#[test]
fn a_connection_flood_does_not_stop_the_gateway() {
    let up = Recorder::start();
    let gw = gateway(&up, json!(1));
    let mut flood = Vec::with_capacity(500);
    for i in 0..500 {
        let s = TcpStream::connect(gw.addr).expect("open flood connection");
        if i % 2 == 0 {
            let _ = (&s).write_all(b"GET /flood HTTP/1.1\r\nHost: t\r\nX-Half: ");
        }
        flood.push(s);
    }
    let t0 = Instant::now();
    let r = Conn::open(gw.addr)
        .request("GET", "/rating/1", &[("x-api-key", "flood")], b"")
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "answered after {:?} under a flood",
        t0.elapsed()
    );
    assert_eq!(remaining(&gw, "flood"), 99);
    assert_alive(&gw);
    drop(flood);
    assert!(wait_until(Duration::from_secs(10), || get(
        gw.addr,
        "/after-flood",
        &[]
    )
    .status
        == 200));
    assert!(up.saw("/flood").is_empty());
    assert_alive(&gw);
}
