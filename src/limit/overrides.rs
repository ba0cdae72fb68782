//! A limit as the store charges it ([`LimitSpec`]) and its per-key overrides (plans): a key
//! may have its own bucket parameters, be `unlimited` (never charged) or `deny` (always
//! refused, 403).
//!
//! A limit's overrides are one hash map from the key, exactly as the limit builds it, to the
//! override; a limit without overrides holds none, and its keys pay nothing for the feature
//! (one `is_empty` test). An overridden key pays one hash lookup per request. Everything that
//! needs a bucket's parameters later (the sync round, the quiet-bucket checks, the sweep, the
//! statistics, `/rating`) resolves them the same way, through [`LimitSpec::for_key`], so a
//! bucket is always evaluated with the parameters it was charged with; in shared mode each
//! node writes its own parameters into the bucket's hash, so nodes that disagree about a key's
//! override show as drift, as for any other difference of parameters.

use super::bucket::BucketParams;
use std::collections::HashMap;
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
}

impl Own {
    pub fn new(spec: LimitSpec) -> Own {
        Own {
            spec,
            policy: OnceLock::new(),
        }
    }
}

/// A limit's overrides, by key. Cloning shares the map.
#[derive(Debug, Clone, Default)]
pub struct Overrides(Option<Arc<HashMap<Box<str>, Override, ahash::RandomState>>>);

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
                    || (a.len() == b.len() && a.iter().all(|(k, o)| b.get(k) == Some(o)))
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
    /// Overrides from (key, override) pairs; the caller has refused duplicate keys.
    pub fn new(entries: impl IntoIterator<Item = (String, Override)>) -> Self {
        let map: HashMap<Box<str>, Override, ahash::RandomState> = entries
            .into_iter()
            .map(|(k, o)| (k.into_boxed_str(), o))
            .collect();
        if map.is_empty() {
            Overrides(None)
        } else {
            Overrides(Some(Arc::new(map)))
        }
    }

    /// The override of `key`, if any.
    #[inline]
    pub fn get(&self, key: &str) -> Option<&Override> {
        self.0.as_ref()?.get(key)
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Every (key, override), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Override)> {
        self.0
            .iter()
            .flat_map(|m| m.iter().map(|(k, o)| (k.as_ref(), o)))
    }
}

impl LimitSpec {
    /// What `key` (without the `LIMIT:` prefix) is subject to under this limit.
    #[inline]
    pub fn for_key(&self, key: &str) -> ForKey<'_> {
        if self.overrides.is_empty() {
            return ForKey::Bucket(self);
        }
        match self.overrides.get(key) {
            None => ForKey::Bucket(self),
            Some(Override::Bucket(o)) => ForKey::Own(o),
            Some(Override::Unlimited) => ForKey::Unlimited,
            Some(Override::Deny) => ForKey::Deny,
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
