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
