//! How HTTP/1 response header names are spelled: lower case by default (pingora's title case
//! for the standard names it knows), the upstream's own spelling with `preserve_header_case`.
//! The upstream here spells its headers in mixed case and sends a non-standard reason phrase.

mod common;

use common::Gateway;
use serde_json::{json, Value};
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

const REPLY: &[u8] = b"HTTP/1.1 200 Fine Thanks\r\nX-Request-ID: 7\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";

/// An upstream that answers every request (keep-alive) with [`REPLY`].
fn mixed_case_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(read_half) = stream.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(read_half);
                let mut writer = stream;
                while common::read_request_head(&mut reader) {
                    if writer.write_all(REPLY).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn config(upstream: SocketAddr, preserve: Option<bool>) -> Value {
    let mut c = json!({
        "node_id": "case-node",
        "upstreams": { "api": { "servers": [upstream.to_string()] } },
        "limits": { "per-key": { "capacity": 100, "refill_per_second": 1.0, "key": ["header:x-api-key"] } },
        "routes": [{ "name": "rating", "match": { "path_prefix": "/" }, "upstream": "api", "limits": ["per-key"] }],
    });
    if let Some(p) = preserve {
        c["preserve_header_case"] = json!(p);
    }
    c
}

/// The raw response head: the status line and the header lines as sent.
fn raw_head(gw: &Gateway) -> (String, Vec<String>) {
    let mut s = TcpStream::connect(gw.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /rating/1 HTTP/1.1\r\nHost: api.test\r\nx-api-key: k\r\nConnection: close\r\n\r\n",
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.split("\r\n").map(str::to_string);
    let status = lines.next().unwrap_or_default();
    (status, lines.collect())
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
    let gw = Gateway::start(config(up, None));
    let (status, headers) = raw_head(&gw);
    assert_eq!(status, "HTTP/1.1 200 Fine Thanks", "{headers:?}");
    let names = names(&headers);
    for want in [
        "x-request-id",
        "ratelimit-policy",
        "ratelimit",
        "Content-Type",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
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
    let gw = Gateway::start(config(up, Some(true)));
    let (status, headers) = raw_head(&gw);
    assert_eq!(status, "HTTP/1.1 200 Fine Thanks", "{headers:?}");
    let names = names(&headers);
    for want in [
        "X-Request-ID",
        "RateLimit-Policy",
        "RateLimit",
        "Content-Type",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    assert!(
        headers.contains(&"RateLimit-Policy: \"per-key\";q=100;w=100".to_string()),
        "{headers:?}"
    );
    // The setting is reloadable: back to the default.
    gw.rewrite_config(config(up, Some(false)));
    let r = common::request(gw.admin, "POST", "/reload", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            names_now(&gw).contains(&"x-request-id".to_string())
        }),
        "still {:?}",
        names_now(&gw)
    );
}

fn names_now(gw: &Gateway) -> Vec<String> {
    let (_, headers) = raw_head(gw);
    names(&headers).into_iter().map(str::to_string).collect()
}
