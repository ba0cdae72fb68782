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
    let n = limit.len();
    // SAFETY: a whole `str` then an ASCII byte keep the string valid UTF-8 (a byte where
    // `String::push` would encode a `char`); room for both is reserved once, and the name
    // (another allocation) is read before anything is written.
    unsafe {
        let v = out.as_mut_vec();
        v.reserve(n + 1);
        let end = v.as_mut_ptr().add(v.len());
        if n > SHORT {
            std::ptr::copy_nonoverlapping(limit.as_ptr(), end, n);
        } else {
            copy_short(limit.as_ptr(), end, n);
        }
        *end.add(n) = b':';
        v.set_len(v.len() + n + 1);
    }
}

/// The longest string [`push_short`] and [`eq_short`] handle without a call to `memcpy` or
/// `memcmp`.
const SHORT: usize = 32;

/// `out.push_str(s)`, with a string of at most 32 bytes (a limit name, an API key) copied
/// inline as two overlapping words: `push_str` calls `memcpy` for any length it does not
/// know, about 15 instructions more for a copy of a few bytes, and a request's keys make
/// several.
#[inline(always)]
pub fn push_short(out: &mut String, s: &str) {
    let n = s.len();
    if n > SHORT {
        out.push_str(s);
        return;
    }
    // SAFETY: the source is a whole `str` (the string stays valid UTF-8) of `n` bytes, in
    // another allocation than `out`'s spare capacity.
    unsafe { append_short(out.as_mut_vec(), n, |_| s.as_ptr()) }
}

/// `out`'s bytes in `range` (a whole `str` within it: between char boundaries) appended to
/// it, as [`push_short`] copies.
#[inline(always)]
pub fn push_within(out: &mut String, range: std::ops::Range<usize>) {
    assert!(range.start <= range.end && range.end <= out.len());
    debug_assert!(out.is_char_boundary(range.start) && out.is_char_boundary(range.end));
    let n = range.end - range.start;
    // SAFETY: the copied bytes are a whole `str` slice of `out` (char boundaries), so `out`
    // stays valid UTF-8.
    let v = unsafe { out.as_mut_vec() };
    if n > SHORT {
        v.extend_from_within(range);
        return;
    }
    // SAFETY: in bounds (asserted above), read from below the length and written past it:
    // no overlap.
    unsafe { append_short(v, n, |base| base.add(range.start)) }
}

/// Appends `n` (at most [`SHORT`]) bytes to `v`, read from `src(the buffer's start)` once
/// room is reserved (a source within `v` is found again after the buffer may have moved).
///
/// # Safety
/// The source is readable for `n` bytes and does not overlap `v`'s spare capacity.
#[inline(always)]
unsafe fn append_short(v: &mut Vec<u8>, n: usize, src: impl FnOnce(*const u8) -> *const u8) {
    v.reserve(n);
    let base = v.as_mut_ptr();
    copy_short(src(base), base.add(v.len()), n);
    v.set_len(v.len() + n);
}

/// Copies `n` (at most [`SHORT`]) bytes from `src` to `dst`: every byte read before any is
/// written.
///
/// # Safety
/// `src` readable and `dst` writable for `n` bytes; the two ranges do not overlap.
#[inline(always)]
unsafe fn copy_short(src: *const u8, dst: *mut u8, n: usize) {
    debug_assert!(n <= SHORT);
    if n >= 16 {
        copy_ends::<u128>(src, dst, n);
    } else if n >= 8 {
        copy_ends::<u64>(src, dst, n);
    } else if n >= 4 {
        copy_ends::<u32>(src, dst, n);
    } else if n > 0 {
        let (a, b, c) = (*src, *src.add(n / 2), *src.add(n - 1));
        *dst = a;
        *dst.add(n / 2) = b;
        *dst.add(n - 1) = c;
    }
}

/// Copies `n` bytes (from `size_of::<W>()` to twice that) as the first and the last word `W`
/// of them, overlapping in the middle: both read before either is written.
///
/// # Safety
/// As [`copy_short`]'s, with `n` in that range.
#[inline(always)]
unsafe fn copy_ends<W: Copy>(src: *const u8, dst: *mut u8, n: usize) {
    let w = std::mem::size_of::<W>();
    debug_assert!(w <= n && n <= 2 * w);
    let (first, last) = (
        src.cast::<W>().read_unaligned(),
        src.add(n - w).cast::<W>().read_unaligned(),
    );
    dst.cast::<W>().write_unaligned(first);
    dst.add(n - w).cast::<W>().write_unaligned(last);
}

/// `a == b`, with strings of at most 32 bytes compared inline as two overlapping words
/// (`==` calls `memcmp`, about 20 instructions for a few bytes): how a bucket's key is told
/// from another in the store's map.
#[inline(always)]
pub fn eq_short(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n > SHORT {
        return a == b;
    }
    // Both halves of each, overlapping when `n` is less than twice the word.
    fn halves<const W: usize>(s: &[u8]) -> ([u8; W], [u8; W]) {
        let mut h = ([0; W], [0; W]);
        h.0.copy_from_slice(&s[..W]);
        h.1.copy_from_slice(&s[s.len() - W..]);
        h
    }
    // Arrays of a known length compare as words, without `memcmp`.
    if n >= 16 {
        halves::<16>(a) == halves::<16>(b)
    } else if n >= 8 {
        halves::<8>(a) == halves::<8>(b)
    } else if n >= 4 {
        halves::<4>(a) == halves::<4>(b)
    } else {
        n == 0 || (a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1])
    }
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

    /// Every length up to past the inline ones: the short copy and comparison do what
    /// `push_str`, `extend_from_within` and `==` do, a difference at any position included.
    #[test]
    fn short_copies_and_comparisons_agree_with_the_standard_ones() {
        let text: String = (0..80u8).map(|i| char::from(b'a' + i % 26)).collect();
        for n in 0..=(SHORT + 9) {
            let s = &text[3..3 + n];
            let mut out = String::from("pre");
            push_short(&mut out, s);
            assert_eq!(out, format!("pre{s}"), "push_short {n}");
            // A limit's prefix, into a buffer with no room and one with some.
            for mut prefixed in [String::new(), String::with_capacity(100)] {
                prefixed.push_str("x|");
                push_limit_prefix(&mut prefixed, s);
                assert_eq!(prefixed, format!("x|{s}:"), "push_limit_prefix {n}");
            }
            // From within: the copy lands after the current end, the buffer may grow.
            let mut within = String::from(&text[..n + 3]);
            within.shrink_to_fit();
            push_within(&mut within, 3..3 + n);
            assert_eq!(within, format!("{}{s}", &text[..n + 3]), "push_within {n}");
            assert!(
                eq_short(s.as_bytes(), s.to_string().as_bytes()),
                "equal {n}"
            );
            for at in 0..n {
                let mut other = s.as_bytes().to_vec();
                other[at] ^= 0x20;
                assert!(!eq_short(s.as_bytes(), &other), "differs at {at} of {n}");
            }
            if n > 0 {
                assert!(
                    !eq_short(s.as_bytes(), &s.as_bytes()[..n - 1]),
                    "shorter {n}"
                );
            }
        }
        let mut multi = String::from("ключ:");
        push_within(&mut multi, 0..8);
        assert_eq!(multi, "ключ:ключ");
    }

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
