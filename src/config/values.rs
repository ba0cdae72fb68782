//! Checks of single values, each `&str -> Result<T, String>` with a message that says what
//! to write instead: names, addresses, URLs, hosts, methods, CIDRs and PEM files.

use super::mask_url_password;
use crate::limit::bucket::BucketParams;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// The hostname when it is usable as a node id, else `tollgate`.
pub(super) fn default_node_id() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| check_name("node_id", h, usize::MAX).is_ok())
        .unwrap_or_else(|| "tollgate".to_string())
}

/// Names end up in Redis keys and fields and in metric labels.
pub(super) fn check_name(kind: &str, name: &str, max_len: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{kind} must not be empty"));
    }
    if name.len() > max_len {
        return Err(format!("{kind} \"{name}\" is longer than {max_len} bytes"));
    }
    if let Some(bad) = name
        .chars()
        .find(|&ch| !ch.is_ascii_graphic() || matches!(ch, ':' | '{' | '}'))
    {
        return Err(format!(
            "{kind} {name:?} contains {bad:?}: it is used in Redis keys and metric labels, so use printable ASCII without whitespace, ':', '{{' or '}}'"
        ));
    }
    Ok(())
}

pub(super) fn parse_socket_addr(s: &str, example: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("\"{s}\" is not an ip:port socket address (like {example}); host names are not allowed here"))
}

pub(super) fn check_redis_url(url: &str) -> Result<(), String> {
    let shown = mask_url_password(url);
    let lower = url.to_ascii_lowercase();
    let Some(rest) = lower
        .strip_prefix("redis://")
        .or_else(|| lower.strip_prefix("rediss://"))
    else {
        return Err(format!(
            "\"{shown}\" is not a redis:// or rediss:// (TLS) URL"
        ));
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return Err(format!("\"{shown}\" names no host"));
    }
    Ok(())
}

/// `host:port` or `[v6]:port`, port 1-65535; the host is not resolved here.
pub(super) fn check_server(s: &str) -> Result<(), String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("server \"{s}\" is not host:port"));
    };
    if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
        return Err(format!(
            "server \"{s}\": the port must be a number from 1 to 65535"
        ));
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner
            .parse::<Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("server \"{s}\": {inner:?} is not an IPv6 address"));
    }
    if host.contains(':') {
        return Err(format!(
            "server \"{s}\": write IPv6 addresses in brackets, like [::1]:8000"
        ));
    }
    if host.is_empty()
        || !host
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '.' | '_'))
    {
        return Err(format!(
            "server \"{s}\": the host must be a name or an IP address"
        ));
    }
    Ok(())
}

pub(super) fn parse_method(s: &str) -> Result<http::Method, String> {
    if s.is_empty() || s.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "method {s:?} must be written in upper case, like \"GET\""
        ));
    }
    http::Method::from_bytes(s.as_bytes()).map_err(|_| format!("{s:?} is not a valid HTTP method"))
}

/// Lowercased, without a trailing dot, as the proxy compares it to the request's host.
pub(super) fn parse_host(h: &str) -> Result<String, String> {
    let host = h.trim_end_matches('.').to_ascii_lowercase();
    let v6 = host.strip_prefix('[').and_then(|s| s.strip_suffix(']'));
    let ok = match v6 {
        Some(inner) => inner.parse::<Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '.' | '_'))
        }
    };
    if ok {
        Ok(host)
    } else {
        Err(format!(
            "host {h:?} must be a host name or IP address without port, like \"api.example.com\""
        ))
    }
}

pub(super) fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("\"{s}\" is not a CIDR (like 10.0.0.0/8) or an IP address"))
}

/// What a PEM file of this kind (`what`, as the checks name it) must hold.
fn expected_in(what: &str) -> &'static str {
    match what {
        "certificate file" => "a PEM certificate chain, this server's certificate first",
        "key file" => "the PEM private key of the listener's certificate",
        _ => "PEM CA certificates that signed the server's certificate",
    }
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "cannot read {what} \"{}\": {e}; it should hold {}; check the path (relative paths start from the working directory) and its permissions",
            path.display(),
            expected_in(what)
        )
    })
}

/// Why the config file at `path` cannot be read, and what to do about it.
pub(super) fn unreadable_config(path: &Path, e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let fix = match e.kind() {
        ErrorKind::NotFound => {
            let cwd = std::env::current_dir().map_or_else(|_| "?".into(), |d| d.display().to_string());
            format!("give the path of an existing config file with -c FILE (a relative path starts from the working directory, {cwd})")
        }
        ErrorKind::IsADirectory => format!(
            "give the JSON config file inside it with -c FILE (like {})",
            path.join("tollgate.json").display()
        ),
        ErrorKind::PermissionDenied => format!(
            "the user tollgate runs as must be allowed to read it and to enter its folders (see `ls -l {}` and `id`)",
            path.display()
        ),
        ErrorKind::InvalidData => "the config is JSON text in UTF-8: save it as UTF-8".into(),
        _ => "check the path given with -c and its permissions".into(),
    };
    format!("cannot read the config file: {e}; {fix}")
}

fn bad_pem(path: &Path, what: &str, e: pem::Error) -> String {
    format!(
        "{what} \"{}\" is not valid PEM ({e}); export it again in PEM format",
        path.display()
    )
}

/// The file holds at least one PEM certificate.
pub(super) fn check_certificates(path: &Path, what: &str) -> Result<(), String> {
    let bytes = read_file(path, what)?;
    let mut found = false;
    for item in CertificateDer::pem_slice_iter(&bytes) {
        item.map_err(|e| bad_pem(path, what, e))?;
        found = true;
    }
    if found {
        Ok(())
    } else {
        Err(format!(
            "{what} \"{}\" holds no PEM certificate: expected a \"-----BEGIN CERTIFICATE-----\" block",
            path.display()
        ))
    }
}

/// The file holds a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub(super) fn check_private_key(path: &Path) -> Result<(), String> {
    let what = "key file";
    let bytes = read_file(path, what)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(_) => Ok(()),
        Err(pem::Error::NoItemsFound) => Err(format!(
            "key file \"{}\" holds no PEM private key: expected a \"-----BEGIN PRIVATE KEY-----\" (or RSA / EC PRIVATE KEY) block",
            path.display()
        )),
        Err(e) => Err(bad_pem(path, what, e)),
    }
}

pub(super) const MAX_CAPACITY: u64 = 1_000_000_000_000;
pub(super) const MIN_RATE: f64 = 1e-9;
pub(super) const MAX_RATE: f64 = 1e9;

/// What is wrong with a bucket's parameters, as (field, message) pairs: a capacity of
/// 1..=[`MAX_CAPACITY`] tokens, a rate of [`MIN_RATE`]..=[`MAX_RATE`] tokens per second, initial
/// tokens at most the capacity.
pub(super) fn param_errors(
    capacity: u64,
    rate: f64,
    initial: Option<u64>,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if capacity < 1 {
        out.push((
            "capacity",
            "the capacity must be at least 1 token".to_string(),
        ));
    } else if capacity > MAX_CAPACITY {
        out.push((
            "capacity",
            format!("the capacity must be at most {MAX_CAPACITY}"),
        ));
    }
    if !rate.is_finite() || rate <= 0.0 {
        out.push((
            "refill_per_second",
            format!("the rate must be a positive number of tokens per second, not {rate}"),
        ));
    } else if !(MIN_RATE..=MAX_RATE).contains(&rate) {
        out.push((
            "refill_per_second",
            format!("the rate must be between {MIN_RATE:e} and {MAX_RATE:e} tokens per second, not {rate:e}"),
        ));
    }
    if let Some(initial) = initial.filter(|&i| i > capacity) {
        out.push((
            "initial_tokens",
            format!("initial_tokens ({initial}) is more than capacity ({capacity})"),
        ));
    }
    out
}

/// Checked bucket parameters, or the first thing wrong with them as (field, message).
pub(super) fn bucket_params(
    capacity: u64,
    rate: f64,
    initial: u64,
) -> Result<BucketParams, (&'static str, String)> {
    if let Some(e) = param_errors(capacity, rate, Some(initial))
        .into_iter()
        .next()
    {
        return Err(e);
    }
    BucketParams::new(capacity, rate, initial).map_err(|e| ("", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers() {
        for ok in [
            "127.0.0.1:8000",
            "api.internal:443",
            "[::1]:8000",
            "my_host-1:1",
        ] {
            assert_eq!(check_server(ok), Ok(()), "{ok}");
        }
        for bad in [
            "backend",
            ":80",
            "h:0",
            "h:65536",
            "h:x",
            "::1:80",
            "[::zz]:80",
            "a b:80",
            "h/x:80",
        ] {
            assert!(check_server(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_methods_cidrs_urls_names() {
        assert_eq!(parse_host("API.example.COM."), Ok("api.example.com".into()));
        assert_eq!(parse_host("[::1]"), Ok("[::1]".into()));
        assert!(parse_host("a:80").is_err() && parse_host("").is_err());
        assert_eq!(parse_method("PATCH"), Ok(http::Method::PATCH));
        assert_eq!(
            parse_method("PURGE").map(|m| m.to_string()),
            Ok("PURGE".into())
        );
        assert!(parse_method("get").is_err() && parse_method("GE T").is_err());
        assert_eq!(
            parse_cidr("::1").map(|n| n.to_string()),
            Ok("::1/128".into())
        );
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(check_redis_url("REDISS://u:p@h:6379/0").is_ok());
        assert!(check_redis_url("redis://").is_err() && check_redis_url("redis://u:p@").is_err());
        assert!(check_redis_url("http://u:secret@h")
            .unwrap_err()
            .contains("u:***@h"));
        assert!(check_name("limit name", "per-ip", 64).is_ok());
        for bad in ["", "a:b", "a{b", "a}b", "a\tb", "é", &"x".repeat(65)] {
            assert!(check_name("limit name", bad, 64).is_err(), "{bad:?}");
        }
    }
}
