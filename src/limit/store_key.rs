//! Store keys: a bucket is named `LIMIT:KEY` in the store (limit names contain no `:`, which
//! the config checks), and these functions are the only ones that write or split that form.

/// The store key of a bucket: limit names contain no ':' (checked by the config).
pub fn store_key(limit: &str, key: &str) -> String {
    let mut s = String::with_capacity(limit.len() + 1 + key.len());
    push_limit_prefix(&mut s, limit);
    s.push_str(key);
    s
}

/// The limit and the key of a store key (`LIMIT:KEY`); None for a string of another form.
pub fn split_store_key(store_key: &str) -> Option<(&str, &str)> {
    store_key.split_once(':')
}

/// The limit of a store key (the whole string when it has no key part).
pub fn limit_of(store_key: &str) -> &str {
    split_store_key(store_key).map_or(store_key, |(l, _)| l)
}

/// The `LIMIT:` that starts every store key of `limit`.
#[inline]
pub fn push_limit_prefix(out: &mut String, limit: &str) {
    out.push_str(limit);
    out.push(':');
}

/// A bucket's name in the store, `LIMIT:KEY` (see [`store_key`]): the type of the store's map
/// keys and of the lists the sync loop works from, so that a store key is never mistaken for a
/// client key or a Redis key. Hashes and compares as its text (it borrows as `str`, so the
/// map is probed with the `&str` the request path builds, without a copy).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreKey(Box<str>);

impl StoreKey {
    /// The store key of `key` under `limit`.
    pub fn new(limit: &str, key: &str) -> StoreKey {
        StoreKey(store_key(limit, key).into_boxed_str())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The limit's name.
    pub fn limit(&self) -> &str {
        limit_of(&self.0)
    }

    /// The key within the limit (empty for a string of another form).
    pub fn key(&self) -> &str {
        split_store_key(&self.0).map_or("", |(_, k)| k)
    }
}

/// From text already in the `LIMIT:KEY` form (the request path writes it that way).
impl From<&str> for StoreKey {
    fn from(s: &str) -> StoreKey {
        StoreKey(s.into())
    }
}

impl std::borrow::Borrow<str> for StoreKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for StoreKey {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl PartialEq<str> for StoreKey {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for StoreKey {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}
