//! The max-merge script of the Redis layout, against a real `redis-server`.

mod common;

use common::RedisServer;
use std::collections::HashMap;
use tollgate::limit::bucket::Counters;
use tollgate::limit::store_key::StoreKey;
use tollgate::limit::store_sync::DirtyBucket;
use tollgate::limit::window::{Window, WindowAt, WindowWaste};
use tollgate::shared::batch::{self, batch_script};
use tollgate::shared::layout::{
    bucket_fields, fresh_script, merge_script, node_field_names, node_fields, parse_hash,
    parse_hash_at, read_script, MAX_FIELDS, TOO_BIG,
};
use tollgate::shared::round::Op;

fn merge(
    con: &mut redis::Connection,
    key: &str,
    ttl_ms: u64,
    fields: &[(String, String)],
) -> HashMap<String, String> {
    run_script(&merge_script(), con, key, ttl_ms, fields)
}

fn run_script(
    lua: &str,
    con: &mut redis::Connection,
    key: &str,
    ttl_ms: u64,
    fields: &[(String, String)],
) -> HashMap<String, String> {
    let script = redis::Script::new(lua);
    let mut inv = script.prepare_invoke();
    inv.key(key).arg(ttl_ms).arg(MAX_FIELDS);
    for (f, v) in fields {
        inv.arg(f).arg(v);
    }
    inv.invoke(con).expect("merge script")
}

#[test]
fn merge_never_lowers_a_field_and_keeps_other_nodes() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut con = client.get_connection().unwrap();
    let key = "tollgate:per-ip:192.0.2.1";
    let big = Counters {
        consumed: 500,
        attempts: 900,
        waste: 1_700_000_000_000_000_000_000_000_000,
    };
    let hash = merge(
        &mut con,
        key,
        60_000,
        &node_fields("a", &big, 100, 10_000_000_000, 1000),
    );
    assert_eq!(parse_hash(&hash).0["a"].counters, big);

    // A replayed or restarted write with smaller values changes nothing, parameters excepted.
    let small = Counters {
        consumed: 7,
        attempts: 8,
        waste: 999_999_999_999_999_999_999_999_999,
    };
    let hash = merge(
        &mut con,
        key,
        60_000,
        &node_fields("a", &small, 50, 10_000_000_000, 10),
    );
    let (nodes, _) = parse_hash(&hash);
    assert_eq!(nodes["a"].counters, big);
    assert_eq!(nodes["a"].capacity, Some(50));
    assert_eq!(nodes["a"].seen_ms, Some(1000));

    // Negative values compare as numbers, not strings.
    let neg = Counters {
        consumed: 501,
        attempts: 900,
        waste: -5,
    };
    let hash = merge(&mut con, "k2", 60_000, &node_fields("b", &neg, 1, 1, 1));
    assert_eq!({ parse_hash(&hash).0["b"].counters.waste }, -5);
    let neg2 = Counters {
        consumed: 501,
        attempts: 900,
        waste: -40,
    };
    let hash = merge(&mut con, "k2", 60_000, &node_fields("b", &neg2, 1, 1, 1));
    assert_eq!({ parse_hash(&hash).0["b"].counters.waste }, -5);
    let pos = Counters {
        consumed: 501,
        attempts: 900,
        waste: 3,
    };
    let hash = merge(&mut con, "k2", 60_000, &node_fields("b", &pos, 1, 1, 1));
    assert_eq!({ parse_hash(&hash).0["b"].counters.waste }, 3);

    // Another node's fields are left alone, and a garbage stored value is replaced.
    redis.cmd(&["HSET", key, "a:attempts", "garbage"]);
    let hash = merge(
        &mut con,
        key,
        60_000,
        &node_fields("c", &small, 100, 10_000_000_000, 5),
    );
    let (nodes, ignored) = parse_hash(&hash);
    assert_eq!(ignored, 1);
    assert_eq!(nodes["a"].counters.consumed, 500);
    assert_eq!(nodes["c"].counters, small);
    let hash = merge(
        &mut con,
        key,
        60_000,
        &node_fields("a", &big, 100, 10_000_000_000, 1000),
    );
    assert_eq!(parse_hash(&hash).1, 0);

    // The TTL is set, and only ever extended.
    let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut con).unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "{ttl}");
    merge(&mut con, key, 1_000, &[]);
    let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut con).unwrap();
    assert!(ttl > 50_000, "{ttl}");
}

#[test]
fn an_oversized_hash_is_answered_with_this_nodes_fields_only() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut con = client.get_connection().unwrap();
    let key = "tollgate:per-ip:big";
    let mine = Counters {
        consumed: 3,
        attempts: 4,
        waste: -5,
    };
    merge(
        &mut con,
        key,
        60_000,
        &node_fields("a", &mine, 10, 1_000_000_000, 1),
    );
    // Fill the hash past the limit with foreign fields.
    let mut cmd = redis::cmd("HSET");
    cmd.arg(key);
    for i in 0..MAX_FIELDS {
        cmd.arg(format!("n{i}:consumed")).arg(1);
    }
    let _: i64 = cmd.query(&mut con).unwrap();
    let more = Counters {
        consumed: 9,
        attempts: 10,
        waste: -5,
    };
    let hash = merge(
        &mut con,
        key,
        60_000,
        &node_fields("a", &more, 10, 1_000_000_000, 2),
    );
    assert_eq!(hash.get(TOO_BIG).map(String::as_str), Some("4102"));
    let (nodes, _) = parse_hash(&hash);
    assert_eq!(
        nodes.len(),
        1,
        "only this node's fields: {:?}",
        nodes.keys()
    );
    assert_eq!(nodes["a"].counters, more);
    // The read script trims the same way; a small hash comes back whole.
    let read = redis::Script::new(&read_script());
    let mut inv = read.prepare_invoke();
    inv.key(key).arg(MAX_FIELDS);
    for f in node_field_names("a") {
        inv.arg(f);
    }
    let hash: HashMap<String, String> = inv.invoke(&mut con).unwrap();
    assert!(hash.contains_key(TOO_BIG));
    assert_eq!(parse_hash(&hash).0["a"].counters, more);
    let _: i64 = redis::cmd("HSET")
        .arg("small")
        .arg("b:consumed")
        .arg(1)
        .query(&mut con)
        .unwrap();
    let mut inv = read.prepare_invoke();
    inv.key("small").arg(MAX_FIELDS).arg("a:consumed");
    let hash: HashMap<String, String> = inv.invoke(&mut con).unwrap();
    assert_eq!(hash.get("b:consumed").map(String::as_str), Some("1"));
    assert!(!hash.contains_key(TOO_BIG));
}

#[test]
fn a_fresh_write_answers_the_hash_as_it_was_and_keeps_its_waste_out_of_an_existing_one() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut con = client.get_connection().unwrap();
    let key = "tollgate:per-key:fresh";
    let counters = |consumed: u64, waste: i128| Counters {
        consumed,
        attempts: consumed,
        waste,
    };
    let fresh = |con: &mut redis::Connection, node: &str, c: Counters| {
        run_script(
            &fresh_script(),
            con,
            key,
            60_000,
            &node_fields(node, &c, 10, 1, 5),
        )
    };
    // A new hash: the answer is empty, and every field is written, the waste included.
    let before = fresh(&mut con, "a", counters(3, 111));
    assert!(before.is_empty(), "{before:?}");
    let stored = parse_hash(&redis_hash(&mut con, key)).0;
    assert_eq!(stored["a"].counters, counters(3, 111));
    // Into an existing hash: the answer is the hash before the write (a's fields, none of
    // b's); b's counters are written, its waste is not.
    let before = fresh(&mut con, "b", counters(2, 999));
    let (nodes, _) = parse_hash(&before);
    assert_eq!(nodes.keys().collect::<Vec<_>>(), ["a"]);
    let stored = parse_hash(&redis_hash(&mut con, key)).0;
    assert_eq!(stored["b"].counters.consumed, 2);
    assert_eq!(
        { stored["b"].counters.waste },
        i128::MIN,
        "b's waste is not in the hash"
    );
    assert!(!redis_hash(&mut con, key).contains_key("b:waste"));
    // A fresh write never lowers what a node had stored (a restarted node counts from zero).
    let before = fresh(&mut con, "a", counters(1, 5));
    assert_eq!(parse_hash(&before).0["a"].counters, counters(3, 111));
    assert_eq!(
        parse_hash(&redis_hash(&mut con, key)).0["a"].counters,
        counters(3, 111)
    );
}

fn redis_hash(con: &mut redis::Connection, key: &str) -> HashMap<String, String> {
    redis::cmd("HGETALL").arg(key).query(con).expect("HGETALL")
}

/// A small deterministic generator (xorshift), so that a failure replays.
struct Gen(u64);

impl Gen {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[test]
fn the_batch_script_answers_and_writes_what_the_per_bucket_scripts_do() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut con = client.get_connection().unwrap();
    let script = redis::Script::new(&batch_script());
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    // Two copies of the same buckets: "one:" written by the per-bucket scripts, "all:" by the
    // batch script, from the same rounds of random writes of three nodes. Among them: a hash
    // over the size guard, a key that is not a hash, garbage and negative values.
    let keys = ["k0", "k1", "k2", "big", "str"];
    for prefix in ["one", "all"] {
        for i in 0..(MAX_FIELDS + 1) {
            let _: () = redis::cmd("HSET")
                .arg(format!("{prefix}:big"))
                .arg(format!("junk{i}"))
                .arg(1)
                .query(&mut con)
                .unwrap();
        }
        let _: () = redis::cmd("SET")
            .arg(format!("{prefix}:str"))
            .arg("x")
            .query(&mut con)
            .unwrap();
        let _: () = redis::cmd("HSET")
            .arg(format!("{prefix}:k1"))
            .arg("b:consumed")
            .arg("garbage")
            .query(&mut con)
            .unwrap();
    }
    // Quota writes name one of a few minutes, mostly later as the rounds go (a node that is
    // behind writes an earlier one): they remove the fields of earlier minutes, in both forms.
    let minute = Window::Minute.index(1_795_941_667 * 1_000_000_000);
    for round in 0..60 {
        let node = ["a", "b", "c"][g.next(3) as usize];
        let chosen: Vec<&str> = keys.iter().copied().filter(|_| g.next(3) > 0).collect();
        let ops: Vec<Op> = chosen
            .iter()
            .map(|k| {
                let window = (g.next(3) > 0).then(|| WindowAt {
                    window: Window::Minute,
                    index: minute + (round / 15 + g.next(2)) as i64,
                });
                let waste = i128::from(g.next(1000)) - 500;
                let own = Counters {
                    consumed: g.next(50),
                    attempts: g.next(50),
                    waste: match window {
                        Some(w) => WindowWaste {
                            index: w.index,
                            tokens: waste as i64,
                        }
                        .pack(),
                        None => waste,
                    },
                };
                let capacity = 10 + g.next(2);
                Op {
                    bucket: DirtyBucket {
                        store_key: StoreKey::new("l", k),
                        own,
                        credit: 0,
                        fresh: g.next(2) == 0,
                    },
                    redis_key: (*k).to_string(),
                    ttl_ms: 60_000,
                    fields: bucket_fields(node, &own, (capacity, 5), 1000 + round, window.as_ref()),
                    window,
                }
            })
            .collect();
        if ops.is_empty() {
            continue;
        }
        let one: Vec<Result<HashMap<String, String>, String>> = ops
            .iter()
            .map(|op| {
                let lua = if op.bucket.fresh {
                    fresh_script()
                } else {
                    merge_script()
                };
                let script = redis::Script::new(&lua);
                let mut inv = script.prepare_invoke();
                inv.key(format!("one:{}", op.redis_key))
                    .arg(op.ttl_ms)
                    .arg(MAX_FIELDS);
                for (f, v) in &op.fields {
                    inv.arg(f).arg(v);
                }
                inv.invoke(&mut con).map_err(|e| e.to_string())
            })
            .collect();
        let batched: Vec<Op> = ops
            .iter()
            .cloned()
            .map(|mut op| {
                op.redis_key = format!("all:{}", op.redis_key);
                op
            })
            .collect();
        // One call per set of field names, as a round sends them.
        let mut all: Vec<Option<_>> = vec![None; batched.len()];
        for group in batch::groups(&batched) {
            let members: Vec<&Op> = group.iter().map(|&i| &batched[i]).collect();
            let inv = batch::invocation(&script, &members).expect("same fields");
            for (&i, r) in group
                .iter()
                .zip(batch::replies(inv.invoke(&mut con), group.len()))
            {
                all[i] = Some(r);
            }
        }
        let all = all.into_iter().map(|r| r.expect("a reply for every op"));
        for ((op, one), all) in ops.iter().zip(one).zip(all) {
            match (one, all) {
                (Ok(one), Ok(all)) => assert_eq!(one, all, "round {round}, {}", op.redis_key),
                (Err(one), Err(all)) => assert!(
                    one.contains("WRONGTYPE") && all.message.contains("WRONGTYPE"),
                    "{one} / {}",
                    all.message
                ),
                (one, all) => panic!("round {round}, {}: {one:?} / {all:?}", op.redis_key),
            }
        }
    }
    let first = format!("@{}", Window::Minute.label(minute));
    for k in keys.iter().filter(|k| **k != "str") {
        let all = redis_hash(&mut con, &format!("all:{k}"));
        assert_eq!(redis_hash(&mut con, &format!("one:{k}")), all, "{k}");
        // The first minute's fields went with the later writes (not from the hash over the
        // guard, which is not cleaned).
        let named = all.keys().filter(|f| f.ends_with(&first)).count();
        assert_eq!(
            named > 0,
            *k == "big",
            "{k}: {named} fields of the first minute"
        );
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("all:{k}"))
            .query(&mut con)
            .unwrap();
        assert!(ttl > 0, "{k}: no TTL");
    }
}

/// A write that names a window (a quota's) removes every field of an earlier window, whoever
/// wrote it, and a quota's counters without a window (the layout before windows were named);
/// it leaves the current and later windows, the parameters, and other hashes alone.
#[test]
fn a_quota_write_removes_the_fields_of_earlier_windows() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut con = client.get_connection().unwrap();
    let key = "tollgate:daily:k";
    let day = WindowAt::of(Window::Day, 1_795_941_667 * 1_000_000_000);
    assert_eq!(day.label(), "2026-11-29");
    let stored = [
        ("a:consumed@2026-11-28", "5"),
        ("a:waste@2026-11-28", "0"),
        ("b:consumed@2026-11-27", "7"),
        ("b:credit@2026-10-31", "1"),
        ("b:consumed@2026-11-29", "2"),
        ("c:consumed@2026-11-30", "3"),
        ("a:consumed", "99"),
        ("b:waste", "1"),
        ("b:capacity", "10"),
        ("b:seen_ms", "1"),
        ("x@y:capacity", "10"),
    ];
    for (f, v) in stored {
        redis.cmd(&["HSET", key, f, v]);
        redis.cmd(&["HSET", "tollgate:per-ip:k", f, v]);
    }
    let own = Counters {
        consumed: 4,
        attempts: 6,
        waste: WindowWaste {
            index: day.index,
            tokens: 0,
        }
        .pack(),
    };
    let hash = merge(
        &mut con,
        key,
        60_000,
        &bucket_fields("a", &own, (10, 115_740), 2, Some(&day)),
    );
    let mut fields: Vec<&str> = hash.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "a:attempts@2026-11-29",
            "a:capacity",
            "a:consumed@2026-11-29",
            "a:rate",
            "a:seen_ms",
            "a:waste@2026-11-29",
            "b:capacity",
            "b:consumed@2026-11-29",
            "b:seen_ms",
            "c:consumed@2026-11-30",
            "x@y:capacity",
        ]
    );
    assert_eq!(redis_hash(&mut con, key), hash, "removed from the hash too");
    let (nodes, ignored) = parse_hash_at(&hash, Some(&day));
    assert_eq!(ignored, 0);
    assert_eq!(nodes["a"].counters, own);
    assert_eq!(nodes["b"].counters.consumed, 2);
    // A write without a window (a token bucket's) removes nothing.
    let other = "tollgate:per-ip:k";
    let hash = merge(
        &mut con,
        other,
        60_000,
        &node_fields("a", &Counters::default(), 10, 1, 2),
    );
    for (f, _) in stored {
        assert!(hash.contains_key(f), "{f} kept in {other}");
    }
    // A first write of a window (the fresh script) removes them too, answers the hash as it
    // was, and keeps its waste out of a hash that exists.
    redis.cmd(&["HSET", key, "b:consumed@2026-11-28", "8"]);
    let next = WindowAt {
        index: day.index + 1,
        ..day
    };
    let fresh = Counters {
        waste: WindowWaste {
            index: next.index,
            tokens: 0,
        }
        .pack(),
        ..own
    };
    let before = run_script(
        &fresh_script(),
        &mut con,
        key,
        60_000,
        &bucket_fields("b", &fresh, (10, 115_740), 3, Some(&next)),
    );
    assert!(before.contains_key("b:consumed@2026-11-28"));
    let after = redis_hash(&mut con, key);
    let mut fields: Vec<&str> = after.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "a:capacity",
            "a:rate",
            "a:seen_ms",
            "b:attempts@2026-11-30",
            "b:capacity",
            "b:consumed@2026-11-30",
            "b:rate",
            "b:seen_ms",
            "c:consumed@2026-11-30",
            "x@y:capacity",
        ]
    );
}
