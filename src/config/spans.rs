//! Where each value of a JSON text is written, so that errors found after parsing can point
//! at a line and column. One pass over the text; it never fails: on malformed JSON it stops
//! and keeps what it has, with the containers still open at that point left open-ended.
//! Lines and columns are 1-based and count bytes, as serde_json's do.

use std::collections::{HashMap, HashSet};

/// Containers nested deeper than this are not indexed (serde_json refuses them anyway).
const MAX_DEPTH: usize = 128;

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Byte offset of the map key naming this value, if it is an object member.
    key: Option<usize>,
    /// Byte offset of the first byte of the value.
    start: usize,
    /// Byte offset of the last byte of the value; `None` if the text ended inside it.
    end: Option<usize>,
    /// The value is a JSON array.
    array: bool,
}

/// JSON path -> position of the value (and of its key).
#[derive(Debug, Default)]
pub struct Spans {
    entries: HashMap<String, Entry>,
    line_starts: Vec<usize>,
    /// Paths of object members whose key was already used in the same object, with the
    /// (line, col) of the repeated key.
    pub duplicates: Vec<(String, (usize, usize))>,
}

/// The path of member `key` of the object at `parent`: `a.b`, or `a["odd key"]` when the key
/// holds anything but letters, digits, `-` and `_`.
pub fn member(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    match (plain, parent.is_empty()) {
        (true, true) => key.to_string(),
        (true, false) => format!("{parent}.{key}"),
        (false, _) => format!("{parent}[{}]", serde_json::Value::from(key)),
    }
}

/// The path of element `i` of the array at `parent`.
pub fn element(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

impl Spans {
    /// Indexes `text`.
    pub fn index(text: &str) -> Spans {
        let mut line_starts = vec![0];
        line_starts.extend(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i + 1),
        );
        let mut walker = Walker {
            b: text.as_bytes(),
            i: 0,
            entries: HashMap::new(),
            duplicates: Vec::new(),
        };
        let _ = walker.value(String::new(), None, 0);
        let mut spans = Spans {
            entries: walker.entries,
            line_starts,
            duplicates: Vec::new(),
        };
        let duplicates = std::mem::take(&mut walker.duplicates);
        spans.duplicates = duplicates
            .into_iter()
            .map(|(p, at)| (p, spans.line_col(at)))
            .collect();
        spans
    }

    /// (line, col) of the value at `path`, or of its nearest indexed ancestor.
    pub fn value(&self, path: &str) -> Option<(usize, usize)> {
        self.lookup(path).map(|e| self.line_col(e.start))
    }

    /// (line, col) of the key naming the value at `path` (for object members), else as
    /// [`Spans::value`].
    pub fn key(&self, path: &str) -> Option<(usize, usize)> {
        self.lookup(path)
            .map(|e| self.line_col(e.key.unwrap_or(e.start)))
    }

    /// The deepest path whose key or value covers (line, col): where a parser error happened.
    pub fn innermost(&self, line: usize, col: usize) -> Option<&str> {
        let at = self.line_starts.get(line.checked_sub(1)?)? + col.saturating_sub(1);
        self.entries
            .iter()
            .filter(|(_, e)| e.key.unwrap_or(e.start) <= at && e.end.is_none_or(|end| at <= end))
            .max_by_key(|(p, e)| (e.key.unwrap_or(e.start), std::cmp::Reverse(e.end), p.len()))
            .map(|(p, _)| p.as_str())
    }

    /// Whether the value at `path` is written as an array (serde accepts arrays for structs).
    pub fn is_array(&self, path: &str) -> bool {
        self.entries.get(path).is_some_and(|e| e.array)
    }

    fn lookup(&self, path: &str) -> Option<&Entry> {
        let mut p = path;
        loop {
            if let Some(e) = self.entries.get(p) {
                return Some(e);
            }
            if p.is_empty() {
                return None;
            }
            p = &p[..p.rfind(['.', '[']).unwrap_or(0)];
        }
    }

    fn line_col(&self, at: usize) -> (usize, usize) {
        let line = self.line_starts.partition_point(|&s| s <= at).max(1);
        let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        (line, at - start + 1)
    }
}

/// Malformed JSON: indexing stops.
struct Stop;

struct Walker<'a> {
    b: &'a [u8],
    i: usize,
    entries: HashMap<String, Entry>,
    duplicates: Vec<(String, usize)>,
}

impl Walker<'_> {
    fn ws(&mut self) {
        while self
            .b
            .get(self.i)
            .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.i += 1;
        }
    }

    fn next_byte(&mut self) -> Result<u8, Stop> {
        self.ws();
        let c = *self.b.get(self.i).ok_or(Stop)?;
        self.i += 1;
        Ok(c)
    }

    fn value(&mut self, path: String, key: Option<usize>, depth: usize) -> Result<(), Stop> {
        self.ws();
        let start = self.i;
        let first = *self.b.get(start).ok_or(Stop)?;
        self.entries.insert(
            path.clone(),
            Entry {
                key,
                start,
                end: None,
                array: first == b'[',
            },
        );
        match first {
            b'{' if depth < MAX_DEPTH => {
                self.i += 1;
                let mut seen = HashSet::new();
                self.ws();
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        let key_at = self.i;
                        if self.next_byte()? != b'"' {
                            return Err(Stop);
                        }
                        let name = self.string()?;
                        if self.next_byte()? != b':' {
                            return Err(Stop);
                        }
                        let child = member(&path, &name);
                        if !seen.insert(name) {
                            self.duplicates.push((child.clone(), key_at));
                        }
                        self.value(child, Some(key_at), depth + 1)?;
                        match self.next_byte()? {
                            b',' => continue,
                            b'}' => break,
                            _ => return Err(Stop),
                        }
                    }
                }
            }
            b'[' if depth < MAX_DEPTH => {
                self.i += 1;
                self.ws();
                if self.b.get(self.i) == Some(&b']') {
                    self.i += 1;
                } else {
                    for n in 0.. {
                        self.value(element(&path, n), None, depth + 1)?;
                        match self.next_byte()? {
                            b',' => continue,
                            b']' => break,
                            _ => return Err(Stop),
                        }
                    }
                }
            }
            b'"' => {
                self.i += 1;
                self.string()?;
            }
            b'{' | b'[' | b',' | b':' | b']' | b'}' => return Err(Stop),
            _ => {
                while self.b.get(self.i).is_some_and(|c| {
                    !matches!(c, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
                }) {
                    self.i += 1;
                }
            }
        }
        if let Some(e) = self.entries.get_mut(&path) {
            e.end = Some(self.i - 1);
        }
        Ok(())
    }

    /// Reads the rest of a string whose opening quote was consumed, decoding escapes.
    fn string(&mut self) -> Result<String, Stop> {
        let mut out = Vec::new();
        loop {
            let c = *self.b.get(self.i).ok_or(Stop)?;
            self.i += 1;
            match c {
                b'"' => return Ok(String::from_utf8_lossy(&out).into_owned()),
                b'\\' => {
                    let e = *self.b.get(self.i).ok_or(Stop)?;
                    self.i += 1;
                    let ch = match e {
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'u' => self.unicode_escape()?,
                        other => char::from(other),
                    };
                    out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                }
                other => out.push(other),
            }
        }
    }

    /// After `\u`: four hex digits, and a low surrogate's `\uXXXX` after a high one.
    fn unicode_escape(&mut self) -> Result<char, Stop> {
        let hi = self.hex4()?;
        if (0xD800..0xDC00).contains(&hi) && self.b.get(self.i..self.i + 2) == Some(b"\\u") {
            self.i += 2;
            let lo = self.hex4()?;
            let code = 0x10000 + ((hi - 0xD800) << 10) + lo.wrapping_sub(0xDC00);
            return Ok(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
        }
        Ok(char::from_u32(hi).unwrap_or(char::REPLACEMENT_CHARACTER))
    }

    fn hex4(&mut self) -> Result<u32, Stop> {
        let digits = self.b.get(self.i..self.i + 4).ok_or(Stop)?;
        let text = std::str::from_utf8(digits).map_err(|_| Stop)?;
        let v = u32::from_str_radix(text, 16).map_err(|_| Stop)?;
        self.i += 4;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_paths_to_positions() {
        let text = "{\n  \"a\": {\"b\": [1, {\"c\": \"x\\\"y\"}]},\n  \"d e\": true\n}";
        let s = Spans::index(text);
        assert_eq!(s.value("a"), Some((2, 8)));
        assert_eq!(s.key("a"), Some((2, 3)));
        assert_eq!(s.value("a.b[0]"), Some((2, 15)));
        assert_eq!(s.value("a.b[1].c"), Some((2, 24)));
        assert_eq!(s.value("[\"d e\"]"), Some((3, 10)));
        assert_eq!(s.value("a.b[1].missing"), Some((2, 18)));
        assert_eq!(s.innermost(2, 29), Some("a.b[1].c"));
        assert_eq!(s.innermost(2, 20), Some("a.b[1].c"));
        assert!(s.duplicates.is_empty());
    }

    #[test]
    fn finds_duplicate_keys_and_survives_bad_json() {
        let s = Spans::index("{\"a\": 1, \"a\": 2, \"b\": [1, ");
        assert_eq!(s.duplicates, vec![("a".to_string(), (1, 10))]);
        assert_eq!(s.innermost(1, 26), Some("b"));
        let s = Spans::index("{\"k\\u00e9\\ud83d\\ude00\": 1}");
        assert_eq!(s.value("[\"k\u{e9}\u{1F600}\"]"), Some((1, 25)));
        let deep = "[".repeat(100_000);
        assert_eq!(Spans::index(&deep).value(""), Some((1, 1)));
    }
}
