//! How HTTP/1 response header names are spelled: lower case by default (pingora's title case
//! for the standard names it knows), the upstream's own spelling with `preserve_header_case`.
//! The upstream here spells its headers in mixed case and sends a non-standard reason phrase.

mod common;

use common::Gateway;
use serde_json::{json, Value};
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const REPLY: &[u8] = b"HTTP/1.1 200 Fine Thanks\r\nX-Request-ID: 7\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";

/// An upstream that answers every request (keep-alive) with [`REPLY`], and keeps the request
/// heads it received.
struct MixedCaseUpstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

fn mixed_case_upstream() -> MixedCaseUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let Ok(read_half) = stream.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(read_half);
                let mut writer = stream;
                while let Some(head) = common::read_request_head(&mut reader) {
                    seen.lock().unwrap().push(head);
                    if writer.write_all(REPLY).is_err() {
                        return;
                    }
                }
            });
        }
    });
    MixedCaseUpstream { addr, heads }
}

impl MixedCaseUpstream {
    /// The head of the last request received.
    fn last_head(&self) -> String {
        self.heads
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default()
    }

    /// The request line of the last request received.
    fn last_request_line(&self) -> String {
        self.last_head()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

fn config(upstream: &MixedCaseUpstream, preserve: Option<bool>) -> Value {
    let mut c = json!({
        "node_id": "case-node",
        "upstreams": { "api": { "servers": [upstream.addr.to_string()] } },
        "limits": {
            "per-key": { "capacity": 100, "refill_per_second": 1.0, "key": ["header:x-api-key"] },
            "tight": { "capacity": 1, "refill_per_second": 0.01, "key": ["route"] },
        },
        "routes": [
            { "name": "tight", "match": { "path_prefix": "/tight" }, "upstream": "api", "limits": ["tight"] },
            { "name": "rating", "match": { "path_prefix": "/" }, "upstream": "api", "limits": ["per-key"] },
        ],
    });
    if let Some(p) = preserve {
        c["preserve_header_case"] = json!(p);
    }
    c
}

/// The raw response head to `GET target`: the status line and the header lines as sent.
fn raw_head_of(gw: &Gateway, target: &str) -> (String, Vec<String>) {
    let mut s = TcpStream::connect(gw.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: api.test\r\nx-api-key: k\r\nX-Custom-Thing: 1\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.split("\r\n").map(str::to_string);
    let status = lines.next().unwrap_or_default();
    (status, lines.collect())
}

fn raw_head(gw: &Gateway) -> (String, Vec<String>) {
    raw_head_of(gw, "/rating/1")
}

/// The header names of the gateway's own 429 (the second request to `/tight`).
fn names_of_429(gw: &Gateway) -> Vec<String> {
    raw_head_of(gw, "/tight");
    let (status, headers) = raw_head_of(gw, "/tight");
    assert!(status.starts_with("HTTP/1.1 429"), "{status} {headers:?}");
    names(&headers).into_iter().map(str::to_string).collect()
}

/// Asserts that every name of `want` is among `names`.
fn assert_has_names<N: AsRef<str> + std::fmt::Debug>(names: &[N], want: &[&str]) {
    for w in want {
        assert!(
            names.iter().any(|n| n.as_ref() == *w),
            "{w} not in {names:?}"
        );
    }
}

fn names(headers: &[String]) -> Vec<&str> {
    headers
        .iter()
        .filter_map(|l| l.split_once(':').map(|(n, _)| n))
        .collect()
}

#[test]
fn header_names_are_lower_case_by_default() {
    let up = mixed_case_upstream();
    let gw = Gateway::start(config(&up, None));
    let (status, headers) = raw_head(&gw);
    // On the way up too, with the gateway's own headers.
    let sent = up.last_head();
    assert!(sent.contains("x-custom-thing: 1\r\n"), "{sent}");
    assert!(sent.contains("x-forwarded-for: 127.0.0.1\r\n"), "{sent}");
    assert!(sent.contains("x-forwarded-proto: http\r\n"), "{sent}");
    assert_eq!(status, "HTTP/1.1 200 Fine Thanks", "{headers:?}");
    let names = names(&headers);
    assert_has_names(
        &names,
        &[
            "x-request-id",
            "ratelimit-policy",
            "ratelimit",
            "Content-Type",
        ],
    );
    for unwanted in ["X-Request-ID", "RateLimit-Policy", "RateLimit"] {
        assert!(!names.contains(&unwanted), "{unwanted} in {names:?}");
    }
    assert!(
        headers.contains(&"ratelimit: \"per-key\";r=99;t=1".to_string()),
        "{headers:?}"
    );
    assert!(
        headers.contains(&"x-request-id: 7".to_string()),
        "{headers:?}"
    );
}

#[test]
fn preserve_header_case_keeps_the_upstreams_spelling() {
    let up = mixed_case_upstream();
    let gw = Gateway::start(config(&up, Some(true)));
    let (status, headers) = raw_head(&gw);
    let sent = up.last_head();
    assert!(sent.contains("X-Custom-Thing: 1\r\n"), "{sent}");
    assert!(sent.contains("x-forwarded-for: 127.0.0.1\r\n"), "{sent}");
    // Request targets reach the upstream byte for byte the same in both modes.
    let targets = [
        "/rating/1?b=%2F&a=1",
        "http://api.test/rating/2?q=1",
        "/rating//3/./x",
    ];
    let mut preserved = Vec::new();
    for t in targets {
        raw_head_of(&gw, t);
        preserved.push(up.last_request_line());
    }
    assert_eq!(status, "HTTP/1.1 200 Fine Thanks", "{headers:?}");
    let names = names(&headers);
    assert_has_names(
        &names,
        &[
            "X-Request-ID",
            "RateLimit-Policy",
            "RateLimit",
            "Content-Type",
        ],
    );
    assert!(
        headers.contains(&"RateLimit-Policy: \"per-key\";q=100;w=100".to_string()),
        "{headers:?}"
    );
    assert_has_names(
        &names_of_429(&gw),
        &[
            "RateLimit-Policy",
            "RateLimit",
            "Retry-After",
            "Content-Type",
        ],
    );
    // The setting is reloadable: back to the default.
    gw.rewrite_config(config(&up, Some(false)));
    let r = common::request(gw.admin, "POST", "/reload", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            names_now(&gw).contains(&"x-request-id".to_string())
        }),
        "still {:?}",
        names_now(&gw)
    );
    for (t, before) in targets.iter().zip(&preserved) {
        raw_head_of(&gw, t);
        assert_eq!(&up.last_request_line(), before, "request line for {t}");
    }
}

fn names_now(gw: &Gateway) -> Vec<String> {
    let (_, headers) = raw_head(gw);
    names(&headers).into_iter().map(str::to_string).collect()
}
