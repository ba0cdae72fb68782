//! Request-path normalization for route matching and the `path` key source.
//!
//! Routes match on a normalized form of the path so that `//rating`, `/./rating` and
//! `/%72ating` are all charged to the route of `/rating` (RFC 3986 sections 2.3, 5.2.4 and
//! 6.2.2): percent-escapes of unreserved characters are decoded, other escapes keep their
//! bytes with upper-case hex, `.` segments are removed and runs of slashes collapse to one.
//! The request forwarded upstream keeps the client's path as sent; paths that an upstream
//! could read differently from us are refused (400) instead, see [`PathError`]. That includes
//! every `..` segment (raw or encoded): resolving it here while the upstream receives it as
//! sent would let `/rating/../free` be charged as `/free` and served, by an upstream that does
//! not resolve dot segments, as something under `/rating`. Clients that follow RFC 3986
//! resolve dot segments before sending, so no legitimate request carries one.

use std::borrow::Cow;
use std::fmt;

/// Why a request path is refused before routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// `%2F` or `%5C`: an encoded slash or backslash, which upstreams disagree on.
    EncodedSlash,
    /// A backslash, NUL or other control character, raw or percent-encoded.
    ControlOrBackslash,
    /// A `..` segment, raw or percent-encoded.
    DotDot,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "request path must start with '/'",
            PathError::BadEscape => "malformed percent-escape in request path",
            PathError::EncodedSlash => "encoded slash or backslash (%2F, %5C) in request path",
            PathError::ControlOrBackslash => "control character or backslash in request path",
            PathError::DotDot => {
                "'..' segments are refused in request paths: send the resolved path"
            }
        })
    }
}

impl std::error::Error for PathError {}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalizes `path` (the path component only, without the query).
///
/// Returns the normalized path, or the reason the path is unsafe to forward. A path that is
/// already normal, as nearly every request's is, comes back borrowed: no allocation.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    normalize_slow(path).map(Cow::Owned)
}

/// Whether a path starting with `/` is its own normal form: visible ASCII without `%` or `\`
/// (nothing to decode or refuse), and no empty or dot segment (no `//`, and no `/` followed
/// by `.`, which is stricter than needed: `/.well-known` takes the long way, and comes out
/// as it went in).
fn is_normal(bytes: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in bytes {
        let plain = (0x21..0x7f).contains(&b) && b != b'%' && b != b'\\';
        if !plain || (prev == b'/' && (b == b'/' || b == b'.')) {
            return false;
        }
        prev = b;
    }
    true
}

/// [`normalize`] of a path that is not normal already.
#[inline(never)]
fn normalize_slow(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    // Pass 1: decode unreserved escapes, reject what upstreams could read differently.
    let mut decoded = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (hi, lo) = match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(&h), Some(&l)) => (h, l),
                _ => return Err(PathError::BadEscape),
            };
            let v = match (hex_val(hi), hex_val(lo)) {
                (Some(h), Some(l)) => h * 16 + l,
                _ => return Err(PathError::BadEscape),
            };
            if v == b'/' || v == b'\\' {
                return Err(PathError::EncodedSlash);
            }
            if v < 0x20 || v == 0x7f {
                return Err(PathError::ControlOrBackslash);
            }
            if is_unreserved(v) {
                decoded.push(v as char);
            } else {
                decoded.push('%');
                decoded.push(hi.to_ascii_uppercase() as char);
                decoded.push(lo.to_ascii_uppercase() as char);
            }
            i += 3;
            continue;
        }
        if b < 0x20 || b == 0x7f || b == b'\\' {
            return Err(PathError::ControlOrBackslash);
        }
        // Non-ASCII bytes cannot occur in a &str that came from a valid URI, but a raw
        // UTF-8 path is kept as is rather than refused.
        let ch_len = utf8_len(b);
        let end = (i + ch_len).min(bytes.len());
        decoded.push_str(&path[i..end]);
        i = end;
    }
    // Pass 2: remove dot segments and empty segments.
    let trailing_slash = decoded.ends_with('/') || decoded.ends_with("/.");
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => return Err(PathError::DotDot),
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// What routing reads from a raw HTTP/1 request target (RFC 9112 section 3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// The authority of an absolute-form target (`http://HOST[:PORT]/...`), as sent.
    pub authority: Option<Cow<'a, str>>,
    /// The path, without query or fragment; `/` for an absolute-form target without one.
    /// Not normalized (see [`normalize`]). Borrowed from the target when it is UTF-8.
    pub path: Cow<'a, str>,
}

/// Splits a raw request target, as the upstream will receive it, into the authority and the
/// path that routing must use: origin-form (`/path?query`) and absolute-form with an `http`
/// or `https` scheme (`http://host/path?query`, scheme case-insensitive) are accepted;
/// anything else (`*`, `rating/1`, `host:port`, other schemes) is [`PathError::NotAbsolute`],
/// since an upstream could read it as a path we did not route. Bytes that are not UTF-8 are
/// replaced (U+FFFD), which can only make the path differ from every configured prefix.
pub fn split_target(raw: &[u8]) -> Result<Target<'_>, PathError> {
    let end = raw
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(raw.len());
    let target = &raw[..end];
    if target.first() == Some(&b'/') {
        return Ok(Target {
            authority: None,
            path: lossy(target),
        });
    }
    let scheme_end = target
        .windows(3)
        .position(|w| w == b"://")
        .ok_or(PathError::NotAbsolute)?;
    let scheme = &target[..scheme_end];
    if !scheme.eq_ignore_ascii_case(b"http") && !scheme.eq_ignore_ascii_case(b"https") {
        return Err(PathError::NotAbsolute);
    }
    let rest = &target[scheme_end + 3..];
    let slash = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(slash);
    Ok(Target {
        authority: Some(lossy(authority)),
        path: if path.is_empty() {
            Cow::Borrowed("/")
        } else {
            lossy(path)
        },
    })
}

/// `bytes` as text, invalid sequences replaced (U+FFFD): borrowed when it is valid UTF-8, as
/// `String::from_utf8_lossy` does, but checked with `str::from_utf8`'s fast path for ASCII
/// first (the lossy walk over its chunks takes about 90 instructions more for a short path).
fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// Does `path` (normalized) fall under `prefix`? Plain string prefix, as nginx's prefix
/// `location` and Envoy's `prefix` match: `/rating` covers `/rating`, `/rating/1` and `/ratings`.
pub fn matches_prefix(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bypass_attempts_normalize_to_the_same_path() {
        for p in [
            "/rating",
            "//rating",
            "/./rating",
            "/%72ating",
            "///./rating",
            "/%2e/rating",
        ] {
            assert_eq!(normalize(p).as_deref(), Ok("/rating"), "{p}");
        }
        // Normal already: borrowed, not copied.
        for p in ["/rating", "/", "/rating/1/", "/a.b/c-d_e~f"] {
            assert!(
                matches!(normalize(p), Ok(Cow::Borrowed(b)) if b == p),
                "{p}"
            );
        }
        for p in [
            "/x/../rating",
            "/%2E%2E/rating",
            "/x/.%2e/rating",
            "/rating/..",
        ] {
            assert_eq!(normalize(p), Err(PathError::DotDot), "{p}");
        }
    }

    #[test]
    fn keeps_reserved_escapes_and_trailing_slash() {
        assert_eq!(normalize("/a%3fb/").unwrap(), "/a%3Fb/");
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("/a/.").unwrap(), "/a/");
    }

    #[test]
    fn refuses_unsafe_paths() {
        assert_eq!(normalize("rating"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/a%5cb"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/a%00"), Err(PathError::ControlOrBackslash));
        assert_eq!(normalize("/a\\b"), Err(PathError::ControlOrBackslash));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%4"), Err(PathError::BadEscape));
        assert_eq!(normalize("/../a"), Err(PathError::DotDot));
    }

    #[test]
    fn splits_origin_and_absolute_form_targets() {
        let t = |a: Option<&'static str>, p: &'static str| Target {
            authority: a.map(Cow::Borrowed),
            path: Cow::Borrowed(p),
        };
        assert_eq!(split_target(b"/rating/1?x=/y#f"), Ok(t(None, "/rating/1")));
        assert_eq!(split_target(b"//rating"), Ok(t(None, "//rating")));
        assert_eq!(
            split_target(b"http://Api.Example.com.:80/rating?x"),
            Ok(t(Some("Api.Example.com.:80"), "/rating"))
        );
        assert_eq!(split_target(b"HTTPS://h"), Ok(t(Some("h"), "/")));
        assert_eq!(split_target(b"http://h?q=/x"), Ok(t(Some("h"), "/")));
        assert_eq!(split_target(b"/\xffa"), Ok(t(None, "/\u{fffd}a")));
        assert_eq!(split_target(b"/h\xc3\xa9"), Ok(t(None, "/h\u{e9}")));
        assert_eq!(
            split_target(b"http://h\xff/p\xfe"),
            Ok(t(Some("h\u{fffd}"), "/p\u{fffd}"))
        );
        assert!(matches!(
            split_target(b"/a").map(|t| t.path),
            Ok(Cow::Borrowed("/a"))
        ));
        for bad in [
            &b"rating/1"[..],
            b"*",
            b"",
            b"h:80",
            b"ftp://h/rating",
            b"?x=1",
            b"http:/rating",
        ] {
            assert_eq!(split_target(bad), Err(PathError::NotAbsolute), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_is_idempotent(s in "/[a-zA-Z0-9%./_~-]{0,40}") {
            if let Ok(n) = normalize(&s) {
                prop_assert!(n.starts_with('/'));
                prop_assert!(!n.contains("//"));
                prop_assert_eq!(normalize(&n).unwrap(), n.clone());
            }
        }

        #[test]
        fn arbitrary_strings_never_panic(s in any::<String>()) {
            let _ = normalize(&s);
        }

        /// The borrowed fast path gives what the full normalization gives, on paths that
        /// mix plain characters with every one that sends a path the long way.
        #[test]
        fn a_path_already_normal_is_what_full_normalization_makes_of_it(
            s in "/[a-z0-9/.%_~ \\\\\\x7f\\x01é-]{0,24}"
        ) {
            let slow = normalize_slow(&s);
            match normalize(&s) {
                Ok(Cow::Borrowed(b)) => prop_assert_eq!(Ok(b.to_string()), slow),
                fast => prop_assert_eq!(fast.map(Cow::into_owned), slow),
            }
        }
    }
}
