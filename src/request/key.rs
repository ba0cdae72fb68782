//! Building a limit's bucket key from a request.
//!
//! A limit names its key sources (`header:NAME`, `client_ip`, `query:NAME`, `path`, `method`,
//! `host`, `route`); a list is a composite key whose parts are joined with `|`. Each part is
//! escaped (`%` as `%25`, `|` as `%7C`) so that two different requests can never build the same
//! composite key by moving a `|` between parts.
//!
//! A request that lacks a part (no such header or query parameter) is charged to the bucket of
//! the missing value, written `-`: key-less requests share one bucket, they are never free.
//! A header or query parameter that appears twice is refused (400), since an upstream could
//! read the other copy than the limiter did.

use crate::config::KeySource;
use crate::limit::store::push_short;
use crate::request::bytes::{needs_escape, visible_ascii};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::borrow::Cow;
use std::fmt::Write;
use std::net::IpAddr;

/// The value charged for a missing key part.
pub const MISSING: &str = "-";

/// What key extraction reads from a request.
pub struct RequestView<'a> {
    pub method: &'a str,
    /// The normalized path (see [`crate::request::path::normalize`]).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
    /// `client_ip` as [`push_ip`] writes it, when the caller has written it already (the
    /// proxy has, for `X-Forwarded-For`).
    pub client_ip_text: Option<&'a str>,
    pub route: &'a str,
}

/// Why no key could be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("duplicate {0} header")]
    DuplicateHeader(String),
    #[error("duplicate query parameter {0}")]
    DuplicateQuery(String),
    #[error("invalid bytes in {0} header")]
    InvalidHeaderValue(String),
}

#[inline]
fn push_escaped(out: &mut String, part: &str) {
    if part.is_empty() {
        out.push_str(MISSING);
        return;
    }
    if part.len() > MAX_PART {
        push_digest(out, part);
        return;
    }
    if !needs_escape(part) {
        push_short(out, part);
        return;
    }
    push_escaping(out, part);
}

/// [`push_escaped`] for a part that holds a `%` or a `|` (rare: out of line, so that the
/// common case stays small).
#[cold]
fn push_escaping(out: &mut String, part: &str) {
    for c in part.chars() {
        match c {
            '%' => out.push_str("%25"),
            '|' => out.push_str("%7C"),
            c => out.push(c),
        }
    }
}

/// Longest key part kept as is (bytes). A longer one (a client can send a header of up to a
/// mebibyte) is replaced by `%H` and its SHA-256 in hex, so that the memory a bucket costs
/// does not grow with what a client sends. `%H` never appears in an escaped part (every `%`
/// there is `%25`), so a digest cannot collide with a literal value.
pub const MAX_PART: usize = 256;

#[cold]
fn push_digest(out: &mut String, part: &str) {
    use sha2::{Digest, Sha256};
    out.push_str("%H");
    for b in Sha256::digest(part.as_bytes()) {
        let _ = write!(out, "{b:02x}");
    }
}

/// The `Host` of a request, lower-cased, without port and trailing dot.
pub fn host_of(headers: &HeaderMap) -> Option<Cow<'_, str>> {
    normalize_host(headers.get(http::header::HOST)?.to_str().ok()?)
}

/// A `Host` value or the authority of an absolute-form target, normalized as [`host_of`]
/// does: trimmed, lower-cased, without port and trailing dots; `None` when nothing is left.
/// Borrowed from `raw` unless it had upper-case letters.
pub fn normalize_host(raw: &str) -> Option<Cow<'_, str>> {
    let raw = raw.trim();
    let no_port = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets, drop a port after them.
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        // The last `:` found as a byte (an ASCII byte is never inside a multi-byte
        // character, so the split is on a character boundary): `rsplit_once(':')` goes
        // through the generic character searcher, about 150 instructions a request.
        match raw.bytes().rposition(|b| b == b':') {
            Some(colon) => &raw[..colon],
            None => raw,
        }
    };
    let h = no_port.trim_end_matches('.');
    if h.is_empty() {
        return None;
    }
    Some(if h.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(h.to_ascii_lowercase())
    } else {
        Cow::Borrowed(h)
    })
}

/// Percent-decodes a query component (`+` is a space, as in forms); invalid escapes stay as
/// they are.
fn decode_query(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The single value of query parameter `name`, decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Result<Option<String>, KeyError> {
    let Some(q) = query else { return Ok(None) };
    let values = q
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .filter(|(k, _)| decode_query(k) == name)
        .map(|(_, v)| decode_query(v));
    single(values).map_err(|()| KeyError::DuplicateQuery(name.to_string()))
}

/// The most fields a message's map is read by a walk through them rather than by a lookup
/// (which hashes the name byte by byte): a request or an API's response carries a handful.
const WALK_UP_TO: usize = 16;

/// Whether `headers` has field `name`, as [`HeaderMap::contains_key`] finds it: by a walk
/// through the names when there are few (see [`WALK_UP_TO`]), else by the lookup.
pub fn has_header(headers: &HeaderMap, name: &HeaderName) -> bool {
    if headers.keys_len() <= WALK_UP_TO {
        headers.keys().any(|n| n == name)
    } else {
        headers.contains_key(name)
    }
}

/// The first value of field `name` in `headers`, as [`HeaderMap::get`] finds it: by a walk
/// through the fields when there are few (see [`WALK_UP_TO`]), else by the lookup.
pub fn first_value<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h HeaderValue> {
    if headers.len() <= WALK_UP_TO {
        headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    } else {
        headers.get(name)
    }
}

fn header_value<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'h str>, KeyError> {
    // Every value, a repeated field's included: one field named twice is refused.
    let first = if headers.len() <= WALK_UP_TO {
        single(headers.iter().filter(|(n, _)| *n == name).map(|(_, v)| v))
    } else {
        single(headers.get_all(name).iter())
    }
    .map_err(|()| KeyError::DuplicateHeader(name.to_string()))?;
    let Some(first) = first else {
        return Ok(None);
    };
    let s = visible_ascii(first.as_bytes())
        .ok_or_else(|| KeyError::InvalidHeaderValue(name.to_string()))?;
    // `to_str` admits visible ASCII only, so ASCII whitespace is all there is to trim.
    Ok(Some(s.trim_ascii()))
}

/// The one item of `values`, if any; `Err` when there are two.
fn single<T>(mut values: impl Iterator<Item = T>) -> Result<Option<T>, ()> {
    let first = values.next();
    match values.next() {
        Some(_) => Err(()),
        None => Ok(first),
    }
}

/// Builds the key of a limit with sources `sources` for request `req`.
pub fn build_key(sources: &[KeySource], req: &RequestView<'_>) -> Result<String, KeyError> {
    let mut out = String::with_capacity(32);
    build_key_into(sources, req, &mut out)?;
    Ok(out)
}

/// Appends the key [`build_key`] builds to `out` (the request path builds every key of a
/// route into one reused buffer). On an error `out` may hold part of the key.
pub fn build_key_into(
    sources: &[KeySource],
    req: &RequestView<'_>,
    out: &mut String,
) -> Result<(), KeyError> {
    for (i, src) in sources.iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        push_part(src, req, out)?;
    }
    Ok(())
}

/// Appends the part of a key that `src` takes from `req`. Out of line: inlined into the loop
/// above, every field of the view would be loaded before the first part, whatever the sources.
#[inline(never)]
fn push_part(src: &KeySource, req: &RequestView<'_>, out: &mut String) -> Result<(), KeyError> {
    match src {
        KeySource::Header(name) => {
            let v = header_value(req.headers, name)?;
            push_escaped(out, v.unwrap_or(""));
        }
        KeySource::ClientIp => match req.client_ip_text {
            Some(text) => push_short(out, text),
            None => push_ip(out, req.client_ip),
        },
        KeySource::Query(name) => {
            let v = query_param(req.query, name)?;
            push_escaped(out, v.as_deref().unwrap_or(""));
        }
        KeySource::Path => push_escaped(out, req.path),
        KeySource::Method => push_escaped(out, req.method),
        KeySource::Host => push_escaped(out, host_of(req.headers).as_deref().unwrap_or("")),
        KeySource::Route => push_escaped(out, req.route),
    }
    Ok(())
}

/// Appends an address as `Display` writes it; IPv4, the common case, without the formatting
/// machinery. Not inlined: the compiler would otherwise compute the digits at the top of
/// [`build_key_into`], for every key, whatever its sources.
#[inline(never)]
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if o >= 100 {
                    out.push(char::from(b'0' + o / 100));
                }
                if o >= 10 {
                    out.push(char::from(b'0' + o / 10 % 10));
                }
                out.push(char::from(b'0' + o % 10));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// A short, stable fingerprint of a key for logs: the raw key (an API key, say) never appears
/// in a log line. FNV-1a, 64 bits, as 16 hex digits.
pub fn fingerprint(key: &str) -> String {
    Fingerprint::of(key).to_string()
}

/// A key as logs and admin answers show it: FNV-1a of the key, written as 16 hex digits.
/// Computed on the request path as a number; formatted only when written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub u64);

impl Fingerprint {
    pub fn of(key: &str) -> Fingerprint {
        Fingerprint(fnv1a(key.as_bytes()))
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// FNV-1a, 64 bits: a fast, stable hash (fingerprints, shard selection).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_loses_its_port_and_trailing_dots_and_is_lower_cased() {
        for (raw, want) in [
            ("api.example.com", Some("api.example.com")),
            ("127.0.0.1:8080", Some("127.0.0.1")),
            (" Api.Example.COM.:443 ", Some("api.example.com")),
            ("[::1]:80", Some("[::1]")),
            ("[::1]", Some("[::1]")),
            ("h\u{e9}te:80", Some("h\u{e9}te")),
            ("a:b:c", Some("a:b")),
            (":80", None),
            ("...", None),
            ("", None),
        ] {
            assert_eq!(normalize_host(raw).as_deref(), want, "{raw:?}");
        }
        // Borrowed unless a letter had to be lowered.
        assert!(matches!(
            normalize_host("a.b:1"),
            Some(Cow::Borrowed("a.b"))
        ));
    }

    #[test]
    fn first_value_and_has_header_find_what_the_maps_lookup_finds_with_few_fields_and_many() {
        let name = HeaderName::from_static("x-usage-tokens");
        for fields in [0, 3, WALK_UP_TO - 2, WALK_UP_TO + 4] {
            let mut h = HeaderMap::new();
            for i in 0..fields {
                h.append(
                    HeaderName::from_bytes(format!("x-f{i}").as_bytes()).unwrap(),
                    HeaderValue::from(i),
                );
            }
            assert_eq!(first_value(&h, &name), None);
            assert!(!has_header(&h, &name));
            h.append(name.clone(), HeaderValue::from_static("7"));
            h.append(name.clone(), HeaderValue::from_static("8"));
            assert_eq!(first_value(&h, &name), h.get(&name), "{fields} fields");
            assert!(has_header(&h, &name), "{fields} fields");
            assert_eq!(
                first_value(&h, &name).map(|v| v.as_bytes()),
                Some(&b"7"[..])
            );
        }
    }

    #[test]
    fn long_parts_are_digested_and_cannot_collide_with_literals() {
        let long = "k".repeat(MAX_PART + 1);
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_str(&long).unwrap());
        let k = build_key(
            &[KeySource::Header(HeaderName::from_static("x-api-key"))],
            &view(&h, None),
        )
        .unwrap();
        assert!(k.starts_with("%H") && k.len() == 66, "{k}");
        // The same digest spelled by a client is escaped, so it is another key.
        let mut h2 = HeaderMap::new();
        h2.insert("x-api-key", HeaderValue::from_str(&k).unwrap());
        let k2 = build_key(
            &[KeySource::Header(HeaderName::from_static("x-api-key"))],
            &view(&h2, None),
        )
        .unwrap();
        assert_ne!(k, k2);
        assert!(k2.starts_with("%25H"));
        // At the limit, kept as is.
        let edge = "e".repeat(MAX_PART);
        let mut h3 = HeaderMap::new();
        h3.insert("x-api-key", HeaderValue::from_str(&edge).unwrap());
        let k3 = build_key(
            &[KeySource::Header(HeaderName::from_static("x-api-key"))],
            &view(&h3, None),
        )
        .unwrap();
        assert_eq!(k3, edge);
    }

    fn view<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> RequestView<'a> {
        RequestView {
            method: "GET",
            path: "/rating/1",
            query,
            headers,
            client_ip: "192.0.2.7".parse().unwrap(),
            client_ip_text: None,
            route: "rating",
        }
    }

    #[test]
    fn composite_key_joins_escaped_parts() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static(" a|b "));
        h.insert("host", HeaderValue::from_static("API.Example.com.:8080"));
        let sources = vec![
            KeySource::Header(HeaderName::from_static("x-api-key")),
            KeySource::ClientIp,
            KeySource::Query("user".into()),
            KeySource::Path,
            KeySource::Method,
            KeySource::Host,
            KeySource::Route,
        ];
        let k = build_key(&sources, &view(&h, Some("user=j%6Fe&x=1"))).unwrap();
        assert_eq!(
            k,
            "a%7Cb|192.0.2.7|joe|/rating/1|GET|api.example.com|rating"
        );
    }

    #[test]
    fn missing_parts_are_charged_to_the_missing_bucket() {
        let h = HeaderMap::new();
        let sources = vec![
            KeySource::Header(HeaderName::from_static("x-api-key")),
            KeySource::Query("u".into()),
        ];
        assert_eq!(build_key(&sources, &view(&h, None)).unwrap(), "-|-");
        let mut h2 = HeaderMap::new();
        h2.insert("x-api-key", HeaderValue::from_static(""));
        assert_eq!(build_key(&sources[..1], &view(&h2, None)).unwrap(), "-");
    }

    #[test]
    fn duplicates_are_refused() {
        let mut h = HeaderMap::new();
        h.append("x-api-key", HeaderValue::from_static("a"));
        h.append("x-api-key", HeaderValue::from_static("b"));
        let s = vec![KeySource::Header(HeaderName::from_static("x-api-key"))];
        assert_eq!(
            build_key(&s, &view(&h, None)),
            Err(KeyError::DuplicateHeader("x-api-key".into()))
        );
        // Missing, found and repeated, in requests of few fields (walked) and of many (looked
        // up), the key's field first, among the others or last.
        for others in [0, 3, WALK_UP_TO, 40] {
            let with_key_at = |positions: &[usize]| {
                let mut h = HeaderMap::new();
                for i in 0..=others {
                    for _ in positions.iter().filter(|&&p| p == i) {
                        h.append("x-api-key", HeaderValue::from_static("k1"));
                    }
                    if i < others {
                        let name = HeaderName::from_bytes(format!("x-other-{i}").as_bytes());
                        h.append(name.unwrap(), HeaderValue::from_static("v"));
                    }
                }
                build_key(&s, &view(&h, None))
            };
            assert_eq!(with_key_at(&[]).as_deref(), Ok("-"), "{others}");
            for at in [0, others / 2, others] {
                assert_eq!(with_key_at(&[at]).as_deref(), Ok("k1"), "{others} {at}");
            }
            assert_eq!(
                with_key_at(&[0, others]),
                Err(KeyError::DuplicateHeader("x-api-key".into())),
                "{others}"
            );
        }
        let e = HeaderMap::new();
        let q = vec![KeySource::Query("k".into())];
        assert_eq!(
            build_key(&q, &view(&e, Some("k=1&k=2"))),
            Err(KeyError::DuplicateQuery("k".into()))
        );
    }

    #[test]
    fn client_ip_part_is_written_as_display_writes_it() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "192.0.2.7",
            "10.0.100.1",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::from("x|");
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x|{ip}"));
        }
    }

    #[test]
    fn fingerprint_is_stable_and_hides_the_key() {
        let f = fingerprint("secret-api-key");
        assert_eq!(f.len(), 16);
        assert_eq!(f, fingerprint("secret-api-key"));
        assert_ne!(f, fingerprint("secret-api-kez"));
        assert!(!f.contains("secret"));
    }

    #[test]
    fn query_decoding_tolerates_bad_escapes() {
        assert_eq!(
            query_param(Some("a=%zz%4"), "a").unwrap().as_deref(),
            Some("%zz%4")
        );
        assert_eq!(
            query_param(Some("a=x+y"), "a").unwrap().as_deref(),
            Some("x y")
        );
    }
}
