//! Byte checks of a key part, eight bytes at a time.
//!
//! Every request's key parts are checked twice: a header's value must be visible ASCII (what
//! [`http::HeaderValue::to_str`] admits), and a part holding `%` or `|` must be escaped (see
//! [`crate::request::key`]). Byte by byte, as the standard library's iterators do it, that is
//! about ten instructions a byte; here a word of eight bytes takes about as many. The tests
//! hold each check to its byte-by-byte definition.

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// Some byte of `x` is below `n` (`n` at most 128; exact, from the classic bit hack).
#[inline(always)]
fn has_less(x: u64, n: u8) -> bool {
    x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS != 0
}

/// Some byte of `x` is above `n` (`n` below 128).
#[inline(always)]
fn has_more(x: u64, n: u8) -> bool {
    (x.wrapping_add(ONES * u64::from(127 - n)) | x) & HIGHS != 0
}

/// Some byte of `x` is `b`.
#[inline(always)]
fn has_byte(x: u64, b: u8) -> bool {
    has_less(x ^ (ONES * u64::from(b)), 1)
}

/// Calls `word` on `bytes` eight at a time; true when it is true of some word. The last
/// word overlaps the one before (a byte checked twice changes no answer), and fewer than eight
/// bytes are read as overlapping halves, or padded with `pad`: no copy of variable length
/// (which would be a call to `memcpy`).
#[inline(always)]
fn any_word(bytes: &[u8], pad: u8, word: impl Fn(u64) -> bool) -> bool {
    let n = bytes.len();
    let at = |i: usize| {
        let mut w = [0; 8];
        w.copy_from_slice(&bytes[i..i + 8]);
        u64::from_ne_bytes(w)
    };
    if n >= 8 {
        return (0..n - 8).step_by(8).any(|i| word(at(i))) || word(at(n - 8));
    }
    let half = |i: usize| {
        let mut w = [0; 4];
        w.copy_from_slice(&bytes[i..i + 4]);
        u64::from(u32::from_ne_bytes(w))
    };
    let x = if n >= 4 {
        half(0) | half(n - 4) << 32
    } else if n > 0 {
        let b = |i: usize| u64::from(bytes[i]);
        b(0) | b(n / 2) << 8 | b(n - 1) << 16 | (ONES * u64::from(pad)) << 24
    } else {
        return false;
    };
    word(x)
}

/// `bytes` as `&str` when every byte is visible ASCII or a tab, as
/// [`http::HeaderValue::to_str`] requires; `None` otherwise.
#[inline]
pub fn visible_ascii(bytes: &[u8]) -> Option<&str> {
    let odd = any_word(bytes, b'a', |x| has_less(x, 0x20) || has_more(x, 0x7e));
    // A word with a byte out of range may only hold a tab: byte by byte then (rare).
    if odd
        && !bytes
            .iter()
            .all(|&b| (0x20..0x7f).contains(&b) || b == b'\t')
    {
        return None;
    }
    // SAFETY: every byte is ASCII, so the bytes are UTF-8: a word without `odd` has every
    // byte in 0x20..=0x7e (`has_less` and `has_more` miss no byte out of that range, the
    // classic exact tests; the tests here check them against the byte-by-byte definition),
    // and an `odd` one was checked byte by byte.
    Some(unsafe { std::str::from_utf8_unchecked(bytes) })
}

/// Whether `part` holds a `%` or a `|` (and so must be escaped in a key).
#[inline]
pub fn needs_escape(part: &str) -> bool {
    any_word(part.as_bytes(), b'a', |x| {
        has_byte(x, b'%') || has_byte(x, b'|')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visible_bytewise(b: &[u8]) -> bool {
        b.iter().all(|&c| (32..127).contains(&c) || c == b'\t')
    }

    /// Every byte value at every position of every length up to 17 (two words and a tail),
    /// in a field of a plain letter: each check says what its byte-by-byte definition says.
    #[test]
    fn each_check_agrees_with_its_definition_byte_by_byte() {
        for len in 1..=17 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut v = vec![b'k'; len];
                    v[at] = b;
                    let expected = visible_bytewise(&v);
                    assert_eq!(visible_ascii(&v).is_some(), expected, "{v:?}");
                    if let Some(s) = visible_ascii(&v) {
                        assert_eq!(s.as_bytes(), &v[..]);
                    }
                    if let Ok(s) = std::str::from_utf8(&v) {
                        assert_eq!(needs_escape(s), b == b'%' || b == b'|', "{v:?}");
                    }
                }
            }
        }
        assert_eq!(visible_ascii(b""), Some(""));
        assert!(!needs_escape(""));
    }

    /// Words of several odd bytes at once (borrows and carries across bytes): 200,000 values
    /// of random bytes from a few classes, each check against its definition.
    #[test]
    fn mixed_words_agree_with_the_definitions_too() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let classes: [&[u8]; 4] = [b"k", b"%|", b"\t\x00\x1f\x20\x7e\x7f", b"\x80\xff"];
        for _ in 0..200_000 {
            let len = (next() % 20) as usize;
            let v: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    let class = classes[(r % 4) as usize];
                    class[(r >> 8) as usize % class.len()]
                })
                .collect();
            assert_eq!(visible_ascii(&v).is_some(), visible_bytewise(&v), "{v:?}");
            if let Ok(s) = std::str::from_utf8(&v) {
                assert_eq!(needs_escape(s), s.contains(['%', '|']), "{v:?}");
            }
        }
    }

    /// What `http` itself admits: the check is a drop-in for `HeaderValue::to_str`.
    #[test]
    fn a_header_value_is_visible_exactly_when_http_says_so() {
        for v in [
            &b"sk-live-0123456789abcdef"[..],
            b"a\tb",
            b"caf\xc3\xa9",
            b"x\x80y",
            b" k ",
        ] {
            let value = http::HeaderValue::from_bytes(v).expect("a valid field value");
            assert_eq!(visible_ascii(v), value.to_str().ok(), "{v:?}");
        }
    }
}
