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

use crate::limit::bucket::Counters;
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
    vec![
        (format!("{node}:consumed"), c.consumed.to_string()),
        (format!("{node}:attempts"), c.attempts.to_string()),
        (format!("{node}:waste"), c.waste.to_string()),
        (format!("{node}:capacity"), capacity.to_string()),
        (format!("{node}:rate"), rate_q.to_string()),
        (format!("{node}:seen_ms"), now_ms.to_string()),
    ]
}

/// A node's reset credit (see `NODE:credit`): written beside [`node_fields`] once not 0.
pub fn credit_field(node: &str, credit: u64) -> (String, String) {
    (format!("{node}:credit"), credit.to_string())
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

/// Parses a hash (as HGETALL returns it) into per-node fields. Fields that are not
/// `NODE:NAME` with a known name and an integer value are ignored (and counted in the second
/// value), so a garbage field can neither crash a node nor lower a counter.
pub fn parse_hash(hash: &HashMap<String, String>) -> (BTreeMap<String, NodeFields>, usize) {
    let mut nodes: BTreeMap<String, NodeFields> = BTreeMap::new();
    let mut ignored = 0;
    for (field, value) in hash {
        let Some((node, name)) = field.rsplit_once(':') else {
            ignored += 1;
            continue;
        };
        if node.is_empty() {
            ignored += 1;
            continue;
        }
        let ok = match name {
            "consumed" | "attempts" | "capacity" | "rate" | "seen_ms" | "credit" => {
                match value.parse::<u64>() {
                    Ok(v) => {
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
                    Err(_) => false,
                }
            }
            "waste" => match value.parse::<i128>() {
                Ok(v) => {
                    let e = nodes
                        .entry(node.to_string())
                        .or_insert_with(NodeFields::absent);
                    (e.counters.waste, e.counted) = (v, true);
                    true
                }
                Err(_) => false,
            },
            _ => false,
        };
        if !ok {
            ignored += 1;
        }
    }
    (nodes, ignored)
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
    if string.match(ARGV[i], ':waste$') then ARGV[i + 1] = '' end
  end
end
"#;

/// The Lua helpers of the merge scripts (`valid`, `greater`), for scripts built elsewhere.
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
"#;

/// Max-merges ARGV[3..] into KEYS[1] and extends its TTL (the part both merge scripts share).
const MERGE_FIELDS: &str = r#"
local key = KEYS[1]
local own, vals = {}, {}
for i = 3, #ARGV, 2 do
  own[#own + 1] = ARGV[i]
  vals[#vals + 1] = ARGV[i + 1]
end
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
}
