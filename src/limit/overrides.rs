//! A limit as the store charges it ([`LimitSpec`]) and its per-key overrides (plans): a key
//! may have its own bucket parameters, be `unlimited` (never charged) or `deny` (always
//! refused, 403).
//!
//! A limit's overrides are one hash map from the key, exactly as the limit builds it, to the
//! override's position in a list; a limit without overrides holds none, and its keys pay
//! nothing for the feature (one `is_empty` test). A key of a limit with overrides pays one
//! hash lookup when it has no bucket yet; its bucket then notes the override it found (a
//! [`Plan`], see [`crate::limit::store_plans`]), and later requests find it there. Everything that
//! needs a bucket's parameters later (the sync round, the quiet-bucket checks, the sweep, the
//! statistics, `/rating`) resolves them the same way, through [`LimitSpec::for_key`], so a
//! bucket is always evaluated with the parameters it was charged with; in shared mode each
//! node writes its own parameters into the bucket's hash, so nodes that disagree about a key's
//! override show as drift, as for any other difference of parameters.

use super::bucket::BucketParams;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

/// One limit as the running config defines it.
#[derive(Debug, Clone)]
pub struct LimitSpec {
    pub name: String,
    pub params: BucketParams,
    pub shadow: bool,
    /// Pacing of a shared bucket: see [`crate::limit::pacing`].
    pub burst_guard: bool,
    /// Per-key parameters, `unlimited` and `deny` (see [`crate::limit::overrides`]).
    pub overrides: Overrides,
}

/// What a key is given instead of its limit's parameters.
#[derive(Debug, Clone)]
pub enum Override {
    /// Its own bucket: the limit as it is, with these parameters.
    Bucket(Box<Own>),
    /// Never limited (still counted in the metrics).
    Unlimited,
    /// Always refused with 403, never forwarded.
    Deny,
}

/// A key's own bucket (an override): the limit with the key's parameters, and the
/// `RateLimit-Policy` value responses report for them.
#[derive(Debug, Clone)]
pub struct Own {
    pub spec: LimitSpec,
    /// The policy value of these parameters, built by the HTTP layer the first time a response
    /// reports them and handed out again from here (a reference count, no copy, no lookup):
    /// the core only keeps it. Built once per config, as the limits' own values are.
    pub policy: OnceLock<http::HeaderValue>,
    /// Its position in its limit's overrides ([`Overrides::own_at`]), set when the table is
    /// made ([`Plan::LIMIT`] before): what a response finds it by again, where a copy of its
    /// policy value would cost a reference count.
    pub at: u32,
}

impl Own {
    pub fn new(spec: LimitSpec) -> Own {
        Own {
            spec,
            policy: OnceLock::new(),
            at: Plan::LIMIT,
        }
    }
}

/// A limit's overrides, by key. Cloning shares the table (and its generation).
#[derive(Debug, Clone, Default)]
pub struct Overrides(Option<Arc<Table>>);

/// The overrides of one config's limit: each key's position in `list`, and a generation that
/// no other table of the process has, so that a position a bucket remembers (see
/// [`Plan`]) is only ever read against the table it came from.
#[derive(Debug)]
struct Table {
    generation: u32,
    at: HashMap<Box<str>, u32, super::store_key::KeyHasher>,
    list: Vec<Override>,
}

/// The generation of the next table: from 1 (0 is a bucket that never looked its key up). A
/// process would need 2^32 reloads that change overrides before one repeats.
static GENERATION: AtomicU32 = AtomicU32::new(1);

/// Which override a bucket's key had when the bucket last looked it up (its position in the
/// table of that generation, [`Plan::LIMIT`] for none): kept in the store's entry, so that a
/// request on a key that has a bucket finds its override without a second hash lookup. A
/// table's positions never change; a reload that changes a limit's overrides makes a new
/// table, whose generation no bucket has, so every bucket looks its key up once again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Plan {
    pub generation: u32,
    pub at: u32,
}

impl Plan {
    /// The key has no override: the limit's own parameters.
    pub const LIMIT: u32 = u32::MAX;
}

impl PartialEq for Override {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Override::Bucket(a), Override::Bucket(b)) => a.spec.params == b.spec.params,
            (Override::Unlimited, Override::Unlimited) | (Override::Deny, Override::Deny) => true,
            _ => false,
        }
    }
}

impl PartialEq for Overrides {
    /// The same keys with the same overrides.
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                Arc::ptr_eq(a, b)
                    || (self.len() == other.len()
                        && self.iter().all(|(k, o)| other.get(k) == Some(o)))
            }
            _ => false,
        }
    }
}

/// What a key of a limit is subject to.
#[derive(Debug, Clone, Copy)]
pub enum ForKey<'a> {
    /// A bucket with the limit's parameters.
    Bucket(&'a LimitSpec),
    /// A bucket with the key's own parameters (an override).
    Own(&'a Own),
    Unlimited,
    Deny,
}

impl<'a> ForKey<'a> {
    /// The limit whose bucket the key is charged to, if it has one.
    pub fn bucket(self) -> Option<&'a LimitSpec> {
        match self {
            ForKey::Bucket(l) => Some(l),
            ForKey::Own(o) => Some(&o.spec),
            ForKey::Unlimited | ForKey::Deny => None,
        }
    }

    /// The key's own bucket, if it has one (an override).
    pub fn own(self) -> Option<&'a Own> {
        match self {
            ForKey::Own(o) => Some(o),
            ForKey::Bucket(_) | ForKey::Unlimited | ForKey::Deny => None,
        }
    }
}

impl Overrides {
    /// Overrides from (key, override) pairs; the caller has refused duplicate keys (a
    /// duplicate's last override would win). At most 2^32 - 1 keys: an overrides file is at
    /// most 256 MiB (`config::overrides`), a few tens of millions of keys.
    pub fn new(entries: impl IntoIterator<Item = (String, Override)>) -> Self {
        let mut at: HashMap<Box<str>, u32, super::store_key::KeyHasher> = HashMap::default();
        let mut list = Vec::new();
        for (k, o) in entries {
            let Ok(i) = u32::try_from(list.len()) else {
                break;
            };
            if i == Plan::LIMIT {
                break;
            }
            match at.entry(k.into_boxed_str()) {
                std::collections::hash_map::Entry::Occupied(e) => list[*e.get() as usize] = o,
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(i);
                    list.push(o);
                }
            }
        }
        if list.is_empty() {
            return Overrides(None);
        }
        for (i, o) in (0u32..).zip(list.iter_mut()) {
            if let Override::Bucket(own) = o {
                own.at = i;
            }
        }
        let generation = loop {
            let g = GENERATION.fetch_add(1, Ordering::Relaxed);
            if g != 0 {
                break g;
            }
        };
        Overrides(Some(Arc::new(Table {
            generation,
            at,
            list,
        })))
    }

    /// The key's own bucket at position `at` ([`Own::at`]) of this table, if there is one.
    #[inline]
    pub fn own_at(&self, at: u32) -> Option<&Own> {
        match self.0.as_ref()?.list.get(at as usize)? {
            Override::Bucket(own) => Some(own),
            Override::Unlimited | Override::Deny => None,
        }
    }

    /// The override of `key`, if any.
    #[inline]
    pub fn get(&self, key: &str) -> Option<&Override> {
        let t = self.0.as_ref()?;
        t.at.get(key).map(|&i| &t.list[i as usize])
    }

    /// Which override `key` has in this table: one hash lookup.
    #[inline]
    pub fn plan_of(&self, key: &str) -> Plan {
        match &self.0 {
            None => Plan::default(),
            Some(t) => Plan {
                generation: t.generation,
                at: t.at.get(key).copied().unwrap_or(Plan::LIMIT),
            },
        }
    }

    /// This table's generation (0 without overrides: no plan is ever of it).
    #[inline]
    pub fn generation(&self) -> u32 {
        self.0.as_ref().map_or(0, |t| t.generation)
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |t| t.list.len())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Every (key, override), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Override)> {
        self.0
            .iter()
            .flat_map(|t| t.at.iter().map(|(k, &i)| (k.as_ref(), &t.list[i as usize])))
    }
}

impl LimitSpec {
    /// What `key` (without the `LIMIT:` prefix) is subject to under this limit.
    #[inline]
    pub fn for_key(&self, key: &str) -> ForKey<'_> {
        self.for_plan(self.overrides.plan_of(key))
    }

    /// What a key whose plan is `plan` is subject to. `plan` is of this limit's overrides
    /// (their generation, as [`Overrides::plan_of`] gives it, or a bucket's that matches
    /// it); a limit without overrides has only the plan "no override", generation 0.
    #[inline]
    pub fn for_plan(&self, plan: Plan) -> ForKey<'_> {
        let Some(t) = &self.overrides.0 else {
            return ForKey::Bucket(self);
        };
        debug_assert_eq!(plan.generation, t.generation, "a plan of another table");
        match t.list.get(plan.at as usize) {
            Some(o) if plan.generation == t.generation => self.subject_to(o),
            _ => ForKey::Bucket(self),
        }
    }

    #[inline]
    fn subject_to<'s>(&'s self, o: &'s Override) -> ForKey<'s> {
        match o {
            Override::Bucket(o) => ForKey::Own(o),
            Override::Unlimited => ForKey::Unlimited,
            Override::Deny => ForKey::Deny,
        }
    }

    /// What the bucket of `store_key` (this limit's `LIMIT:KEY`) is charged as: this limit, or
    /// the key's override (`None` for an unlimited or denied key: no bucket).
    pub fn spec_at(&self, store_key: &str) -> Option<&LimitSpec> {
        self.for_key(self.key_of(store_key)).bucket()
    }

    /// The parameters of `key`'s bucket (`None` for an unlimited or denied key: no bucket).
    pub fn params_for(&self, key: &str) -> Option<&BucketParams> {
        self.for_key(key).bucket().map(|l| &l.params)
    }

    /// A limit with these parameters and nothing more: enforcing, no burst guard, no overrides.
    pub fn new(name: impl Into<String>, params: BucketParams) -> LimitSpec {
        LimitSpec {
            name: name.into(),
            params,
            shadow: false,
            burst_guard: false,
            overrides: Overrides::default(),
        }
    }

    /// This limit with other parameters, for an override (no overrides of its own).
    pub fn with_params(&self, params: BucketParams) -> LimitSpec {
        LimitSpec {
            shadow: self.shadow,
            burst_guard: self.burst_guard,
            ..LimitSpec::new(self.name.clone(), params)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LimitSpec {
        LimitSpec::new("l", BucketParams::new(10, 1.0, 10).expect("params"))
    }

    #[test]
    fn an_own_bucket_is_found_again_by_its_position() {
        let l = spec();
        let own = |capacity| {
            let p = BucketParams::new(capacity, 1.0, capacity).expect("params");
            Override::Bucket(Box::new(Own::new(l.with_params(p))))
        };
        let o = Overrides::new([
            ("a".to_string(), own(5)),
            ("batch".to_string(), Override::Unlimited),
            ("b".to_string(), own(7)),
            ("leaked".to_string(), Override::Deny),
        ]);
        for (key, capacity) in [("a", 5), ("b", 7)] {
            let Some(Override::Bucket(found)) = o.get(key) else {
                panic!("{key} has its own bucket");
            };
            let again = o.own_at(found.at).expect("found again");
            assert_eq!(again.spec.params.capacity(), capacity);
            assert!(std::ptr::eq(again, &**found));
        }
        for key in ["batch", "leaked"] {
            assert!(o.own_at(o.plan_of(key).at).is_none(), "{key} has no bucket");
        }
        assert!(o.own_at(Plan::LIMIT).is_none());
        assert!(Overrides::default().own_at(0).is_none());
    }

    #[test]
    fn a_key_gets_its_override_and_every_other_key_the_limit() {
        let mut l = spec();
        let pro = l.with_params(BucketParams::new(100, 10.0, 100).expect("params"));
        l.overrides = Overrides::new([
            ("pro".to_string(), Override::Bucket(Box::new(Own::new(pro)))),
            ("batch".to_string(), Override::Unlimited),
            ("leaked".to_string(), Override::Deny),
        ]);
        assert_eq!(l.overrides.len(), 3);
        assert_eq!(l.params_for("pro").map(|p| p.capacity()), Some(100));
        assert_eq!(l.params_for("plain").map(|p| p.capacity()), Some(10));
        assert!(matches!(l.for_key("batch"), ForKey::Unlimited));
        assert!(matches!(l.for_key("leaked"), ForKey::Deny));
        assert!(l.params_for("leaked").is_none());
        // The key as the limit builds it: a prefix or a longer key is another key.
        assert_eq!(l.params_for("pr").map(|p| p.capacity()), Some(10));
        assert_eq!(l.params_for("pro|x").map(|p| p.capacity()), Some(10));
    }

    #[test]
    fn no_overrides_hold_no_map() {
        let l = spec();
        assert!(l.overrides.is_empty());
        assert_eq!(Overrides::new(Vec::new()).len(), 0);
        assert!(Overrides::new(Vec::new()).is_empty());
        assert_eq!(l.params_for("any").map(|p| p.capacity()), Some(10));
    }
}
