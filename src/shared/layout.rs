//! The Redis layout of shared buckets (`docs/shared-state.md`), as pure functions: key names, field
//! names, parsing a hash back into per-node counters, and the max-merge script.
//!
//! One hash per bucket, key `{key_prefix}:{limit}:{key}`. A client-supplied key longer than 64
//! bytes, with a byte outside printable ASCII, with `{` or `}`, or starting with `h:` is replaced
//! by `h:` + the SHA-256 of the key in hex: no client can make a huge key, pick a Redis Cluster
//! hash slot, or collide with another bucket (a raw key can never look like a digest).
//!
//! Fields are `NODE_ID:NAME`; each node writes only its own:
//!
//! | field | meaning |
//! |---|---|
//! | `NODE:consumed` | tokens this node has taken from the bucket, in total |
//! | `NODE:attempts` | requests this node has decided on this bucket (admitted or not) |
//! | `NODE:waste` | refill lost at the cap, in 10^-18 token units (see `bucket`) |
//! | `NODE:capacity` | the node's configured capacity for the limit |
//! | `NODE:rate` | the node's refill rate, in 10^-9 tokens per second |
//! | `NODE:seen_ms` | when the node last wrote the hash (Unix ms) |
//! | `NODE:credit` | tokens the node credited back by resets (`POST /reset`), in total; written only once not 0 |
//!
//! Every value is a decimal integer and only grows: [`merge_script`] writes a value only when
//! it is greater than the stored one, so a replayed write, or a node restarted with less in
//! memory, can never lower a field. (`capacity` and `rate` are parameters, not counters: they
//! are overwritten, so a reload to a smaller value shows.)
//!
//! # Quotas: fields that name their window
//!
//! A quota counts one calendar window at a time (see [`crate::limit::window`]), so its four
//! counters name the window they count, by its UTC start
//! ([`Window::label`](crate::limit::window::Window::label)):
//! `NODE:consumed@2026-11-29T08:41` (a minute), `NODE:attempts@2026-11-29T08` (an hour),
//! `NODE:waste@2026-11-29` (a day: the credit lost at the quota's cap in the window, in
//! 10^-18 tokens), `NODE:credit@2026-11` (a month). Each is a field of its own, with one
//! writer, merged by max like any other; `capacity`, `rate` and `seen_ms` stay unnamed. A
//! node reads the fields of the window holding its (corrected) clock and ignores the others.
//!
//! Old windows expire as the nodes write: whenever a node writes fields that name a window,
//! the script removes, in the same call, every field of the hash that names an earlier
//! window, whichever node wrote it, and a quota's counters without a window (the layout before
//! windows were named). So a node that writes the next window removes its own fields of the
//! one before, and the fields of a node that was away for several windows (or left for good)
//! go with the next write of any node, instead of living as long as the others keep the hash
//! alive. That is no second writer of a counter: a field of an ended window is read by no
//! one (every reader takes its own window's), and its owner never writes an ended window
//! again. A node whose clock is a little behind may read the hash just after one that is
//! ahead removed the window it is still in; it keeps what it merged before (a merge never
//! lowers a counter in memory), so it loses nothing it had seen. Window names of one kind
//! compare by their digits, which sort as the windows do; a hash over [`MAX_FIELDS`] is not
//! cleaned (a fault: see there). When nobody writes, the hash expires whole
//! (its TTL: a window and ten syncs after the last write).

use crate::limit::bucket::Counters;
use crate::limit::window::{WindowAt, WindowWaste};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// Longest client key stored as is.
pub const MAX_RAW_KEY: usize = 64;

/// The part of a Redis key that names the client key: the key itself when it is safe,
/// `h:` + SHA-256 hex otherwise.
pub fn key_part(key: &str) -> String {
    let safe = key.len() <= MAX_RAW_KEY
        && !key.starts_with("h:")
        && key
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b'{' && b != b'}');
    if safe {
        return key.to_string();
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(2 + 64);
    out.push_str("h:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The Redis key of a bucket.
pub fn redis_key(prefix: &str, limit: &str, key: &str) -> String {
    format!("{prefix}:{limit}:{}", key_part(key))
}

/// One node's fields as read from a hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFields {
    pub counters: Counters,
    /// The hash holds at least one of the node's counters (a node that only announced the
    /// bucket, with `seen_ms`, has none yet: see `round`).
    pub counted: bool,
    pub capacity: Option<u64>,
    pub rate_q: Option<u64>,
    pub seen_ms: Option<u64>,
    /// Tokens the node credited by resets, in total.
    pub credit: Option<u64>,
}

impl NodeFields {
    /// No field read yet: counters at the bottom (a waste that is absent is unknown, not 0).
    fn absent() -> NodeFields {
        NodeFields {
            counters: Counters::BOTTOM,
            ..NodeFields::default()
        }
    }
}

/// The fields a node writes for one bucket, as (field, value) pairs.
pub fn node_fields(
    node: &str,
    c: &Counters,
    capacity: u64,
    rate_q: u64,
    now_ms: u64,
) -> Vec<(String, String)> {
    bucket_fields(node, c, (capacity, rate_q), now_ms, None)
}

/// [`node_fields`], or for a quota (`at`: the window its counters count) with the counters
/// named by the window and its waste in 10^-18 tokens (see the module docs).
pub fn bucket_fields(
    node: &str,
    c: &Counters,
    (capacity, rate_q): (u64, u64),
    now_ms: u64,
    at: Option<&WindowAt>,
) -> Vec<(String, String)> {
    let named = named(at);
    let waste = match at {
        None => c.waste,
        Some(_) => WindowWaste::unpack(c.waste).units(),
    };
    vec![
        (format!("{node}:consumed{named}"), c.consumed.to_string()),
        (format!("{node}:attempts{named}"), c.attempts.to_string()),
        (format!("{node}:waste{named}"), waste.to_string()),
        (format!("{node}:capacity"), capacity.to_string()),
        (format!("{node}:rate"), rate_q.to_string()),
        (format!("{node}:seen_ms"), now_ms.to_string()),
    ]
}

/// A node's reset credit (see `NODE:credit`; a quota's names its window `at`): written beside
/// [`node_fields`] once not 0.
pub fn credit_field(node: &str, credit: u64, at: Option<&WindowAt>) -> (String, String) {
    (format!("{node}:credit{}", named(at)), credit.to_string())
}

/// What a field name adds for window `at`: `@` and the window's name, or nothing.
fn named(at: Option<&WindowAt>) -> String {
    at.map_or_else(String::new, |a| format!("@{}", a.label()))
}

/// This node's stored reset credit and the sum of the others' (see `NODE:credit`).
pub fn credits(nodes: &BTreeMap<String, NodeFields>, me: &str) -> (Option<u64>, u64) {
    let own = nodes.get(me).and_then(|f| f.credit);
    let others = nodes
        .iter()
        .filter(|(n, _)| n.as_str() != me)
        .filter_map(|(_, f)| f.credit)
        .fold(0u64, u64::saturating_add);
    (own, others)
}

/// The names of a node's fields, in the order of [`node_fields`].
pub fn node_field_names(node: &str) -> [String; 6] {
    [
        "consumed", "attempts", "waste", "capacity", "rate", "seen_ms",
    ]
    .map(|n| format!("{node}:{n}"))
}

/// Parses a hash (as HGETALL returns it) into per-node fields: [`parse_hash_at`] of a bucket
/// that is not a quota.
pub fn parse_hash(hash: &HashMap<String, String>) -> (BTreeMap<String, NodeFields>, usize) {
    parse_hash_at(hash, None)
}

/// What a field of a hash is, for a reader of window `at` (see [`parse_hash_at`]).
enum Field<'f> {
    /// A field this reader takes (a counter of its window, or a parameter, which is unnamed
    /// for every bucket): the node and the field's name.
    Known(&'f str, &'f str),
    /// A counter of another window: not this reader's, and no error.
    OtherWindow,
    /// Not a field of this layout.
    Unknown,
}

fn field_of<'f>(field: &'f str, label: Option<&str>) -> Field<'f> {
    let Some((node, rest)) = field.split_once(':') else {
        return Field::Unknown;
    };
    if node.is_empty() {
        return Field::Unknown;
    }
    let (name, window) = match rest.split_once('@') {
        Some((name, w)) => (name, Some(w)),
        None => (rest, None),
    };
    match (name, window, label) {
        ("capacity" | "rate" | "seen_ms", None, _) => Field::Known(node, name),
        ("consumed" | "attempts" | "waste" | "credit", w, l) if w == l => Field::Known(node, name),
        ("consumed" | "attempts" | "waste" | "credit", Some(_), Some(_)) => Field::OtherWindow,
        _ => Field::Unknown,
    }
}

/// Parses a hash (as HGETALL returns it) into per-node fields. `at`: for a quota, the window
/// to read, whose counters name it (fields of other windows are left out, unnamed counters
/// are not this layout's); `None` for any other bucket, whose counters are unnamed. Fields
/// that are not `NODE:NAME` with a known name and an integer value are ignored (and counted
/// in the second value), so a garbage field can neither crash a node nor lower a counter.
pub fn parse_hash_at(
    hash: &HashMap<String, String>,
    at: Option<&WindowAt>,
) -> (BTreeMap<String, NodeFields>, usize) {
    let label = at.map(WindowAt::label);
    let mut nodes: BTreeMap<String, NodeFields> = BTreeMap::new();
    let mut ignored = 0;
    for (field, value) in hash {
        let ok = match field_of(field, label.as_deref()) {
            Field::OtherWindow => true,
            Field::Unknown => false,
            Field::Known(node, name) => parse_value(&mut nodes, (node, name), value, at),
        };
        if !ok {
            ignored += 1;
        }
    }
    (nodes, ignored)
}

/// Puts one field's value into its node's fields; false when it is not an integer.
fn parse_value(
    nodes: &mut BTreeMap<String, NodeFields>,
    (node, name): (&str, &str),
    value: &str,
    at: Option<&WindowAt>,
) -> bool {
    if name == "waste" {
        let Ok(v) = value.parse::<i128>() else {
            return false;
        };
        // A quota's: whole tokens of its window.
        let waste = match at {
            None => v,
            Some(a) => WindowWaste::of_units(a.index, v).pack(),
        };
        let e = nodes
            .entry(node.to_string())
            .or_insert_with(NodeFields::absent);
        (e.counters.waste, e.counted) = (waste, true);
        return true;
    }
    let Ok(v) = value.parse::<u64>() else {
        return false;
    };
    let e = nodes
        .entry(node.to_string())
        .or_insert_with(NodeFields::absent);
    match name {
        "consumed" => (e.counters.consumed, e.counted) = (v, true),
        "attempts" => (e.counters.attempts, e.counted) = (v, true),
        "capacity" => e.capacity = Some(v),
        "rate" => e.rate_q = Some(v),
        "credit" => e.credit = Some(v),
        _ => e.seen_ms = Some(v),
    }
    true
}

/// Most fields a bucket's hash may have for a node to read it whole: six per node, so about
/// 680 nodes. A bigger hash is not one that nodes write (a fault, or an attack on Redis):
/// the scripts then return only this node's own fields and the marker [`TOO_BIG`], so one such
/// key costs a few bytes per sync instead of stalling every sync, and the node decides that
/// bucket from its own counters until the hash is repaired.
pub const MAX_FIELDS: usize = 4096;

/// The marker field of a trimmed reply (its value: the hash's field count).
pub const TOO_BIG: &str = "!too-big";

/// Lua shared by the scripts: the reply, whole or trimmed to this node's fields.
const REPLY_LUA: &str = r#"
local function reply(key, max, own)
  local n = redis.call('HLEN', key)
  if n <= max then return redis.call('HGETALL', key) end
  local out = {}
  local vals = redis.call('HMGET', key, unpack(own))
  for i, f in ipairs(own) do
    if vals[i] then out[#out + 1] = f; out[#out + 1] = vals[i] end
  end
  out[#out + 1] = '!too-big'; out[#out + 1] = tostring(n)
  return out
end
"#;

/// Reads a hash ([`MAX_FIELDS`] guard). KEYS[1]: the bucket key. ARGV[1]: the most fields
/// returned whole. ARGV[2..]: this node's field names, returned alone from a bigger hash.
pub fn read_script() -> String {
    format!(
        "{REPLY_LUA}\nlocal own = {{}}\nfor i = 2, #ARGV do own[#own + 1] = ARGV[i] end\nreturn reply(KEYS[1], tonumber(ARGV[1]), own)\n"
    )
}

/// Reads many hashes in one call (the checks of quiet buckets, see
/// `crate::limit::store_quiet`), where most do not exist: KEYS: the bucket keys; ARGV[1]: the
/// most fields returned whole. The keys are asked about by eights with one `EXISTS`; a group
/// with a hash in it is read key by key (`HLEN`, then `HGETALL`). The reply lists only the
/// hashes that exist, as (position in KEYS from 1, hash) pairs, flat; a hash over ARGV[1]
/// fields is only the marker [`TOO_BIG`] and its field count.
pub fn check_script() -> String {
    r#"
local max = tonumber(ARGV[1])
local out = {}
for first = 1, #KEYS, 8 do
  local last = math.min(first + 7, #KEYS)
  if redis.call('EXISTS', unpack(KEYS, first, last)) > 0 then
    for i = first, last do
      local n = redis.call('HLEN', KEYS[i])
      if n > 0 then
        out[#out + 1] = i
        if n <= max then out[#out + 1] = redis.call('HGETALL', KEYS[i])
        else out[#out + 1] = {'!too-big', tostring(n)} end
      end
    end
  end
end
return out
"#
    .to_string()
}

/// Max-merges fields into a hash, refreshes its TTL, and returns the hash ([`MAX_FIELDS`]
/// guard: a bigger one returns only the fields written).
///
/// KEYS[1]: the bucket key. ARGV[1]: TTL in ms. ARGV[2]: the most fields returned whole.
/// ARGV[3..]: field, value pairs (read with one HMGET and written with one HSET: a sync costs
/// Redis a handful of commands per bucket, not two per field). Values are signed decimal integers of any length (compared
/// as strings, since Lua numbers are doubles and would round a 30-digit counter). A field
/// whose stored value is not an integer is overwritten. Fields ending in `:capacity` or
/// `:rate` are set as given (parameters).
pub fn merge_script() -> String {
    format!("{REPLY_LUA}{MERGE_HELPERS}{MERGE_FIELDS}return reply(key, tonumber(ARGV[2]), own)\n")
}

/// The first write of a bucket new to this node: reads the hash ([`MAX_FIELDS`] guard: a
/// bigger one returns this node's named fields), then max-merges the given fields as
/// [`merge_script`] does. Same arguments. The reply is the hash as it was *before* the write:
/// the node counted from zero and rebases its counters on what the store held (its own fields
/// there, from before a restart or an eviction), while its demand is in the store at once.
/// The `:waste` field (the bucket's creation assumption, full when the node made it) is
/// written only into a hash that did not exist: it is the bucket's first record; into an
/// existing one it waits until the node has rebased on the stored state.
pub fn fresh_script() -> String {
    format!("{REPLY_LUA}{MERGE_HELPERS}{FRESH_LUA}{MERGE_FIELDS}return before\n")
}

const FRESH_LUA: &str = r#"
local names = {}
for i = 3, #ARGV, 2 do names[#names + 1] = ARGV[i] end
local before = reply(KEYS[1], tonumber(ARGV[2]), names)
if redis.call('EXISTS', KEYS[1]) == 1 then
  for i = 3, #ARGV, 2 do
    if string.match(ARGV[i], ':waste$') or string.match(ARGV[i], ':waste@') then
      ARGV[i + 1] = ''
    end
  end
end
"#;

/// The Lua helpers of the merge scripts (`valid`, `greater`; `window_of` and `expired`, the
/// expiry of old windows' fields, see the module docs), for scripts built elsewhere.
pub fn merge_helpers() -> &'static str {
    MERGE_HELPERS
}

const MERGE_HELPERS: &str = r#"
local function valid(s)
  return type(s) == 'string' and string.match(s, '^%-?%d+$') ~= nil
end
local function greater(a, b)
  local na = string.sub(a, 1, 1) == '-'
  local nb = string.sub(b, 1, 1) == '-'
  if na ~= nb then return nb end
  local x, y = a, b
  if na then x = string.sub(a, 2); y = string.sub(b, 2) end
  x = string.gsub(x, '^0+(%d)', '%1')
  y = string.gsub(y, '^0+(%d)', '%1')
  local gt
  if #x ~= #y then gt = #x > #y else gt = x > y end
  if na then return (not gt) and x ~= y end
  return gt
end
local function window_of(names)
  for _, f in ipairs(names) do
    local w = string.match(f, ':%l+@([%dT:%-]+)$')
    if w then return w end
  end
  return nil
end
local function earlier(a, b)
  local x = string.gsub(a, '%D', '')
  local y = string.gsub(b, '%D', '')
  local n = math.min(#x, #y)
  return string.sub(x, 1, n) < string.sub(y, 1, n)
end
local counters = {consumed = true, attempts = true, waste = true, credit = true}
local function expired(fields, cur)
  local gone = {}
  for _, f in ipairs(fields) do
    local w = string.match(f, ':%l+@([%dT:%-]+)$')
    if w then
      if earlier(w, cur) then gone[#gone + 1] = f end
    elseif counters[string.match(f, ':(%l+)$') or ''] then
      gone[#gone + 1] = f
    end
  end
  return gone
end
"#;

/// Max-merges ARGV[3..] into KEYS[1] and extends its TTL (the part both merge scripts share).
/// Fields that name a window (a quota's) remove, in a hash within the size guard, the fields
/// of earlier windows (see the module docs).
const MERGE_FIELDS: &str = r#"
local key = KEYS[1]
local own, vals = {}, {}
for i = 3, #ARGV, 2 do
  own[#own + 1] = ARGV[i]
  vals[#vals + 1] = ARGV[i + 1]
end
local window = window_of(own)
local small = window and redis.call('HLEN', key) <= tonumber(ARGV[2])
local cur = {}
if #own > 0 then cur = redis.call('HMGET', key, unpack(own)) end
local set = {}
for i, f in ipairs(own) do
  local v = vals[i]
  if valid(v) then
    local param = string.match(f, ':capacity$') or string.match(f, ':rate$')
    if (param and cur[i] ~= v) or not valid(cur[i]) or greater(v, cur[i]) then
      set[#set + 1] = f
      set[#set + 1] = v
    end
  end
end
if #set > 0 then redis.call('HSET', key, unpack(set)) end
if small then
  local gone = expired(redis.call('HKEYS', key), window)
  if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
end
local ttl = tonumber(ARGV[1])
if ttl and ttl > 0 then
  local cur = redis.call('PTTL', key)
  if cur < ttl then redis.call('PEXPIRE', key, ttl) end
end
"#;
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_keys_stay_readable_and_unsafe_ones_are_digested() {
        assert_eq!(
            redis_key("tollgate", "per-ip", "192.0.2.1"),
            "tollgate:per-ip:192.0.2.1"
        );
        assert_eq!(key_part("abc|-|GET"), "abc|-|GET");
        for unsafe_key in ["{slot}", "a}b", "tab\there", "é", &"x".repeat(65), "h:abc"] {
            let k = key_part(unsafe_key);
            assert!(
                k.starts_with("h:") && k.len() == 66,
                "{unsafe_key:?} -> {k}"
            );
        }
        assert_ne!(key_part("h:a"), key_part("h:b"));
        assert_eq!(key_part(&"x".repeat(64)), "x".repeat(64));
    }

    #[test]
    fn parse_round_trips_and_ignores_garbage() {
        let c = Counters {
            consumed: 12,
            attempts: 40,
            waste: -123_456_789_012_345_678_901_234_567,
        };
        let mut hash: HashMap<String, String> = node_fields("edge-1", &c, 100, 2_000_000_000, 99)
            .into_iter()
            .collect();
        hash.insert("edge-2:consumed".into(), "not-a-number".into());
        hash.insert("nonsense".into(), "1".into());
        hash.insert("edge-2:unknown".into(), "1".into());
        let (nodes, ignored) = parse_hash(&hash);
        assert_eq!(ignored, 3);
        let f = &nodes["edge-1"];
        assert_eq!(f.counters, c);
        assert_eq!(
            (f.capacity, f.rate_q, f.seen_ms),
            (Some(100), Some(2_000_000_000), Some(99))
        );
        assert!(!nodes.contains_key("edge-2"));
    }

    #[test]
    fn a_quota_names_its_window_and_reads_that_window_alone() {
        use crate::limit::window::Window;
        // 2026-11-29T08:41:07Z.
        let t = 1_795_941_667 * 1_000_000_000;
        let at = WindowAt::of(Window::Minute, t);
        let c = Counters {
            consumed: 4,
            attempts: 9,
            waste: WindowWaste {
                index: at.index,
                tokens: 2,
            }
            .pack(),
        };
        let mut fields = bucket_fields("edge-1", &c, (5, 83_333_333), 99, Some(&at));
        fields.push(credit_field("edge-1", 3, Some(&at)));
        let names: Vec<&str> = fields.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            names,
            [
                "edge-1:consumed@2026-11-29T08:41",
                "edge-1:attempts@2026-11-29T08:41",
                "edge-1:waste@2026-11-29T08:41",
                "edge-1:capacity",
                "edge-1:rate",
                "edge-1:seen_ms",
                "edge-1:credit@2026-11-29T08:41",
            ]
        );
        assert_eq!(fields[2].1, "2000000000000000000", "10^-18 tokens");
        let mut hash: HashMap<String, String> = fields.into_iter().collect();
        // Another node: a field of the minute before, one of the layout without windows, and
        // its parameters.
        hash.insert("edge-2:consumed@2026-11-29T08:40".into(), "50".into());
        hash.insert("edge-2:consumed".into(), "7".into());
        hash.insert("edge-2:seen_ms".into(), "98".into());
        let (nodes, ignored) = parse_hash_at(&hash, Some(&at));
        assert_eq!(ignored, 1, "the counter without a window");
        let f = &nodes["edge-1"];
        assert_eq!((f.counters, f.credit, f.capacity), (c, Some(3), Some(5)));
        let other = &nodes["edge-2"];
        assert!(!other.counted, "no counter of this window");
        assert_eq!((other.counters.consumed, other.seen_ms), (0, Some(98)));
        // The next minute reads none of it; a token bucket's reader none of the named ones.
        let next = WindowAt {
            index: at.index + 1,
            ..at
        };
        let (nodes, _) = parse_hash_at(&hash, Some(&next));
        assert!(nodes.values().all(|f| !f.counted));
        let (nodes, ignored) = parse_hash(&hash);
        assert_eq!((nodes["edge-2"].counters.consumed, ignored), (7, 5));
    }
}
