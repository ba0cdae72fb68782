//! The example upstream on its own: the echo must report exactly what arrived on the wire,
//! since the proxy tests judge tollgate by it.

mod common;

use common::{get, request, wait_until, Conn, Upstream};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn header_pairs(echo: &Value) -> Vec<(String, String)> {
    echo["headers"]
        .as_array()
        .expect("headers is an array")
        .iter()
        .map(|h| (h[0].as_str().unwrap().into(), h[1].as_str().unwrap().into()))
        .collect()
}

#[test]
fn health() {
    let up = Upstream::start();
    let r = get(up.addr, "/health", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), json!({"status": "ok"}));
}

#[test]
fn echo_preserves_method_target_header_order_and_body() {
    let up = Upstream::start();
    let mut conn = Conn::open(up.addr);
    let r = conn
        .send_raw(
            b"PUT //a/./b/%72ating?x=1&y=%20&x=2 HTTP/1.1\r\nHost: h\r\nX-First: 1\r\n\
              x-second:  two  \r\nX-FIRST: 3\r\nContent-Length: 5\r\n\r\nhello",
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let echo = &r.json()["request"];
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["target"], "//a/./b/%72ating?x=1&y=%20&x=2");
    assert_eq!(echo["version"], "HTTP/1.1");
    let expected = [
        ("Host", "h"),
        ("X-First", "1"),
        ("x-second", "two"),
        ("X-FIRST", "3"),
        ("Content-Length", "5"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert_eq!(header_pairs(echo), expected);
    assert_eq!(echo["body"], "hello");
    assert_eq!(echo["body_len"], 5);
    assert!(
        echo["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{echo}"
    );

    // The catch-all answers any method on any path.
    let r = request(up.addr, "DELETE", "/anything/else", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["request"]["method"], "DELETE");
}

#[test]
fn echo_reads_chunked_bodies_with_extensions_and_trailers() {
    let up = Upstream::start();
    let mut conn = Conn::open(up.addr);
    let r = conn
        .send_raw(
            b"POST /rating/abc HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
              4\r\nwiki\r\n5;name=value\r\npedia\r\nB\r\n in\r\nchunks\r\n0\r\nX-Trailer: t\r\n\r\n",
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["item"], "abc");
    assert_eq!(v["accepted"], true);
    assert_eq!(v["request"]["body"], "wikipedia in\r\nchunks");
    assert_eq!(v["request"]["body_len"], 20);
    // The connection stays usable after a chunked body.
    let r = conn.request("GET", "/after", &[], b"").unwrap();
    assert_eq!(r.json()["request"]["target"], "/after");
}

#[test]
fn large_bodies_are_counted_not_echoed() {
    let up = Upstream::start();
    let body = vec![b'z'; 70 * 1024];
    let r = request(up.addr, "POST", "/upload", &[], &body);
    assert_eq!(r.json()["request"]["body_len"], body.len());
    assert_eq!(r.json()["request"]["body"], Value::Null);

    let r = get(up.addr, "/big?bytes=100000", &[]);
    assert_eq!(r.status, 200);
    let data = r.json()["data"].as_str().unwrap().to_string();
    assert_eq!(data.len(), 100_000);
    assert!(data.bytes().all(|b| b == b'x'));
}

#[test]
fn keep_alive_pipelining_and_http10_close() {
    let up = Upstream::start();
    let mut conn = Conn::open(up.addr);
    let first = conn.request("GET", "/one", &[], b"").unwrap();
    let second = conn.request("POST", "/two", &[], b"body").unwrap();
    assert_eq!(first.json()["request"]["target"], "/one");
    assert_eq!(second.json()["request"]["body"], "body");
    assert_eq!(
        first.json()["request"]["peer"],
        second.json()["request"]["peer"]
    );

    // Two requests in one write: two responses, in order.
    conn.write_raw(b"GET /p1 HTTP/1.1\r\nHost: h\r\n\r\nGET /p2 HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    assert_eq!(
        conn.read_response(false).unwrap().json()["request"]["target"],
        "/p1"
    );
    assert_eq!(
        conn.read_response(false).unwrap().json()["request"]["target"],
        "/p2"
    );
    assert!(!conn.is_closed_by_peer(Duration::from_millis(100)));

    // HTTP/1.0 and `Connection: close` end the connection after the response.
    let mut conn = Conn::open(up.addr);
    let r = conn.send_raw(b"GET /old HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(r.json()["request"]["version"], "HTTP/1.0");
    assert!(conn.is_closed_by_peer(Duration::from_secs(5)));
    let mut conn = Conn::open(up.addr);
    let r = conn
        .request("GET", "/", &[("Connection", "close")], b"")
        .unwrap();
    assert_eq!(r.header("connection"), Some("close"));
    assert!(conn.is_closed_by_peer(Duration::from_secs(5)));
}

#[test]
fn status_rating_and_slow_endpoints() {
    let up = Upstream::start();
    let r = get(up.addr, "/status/503", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], 503);
    assert_eq!(r.json()["request"]["target"], "/status/503");
    assert_eq!(get(up.addr, "/status/99", &[]).status, 400);

    // 204 has no body, and the connection still frames the next response correctly.
    let mut conn = Conn::open(up.addr);
    let r = conn.request("GET", "/status/204", &[], b"").unwrap();
    assert_eq!((r.status, r.body.len()), (204, 0));
    assert_eq!(
        conn.request("GET", "/health", &[], b"").unwrap().status,
        200
    );

    let a = get(up.addr, "/rating/widget?x=1", &[]).json();
    let b = get(up.addr, "/rating/widget", &[]).json();
    assert_eq!(a["item"], "widget");
    assert_eq!((&a["rating"], &a["votes"]), (&b["rating"], &b["votes"]));
    let rating = a["rating"].as_f64().unwrap();
    assert!((1.0..=5.0).contains(&rating), "{a}");
    assert_eq!(a["request"]["target"], "/rating/widget?x=1");

    let start = Instant::now();
    let r = get(up.addr, "/slow?ms=50", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["slept_ms"], 50);
    assert!(start.elapsed() >= Duration::from_millis(50));
    assert_eq!(get(up.addr, "/slow", &[]).status, 400);
}

#[test]
fn malformed_requests_get_an_error_and_a_close() {
    let up = Upstream::start();
    let oversized = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let cases: [(&[u8], u16); 7] = [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
        ),
        (oversized.as_bytes(), 431),
    ];
    for (raw, status) in cases {
        let mut conn = Conn::open(up.addr);
        let r = conn.send_raw(raw).unwrap();
        let shown = String::from_utf8_lossy(&raw[..raw.len().min(60)]).into_owned();
        assert_eq!(r.status, status, "{shown:?}");
        assert!(r.json()["error"].is_string(), "{shown:?}");
        assert!(conn.is_closed_by_peer(Duration::from_secs(5)), "{shown:?}");
    }
    // Still serving.
    assert_eq!(get(up.addr, "/health", &[]).status, 200);
}

#[test]
fn sigterm_exits_zero() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rating-api"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("rating-api listening on 127.0.0.1:"),
        "{line}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn inflight_counts_the_requests_being_served_and_their_peak() {
    let up = Upstream::start();
    let inflight = |target: &str| {
        let v = get(up.addr, target, &[]).json();
        (v["in_flight"].as_u64().unwrap(), v["max"].as_u64().unwrap())
    };
    // Its own request is not counted.
    assert_eq!(inflight("/inflight"), (0, 0));
    // Six slow requests at once, on connections of their own: four /slow, two /v1/complete.
    let addr = up.addr;
    let slow: Vec<_> = (0..6)
        .map(|i| {
            let target = if i < 4 {
                "/slow?ms=3000"
            } else {
                "/v1/complete?ms=3000&tokens=5"
            };
            std::thread::spawn(move || get(addr, target, &[]).status)
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || inflight("/inflight").0 == 6),
        "{:?}",
        inflight("/inflight")
    );
    assert_eq!(inflight("/inflight"), (6, 6));
    // A reset answers the peak so far and starts again from the requests in flight now.
    assert_eq!(inflight("/inflight?reset=1"), (6, 6));
    assert_eq!(inflight("/inflight"), (6, 6));
    for h in slow {
        assert_eq!(h.join().unwrap(), 200);
    }
    // Each is counted until its response has been written: the count returns to zero, the
    // peak stays until the next reset.
    assert!(
        wait_until(Duration::from_secs(10), || inflight("/inflight").0 == 0),
        "{:?}",
        inflight("/inflight")
    );
    assert_eq!(inflight("/inflight?reset=1"), (0, 6));
    assert_eq!(inflight("/inflight"), (0, 0));
    // Another endpoint's request counts while it is served, then the peak shows it.
    assert_eq!(get(up.addr, "/rating/1", &[]).status, 200);
    let done = || inflight("/inflight") == (0, 1);
    assert!(wait_until(Duration::from_secs(10), done));
}
