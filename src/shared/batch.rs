//! Every bucket command of a round in one script call (a single Redis server; a cluster's
//! keys span slots, so there each bucket keeps its own call, see `transport`).
//!
//! One call per bucket costs Redis the call itself (arguments parsed, a Lua frame, a reply)
//! on top of the hash commands; with many keys that overhead was most of the sync's Redis CPU.
//! [`batch_script`] does for every key what [`layout::merge_script`] or
//! [`layout::fresh_script`] does for one, with the same results, and fewer commands: the hash
//! is read once (`HLEN`, then `HGETALL`, before the write) and the merged hash is answered
//! from it with this node's written fields put in, instead of read again.
//!
//! Arguments: KEYS: the bucket keys. ARGV[1]: the most fields returned whole
//! ([`layout::MAX_FIELDS`]); ARGV[2]: n, the number of this node's field names; ARGV[3..2+n]:
//! the names (the same for every bucket); then for each key: `f` (a bucket new to this node:
//! answered with the hash as it was before the write, its waste written only into a hash that
//! did not exist) or `m` (a known bucket: answered with the hash after it), the TTL in ms, and
//! n values ("" for a field not written). Reply: one array per key, the hash as field, value,
//! ...; a hash over the guard is only this node's fields and [`layout::TOO_BIG`]; a key Redis
//! refused (not a hash) is `!error` and the message. Names that name a window (a quota's)
//! remove the fields of earlier windows from a hash within the guard, as the per-bucket
//! scripts do, and the answer leaves them out.
//!
//! One call takes the buckets whose fields have the same names ([`groups`]): in a round, the
//! token buckets and concurrency limits, and the quotas of each kind of window, a call each.

use super::layout;
use super::round::{Op, Refusal, Reply};
use std::collections::HashMap;

/// The marker field of a key the script could not handle (its value: Redis's message).
pub const ERROR: &str = "!error";

/// The batch script (see the module docs).
pub fn batch_script() -> String {
    format!("{}{BATCH_LUA}", layout::merge_helpers())
}

const BATCH_LUA: &str = r#"
local max = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local names = {}
for i = 1, n do names[i] = ARGV[2 + i] end
local window = window_of(names)

-- Removes the fields of windows before `window` from the hash and from `all` (its fields and
-- values, flat).
local function expire(key, all)
  local keys = {}
  for i = 1, #all, 2 do keys[#keys + 1] = all[i] end
  local gone = expired(keys, window)
  if #gone == 0 then return all end
  redis.call('HDEL', key, unpack(gone))
  local drop, kept = {}, {}
  for _, f in ipairs(gone) do drop[f] = true end
  for i = 1, #all, 2 do
    if not drop[all[i]] then kept[#kept + 1] = all[i]; kept[#kept + 1] = all[i + 1] end
  end
  return kept
end

local function one(key, fresh, ttl, vals)
  local len = redis.pcall('HLEN', key)
  if type(len) == 'table' then return {'!error', tostring(len.err)} end
  local whole = len <= max
  local all, idx, cur = {}, {}, {}
  if whole then
    all = redis.call('HGETALL', key)
    for i = 1, #all, 2 do idx[all[i]] = i end
    for i = 1, n do
      local p = idx[names[i]]
      cur[i] = p and all[p + 1] or false
    end
  else
    cur = redis.call('HMGET', key, unpack(names))
  end
  local before
  if fresh then
    before = {}
    if whole then
      for i = 1, #all do before[i] = all[i] end
    else
      for i = 1, n do
        if cur[i] then before[#before + 1] = names[i]; before[#before + 1] = cur[i] end
      end
      before[#before + 1] = '!too-big'; before[#before + 1] = tostring(len)
    end
    if len > 0 then
      for i = 1, n do
        if string.match(names[i], ':waste$') or string.match(names[i], ':waste@') then
          vals[i] = ''
        end
      end
    end
  end
  local set = {}
  for i = 1, n do
    local f, v, c = names[i], vals[i], cur[i]
    if valid(v) then
      local param = string.match(f, ':capacity$') or string.match(f, ':rate$')
      if (param and c ~= v) or not valid(c) or greater(v, c) then
        set[#set + 1] = f
        set[#set + 1] = v
        local p = idx[f]
        if p then all[p + 1] = v elseif whole then
          all[#all + 1] = f
          all[#all + 1] = v
          idx[f] = #all - 1
        end
      end
    end
  end
  if #set > 0 then redis.call('HSET', key, unpack(set)) end
  if window and whole then all = expire(key, all) end
  if ttl > 0 then
    local t = redis.call('PTTL', key)
    if t < ttl then redis.call('PEXPIRE', key, ttl) end
  end
  if fresh then return before end
  if whole and #all <= 2 * max then return all end
  local out = {}
  local now = redis.call('HMGET', key, unpack(names))
  for i = 1, n do
    if now[i] then out[#out + 1] = names[i]; out[#out + 1] = now[i] end
  end
  out[#out + 1] = '!too-big'; out[#out + 1] = tostring(redis.call('HLEN', key))
  return out
end

local out = {}
local at = 3 + n
for k, key in ipairs(KEYS) do
  local vals = {}
  for i = 1, n do vals[i] = ARGV[at + 1 + i] end
  out[k] = one(key, ARGV[at] == 'f', tonumber(ARGV[at + 1]) or 0, vals)
  at = at + 2 + n
end
return out
"#;

/// The round's ops by the names of the fields they write, in order of first appearance:
/// each group is one call of the batch script (the positions of its ops in `ops`).
pub fn groups(ops: &[Op]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match out.iter_mut().find(|g| same_names(&ops[g[0]], op)) {
            Some(g) => g.push(i),
            None => out.push(vec![i]),
        }
    }
    out
}

/// Whether two ops write fields of the same names, in the same order.
fn same_names(a: &Op, b: &Op) -> bool {
    a.fields.len() == b.fields.len() && a.fields.iter().zip(&b.fields).all(|(x, y)| x.0 == y.0)
}

/// Ops as one call of the batch script, or `None` when there is nothing to send or the ops
/// do not all name the same fields (see [`groups`]).
pub fn invocation<'s>(
    script: &'s redis::Script,
    ops: &[&Op],
) -> Option<redis::ScriptInvocation<'s>> {
    let first = ops.first()?;
    if !ops.iter().all(|op| same_names(first, op)) {
        return None;
    }
    let mut inv = script.prepare_invoke();
    inv.arg(layout::MAX_FIELDS).arg(first.fields.len());
    for (n, _) in &first.fields {
        inv.arg(n);
    }
    for op in ops {
        inv.key(&op.redis_key)
            .arg(if op.bucket.fresh { "f" } else { "m" })
            .arg(op.ttl_ms);
        for (_, v) in &op.fields {
            inv.arg(v);
        }
    }
    Some(inv)
}

/// The batch script's reply as one [`Reply`] per op, in order: a reply that is not one array
/// of strings per op fails every op (they are listed again), a key Redis refused fails that
/// op alone.
pub fn replies(reply: redis::RedisResult<redis::Value>, ops: usize) -> Vec<Reply> {
    let refusal = |message: String| Refusal {
        no_script: message.contains("NOSCRIPT"),
        message,
    };
    let no_script = |e: &redis::RedisError| {
        e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
    };
    let each: Result<Vec<Vec<String>>, String> = match reply {
        // Redis lost the scripts (a flush, a failover): every op says so, and they are
        // loaded again for the next round.
        Err(e) if no_script(&e) => return vec![Err(refusal(format!("NOSCRIPT {e}"))); ops],
        Err(e) => Err(e.to_string()),
        Ok(v) => redis::from_redis_value(v).map_err(|e| e.to_string()),
    };
    match each {
        Ok(each) if each.len() == ops => each
            .into_iter()
            .map(|flat| {
                let mut hash = HashMap::new();
                let mut it = flat.into_iter();
                while let (Some(f), Some(v)) = (it.next(), it.next()) {
                    hash.insert(f, v);
                }
                match hash.remove(ERROR) {
                    Some(message) => Err(refusal(message)),
                    None => Ok(hash),
                }
            })
            .collect(),
        Ok(each) => {
            let m = format!("batch reply for {} buckets, {ops} sent", each.len());
            vec![Err(refusal(m)); ops]
        }
        Err(m) => vec![Err(refusal(m)); ops],
    }
}
