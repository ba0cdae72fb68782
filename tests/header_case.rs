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

/// The header lines of [`REPLY`], spelled as the upstream sends them.
const UPSTREAM_HEADERS: [(&str, &str); 3] = [
    ("X-Request-ID", "7"),
    ("Content-Type", "application/json"),
    ("Content-Length", "2"),
];

/// The end-to-end request headers the client sends (besides `Connection: close`), spelled as
/// it sends them.
const CLIENT_HEADERS: [(&str, &str); 3] = [
    ("Host", "api.test"),
    ("x-api-key", "k"),
    ("X-Custom-Thing", "1"),
];

/// The standard names pingora writes title-cased when the case is not kept
/// (`docs/http.md`, "Header names"), in lower case.
const TITLE_CASED: [&str; 6] = [
    "content-type",
    "content-length",
    "date",
    "connection",
    "server",
    "host",
];

/// How a header line spelled `name: value` by its sender goes out by default: the name in
/// lower case, or title-cased for the standard names of [`TITLE_CASED`].
fn default_line(name: &str, value: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let name = if TITLE_CASED.contains(&lower.as_str()) {
        lower
            .split('-')
            .map(|w| w[..1].to_ascii_uppercase() + &w[1..])
            .collect::<Vec<_>>()
            .join("-")
    } else {
        lower
    };
    format!("{name}: {value}")
}

/// The header lines of a request head as the upstream read it (without the request line).
fn head_lines(head: &str) -> Vec<String> {
    head.lines().skip(1).map(str::to_string).collect()
}

/// Asserts that every line of `want` is one of `lines`, byte for byte.
fn assert_has_lines(lines: &[String], want: &[String], what: &str) {
    for w in want {
        assert!(lines.contains(w), "{what}: {w:?} not in {lines:?}");
    }
}

/// An upstream that answers every request (keep-alive) with [`REPLY`], and keeps the request
/// heads it received.
struct MixedCaseUpstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

fn mixed_case_upstream() -> MixedCaseUpstream {
    upstream_replying(REPLY)
}

/// An upstream that answers every request (keep-alive) with `reply`.
fn upstream_replying(reply: &'static [u8]) -> MixedCaseUpstream {
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
                    if writer.write_all(reply).is_err() {
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

/// What the client gets for `GET target` (with [`CLIENT_HEADERS`]), whole.
fn response_text(gw: &Gateway, target: &str) -> String {
    let mut s = TcpStream::connect(gw.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!("GET {target} HTTP/1.1\r\n");
    for (name, value) in CLIENT_HEADERS {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    s.write_all(request.as_bytes()).expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    text
}

/// A response head's status line and header lines.
fn split_head(head: &str) -> (String, Vec<String>) {
    let mut lines = head.split("\r\n").map(str::to_string);
    let status = lines.next().unwrap_or_default();
    (status, lines.collect())
}

/// The raw response head to `GET target`: the status line and the header lines as sent.
fn raw_head_of(gw: &Gateway, target: &str) -> (String, Vec<String>) {
    let text = response_text(gw, target);
    split_head(text.split("\r\n\r\n").next().unwrap_or_default())
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

/// Request targets of every form; each reaches the upstream byte for byte as the client sent
/// it, in both modes (`docs/http.md`: "forwarded as they came either way").
const TARGETS: [&str; 3] = [
    "/rating/1?b=%2F&a=1",
    "http://api.test/rating/2?q=1",
    "/rating//3/./x",
];

/// Sends each of [`TARGETS`] and asserts that the upstream's request line is exactly the
/// client's.
fn assert_targets_forwarded_as_sent(gw: &Gateway, up: &MixedCaseUpstream, mode: &str) {
    for t in TARGETS {
        raw_head_of(gw, t);
        assert_eq!(
            up.last_request_line(),
            format!("GET {t} HTTP/1.1"),
            "{mode}: request line for {t}"
        );
    }
}

#[test]
fn header_names_are_lower_case_by_default() {
    let up = mixed_case_upstream();
    let gw = Gateway::builder(config(&up, None)).start();
    let (status, headers) = raw_head(&gw);
    // On the way up: the client's names lower-cased (Host title-cased), and the gateway's own.
    let sent = head_lines(&up.last_head());
    let mut want: Vec<String> = CLIENT_HEADERS
        .iter()
        .map(|(n, v)| default_line(n, v))
        .collect();
    want.extend([
        "x-forwarded-for: 127.0.0.1".to_string(),
        "x-forwarded-proto: http".to_string(),
    ]);
    assert_eq!(
        want[..3],
        ["Host: api.test", "x-api-key: k", "x-custom-thing: 1"],
        "the default spelling of the client's headers"
    );
    assert_has_lines(&sent, &want, "to the upstream");
    assert!(
        !sent.iter().any(|l| l.starts_with("X-Custom-Thing:")),
        "{sent:?}"
    );
    // On the way down: the upstream's names the same way, and the rate-limit headers.
    assert_eq!(status, "HTTP/1.1 200 Fine Thanks", "{headers:?}");
    let mut want: Vec<String> = UPSTREAM_HEADERS
        .iter()
        .map(|(n, v)| default_line(n, v))
        .collect();
    want.extend([
        "ratelimit-policy: \"per-key\";q=100;w=100".to_string(),
        "ratelimit: \"per-key\";r=99;t=1".to_string(),
    ]);
    assert_eq!(
        want[..3],
        [
            "x-request-id: 7",
            "Content-Type: application/json",
            "Content-Length: 2"
        ],
        "the default spelling of the upstream's headers"
    );
    assert_has_lines(&headers, &want, "to the client");
    let names = names(&headers);
    for unwanted in ["X-Request-ID", "RateLimit-Policy", "RateLimit"] {
        assert!(!names.contains(&unwanted), "{unwanted} in {names:?}");
    }
    assert_targets_forwarded_as_sent(&gw, &up, "default");
    // The setting is reloadable this way too: requests and responses read after the reload
    // keep their spelling (each is read with or without it as the running config says).
    reload_header_case(&gw, &up, true);
}

#[test]
fn preserve_header_case_keeps_the_upstreams_spelling() {
    let up = mixed_case_upstream();
    let gw = Gateway::builder(config(&up, Some(true))).start();
    let (status, headers) = raw_head(&gw);
    // On the way up: every header line exactly as the client sent it, and the gateway's own.
    let sent = head_lines(&up.last_head());
    let mut want: Vec<String> = CLIENT_HEADERS
        .iter()
        .map(|(n, v)| format!("{n}: {v}"))
        .collect();
    want.extend([
        "x-forwarded-for: 127.0.0.1".to_string(),
        "x-forwarded-proto: http".to_string(),
    ]);
    assert_has_lines(&sent, &want, "to the upstream");
    // On the way down: every header line exactly as the upstream sent it, and the rate-limit
    // headers as the draft spells them.
    assert_eq!(status, "HTTP/1.1 200 Fine Thanks", "{headers:?}");
    let mut want: Vec<String> = UPSTREAM_HEADERS
        .iter()
        .map(|(n, v)| format!("{n}: {v}"))
        .collect();
    want.extend([
        "RateLimit-Policy: \"per-key\";q=100;w=100".to_string(),
        "RateLimit: \"per-key\";r=99;t=1".to_string(),
    ]);
    assert_has_lines(&headers, &want, "to the client");
    assert!(!names(&headers).contains(&"x-request-id"), "{headers:?}");
    assert_targets_forwarded_as_sent(&gw, &up, "preserve_header_case");
    // The gateway's own 429 spells its names as the draft and RFC 9110 do.
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
    reload_header_case(&gw, &up, false);
    assert_targets_forwarded_as_sent(&gw, &up, "default after the reload");
}

/// Reloads with `preserve_header_case` set to `preserve` and checks that what is read after
/// the reload goes on spelled accordingly: the upstream's `X-Request-ID` to the client and the
/// client's `X-Custom-Thing` to the upstream.
fn reload_header_case(gw: &Gateway, up: &MixedCaseUpstream, preserve: bool) {
    let spelled = |name: &str| {
        if preserve {
            name.to_string()
        } else {
            name.to_ascii_lowercase()
        }
    };
    gw.rewrite_config(config(up, Some(preserve)));
    let r = common::request(gw.admin, "POST", "/reload", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let name = spelled("X-Request-ID");
    assert!(
        common::wait_until(Duration::from_secs(10), || names_now(gw).contains(&name)),
        "still {:?}",
        names_now(gw)
    );
    let sent = head_lines(&up.last_head());
    let line = format!("{}: 1", spelled("X-Custom-Thing"));
    assert_has_lines(&sent, &[line], "to the upstream after the reload");
}

fn names_now(gw: &Gateway) -> Vec<String> {
    let (_, headers) = raw_head(gw);
    names(&headers).into_iter().map(str::to_string).collect()
}

/// A reply carrying the upstream's own rate-limit fields (it limits too), one of them spelled
/// in mixed case.
const REPLY_WITH_RATE_LIMIT: &[u8] = b"HTTP/1.1 200 OK\r\nRateLimit-Policy: \"upstream\";q=5;w=5\r\nratelimit: \"upstream\";r=4;t=1\r\nContent-Length: 2\r\n\r\n{}";

/// The same after an interim `100 Continue`.
const REPLY_AFTER_CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nRateLimit-Policy: \"upstream\";q=5;w=5\r\nratelimit: \"upstream\";r=4;t=1\r\nContent-Length: 2\r\n\r\n{}";

/// The gateway's `RateLimit-Policy` and `RateLimit` replace the upstream's, in both modes: a
/// client sees one of each, the gateway's (they are written after the response's fields,
/// outside pingora's header map, so the upstream's are taken out first).
#[test]
fn the_gateways_rate_limit_fields_replace_the_upstreams() {
    for (reply, preserve, policy, rate_limit) in [
        (REPLY_WITH_RATE_LIMIT, None, "ratelimit-policy", "ratelimit"),
        (
            REPLY_WITH_RATE_LIMIT,
            Some(true),
            "RateLimit-Policy",
            "RateLimit",
        ),
        // An interim head first: the fields go on the final one, which loses the upstream's.
        (REPLY_AFTER_CONTINUE, None, "ratelimit-policy", "ratelimit"),
    ] {
        let up = upstream_replying(reply);
        let gw = Gateway::builder(config(&up, preserve)).start();
        let (status, headers) = final_head(&gw);
        assert!(status.starts_with("HTTP/1.1 200"), "{status} {headers:?}");
        let theirs: Vec<&String> = (headers.iter())
            .filter(|l| l.to_ascii_lowercase().starts_with("ratelimit"))
            .collect();
        assert_eq!(
            theirs,
            [
                &format!("{policy}: \"per-key\";q=100;w=100"),
                &format!("{rate_limit}: \"per-key\";r=99;t=1"),
            ],
            "{preserve:?}: {headers:?}"
        );
        // The response's own fields are all there.
        assert!(
            headers.contains(&"Content-Length: 2".to_string()),
            "{headers:?}"
        );
    }
}

/// The final response head to `GET /rating/1` (after any interim `1xx` heads the client got).
fn final_head(gw: &Gateway) -> (String, Vec<String>) {
    let text = response_text(gw, "/rating/1");
    split_head(
        (text.split("\r\n\r\n"))
            .find(|h| !h.starts_with("HTTP/1.1 1"))
            .unwrap_or_default(),
    )
}
