//! Limit-bypass attempts against the real gateway: every trick must be charged to the bucket
//! of the plain request it imitates, or be refused (400), never earn a fresh bucket or an
//! unlimited route.
//!
//! Buckets are small and refill at 0.001 token/s, so nothing refills during a test: a 429
//! proves the request was charged to the exhausted bucket, and the admin peek
//! (`GET /rating?limit=&key=`) shows which bucket paid.

mod common;

use common::{get, wait_until, Conn, Gateway, Response, Upstream};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Practically no refill during a test.
const RATE: f64 = 0.001;

fn config(upstream: SocketAddr, limits: Value, routes: Value) -> Value {
    json!({
        "node_id": "bypass-test",
        "upstreams": { "api": { "servers": [upstream.to_string()], "connect_timeout_ms": 500, "read_timeout_ms": 5000 } },
        "limits": limits,
        "routes": routes,
    })
}

/// One limited route `/rating` keyed by `key`, and an unlimited catch-all: a request that
/// escapes the `/rating` route is served for free, so a 200 there would be a bypass.
fn rating_route(upstream: SocketAddr, capacity: u64, key: Value) -> Value {
    config(
        upstream,
        json!({ "lim": { "capacity": capacity, "refill_per_second": RATE, "key": key } }),
        json!([
            { "name": "rating", "match": { "path_prefix": "/rating" }, "upstream": "api", "limits": ["lim"] },
            { "name": "free", "match": { "path_prefix": "/" }, "upstream": "api" }
        ]),
    )
}

/// Percent-encodes everything but unreserved characters (for admin query strings).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Tokens left in bucket `key` of limit `limit`, read from the admin API without consuming.
fn remaining(gw: &Gateway, limit: &str, key: &str) -> u64 {
    let peek = get(
        gw.admin,
        &format!("/rating?limit={}&key={}", enc(limit), enc(key)),
        &[],
    );
    assert_eq!(peek.status, 200, "peek {limit}/{key}: {}", peek.text());
    peek.json()["remaining"]
        .as_u64()
        .unwrap_or_else(|| panic!("peek {limit}/{key}: {}", peek.text()))
}

/// Sends `bytes` on a new connection and reads one response.
fn raw(addr: SocketAddr, bytes: &[u8]) -> Response {
    Conn::open(addr)
        .send_raw(bytes)
        .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(bytes)))
}

/// `GET target` with the given extra header lines (each ending in CRLF) on a new connection.
fn get_with(addr: SocketAddr, target: &str, header_lines: &str) -> Response {
    raw(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: t\r\n{header_lines}\r\n").as_bytes(),
    )
}

/// The values of header `name` that the upstream (`rating-api`) received, from its echo.
fn echoed(r: &Response, name: &str) -> Vec<String> {
    r.json()["request"]["headers"]
        .as_array()
        .expect("echoed headers")
        .iter()
        .filter(|p| p[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|p| p[1].as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Client IP spoofing.

/// With `trusted_proxies` empty the test client (127.0.0.1) is an untrusted peer: no header it
/// sends (`X-Forwarded-For`, `Forwarded`, `X-Real-IP`, `True-Client-IP`, `CF-Connecting-IP`,
/// one or several XFF lines) changes its `client_ip`, so all of them pay the 127.0.0.1 bucket,
/// and the spoofed XFF is replaced upstream by the real peer.
#[test]
fn spoofed_client_ip_headers_from_an_untrusted_peer_pay_the_peer_bucket() {
    let up = Upstream::start();
    let gw = Gateway::builder(rating_route(up.addr, 2, json!(["client_ip"]))).start();
    let first = get_with(gw.addr, "/rating/1", "X-Forwarded-For: 1.2.3.4\r\n");
    assert_eq!(first.status, 200);
    assert_eq!(echoed(&first, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(
        get_with(gw.addr, "/rating/1", "Forwarded: for=5.6.7.8\r\n").status,
        200
    );
    for spoof in [
        "X-Forwarded-For: 9.9.9.9\r\n",
        "X-Forwarded-For: 9.9.9.8, 9.9.9.9\r\n",
        "X-Forwarded-For: 9.9.9.7\r\nX-Forwarded-For: 9.9.9.6\r\n",
        "x-forwarded-for: 2001:db8::1\r\n",
        "Forwarded: for=\"[2001:db8::2]\";proto=https\r\n",
        "X-Real-IP: 9.9.9.5\r\n",
        "True-Client-IP: 9.9.9.4\r\n",
        "CF-Connecting-IP: 9.9.9.3\r\n",
        "X-Client-IP: 9.9.9.2\r\n",
        "X-Forwarded-For: garbage\r\n",
        "X-Forwarded-For:\r\n",
    ] {
        let r = get_with(gw.addr, "/rating/1", spoof);
        assert_eq!(r.status, 429, "{spoof:?} earned a fresh bucket");
    }
    assert_eq!(remaining(&gw, "lim", "127.0.0.1"), 0);
    for spoofed in ["1.2.3.4", "5.6.7.8", "9.9.9.9", "2001:db8::1", "9.9.9.5"] {
        assert_eq!(remaining(&gw, "lim", spoofed), 2, "{spoofed} was charged");
    }
}

/// With 127.0.0.1/32 trusted, the client is the rightmost X-Forwarded-For address that is not
/// itself trusted: whatever the client wrote to the left of it, however the address is spelled
/// (port, IPv4-mapped IPv6, whitespace, several header lines), the same client pays the same
/// bucket. `X-Real-IP` and `Forwarded` are never read. A malformed rightmost element ends the
/// walk at the trusted peer itself, which is charged (shared, never free).
#[test]
fn behind_a_trusted_proxy_the_rightmost_untrusted_address_pays() {
    let up = Upstream::start();
    let mut cfg = rating_route(up.addr, 1, json!(["client_ip"]));
    cfg["trusted_proxies"] = json!(["127.0.0.1/32"]);
    let gw = Gateway::builder(cfg).start();
    let xff = |v: &str| format!("X-Forwarded-For: {v}\r\n");
    let first = get_with(gw.addr, "/rating/1", &xff("9.9.9.9, 1.2.3.4"));
    assert_eq!(first.status, 200);
    // The trusted peer's chain is extended, not replaced.
    assert_eq!(
        echoed(&first, "x-forwarded-for"),
        vec!["9.9.9.9, 1.2.3.4, 127.0.0.1"]
    );
    for same_client in [
        xff("1.2.3.4"),
        xff("6.6.6.6, 1.2.3.4"),
        xff("1.2.3.4, 127.0.0.1"),
        xff("6.6.6.6, 1.2.3.4,127.0.0.1 , 127.0.0.1"),
        format!("{}{}", xff("6.6.6.6"), xff("1.2.3.4")),
        xff("::ffff:1.2.3.4"),
        xff("1.2.3.4:5555"),
        xff("[::ffff:1.2.3.4]:443"),
        xff("  1.2.3.4  "),
        format!("X-Real-IP: 7.7.7.7\r\n{}", xff("1.2.3.4")),
        format!("Forwarded: for=7.7.7.6\r\n{}", xff("1.2.3.4")),
    ] {
        let r = get_with(gw.addr, "/rating/1", &same_client);
        assert_eq!(r.status, 429, "{same_client:?} escaped 1.2.3.4's bucket");
    }
    assert_eq!(remaining(&gw, "lim", "1.2.3.4"), 0);
    for unread in ["9.9.9.9", "6.6.6.6", "7.7.7.7", "7.7.7.6", "::ffff:1.2.3.4"] {
        assert_eq!(remaining(&gw, "lim", unread), 1, "{unread} was charged");
    }
    // One IPv6 address, two spellings: one bucket.
    assert_eq!(
        get_with(gw.addr, "/rating/1", &xff("2001:db8::1")).status,
        200
    );
    assert_eq!(
        get_with(gw.addr, "/rating/1", &xff("2001:DB8:0:0::0001")).status,
        429
    );
    // Garbage at the right end stops the walk at the peer: the proxy's own bucket pays.
    assert_eq!(
        get_with(gw.addr, "/rating/1", &xff("5.5.5.5, garbage")).status,
        200
    );
    for garbage in [xff("5.5.5.4, not-an-ip"), xff("5.5.5.3,"), String::new()] {
        let r = get_with(gw.addr, "/rating/1", &garbage);
        assert_eq!(r.status, 429, "{garbage:?}");
    }
    assert_eq!(remaining(&gw, "lim", "127.0.0.1"), 0);
    assert_eq!(remaining(&gw, "lim", "5.5.5.5"), 1);
}

// ---------------------------------------------------------------------------------------------
// Path tricks.

/// Spellings of `/rating/1` against a per-route limit (key `client_ip`, one token, spent by
/// the plain form first). Decisions, following RFC 3986 and `src/request/path.rs`:
/// - duplicate slashes, `.` segments, percent-encoded unreserved characters (`%72`,
///   `%2e`), lower-case hex, matrix parameters, a query, an absolute-form target: the same
///   route, so 429;
/// - `%2F`/`%5C` (encoded slash or backslash), control characters raw or encoded, malformed
///   escapes, any `..` segment, a target that is not absolute: 400, never forwarded;
/// - `/rating.` and `/rating./1` fall under the plain-prefix route `/rating` (prefixes match
///   like nginx's prefix `location`), so they are charged too;
/// - paths are case-sensitive (RFC 3986 6.2.2.1): `/RATING/1` is another resource and goes to
///   the catch-all route, uncharged. An upstream that matches paths case-insensitively must be
///   given a case-insensitive prefix list, or fronted by a route for every spelling.
#[test]
fn path_spellings_hit_the_same_route_or_are_refused() {
    let up = Upstream::start();
    let gw = Gateway::builder(rating_route(up.addr, 1, json!(["client_ip"]))).start();
    assert_eq!(get_with(gw.addr, "/rating/1", "").status, 200);
    let same_route = [
        "//rating/1",
        "///rating//1",
        "/./rating/1",
        "/rating/./1",
        "/%72ating/1",
        "/%72%61%74%69%6e%67/1",
        "/%2e/rating/1",
        "/rating/1/",
        "/rating/1/.",
        "/rating.",
        "/rating./1",
        "/rating;v=1/1",
        "/rating/1?x=1",
        "/rating/%31",
        "/rating/1%20",
        "/rating/%C3%A9",
        "http://t/rating/1",
        "http://t//rating/1",
    ];
    for target in same_route {
        let r = get_with(gw.addr, target, "");
        assert_eq!(r.status, 429, "{target} escaped the rating route");
        assert_eq!(r.json()["limit"], "lim", "{target}");
    }
    let refused = [
        "/rating%2F1",
        "/rating%2f1",
        "/%2Frating/1",
        "/rating%5C1",
        "/rating/1%00",
        "/rating/1%0a",
        "/rating/1%7f",
        "/rating/1%",
        "/rating/1%4",
        "/rating/%zz",
        "/../rating/1",
        "/%2e%2e/rating/1",
        "/x/../../rating/1",
        // Any `..`: an upstream that does not resolve it would serve another resource than
        // the route charged (`/rating/../free` is `/free` here).
        "/x/../rating/1",
        "/x/y/../../rating/1",
        "/x/%2e%2e/rating/1",
        "/x/.%2E/rating/1",
        "/rating/..",
        "/rating/1/..",
        "http://t/x/../rating/1",
        "*",
    ];
    for target in refused {
        let r = get_with(gw.addr, target, "");
        assert_eq!(r.status, 400, "{target}: {}", r.text());
    }
    // Raw bytes an upstream could split or read differently are refused by the parser or by
    // the path check (400 either way).
    for target in [
        "/rating\\1",
        "/rating/1\x01",
        "/rating/\x7f",
        "/rating/1 HTTP/1.1\r\nX: y",
    ] {
        let r = raw(
            gw.addr,
            format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        );
        assert!(
            r.status == 400 || r.status == 429,
            "{target:?}: {} {}",
            r.status,
            r.text()
        );
    }
    // Case-sensitive paths: another resource, another route (documented decision).
    let r = get_with(gw.addr, "/RATING/1", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["request"]["target"], "/RATING/1");
    assert_eq!(remaining(&gw, "lim", "127.0.0.1"), 0);
}

/// The `path` key source uses the normalized path, so spellings of one path share one bucket
/// (and the request goes upstream as sent). A trailing slash is significant (RFC 3986:
/// `/rating/1/` is another path), so it has its own bucket, on the same route.
#[test]
fn path_keyed_buckets_use_the_normalized_path() {
    let up = Upstream::start();
    let gw = Gateway::builder(rating_route(up.addr, 1, json!(["path"]))).start();
    let r = get_with(gw.addr, "/rating/1", "");
    assert_eq!(r.status, 200);
    for target in [
        "//rating/1",
        "/rating//1",
        "/rating/./1",
        "/%72ating/%31",
        "/rating/%31?x=1",
        "http://t/rating/1",
    ] {
        assert_eq!(get_with(gw.addr, target, "").status, 429, "{target}");
    }
    assert_eq!(remaining(&gw, "lim", "/rating/1"), 0);
    // A reserved escape is kept (upper-cased), not decoded: `/rating/a%3Fb` is not `/rating/a?b`.
    let r = get_with(gw.addr, "/rating/a%3fb", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["request"]["target"], "/rating/a%3fb");
    assert_eq!(get_with(gw.addr, "/rating/a%3Fb", "").status, 429);
    // (`%` is escaped as `%25` in key parts.)
    assert_eq!(remaining(&gw, "lim", "/rating/a%253Fb"), 0);
    // Trailing slash: a distinct path and bucket (documented), still charged.
    assert_eq!(get_with(gw.addr, "/rating/1/", "").status, 200);
    assert_eq!(get_with(gw.addr, "/rating/1/.", "").status, 429);
    assert_eq!(remaining(&gw, "lim", "/rating/1/"), 0);
}

// ---------------------------------------------------------------------------------------------
// Host tricks.

/// A limited route for `api.example.com` in front of a free catch-all: every spelling of that
/// host (case, trailing dot, port, whitespace, absolute-form target with or without `Host`)
/// must take the host's route. A `Host` that differs from the absolute-form authority, or a
/// second `Host`, is refused 400 (by pingora), since the upstream could pick the other one.
#[test]
fn host_spellings_take_the_host_route() {
    let up = Upstream::start();
    let gw = Gateway::builder(config(
        up.addr,
        json!({ "lim": { "capacity": 1, "refill_per_second": RATE, "key": ["client_ip"] } }),
        json!([
            { "name": "api", "match": { "path_prefix": "/", "host": "api.example.com" }, "upstream": "api", "limits": ["lim"] },
            { "name": "free", "match": { "path_prefix": "/" }, "upstream": "api" }
        ]),
    )).start();
    let req = |line: &str, host: Option<&str>| {
        let host = host.map_or(String::new(), |h| format!("Host: {h}\r\n"));
        raw(gw.addr, format!("{line}\r\n{host}\r\n").as_bytes())
    };
    assert_eq!(req("GET /x HTTP/1.1", Some("api.example.com")).status, 200);
    for host in [
        "API.EXAMPLE.COM",
        "Api.Example.Com",
        "api.example.com.",
        "api.example.com:8080",
        "API.example.com.:80",
        "  api.example.com  ",
    ] {
        assert_eq!(req("GET /x HTTP/1.1", Some(host)).status, 429, "{host:?}");
    }
    let r = req(
        "GET http://api.example.com/x HTTP/1.1",
        Some("api.example.com"),
    );
    assert_eq!(r.status, 429);
    // The other host is free, as configured.
    assert_eq!(req("GET /x HTTP/1.1", Some("other.example")).status, 200);
    // Ambiguous authority: refused before routing.
    assert_eq!(
        req(
            "GET http://api.example.com/x HTTP/1.1",
            Some("other.example")
        )
        .status,
        400
    );
    assert_eq!(
        req(
            "GET http://other.example/x HTTP/1.1",
            Some("api.example.com")
        )
        .status,
        400
    );
    let r = raw(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: other.example\r\nHost: api.example.com\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    let r = raw(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: api.example.com\r\nHost: other.example\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    assert_eq!(remaining(&gw, "lim", "127.0.0.1"), 0);
}

/// Routing must read the request target the upstream will read. pingora keeps the raw
/// target for the wire but gives the proxy a `Uri` holding only the path of an absolute-form
/// target (no authority), and `/` for a target that is neither origin- nor absolute-form. So
/// today `GET http://api.example.com/x` without `Host` misses the host's limited route (the
/// upstream, reading the authority as RFC 9112 3.2.2 says, serves it for free), and
/// `GET rating/1` is routed as `/` while a lenient upstream reads `/rating/1`.
/// Expected: the authority of an absolute-form target counts as the host (normalized like
/// `Host`), and a target that is neither form is refused 400.
#[test]
fn routing_reads_the_raw_request_target() {
    let up = Upstream::start();
    let gw = Gateway::builder(config(
        up.addr,
        json!({ "lim": { "capacity": 1, "refill_per_second": RATE, "key": ["client_ip"] } }),
        json!([
            { "name": "api", "match": { "path_prefix": "/rating", "host": "api.example.com" }, "upstream": "api", "limits": ["lim"] },
            { "name": "free", "match": { "path_prefix": "/" }, "upstream": "api" }
        ]),
    )).start();
    let r = raw(
        gw.addr,
        b"GET /rating/1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    for line in [
        "GET http://api.example.com/rating/1 HTTP/1.1",
        "GET http://API.example.com./rating/1 HTTP/1.1",
        "GET http://api.example.com:8080/rating/1 HTTP/1.1",
        "GET HTTP://api.example.com//rating/1 HTTP/1.1",
        "GET https://api.example.com/%72ating/1 HTTP/1.1",
    ] {
        let r = raw(gw.addr, format!("{line}\r\n\r\n").as_bytes());
        assert_eq!(r.status, 429, "{line}: {}", r.text());
    }
    for target in [
        "rating/1",
        "api.example.com/rating/1",
        "ftp://api.example.com/rating/1",
    ] {
        let r = raw(
            gw.addr,
            format!("GET {target} HTTP/1.1\r\nHost: api.example.com\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 400, "{target}: {}", r.text());
    }
}

/// HTTP/1.1 requires `Host` (RFC 9112 3.2: a server must answer 400 without one). Without it
/// a host-specific limited route cannot match, and an upstream with a default virtual host
/// would serve the request for free.
#[test]
fn http11_without_host_is_refused() {
    let up = Upstream::start();
    let gw = Gateway::builder(config(
        up.addr,
        json!({ "lim": { "capacity": 1, "refill_per_second": RATE, "key": ["client_ip"] } }),
        json!([
            { "name": "api", "match": { "path_prefix": "/", "host": "api.example.com" }, "upstream": "api", "limits": ["lim"] },
            { "name": "free", "match": { "path_prefix": "/" }, "upstream": "api" }
        ]),
    )).start();
    let r = raw(gw.addr, b"GET /x HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 400, "{}", r.text());
}

// ---------------------------------------------------------------------------------------------
// Key header tricks.

/// Tricks on the API-key header (`header:x-api-key`, one token per key):
/// - the header name is case-insensitive and the value is trimmed (spaces and tabs), so
///   `X-API-KEY:  k ` pays `k`'s bucket;
/// - two key headers (any case, same or different values) are refused 400: the upstream
///   might read the other copy;
/// - an empty value is the missing key, charged to the shared `-` bucket like no header at
///   all (so is the literal value `-`);
/// - a value with bytes that are not visible ASCII (obs-text) is refused 400; control bytes
///   and obsolete line folding are refused 400 by the parser;
/// - a comma-separated value is one opaque value (the header is not a list), charged to its
///   own bucket: an upstream that splits it must be fronted with a stricter key.
#[test]
fn api_key_header_tricks_pay_the_right_bucket_or_are_refused() {
    let up = Upstream::start();
    let gw = Gateway::builder(rating_route(up.addr, 1, json!(["header:x-api-key"]))).start();
    assert_eq!(
        get_with(gw.addr, "/rating/1", "x-api-key: k\r\n").status,
        200
    );
    for same_key in [
        "X-API-KEY: k\r\n",
        "X-Api-Key:k\r\n",
        "x-api-key:    k    \r\n",
        "x-api-key:\tk\t\r\n",
    ] {
        let r = get_with(gw.addr, "/rating/1", same_key);
        assert_eq!(r.status, 429, "{same_key:?}");
    }
    assert_eq!(remaining(&gw, "lim", "k"), 0);
    for dup in [
        "x-api-key: a\r\nX-Api-Key: b\r\n",
        "x-api-key: k\r\nx-api-key: k\r\n",
        "X-API-KEY: fresh1\r\nx-api-key: fresh2\r\n",
        "x-api-key: fresh3\r\nx-api-key:\r\n",
    ] {
        let r = get_with(gw.addr, "/rating/1", dup);
        assert_eq!(r.status, 400, "{dup:?}");
        assert!(
            r.text().contains("duplicate x-api-key header"),
            "{}",
            r.text()
        );
    }
    // Missing, empty and "-" share one bucket.
    assert_eq!(get_with(gw.addr, "/rating/1", "x-api-key:\r\n").status, 200);
    for missing in ["", "x-api-key:    \r\n", "x-api-key: -\r\n"] {
        assert_eq!(
            get_with(gw.addr, "/rating/1", missing).status,
            429,
            "{missing:?}"
        );
    }
    assert_eq!(remaining(&gw, "lim", "-"), 0);
    // Bytes that are not visible ASCII: refused by the key builder (400).
    let r = raw(
        gw.addr,
        b"GET /rating/1 HTTP/1.1\r\nHost: t\r\nx-api-key: k\xff\xfe\r\n\r\n",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // Control bytes, NUL, obsolete folding, space before the colon: refused by the parser.
    for bad in [
        &b"x-api-key: k\x00x\r\n"[..],
        b"x-api-key: k\x01x\r\n",
        b"x-api-key: k\rx\r\n",
        b"x-api-key: fresh4\r\n continued\r\n",
        b"x-api-key : fresh5\r\n",
    ] {
        let mut req = b"GET /rating/1 HTTP/1.1\r\nHost: t\r\n".to_vec();
        req.extend_from_slice(bad);
        req.extend_from_slice(b"\r\n");
        let mut conn = Conn::open(gw.addr);
        match conn.send_raw(&req) {
            Ok(r) => assert!(
                r.status == 400 || r.status == 429,
                "{:?}: {} {}",
                String::from_utf8_lossy(bad),
                r.status,
                r.text()
            ),
            Err(_) => assert!(conn.is_closed_by_peer(Duration::from_secs(5))),
        }
    }
    for fresh in ["fresh1", "fresh2", "fresh3", "fresh4", "fresh5"] {
        assert_eq!(remaining(&gw, "lim", fresh), 1, "{fresh} was charged");
    }
    // A comma list is one opaque value with its own bucket (documented).
    assert_eq!(
        get_with(gw.addr, "/rating/1", "x-api-key: k, other\r\n").status,
        200
    );
    assert_eq!(remaining(&gw, "lim", "k, other"), 0);
}

/// Composite keys escape `|` and `%` in each part, so moving a `|` from one part to the next
/// can never land two different clients in one bucket (or one client in a fresh one).
#[test]
fn composite_key_parts_cannot_be_shifted() {
    let up = Upstream::start();
    let gw = Gateway::builder(rating_route(
        up.addr,
        1,
        json!(["header:x-api-key", "header:x-user"]),
    ))
    .start();
    let r1 = get_with(gw.addr, "/rating/1", "x-api-key: a|b\r\nx-user: c\r\n");
    let r2 = get_with(gw.addr, "/rating/1", "x-api-key: a\r\nx-user: b|c\r\n");
    let r3 = get_with(gw.addr, "/rating/1", "x-api-key: a%7Cb\r\nx-user: c\r\n");
    assert_eq!((r1.status, r2.status, r3.status), (200, 200, 200));
    assert_eq!(remaining(&gw, "lim", "a%7Cb|c"), 0);
    assert_eq!(remaining(&gw, "lim", "a|b%7Cc"), 0);
    assert_eq!(remaining(&gw, "lim", "a%257Cb|c"), 0);
    assert_eq!(
        get_with(gw.addr, "/rating/1", "x-user: c\r\nX-API-KEY:  a|b \r\n").status,
        429
    );
}

/// `query:NAME` keys: the parameter name and value are percent-decoded (`+` is a space), so
/// encodings of one value share a bucket, and a parameter given twice under any spelling is
/// refused 400.
#[test]
fn query_key_spellings_share_a_bucket_and_duplicates_are_refused() {
    let up = Upstream::start();
    let gw = Gateway::builder(rating_route(up.addr, 1, json!(["query:user"]))).start();
    assert_eq!(get_with(gw.addr, "/rating/1?user=a%20b", "").status, 200);
    for target in [
        "/rating/1?user=a+b",
        "/rating/1?user=a%20b&x=1",
        "/rating/1?x=1&us%65r=%61%20b",
    ] {
        assert_eq!(get_with(gw.addr, target, "").status, 429, "{target}");
    }
    for target in [
        "/rating/1?user=z1&user=z2",
        "/rating/1?user=z1&us%65r=z2",
        "/rating/1?user=z1&user",
    ] {
        assert_eq!(get_with(gw.addr, target, "").status, 400, "{target}");
    }
    assert_eq!(remaining(&gw, "lim", "a b"), 0);
    assert_eq!(remaining(&gw, "lim", "z1"), 1);
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.0 and pipelining.

/// HTTP/1.0 requests (with or without `Host`, with `Connection: keep-alive`) are charged like
/// HTTP/1.1 ones.
#[test]
fn http10_requests_are_charged() {
    let up = Upstream::start();
    let gw = Gateway::builder(rating_route(up.addr, 2, json!(["client_ip"]))).start();
    let r = raw(gw.addr, b"GET /rating/1 HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    let mut conn = Conn::open(gw.addr);
    let r = conn
        .send_raw(b"GET /rating/1 HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    assert_eq!(r.status, 200);
    let r = raw(gw.addr, b"GET /rating/1 HTTP/1.0\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 429);
    let r = raw(gw.addr, b"GET //rating/1 HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 429);
    assert_eq!(remaining(&gw, "lim", "127.0.0.1"), 0);
}

/// A tiny upstream that counts the requests it receives and answers each `200 ok`.
struct CountingUpstream {
    addr: SocketAddr,
    targets: Arc<Mutex<Vec<String>>>,
}

impl CountingUpstream {
    fn start() -> CountingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind counting upstream");
        let addr = listener.local_addr().unwrap();
        let targets = Arc::new(Mutex::new(Vec::new()));
        let t = targets.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let t = t.clone();
                std::thread::spawn(move || serve_counting(stream, &t));
            }
        });
        CountingUpstream { addr, targets }
    }

    fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }
}

fn serve_counting(stream: TcpStream, targets: &Mutex<Vec<String>>) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    loop {
        let mut head = Vec::new();
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if let Some(v) = line
                .to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(str::trim)
            {
                content_length = v.parse().unwrap_or(0);
            }
            let end = line == "\r\n";
            head.push(line);
            if end {
                break;
            }
        }
        let mut body = vec![0; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let target = head[0].split(' ').nth(1).unwrap_or("").to_string();
        targets.lock().unwrap().push(target);
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

/// Several requests in one write. pingora 0.9 serves pipelined HTTP/1.1 requests only when
/// the proxy opts in, which tollgate does not: the first request is answered, the connection
/// closes and the rest are dropped unanswered (RFC 9112 9.3.2 lets the client retry them).
/// What matters for limiting: every response the client gets belongs, in order, to the
/// request it sent, every request forwarded was charged, and nothing is forwarded for free.
#[test]
fn pipelined_requests_are_each_charged_or_dropped() {
    let up = CountingUpstream::start();
    let gw = Gateway::builder(rating_route(up.addr, 2, json!(["client_ip"]))).start();
    let mut conn = Conn::open(gw.addr);
    let mut batch = Vec::new();
    for i in 0..4 {
        batch.extend_from_slice(format!("GET /rating/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    conn.write_raw(&batch).unwrap();
    let mut statuses = Vec::new();
    while statuses.len() < 4 {
        match conn.read_response(false) {
            Ok(r) => statuses.push(r.status),
            Err(_) => break,
        }
    }
    assert!(!statuses.is_empty(), "no response to the pipelined batch");
    let answered = statuses.len();
    assert_eq!(statuses, [200, 200, 429, 429][..answered], "out of order");
    // Charged exactly for what was admitted, and the upstream saw exactly those, in order.
    let admitted = answered.min(2);
    assert_eq!(remaining(&gw, "lim", "127.0.0.1"), 2 - admitted as u64);
    let want: Vec<String> = (0..admitted).map(|i| format!("/rating/{i}")).collect();
    assert!(wait_until(Duration::from_secs(5), || up.targets().len() >= admitted));
    assert_eq!(up.targets(), want);
    if answered < 4 {
        assert!(
            conn.is_closed_by_peer(Duration::from_secs(5)),
            "unanswered pipelined requests on an open connection"
        );
    }
    // A request smuggled into the body of a free request is the body, not a request.
    let inner = b"GET /rating/9 HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut req = format!(
        "POST /free HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        inner.len()
    )
    .into_bytes();
    req.extend_from_slice(inner);
    assert_eq!(raw(gw.addr, &req).status, 200);
    assert!(wait_until(Duration::from_secs(5), || up
        .targets()
        .contains(&"/free".to_string())));
    assert!(!up.targets().contains(&"/rating/9".to_string()));
    assert_eq!(remaining(&gw, "lim", "127.0.0.1"), 2 - admitted as u64);
}

// ---------------------------------------------------------------------------------------------
// Config.

/// Routes match the normalized path, so a `path_prefix` that normalization changes
/// (`/%72ating`, `//rating`, `/a/./b`, lower-case hex, an encoded slash) could never match:
/// its requests would silently fall through to a later, perhaps unlimited, route. Such a
/// prefix is a config error that names the form to write.
#[test]
fn a_path_prefix_that_could_never_match_is_a_config_error() {
    let with_prefix = |prefix: &str| {
        json!({
            "listeners": [{ "address": "127.0.0.1:8080" }],
            "upstreams": { "api": { "servers": ["127.0.0.1:8000"] } },
            "limits": { "lim": { "capacity": 1, "refill_per_second": RATE, "key": ["client_ip"] } },
            "routes": [
                { "name": "rating", "match": { "path_prefix": prefix }, "upstream": "api", "limits": ["lim"] },
                { "name": "free", "match": { "path_prefix": "/" }, "upstream": "api" }
            ]
        })
        .to_string()
    };
    for (prefix, hint) in [
        ("/%72ating", "write \"/rating\""),
        ("//rating", "write \"/rating\""),
        ("/a/./rating", "write \"/a/rating\""),
        ("/x/../rating", "'..' segments are refused"),
        ("/a%3fb", "write \"/a%3Fb\""),
        ("/a%2Fb", "encoded slash"),
        ("/../rating", "'..' segments are refused"),
    ] {
        let errors = tollgate::config::Config::parse(&with_prefix(prefix), "t.json")
            .expect_err(prefix)
            .to_string();
        assert!(
            errors.contains("routes[0].match.path_prefix") && errors.contains(hint),
            "{prefix}: {errors}"
        );
    }
    for prefix in ["/rating", "/rating/", "/a%3Fb", "/v1.0/x~y"] {
        assert!(
            tollgate::config::Config::parse(&with_prefix(prefix), "t.json").is_ok(),
            "{prefix}"
        );
    }
}
