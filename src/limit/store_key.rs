//! Store keys: a bucket is named `LIMIT:KEY` in the store (limit names contain no `:`, which
//! the config checks), and these functions are the only ones that write or split that form.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;

/// The hasher of the store's keys (shard and map): foldhash, hashbrown's own default, with a
/// random seed per store. Keys come from clients, so the seed matters (no fixed state);
/// foldhash takes fewer instructions than ahash's portable fallback (the one a build for
/// generic x86-64, without AES instructions, gets) for keys of a few dozen bytes.
pub type KeyHasher = foldhash::fast::RandomState;

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
    out.reserve(limit.len() + 1);
    out.push_str(limit);
    // SAFETY: an ASCII byte after a whole `str` keeps the string valid UTF-8 (a byte push
    // where `String::push` would encode a `char`).
    unsafe { out.as_mut_vec().push(b':') };
}

/// A bucket's name in the store, `LIMIT:KEY` (see [`store_key`]): the type of the store's map
/// keys and of the lists the sync loop works from, so that a store key is never mistaken for a
/// client key or a Redis key. Hashes and compares as its text (it borrows as `str`, so the
/// map is probed with the `&str` the request path builds, without a copy).
///
/// One pointer (8 bytes, where a `Box<str>` is 16): to a single allocation of the text's
/// length (4 bytes) and then its bytes. Every bucket holds its key, so that the 8 bytes are
/// a bucket's (see `store_slab`); the allocation is the size a `Box<str>`'s would round up
/// to for keys of most lengths (4 bytes more, in the allocator's size classes of 8 or 16).
pub struct StoreKey(NonNull<u8>);

// SAFETY: a `StoreKey` owns its allocation, which is never written after it is made (as a
// `Box<str>` owns its bytes).
unsafe impl Send for StoreKey {}
// SAFETY: as above; `&StoreKey` only ever reads.
unsafe impl Sync for StoreKey {}

/// The length's bytes before the text.
const LEN: usize = std::mem::size_of::<u32>();

fn layout(len: usize) -> Layout {
    // At most 4 + 2^32 bytes (see `StoreKey::of`), aligned to the length's 4: never over
    // `isize::MAX` on a 64-bit target.
    Layout::from_size_align(LEN + len, LEN).unwrap_or_else(|_| unreachable!("key length"))
}

impl StoreKey {
    /// The store key of `key` under `limit`.
    pub fn new(limit: &str, key: &str) -> StoreKey {
        StoreKey::of(&store_key(limit, key))
    }

    /// A copy of `text`. Store keys are far shorter than 4 GiB: a key's parts are at most 256
    /// bytes each (a longer one is a digest, see `request::key`), and a request's header is
    /// at most a few hundred KiB; a longer text is cut to 4 GiB - 1 bytes at a character
    /// boundary rather than refused.
    fn of(text: &str) -> StoreKey {
        let mut n = text.len().min(u32::MAX as usize);
        while !text.is_char_boundary(n) {
            n -= 1;
        }
        let layout = layout(n);
        // SAFETY: `layout` has a non-zero size (the length's 4 bytes at least).
        let p = unsafe { alloc(layout) };
        let Some(p) = NonNull::new(p) else {
            handle_alloc_error(layout)
        };
        // SAFETY: the allocation holds 4 bytes aligned to 4 for the length (`n` fits: capped
        // above), then `n` bytes for the text, which `text[..n]` has.
        unsafe {
            p.as_ptr().cast::<u32>().write(n as u32);
            std::ptr::copy_nonoverlapping(text.as_ptr(), p.as_ptr().add(LEN), n);
        }
        StoreKey(p)
    }

    fn len(&self) -> usize {
        // SAFETY: the allocation starts with the length, aligned (see `StoreKey::of`).
        unsafe { self.0.as_ptr().cast::<u32>().read() as usize }
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: the length's bytes after the length are a copy of a `str`'s whole characters
        // (see `StoreKey::of`), never written since, and live as long as `self`.
        unsafe {
            let bytes = std::slice::from_raw_parts(self.0.as_ptr().add(LEN), self.len());
            std::str::from_utf8_unchecked(bytes)
        }
    }

    /// The limit's name.
    pub fn limit(&self) -> &str {
        limit_of(self.as_str())
    }

    /// The key within the limit (empty for a string of another form).
    pub fn key(&self) -> &str {
        split_store_key(self.as_str()).map_or("", |(_, k)| k)
    }
}

impl Drop for StoreKey {
    fn drop(&mut self) {
        // SAFETY: allocated by `StoreKey::of` with this layout (the length it wrote), and
        // freed only here.
        unsafe { dealloc(self.0.as_ptr(), layout(self.len())) }
    }
}

impl Clone for StoreKey {
    fn clone(&self) -> StoreKey {
        StoreKey::of(self.as_str())
    }
}

impl PartialEq for StoreKey {
    fn eq(&self, other: &StoreKey) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for StoreKey {}

impl std::hash::Hash for StoreKey {
    /// As its text (the maps are probed with `&str`, see [`std::borrow::Borrow`]).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl PartialOrd for StoreKey {
    fn partial_cmp(&self, other: &StoreKey) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for StoreKey {
    fn cmp(&self, other: &StoreKey) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// From text already in the `LIMIT:KEY` form (the request path writes it that way).
impl From<&str> for StoreKey {
    fn from(s: &str) -> StoreKey {
        StoreKey::of(s)
    }
}

impl std::borrow::Borrow<str> for StoreKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl std::ops::Deref for StoreKey {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<str> for StoreKey {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for StoreKey {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashSet};

    #[test]
    fn a_store_key_is_one_pointer_and_holds_its_text() {
        assert_eq!(std::mem::size_of::<StoreKey>(), 8);
        assert_eq!(std::mem::size_of::<Option<StoreKey>>(), 8);
        for text in ["", "l:", "per-ip:10.7.161.32", "l:ключ|é", &"k".repeat(300)] {
            let k = StoreKey::from(text);
            assert_eq!(k.as_str(), text);
            assert_eq!(&*k.clone(), text);
            assert_eq!(k, text);
            assert_eq!(format!("{k}"), text);
            assert_eq!(format!("{k:?}"), format!("{text:?}"));
        }
        let k = StoreKey::new("per-ip", "10.0.0.1");
        assert_eq!((k.limit(), k.key()), ("per-ip", "10.0.0.1"));
        assert_eq!(StoreKey::from("nolimit").key(), "");
    }

    #[test]
    fn store_keys_hash_compare_and_order_as_their_text() {
        let texts = ["b:2", "a:1", "a:10", "a:1"];
        let keys: Vec<StoreKey> = texts.iter().map(|t| StoreKey::from(*t)).collect();
        let set: HashSet<StoreKey> = keys.iter().cloned().collect();
        assert_eq!(set.len(), 3);
        // Found by `&str`, which needs the same hash as the text's.
        assert!(set.contains("a:10") && set.contains("b:2") && !set.contains("a:2"));
        let ordered: Vec<String> = keys
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .iter()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(ordered, ["a:1", "a:10", "b:2"]);
        assert!(keys[1] == keys[3] && keys[1] != keys[2]);
    }
}
