//! The config file as written (`docs/configuration.md`): serde structs that mirror the JSON one to one,
//! with defaults filled in and unknown keys refused. Nothing here is validated beyond JSON
//! types; [`super::Config`] is the checked form. Serializing gives the effective config
//! (defaults included) for `GET /config`.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Defaults to the hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RawRedis>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub limits: BTreeMap<String, RawLimit>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// CIDRs, or bare addresses (a single host).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// One info line per request.
    #[serde(default = "yes")]
    pub access_log: bool,
    /// Keep each side's spelling of HTTP/1 header names (off: lower case, as Envoy and
    /// HAProxy send them).
    #[serde(default)]
    pub preserve_header_case: bool,
    /// Seconds in-flight requests get to finish on shutdown.
    #[serde(default = "default_grace_period")]
    pub grace_period_seconds: u64,
    /// Worker threads of the proxy service.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Cap on in-memory buckets (all limits together).
    #[serde(default = "default_max_buckets")]
    pub max_buckets: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    #[serde(default = "default_admin_address")]
    pub address: String,
    #[serde(default)]
    pub token: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            address: default_admin_address(),
            token: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default)]
    pub cluster: bool,
    #[serde(default = "default_sync_interval_ms")]
    pub sync_interval_ms: u64,
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    #[serde(default = "default_redis_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_true")]
    pub quiet_buckets: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub servers: Vec<String>,
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub sni: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<RawHealthCheck>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_io_timeout_ms")]
    pub read_timeout_ms: u64,
    #[serde(default = "default_io_timeout_ms")]
    pub write_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default = "default_health_interval_ms")]
    pub interval_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    /// A token bucket: `capacity` and `refill_per_second` (checked: required unless the limit
    /// is a quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill_per_second: Option<f64>,
    /// A quota: `quota` tokens per calendar `window` (`minute`, `hour`, `day`, `month`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Defaults to `capacity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_tokens: Option<u64>,
    /// A concurrency limit: at most this many requests of a key in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u64>,
    /// Key sources; a single string is accepted for a one-part key.
    pub key: KeyList,
    #[serde(default)]
    pub shadow: bool,
    /// Shared mode: hold a burst through several nodes at once to about one capacity (see
    /// `docs/shared-state.md`, "Bursts").
    #[serde(default)]
    pub burst_guard: bool,
    /// How this limit's refusals are answered (default 429, "Rate limit exceeded").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject: Option<RawReject>,
    /// Per-key parameters, `"unlimited"` or `"deny"`, by key as the limit builds it; each
    /// value is checked by `config::overrides`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<BTreeMap<String, serde_json::Value>>,
    /// The same object in a JSON file of its own (read at start, by `check`, on reload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides_file: Option<PathBuf>,
}

/// `reject` of a limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    pub upstream: String,
    /// Limit names, or `{"limit": NAME, "cost": {"response_header", "reserve", "strip"}}`
    /// (checked by `config::routes`).
    #[serde(default)]
    pub limits: Vec<serde_json::Value>,
    #[serde(default)]
    pub cost: RawCost,
    /// Statuses (`503`) or classes (`"5xx"`) whose requests get their cost back (checked by
    /// `config::routes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refund_statuses: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Default for RawMatch {
    fn default() -> Self {
        RawMatch {
            path_prefix: default_path_prefix(),
            methods: None,
            host: None,
        }
    }
}

/// `"key": "client_ip"` or `"key": ["header:x-api-key", "client_ip"]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(transparent)]
pub struct KeyList(pub Vec<String>);

impl<'de> Deserialize<'de> for KeyList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key source string or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyList, E> {
                Ok(KeyList(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyList, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(KeyList(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `"cost": 3` or `"cost": {"per_bytes": 1024}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawCost {
    Fixed(u64),
    PerBytes(u64),
}

impl Default for RawCost {
    fn default() -> Self {
        RawCost::Fixed(1)
    }
}

impl Serialize for RawCost {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            RawCost::Fixed(n) => s.serialize_u64(n),
            RawCost::PerBytes(n) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("per_bytes", &n)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for RawCost {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawCost;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a whole number of tokens or {\"per_bytes\": N}")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawCost, E> {
                Ok(RawCost::Fixed(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawCost, E> {
                u64::try_from(v)
                    .map(RawCost::Fixed)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawCost, A::Error> {
                let mut per_bytes = None;
                while let Some(k) = map.next_key::<String>()? {
                    if k != "per_bytes" {
                        return Err(de::Error::unknown_field(&k, &["per_bytes"]));
                    }
                    if per_bytes.is_some() {
                        return Err(de::Error::duplicate_field("per_bytes"));
                    }
                    per_bytes = Some(map.next_value::<u64>()?);
                }
                per_bytes
                    .map(RawCost::PerBytes)
                    .ok_or_else(|| de::Error::missing_field("per_bytes"))
            }
        }
        d.deserialize_any(V)
    }
}

fn yes() -> bool {
    true
}
fn default_grace_period() -> u64 {
    5
}
/// The machine's CPU count, as nginx's `worker_processes auto` (2 when it cannot be read).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
fn default_max_buckets() -> u64 {
    1_000_000
}
fn default_admin_address() -> String {
    "127.0.0.1:9091".to_string()
}
fn default_sync_interval_ms() -> u64 {
    100
}
fn default_key_prefix() -> String {
    "tollgate".to_string()
}
fn default_redis_timeout_ms() -> u64 {
    200
}
fn default_connect_timeout_ms() -> u64 {
    1000
}
fn default_io_timeout_ms() -> u64 {
    30_000
}
fn default_health_path() -> String {
    "/health".to_string()
}
fn default_health_interval_ms() -> u64 {
    2000
}
fn default_path_prefix() -> String {
    "/".to_string()
}
