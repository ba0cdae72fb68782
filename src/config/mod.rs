//! The configuration: a JSON file (`docs/configuration.md`) parsed into [`raw`] serde structs, then
//! checked once, here, into a [`Config`] that the rest of the program uses without
//! re-checking anything: names are resolved to ids ([`LimitId`], [`RouteId`], [`UpstreamId`]:
//! indices underneath), durations are `Duration`s, optional settings have their defaults.
//!
//! Every error carries the file, the line and column of the offending value (from serde_json
//! for syntax and type errors, from [`spans`] for the checks that run after parsing) and its
//! JSON path. Checks after parsing report all problems at once, not just the first.

mod checker;
mod overrides;
pub mod raw;
mod route;
mod routes;
pub mod spans;
mod validate;
mod values;

use crate::limit::bucket::BucketParams;
use crate::limit::overrides::Overrides;
use crate::limit::store::LimitSpec;
use raw::RawLimit;
pub use route::{ChargedAs, Cost, Refund, ResponseCost, Route};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (as given on the command line).
    pub source: String,
    pub node_id: String,
    pub listeners: Vec<Listener>,
    pub admin: Admin,
    /// `None`: standalone mode, buckets are node-local.
    pub redis: Option<RedisConfig>,
    pub upstreams: Vec<Upstream>,
    pub limits: Vec<Limit>,
    /// In match order.
    pub routes: Vec<Route>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub access_log: bool,
    /// Write HTTP/1 header names as the other side spelled them (see `docs/http.md`, "HTTP
    /// behaviour").
    pub preserve_header_case: bool,
    pub grace_period_seconds: u64,
    pub threads: usize,
    pub max_buckets: u64,
    /// The file as parsed, defaults filled in (for `GET /config`, see [`Config::masked_json`]).
    pub raw: raw::RawConfig,
    /// Some route matches on the request's host: only then is each request's `Host`
    /// normalized for routing ([`Config::routes_match_hosts`]).
    routes_match_hosts: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub address: SocketAddr,
    pub tls: Option<TlsFiles>,
}

/// PEM files, checked to hold at least one certificate and a private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub address: SocketAddr,
    /// When set, every admin request needs `Authorization: Bearer TOKEN`.
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// One URL, or the seed URLs of a cluster (`redis://` or `rediss://`).
    pub urls: Vec<String>,
    pub cluster: bool,
    pub sync_interval: Duration,
    pub key_prefix: String,
    pub timeout: Duration,
    pub ca_file: Option<PathBuf>,
    /// Light buckets are written only when they matter (`crate::limit::store_quiet`); false
    /// writes every change.
    pub quiet_buckets: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    /// `host:port`, syntax-checked but not resolved.
    pub servers: Vec<String>,
    pub tls: bool,
    pub sni: String,
    pub ca_file: Option<PathBuf>,
    pub health_check: Option<HealthCheck>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    pub name: String,
    /// Capacity, refill rate and initial tokens, validated once here.
    pub params: BucketParams,
    /// The parts of the bucket key, in order (a composite key when several). Limits whose
    /// keys have the same parts share one list, so that the decision tells a key it has
    /// already built by its address (see `request::decision`).
    pub key: std::sync::Arc<[KeySource]>,
    /// Counts and reports but never rejects.
    pub shadow: bool,
    /// Shared mode: a node spends only its share of an idle bucket until it has heard from
    /// the others (see `docs/shared-state.md`, "Bursts").
    pub burst_guard: bool,
    /// How this limit's refusals are answered.
    pub reject: Reject,
    /// Per-key parameters, `unlimited` and `deny` (`overrides` and `overrides_file`).
    pub overrides: Overrides,
}

impl Limit {
    /// What the store charges for this limit (its overrides included).
    pub fn spec(&self) -> LimitSpec {
        LimitSpec {
            name: self.name.clone(),
            params: self.params.clone(),
            shadow: self.shadow,
            burst_guard: self.burst_guard,
            overrides: self.overrides.clone(),
        }
    }
}

/// The answer to a request a limit refuses: its status (any 4xx or 5xx) and the `error` text
/// of its JSON body. The rate-limit headers (`Retry-After`, `RateLimit-Policy`, `RateLimit`)
/// come with it whatever the status, so that a client can tell when to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub message: String,
}

impl Default for Reject {
    fn default() -> Self {
        Reject {
            status: 429,
            message: "Rate limit exceeded".to_string(),
        }
    }
}

/// One part of a limit's bucket key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// `header:NAME`; the name is lowercased (parsed once, here, not on every request).
    Header(http::HeaderName),
    ClientIp,
    /// `query:NAME`.
    Query(String),
    Path,
    Method,
    Host,
    Route,
}

impl std::str::FromStr for KeySource {
    type Err = String;

    fn from_str(s: &str) -> Result<KeySource, String> {
        let named = |kind: &str, name: &str| {
            if name.is_empty() {
                Err(format!("key source \"{s}\" needs a name: {kind}:NAME"))
            } else {
                Ok(name.to_string())
            }
        };
        match s {
            "client_ip" => Ok(KeySource::ClientIp),
            "path" => Ok(KeySource::Path),
            "method" => Ok(KeySource::Method),
            "host" => Ok(KeySource::Host),
            "route" => Ok(KeySource::Route),
            _ => {
                if let Some(name) = s.strip_prefix("header:") {
                    let name = named("header", name)?.to_ascii_lowercase();
                    match http::HeaderName::from_bytes(name.as_bytes()) {
                        Ok(h) => Ok(KeySource::Header(h)),
                        Err(_) => Err(format!("\"{name}\" is not a valid header name")),
                    }
                } else if let Some(name) = s.strip_prefix("query:") {
                    named("query", name).map(KeySource::Query)
                } else {
                    Err(format!(
                        "unknown key source \"{s}\": use header:NAME, client_ip, query:NAME, path, method, host or route"
                    ))
                }
            }
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Header(n) => write!(f, "header:{n}"),
            KeySource::ClientIp => f.write_str("client_ip"),
            KeySource::Query(n) => write!(f, "query:{n}"),
            KeySource::Path => f.write_str("path"),
            KeySource::Method => f.write_str("method"),
            KeySource::Host => f.write_str("host"),
            KeySource::Route => f.write_str("route"),
        }
    }
}

/// Identity types: a limit, route or upstream of one [`Config`], its index in the config's
/// list underneath (so the request path indexes, never hashes or searches). Only the config
/// makes them ([`Config::limit_id`], [`Config::routes_by_id`], [`Config::upstreams_by_id`],
/// and the references of its routes); the runtime's per-limit and per-upstream tables share
/// the config's indices.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(usize);

        impl $name {
            /// The index underneath, into the config's list.
            #[inline]
            pub const fn index(self) -> usize {
                self.0
            }
        }
    };
}

id_type!(
    /// A limit: its position in [`Config::limits`].
    LimitId
);
id_type!(
    /// A route: its position in [`Config::routes`] (match order).
    RouteId
);
id_type!(
    /// An upstream: its position in [`Config::upstreams`].
    UpstreamId
);

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub col: Option<usize>,
    /// JSON path, e.g. `limits.per-ip.capacity` or `routes[1].upstream`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    /// `FILE:LINE:COL: json.path: message`, leaving out what is unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let (Some(line), Some(col)) = (self.line, self.col) {
            write!(f, ":{line}:{col}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a config file, in file order where known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Whether light shared buckets may stay quiet (`redis.quiet_buckets`; true without Redis,
    /// where nothing is written anyway).
    pub fn quiet_buckets(&self) -> bool {
        self.redis.as_ref().is_none_or(|r| r.quiet_buckets)
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let source = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, &source),
            Err(e) => Err(ConfigErrors(vec![ConfigError {
                file: source,
                line: None,
                col: None,
                path: String::new(),
                message: values::unreadable_config(path, &e),
            }])),
        }
    }

    /// Checks a config text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigErrors> {
        let spans = spans::Spans::index(text);
        match serde_json::from_str::<raw::RawConfig>(text) {
            Ok(raw) => validate::validate(raw, source, &spans),
            Err(e) => Err(ConfigErrors(vec![checker::config_syntax_error(
                &e, text, source, &spans,
            )])),
        }
    }

    /// The config as JSON with secrets replaced by `"***"`: the admin token and any password
    /// in Redis URLs.
    pub fn masked_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.raw).unwrap_or(serde_json::Value::Null);
        if let Some(token) = v.pointer_mut("/admin/token") {
            if !token.is_null() {
                *token = "***".into();
            }
        }
        if let Some(url) = v.pointer_mut("/redis/url") {
            if let Some(s) = url.as_str() {
                *url = mask_url_password(s).into();
            }
        }
        if let Some(serde_json::Value::Array(urls)) = v.pointer_mut("/redis/urls") {
            for url in urls.iter_mut() {
                if let Some(s) = url.as_str() {
                    *url = mask_url_password(s).into();
                }
            }
        }
        v
    }

    /// One line for `tollgate check`.
    pub fn summary(&self) -> String {
        let redis = match &self.redis {
            None => "disabled".to_string(),
            Some(r) if r.cluster => format!("cluster of {}", count(r.urls.len(), "seed")),
            Some(r) => r
                .urls
                .first()
                .map(|u| mask_url_password(u))
                .unwrap_or_default(),
        };
        format!(
            "{}: ok (node {}, {}, {}, {}, {}, redis: {redis})",
            self.source,
            self.node_id,
            count(self.listeners.len(), "listener"),
            count(self.upstreams.len(), "upstream"),
            count(self.limits.len(), "limit"),
            count(self.routes.len(), "route"),
        )
    }

    /// The limit named `name`.
    pub fn limit_id(&self, name: &str) -> Option<LimitId> {
        self.limits.iter().position(|l| l.name == name).map(LimitId)
    }

    /// The limit `id` (panics on an id of a config with fewer limits).
    #[inline]
    pub fn limit(&self, id: LimitId) -> &Limit {
        &self.limits[id.0]
    }

    /// The route `id`.
    #[inline]
    pub fn route(&self, id: RouteId) -> &Route {
        &self.routes[id.0]
    }

    /// The upstream `id`.
    #[inline]
    pub fn upstream(&self, id: UpstreamId) -> &Upstream {
        &self.upstreams[id.0]
    }

    /// Whether some route matches on the request's host (`match.host`).
    pub fn routes_match_hosts(&self) -> bool {
        self.routes_match_hosts
    }

    /// The routes with their ids, in match order.
    pub fn routes_by_id(&self) -> impl Iterator<Item = (RouteId, &Route)> {
        self.routes.iter().enumerate().map(|(i, r)| (RouteId(i), r))
    }

    /// The upstreams with their ids.
    pub fn upstreams_by_id(&self) -> impl Iterator<Item = (UpstreamId, &Upstream)> {
        self.upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (UpstreamId(i), u))
    }
}

fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// `redis://user:secret@host/0` -> `redis://user:***@host/0`; URLs without a password are
/// returned unchanged.
pub fn mask_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    match authority[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &authority[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_redis_passwords() {
        assert_eq!(
            mask_url_password("redis://u:p@h:6379/0"),
            "redis://u:***@h:6379/0"
        );
        assert_eq!(mask_url_password("rediss://:p@ss@h"), "rediss://:***@h");
        assert_eq!(mask_url_password("redis://h:6379"), "redis://h:6379");
        assert_eq!(mask_url_password("redis://user@h"), "redis://user@h");
        assert_eq!(mask_url_password("nonsense"), "nonsense");
    }

    #[test]
    fn key_sources_round_trip() {
        for s in [
            "header:x-api-key",
            "client_ip",
            "query:user",
            "path",
            "method",
            "host",
            "route",
        ] {
            assert_eq!(
                s.parse::<KeySource>().map(|k| k.to_string()),
                Ok(s.to_string())
            );
        }
        assert_eq!(
            "header:X-Api-Key".parse(),
            Ok(KeySource::Header(http::HeaderName::from_static(
                "x-api-key"
            )))
        );
        assert!("header:".parse::<KeySource>().is_err());
        assert!("header:a b".parse::<KeySource>().is_err());
        assert!("query:".parse::<KeySource>().is_err());
        assert!("ip".parse::<KeySource>().unwrap_err().contains("client_ip"));
    }
}
