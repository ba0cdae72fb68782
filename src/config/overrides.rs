//! A limit's `overrides` and `overrides_file`, checked into the limit's [`Overrides`].
//!
//! Each entry maps a key, exactly as the limit builds it (composite parts joined with `|`,
//! a `|` or `%` inside a part escaped as `%7C` and `%25`), to one of:
//! - an object with any of `capacity`, `refill_per_second`, `initial_tokens`: the key's own
//!   bucket; what it leaves out is the limit's (`initial_tokens` defaults to the override's
//!   capacity, so a new bucket starts full, as a limit's does); for a quota, any of `quota`
//!   and `window`;
//! - `"unlimited"`: never limited (still counted in the metrics);
//! - `"deny"`: answered 403, never forwarded.
//!
//! `overrides_file` holds the same object in a file of its own, read as written (a relative
//! path is relative to the working directory, as every path of the config is). Its errors
//! name the file and their line and column there. A key in both places is an error, as is a
//! key that the limit could never build (another number of parts than the limit's sources, or
//! a part longer than a key part is kept).
//!
//! A file of 100,000 keys is checked in one pass: the JSON is parsed once into a list of
//! entries (duplicates found on the way), and the text is indexed for line and column only
//! when there is an error to place (`benches/overrides.rs` measures the load).

use super::checker::Checker;
use super::spans::{member, Spans};
use super::values::{bucket_params, param_errors};
use super::{ConfigError, RawLimit};
use crate::limit::bucket::BucketParams;
use crate::limit::overrides::{Override, Overrides, Own};
use crate::limit::store::LimitSpec;
use crate::limit::window::Window;
use crate::request::key::MAX_PART;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use std::collections::HashSet;
use std::fmt;
use std::path::Path;

/// Longest overrides file read (bytes): far more than 100,000 keys need.
const MAX_FILE_BYTES: u64 = 256 << 20;

/// The limit's overrides: its inline ones and those of its file. `base` is the limit as
/// checked so far (its parameters are what an override leaves out); `parts` is the number of
/// its key sources.
pub(super) fn overrides(
    c: &mut Checker,
    path: &str,
    raw: &RawLimit,
    base: &LimitSpec,
    parts: usize,
) -> Overrides {
    let mut out: Vec<(String, Override)> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    if let Some(inline) = &raw.overrides {
        let opath = format!("{path}.overrides");
        for (key, v) in inline {
            let at = member(&opath, key);
            let mut errs = Vec::new();
            if let Some(o) = entry(key, v, base, parts, &mut errs) {
                out.push((key.clone(), o));
            }
            for (in_value, m) in errs {
                let at = if in_value.is_empty() {
                    at.clone()
                } else {
                    format!("{at}.{in_value}")
                };
                if in_value.is_empty() && m.starts_with(KEY_ERROR) {
                    c.err_key(&at, m);
                } else {
                    c.err(&at, m);
                }
            }
            seen.insert(key.clone());
        }
    }
    if let Some(file) = &raw.overrides_file {
        let fpath = format!("{path}.overrides_file");
        match read_file(file) {
            Err(m) => c.err(&fpath, m),
            Ok(text) => {
                let source = file.display().to_string();
                match from_file(&text, &source, base, parts, &seen) {
                    Ok(entries) => out.extend(entries),
                    Err(errors) => errors.into_iter().for_each(|e| c.push_error(e)),
                }
            }
        }
    }
    Overrides::new(out)
}

/// Marks a message about the key itself (placed at the key, not its value).
const KEY_ERROR: &str = "the key ";

/// One entry checked: the override, or errors as (field within the value or "", message).
fn entry(
    key: &str,
    v: &Value,
    base: &LimitSpec,
    parts: usize,
    errs: &mut Vec<(&'static str, String)>,
) -> Option<Override> {
    if let Err(m) = check_key(key, parts) {
        errs.push(("", m));
    }
    let o = match v {
        Value::String(s) if s == "unlimited" => Some(Override::Unlimited),
        Value::String(s) if s == "deny" => Some(Override::Deny),
        Value::Object(m) => params(m, &base.params, errs)
            .map(|p| Override::Bucket(Box::new(Own::new(base.with_params(p))))),
        other => {
            errs.push((
                "",
                format!(
                    "an override is an object of parameters (capacity, refill_per_second, initial_tokens; quota, window for a quota), \"unlimited\" or \"deny\", not {}",
                    short(other)
                ),
            ));
            None
        }
    };
    if errs.is_empty() {
        o
    } else {
        None
    }
}

/// A key the limit can build: as many parts as its sources, each short enough to be kept.
fn check_key(key: &str, parts: usize) -> Result<(), String> {
    if key.is_empty() {
        return Err(format!("{KEY_ERROR}must not be empty"));
    }
    let n = key.split('|').count();
    if n != parts {
        return Err(format!(
            "{KEY_ERROR}{key:?} has {n} part(s) but the limit builds keys of {parts} (parts joined with '|'; a '|' inside a part is written %7C)"
        ));
    }
    if let Some(long) = key.split('|').find(|p| p.len() > MAX_PART) {
        return Err(format!(
            "{KEY_ERROR}has a part of {} bytes: parts longer than {MAX_PART} bytes are kept as digests, so this key would never match",
            long.len()
        ));
    }
    Ok(())
}

/// An override's parameters: what it leaves out is the limit's.
fn params(
    m: &serde_json::Map<String, Value>,
    base: &BucketParams,
    errs: &mut Vec<(&'static str, String)>,
) -> Option<BucketParams> {
    let before = errs.len();
    let (fields, allowed): (&[&str], _) = match base.window() {
        None if base.is_slots() => (
            &["max_in_flight"],
            "max_in_flight (the limit is a concurrency limit)",
        ),
        None => (
            &["capacity", "refill_per_second", "initial_tokens"],
            "capacity, refill_per_second or initial_tokens",
        ),
        Some(_) => (
            &["quota", "window"],
            "quota or window (the limit is a quota)",
        ),
    };
    for k in m.keys().filter(|k| !fields.contains(&k.as_str())) {
        errs.push((
            "",
            format!("unknown field {k:?}: an override sets {allowed}"),
        ));
    }
    if let Some(w) = base.window() {
        return quota_params(m, (base.capacity(), w), errs);
    }
    if base.is_slots() {
        let n = whole(m, "max_in_flight", errs).unwrap_or(base.capacity());
        if errs.len() > before {
            return None;
        }
        return match BucketParams::slots(n) {
            Ok(p) => Some(p),
            Err(e) => {
                errs.push((
                    "max_in_flight",
                    e.to_string().replace("capacity", "max_in_flight"),
                ));
                None
            }
        };
    }
    let capacity = whole(m, "capacity", errs).unwrap_or(base.capacity());
    let initial = whole(m, "initial_tokens", errs);
    let rate = match m.get("refill_per_second") {
        None => base.refill_per_second(),
        Some(v) => match v.as_f64() {
            Some(r) => r,
            None => {
                errs.push((
                    "refill_per_second",
                    format!("refill_per_second must be a number, not {}", short(v)),
                ));
                0.0
            }
        },
    };
    if errs.len() > before {
        return None;
    }
    let initial = initial.unwrap_or(capacity);
    match bucket_params(capacity, rate, initial) {
        Ok(p) => Some(p),
        Err((field, message)) => {
            errs.push((field, message));
            None
        }
    }
}

/// A quota's override: `quota` and `window`, what it leaves out the limit's (`base`).
fn quota_params(
    m: &serde_json::Map<String, Value>,
    base: (u64, Window),
    errs: &mut Vec<(&'static str, String)>,
) -> Option<BucketParams> {
    let before = errs.len();
    let quota = whole(m, "quota", errs).unwrap_or(base.0);
    let window = match m.get("window") {
        None => Some(base.1),
        Some(v) => {
            let w = v.as_str().and_then(Window::parse);
            if w.is_none() {
                let m = format!(
                    "window must be minute, hour, day or month, not {}",
                    short(v)
                );
                errs.push(("window", m));
            }
            w
        }
    };
    if errs.len() > before {
        return None;
    }
    let window = window?;
    if let Some((_, m)) = param_errors(quota, 1.0, None).into_iter().next() {
        errs.push(("quota", m.replace("the capacity", "the quota")));
        return None;
    }
    BucketParams::quota(quota, window).ok()
}

/// Field `name` of an override, when it is there and a whole number; an error otherwise.
fn whole(
    m: &serde_json::Map<String, Value>,
    name: &'static str,
    errs: &mut Vec<(&'static str, String)>,
) -> Option<u64> {
    let v = m.get(name)?;
    if v.as_u64().is_none() {
        let message = format!("{name} must be a whole number, not {}", short(v));
        errs.push((name, message));
    }
    v.as_u64()
}

/// A JSON value, briefly, for an error message.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!("{}...", &s[..s.floor_char_boundary(37)])
    } else {
        s
    }
}

fn read_file(path: &Path) -> Result<String, String> {
    let f = std::fs::File::open(path)
        .map_err(|e| format!("cannot read the overrides file \"{}\": {e}", path.display()))?;
    let mut text = String::new();
    use std::io::Read;
    f.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the overrides file \"{}\": {e}", path.display()))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "the overrides file \"{}\" is larger than {} MiB",
            path.display(),
            MAX_FILE_BYTES >> 20
        ));
    }
    Ok(text)
}

/// The entries of an overrides file, or its errors placed in it. `inline`: keys the config
/// overrides already (a key in both places is an error).
fn from_file(
    text: &str,
    source: &str,
    base: &LimitSpec,
    parts: usize,
    inline: &HashSet<String>,
) -> Result<Vec<(String, Override)>, Vec<ConfigError>> {
    let entries = match serde_json::from_str::<Entries>(text) {
        Ok(e) => e,
        Err(e) => {
            let spans = Spans::index(text);
            return Err(vec![super::checker::serde_error(&e, source, &spans)]);
        }
    };
    let mut out = Vec::with_capacity(entries.list.len());
    // (path in the file, at the key?, message): placed once the text is indexed.
    let mut found: Vec<(String, bool, String)> = Vec::new();
    for (key, v) in entries.list {
        let mut errs = Vec::new();
        if inline.contains(&key) {
            errs.push((
                "",
                format!("{KEY_ERROR}{key:?} is overridden in the config too: keep one"),
            ));
        }
        let o = entry(&key, &v, base, parts, &mut errs);
        if errs.is_empty() {
            if let Some(o) = o {
                out.push((key, o));
            }
            continue;
        }
        let at = member("", &key);
        for (in_value, m) in errs {
            let path = if in_value.is_empty() {
                at.clone()
            } else {
                format!("{at}.{in_value}")
            };
            found.push((path, in_value.is_empty() && m.starts_with(KEY_ERROR), m));
        }
    }
    if found.is_empty() && entries.duplicates == 0 {
        return Ok(out);
    }
    let spans = Spans::index(text);
    let duplicates = spans.duplicates.iter().map(|(path, pos)| ConfigError {
        file: source.to_string(),
        line: Some(pos.0),
        col: Some(pos.1),
        path: path.clone(),
        message: "duplicate key: the earlier value would be silently ignored".into(),
    });
    Err(duplicates
        .chain(found.into_iter().map(|(path, at_key, message)| {
            let pos = if at_key {
                spans.key(&path)
            } else {
                spans.value(&path)
            };
            ConfigError {
                file: source.to_string(),
                line: pos.map(|p| p.0),
                col: pos.map(|p| p.1),
                path,
                message,
            }
        }))
        .collect())
}

/// An overrides file: its entries in order (the first of a key written twice), and how many
/// keys were written again.
struct Entries {
    list: Vec<(String, Value)>,
    duplicates: usize,
}

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object mapping keys to overrides")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut list: Vec<(String, Value)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(0));
                let mut keys: HashSet<String> = HashSet::new();
                let mut duplicates = 0;
                while let Some(k) = map.next_key::<String>()? {
                    let v: Value = map.next_value()?;
                    if !keys.insert(k.clone()) {
                        duplicates += 1;
                        continue;
                    }
                    list.push((k, v));
                }
                Ok(Entries { list, duplicates })
            }
        }
        d.deserialize_map(V)
    }
}
