//! Property tests on everything that parses client or operator input: the config parser
//! (arbitrary text and mutated valid configs), request-target splitting and path
//! normalization, key building and fingerprints, and the client-IP resolver. None may panic,
//! and where a function promises a shape (normalized paths, canonical IPs, injective composite
//! keys) the property checks it.

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use proptest::prelude::*;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use tollgate::config::{Config, KeySource};
use tollgate::request::client_ip;
use tollgate::request::key::{self, RequestView};
use tollgate::request::path;

const CASES: u32 = 2000;

/// A valid config that uses most settings.
const VALID: &str = r#"{
  "node_id": "edge-1",
  "listeners": [ { "address": "127.0.0.1:8080" } ],
  "admin": { "address": "127.0.0.1:9091", "token": "s3cret" },
  "redis": { "url": "redis://:pw@127.0.0.1:6379/0", "sync_interval_ms": 100,
             "key_prefix": "tollgate", "timeout_ms": 200 },
  "upstreams": {
    "rating-api": { "servers": ["127.0.0.1:8000", "localhost:8001"],
                    "health_check": { "path": "/health", "interval_ms": 2000 },
                    "connect_timeout_ms": 1000, "read_timeout_ms": 30000 }
  },
  "limits": {
    "per-api-key": { "capacity": 5000, "refill_per_second": 1000, "initial_tokens": 10,
                     "key": ["header:x-api-key", "query:user"] },
    "per-ip": { "capacity": 100, "refill_per_second": 0.0166, "key": ["client_ip"], "shadow": true },
    "per-host": { "capacity": 7, "refill_per_second": 1, "key": ["host", "path", "method", "route"] }
  },
  "routes": [
    { "name": "rating", "match": { "path_prefix": "/rating", "methods": ["GET", "POST"], "host": "Api.Example.com." },
      "upstream": "rating-api", "limits": ["per-api-key", "per-ip"], "cost": 2 },
    { "name": "upload", "match": { "path_prefix": "/upload" }, "upstream": "rating-api",
      "limits": ["per-host"], "cost": { "per_bytes": 1024 } },
    { "name": "default", "match": { "path_prefix": "/" }, "upstream": "rating-api", "limits": ["per-ip"] }
  ],
  "trusted_proxies": ["10.0.0.0/8", "::1", "fd00::/8"],
  "access_log": false,
  "grace_period_seconds": 3,
  "threads": 2,
  "max_buckets": 1000
}"#;

/// Parses `text`; whatever the outcome, every accessor must work and errors must point
/// inside the text.
fn check_config(text: &str) -> Result<(), TestCaseError> {
    match Config::parse(text, "fuzz.json") {
        Ok(cfg) => {
            let _ = cfg.summary();
            let masked = cfg.masked_json();
            let shown = masked.to_string();
            prop_assert!(!shown.contains("s3cret"), "token shown: {}", shown);
            prop_assert!(!shown.contains(":pw@"), "password shown: {}", shown);
            for r in &cfg.routes {
                prop_assert!(r.upstream.index() < cfg.upstreams.len());
                prop_assert!(r.limits.iter().all(|l| l.index() < cfg.limits.len()));
            }
        }
        Err(errors) => {
            prop_assert!(!errors.0.is_empty());
            let lines = text.lines().count().max(1);
            for e in &errors.0 {
                let shown = e.to_string();
                prop_assert!(shown.starts_with("fuzz.json"), "{}", shown);
                if let Some(line) = e.line {
                    prop_assert!(
                        line >= 1 && line <= lines + 1,
                        "{} (of {} lines)",
                        shown,
                        lines
                    );
                }
            }
        }
    }
    Ok(())
}

/// Every JSON pointer of `v` (the root included).
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                pointers(
                    x,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                pointers(x, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![
            Just(0.0),
            Just(-0.0),
            Just(1e-300),
            Just(1e300),
            Just(-1.5),
            Just(0.5),
            any::<f64>().prop_filter("finite", |f| f.is_finite()),
        ]
        .prop_map(Value::from),
        prop_oneof![
            Just(String::new()),
            Just("/".to_string()),
            Just("header:".to_string()),
            Just("client_ip".to_string()),
            Just("::".to_string()),
            Just("0.0.0.0/0".to_string()),
            Just("redis://".to_string()),
            Just("rediss://u:p@h:99999/x".to_string()),
            Just("127.0.0.1:0".to_string()),
            Just("{}".to_string()),
            Just("per-ip".to_string()),
            Just("rating-api".to_string()),
            Just("ünïcödé\u{0}\u{202e}".to_string()),
            ".{0,20}",
        ]
        .prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A structural edit of the valid config.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, Value),
    Remove(usize),
    Insert(usize, String, Value),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), json_value()).prop_map(|(i, v)| Edit::Replace(i, v)),
        any::<usize>().prop_map(Edit::Remove),
        (any::<usize>(), "[a-z_]{1,16}", json_value()).prop_map(|(i, k, v)| Edit::Insert(i, k, v)),
    ]
}

fn apply(doc: &mut Value, e: &Edit) {
    let mut ptrs = Vec::new();
    pointers(doc, String::new(), &mut ptrs);
    let pick = |i: usize| ptrs[i % ptrs.len()].clone();
    match e {
        Edit::Replace(i, v) => {
            if let Some(slot) = doc.pointer_mut(&pick(*i)) {
                *slot = v.clone();
            }
        }
        Edit::Remove(i) => {
            let p = pick(*i);
            if let Some((parent, last)) = p.rsplit_once('/') {
                match doc.pointer_mut(parent) {
                    Some(Value::Object(m)) => {
                        m.remove(&last.replace("~1", "/").replace("~0", "~"));
                    }
                    Some(Value::Array(a)) => {
                        if let Ok(k) = last.parse::<usize>() {
                            if k < a.len() {
                                a.remove(k);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Edit::Insert(i, k, v) => match doc.pointer_mut(&pick(*i)) {
            Some(Value::Object(m)) => {
                m.insert(k.clone(), v.clone());
            }
            Some(Value::Array(a)) => a.push(v.clone()),
            _ => {}
        },
    }
}

/// A byte-level edit: (position, byte, kind) with kind 0 replace, 1 delete, 2 insert.
fn byte_edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    prop::collection::vec(
        (
            any::<usize>(),
            prop_oneof![
                Just(b'"'),
                Just(b','),
                Just(b'{'),
                Just(b'}'),
                Just(b'['),
                Just(b']'),
                Just(b':'),
                Just(b'\n'),
                Just(b'0'),
                Just(b'-'),
                Just(b'\\'),
                any::<u8>()
            ],
            0..3u8,
        ),
        1..6,
    )
}

#[test]
fn the_base_config_is_valid() {
    let cfg = Config::parse(VALID, "fuzz.json").expect("VALID parses");
    assert_eq!(cfg.routes.len(), 3);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn config_parser_survives_arbitrary_text(text in any::<String>()) {
        check_config(&text)?;
    }

    #[test]
    fn config_parser_survives_json_shaped_noise(text in "[\\{\\}\\[\\]\":, \n0-9a-z_.\\-]{0,300}") {
        check_config(&text)?;
    }

    #[test]
    fn config_parser_survives_byte_edits_of_a_valid_config(edits in byte_edits()) {
        let mut bytes = VALID.as_bytes().to_vec();
        for (pos, b, kind) in edits {
            let at = pos % (bytes.len() + 1);
            match kind {
                0 if at < bytes.len() => bytes[at] = b,
                1 if at < bytes.len() => { bytes.remove(at); }
                _ => bytes.insert(at, b),
            }
        }
        check_config(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn config_parser_survives_structural_edits_of_a_valid_config(
        edits in prop::collection::vec(edit(), 1..4),
        pretty in any::<bool>(),
    ) {
        let mut doc: Value = serde_json::from_str(VALID).unwrap();
        for e in &edits {
            apply(&mut doc, e);
        }
        let text = if pretty {
            serde_json::to_string_pretty(&doc).unwrap()
        } else {
            serde_json::to_string(&doc).unwrap()
        };
        check_config(&text)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Request targets and paths.

/// Properties of a normalized path: rooted, no empty or dot segments, no escape of an
/// unreserved character, no encoded slash, hex upper-case, and normalizing it again is a no-op.
fn check_normalized(n: &str) -> Result<(), TestCaseError> {
    prop_assert!(n.starts_with('/'), "{:?}", n);
    prop_assert!(!n.contains("//"), "{:?}", n);
    let inner = n.trim_end_matches('/');
    for seg in inner.split('/').skip(1) {
        prop_assert!(seg != "." && seg != "..", "dot segment in {:?}", n);
    }
    let b = n.as_bytes();
    for (i, _) in n.match_indices('%') {
        let (hi, lo) = (b[i + 1], b[i + 2]);
        prop_assert!(hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit(), "{:?}", n);
        prop_assert!(
            !hi.is_ascii_lowercase() && !lo.is_ascii_lowercase(),
            "{:?}",
            n
        );
        let v = u8::from_str_radix(&n[i + 1..i + 3], 16).unwrap();
        prop_assert!(
            !(v.is_ascii_alphanumeric() || b"-._~/\\".contains(&v) || v < 0x20 || v == 0x7f),
            "escape %{:02X} left in {:?}",
            v,
            n
        );
    }
    let again = path::normalize(n);
    prop_assert_eq!(again.as_deref(), Ok(n));
    Ok(())
}

fn tricky_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/"),
        Just("//"),
        Just("."),
        Just(".."),
        Just("/./"),
        Just("/../"),
        Just("%2e"),
        Just("%2E"),
        Just("%2f"),
        Just("%5C"),
        Just("%41"),
        Just("%7e"),
        Just("%3f"),
        Just("%25"),
        Just("%"),
        Just("%z"),
        Just("%00"),
        Just("\\"),
        Just("a"),
        Just("rating"),
        Just("é"),
        Just(";"),
        Just("?"),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| format!("/{}", v.concat()))
}

fn segment() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._~-]{1,6}".prop_filter("not a dot segment", |s| s != "." && s != "..")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn normalize_never_panics_and_its_output_is_normal(s in any::<String>()) {
        if let Ok(n) = path::normalize(&s) {
            check_normalized(&n)?;
        }
    }

    #[test]
    fn normalize_handles_tricky_paths(s in tricky_path()) {
        if let Ok(n) = path::normalize(&s) {
            check_normalized(&n)?;
            prop_assert!(path::matches_prefix(&n, "/"));
        }
    }

    #[test]
    fn split_target_never_panics_on_bytes(raw in prop::collection::vec(any::<u8>(), 0..80)) {
        if let Ok(t) = path::split_target(&raw) {
            prop_assert!(t.path.starts_with('/'));
            prop_assert!(!t.path.contains('?') && !t.path.contains('#'));
            if let Ok(n) = path::normalize(&t.path) {
                check_normalized(&n)?;
            }
        }
    }

    #[test]
    fn split_target_of_absolute_form_finds_the_authority(
        scheme in prop_oneof![Just("http"), Just("HTTPS"), Just("Http")],
        host in "[a-zA-Z0-9.-]{1,12}(:[0-9]{1,5})?",
        p in tricky_path(),
        q in "(\\?[a-z=&/]{0,8})?",
    ) {
        let absolute = format!("{scheme}://{host}{p}{q}");
        let t = path::split_target(absolute.as_bytes()).unwrap();
        prop_assert_eq!(t.authority.as_deref(), Some(host.as_str()));
        let origin_form = format!("{p}{q}");
        let origin = path::split_target(origin_form.as_bytes()).unwrap();
        prop_assert_eq!(t.path, origin.path);
    }

    /// Percent-encoding any unreserved character (dots included) never changes the result.
    #[test]
    fn encoding_unreserved_characters_changes_nothing(
        segs in prop::collection::vec(segment(), 1..5),
        flags in prop::collection::vec(any::<bool>(), 30),
        trailing in any::<bool>(),
    ) {
        let plain = format!("/{}{}", segs.join("/"), if trailing { "/" } else { "" });
        let mut k = 0;
        let encoded: String = plain
            .chars()
            .map(|c| {
                k += 1;
                if c != '/' && flags[k % flags.len()] {
                    format!("%{:02x}", c as u32)
                } else {
                    c.to_string()
                }
            })
            .collect();
        prop_assert_eq!(path::normalize(&encoded), path::normalize(&plain));
    }

    /// Extra slashes and `.` segments between segments never change the result; a `..` detour
    /// is always refused.
    #[test]
    fn detours_between_segments_change_nothing(
        segs in prop::collection::vec(segment(), 1..5),
        seps in prop::collection::vec(prop_oneof![Just("/"), Just("//"), Just("/./"), Just("/%2e/")], 5),
    ) {
        let plain = format!("/{}", segs.join("/"));
        let mut tricky = String::from(seps[0]);
        for (i, s) in segs.iter().enumerate() {
            if i > 0 {
                tricky.push_str(seps[i % seps.len()]);
            }
            tricky.push_str(s);
        }
        prop_assert_eq!(path::normalize(&tricky), path::normalize(&plain));
        let detour = format!("/x/..{plain}");
        prop_assert_eq!(path::normalize(&detour), Err(path::PathError::DotDot));
    }
}

// ---------------------------------------------------------------------------------------------
// Keys.

fn header_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("x-api-key"),
        Just("X-Api-Key"),
        Just("X-API-KEY"),
        Just("x-user"),
        Just("host"),
        Just("Host"),
    ]
}

fn sources() -> Vec<KeySource> {
    vec![
        KeySource::Header(http::HeaderName::from_static("x-api-key")),
        KeySource::ClientIp,
        KeySource::Query("user".into()),
        KeySource::Path,
        KeySource::Method,
        KeySource::Host,
        KeySource::Route,
    ]
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        any::<u32>().prop_map(|v| IpAddr::V6(Ipv4Addr::from(v).to_ipv6_mapped())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn build_key_never_panics(
        headers in prop::collection::vec((header_name(), prop::collection::vec(any::<u8>(), 0..24)), 0..5),
        query in prop::option::of(any::<String>()),
        path_s in any::<String>(),
        method in "[A-Z]{0,8}",
        route in any::<String>(),
        ip in any_ip(),
        pick in prop::collection::vec(0usize..7, 1..5),
    ) {
        let mut map = HeaderMap::new();
        for (name, value) in &headers {
            if let Ok(v) = HeaderValue::from_bytes(value) {
                map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), v);
            }
        }
        let view = RequestView {
            method: &method,
            path: &path_s,
            query: query.as_deref(),
            headers: &map,
            client_ip: ip,
            client_ip_text: None,
            route: &route,
        };
        let all = sources();
        let chosen: Vec<KeySource> = pick.iter().map(|&i| all[i].clone()).collect();
        if let Ok(k) = key::build_key(&chosen, &view) {
            // One part per source, so exactly len-1 unescaped separators.
            prop_assert_eq!(k.matches('|').count(), chosen.len() - 1, "{:?}", k);
            let fp = key::fingerprint(&k);
            prop_assert_eq!(fp.len(), 16);
            prop_assert!(fp.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        let _ = key::host_of(&map);
    }

    #[test]
    fn query_param_and_host_never_panic(q in any::<String>(), name in any::<String>(), host in any::<String>()) {
        let _ = key::query_param(Some(&q), &name);
        let _ = key::query_param(Some(&q), "user");
        if let Some(h) = key::normalize_host(&host) {
            prop_assert!(!h.is_empty());
            prop_assert!(!h.ends_with('.'), "{:?}", h);
            prop_assert!(!h.bytes().any(|b| b.is_ascii_uppercase()), "{:?}", h);
        }
        prop_assert_eq!(key::fingerprint(&q).len(), 16);
    }

    /// Two different pairs of key-header values never build the same composite key.
    #[test]
    fn composite_keys_are_injective(
        a in "[ab|%7C]{1,5}", b in "[ab|%7C]{1,5}",
        c in "[ab|%7C]{1,5}", d in "[ab|%7C]{1,5}",
    ) {
        let src = vec![KeySource::Header(http::HeaderName::from_static("x-api-key")), KeySource::Header(http::HeaderName::from_static("x-user"))];
        let build = |k: &str, u: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-api-key", HeaderValue::from_str(k).unwrap());
            h.insert("x-user", HeaderValue::from_str(u).unwrap());
            let view = RequestView {
                method: "GET",
                path: "/",
                query: None,
                headers: &h,
                client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                client_ip_text: None,
                route: "r",
            };
            key::build_key(&src, &view).unwrap()
        };
        prop_assert_eq!(build(&a, &b) == build(&c, &d), (a, b) == (c, d));
    }
}

// ---------------------------------------------------------------------------------------------
// Client IP.

fn any_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<u32>(), 0u8..=32).prop_map(|(a, p)| IpNet::new(IpAddr::V4(a.into()), p).unwrap()),
        (any::<u128>(), 0u8..=128).prop_map(|(a, p)| IpNet::new(IpAddr::V6(a.into()), p).unwrap()),
        Just("127.0.0.0/8".parse().unwrap()),
        Just("10.0.0.0/8".parse().unwrap()),
    ]
}

fn xff_element() -> impl Strategy<Value = String> {
    prop_oneof![
        any_ip().prop_map(|ip| ip.to_string()),
        (any::<u32>(), any::<u16>()).prop_map(|(a, p)| format!("{}:{p}", Ipv4Addr::from(a))),
        (any::<u128>(), any::<u16>()).prop_map(|(a, p)| format!("[{}]:{p}", Ipv6Addr::from(a))),
        Just("127.0.0.1".to_string()),
        Just("10.1.2.3".to_string()),
        Just(String::new()),
        Just("unknown".to_string()),
        "[ -~]{0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn client_ip_is_the_peer_or_a_forwarded_address(
        peer in any_ip(),
        trusted in prop::collection::vec(any_net(), 0..4),
        lines in prop::collection::vec(prop::collection::vec(xff_element(), 0..4), 0..3),
        raw_lines in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..30), 0..2),
    ) {
        let mut values: Vec<Vec<u8>> = lines.iter().map(|l| l.join(",").into_bytes()).collect();
        values.extend(raw_lines);
        let ip = client_ip::client_ip(peer, values.iter().map(|v| v.as_slice()), &trusted);
        prop_assert_eq!(ip, client_ip::canonical(ip), "not canonical");
        let peer_c = client_ip::canonical(peer);
        if trusted.is_empty() || !client_ip::is_trusted(peer, &trusted) {
            prop_assert_eq!(ip, peer_c);
        } else if ip != peer_c {
            // Some element of the header, read as an address, is the client.
            let found = values.iter().any(|v| {
                String::from_utf8_lossy(v).split(',').any(|e| {
                    let e = e.trim();
                    e.parse::<IpAddr>()
                        .ok()
                        .or_else(|| e.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
                        .is_some_and(|x| client_ip::canonical(x) == ip)
                })
            });
            prop_assert!(found, "{} is neither the peer nor in the header", ip);
        }
    }
}
