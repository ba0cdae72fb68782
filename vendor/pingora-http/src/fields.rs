// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! Fields a small header does not have, found absent without a lookup.
//!
//! A lookup in an [`HMap`] hashes the name (FNV over its representation) and probes the map:
//! about 80 to 110 instructions for a standard name. A proxy asks a message for standard
//! fields (`Upgrade`, `Transfer-Encoding`, `Connection`, ...) several times on its way, most of
//! which the message does not have; the names of a small header are compared one by one
//! in fewer instructions than one lookup takes (each name once, however many values it has:
//! [`HMap::keys`] walks a slice). A header of more than [`WALK_UP_TO`] names is looked up as
//! before, and so is a field the walk finds.

use super::HMap;
use http::header::{HeaderName, HeaderValue};

/// The most names a header may have for a field to be found absent by a walk through them
/// instead of a lookup; and the most fields (values) a message may have for its framing fields
/// (`Content-Length`, `Transfer-Encoding`, read several times: each message's reader and
/// writer) to be read by a walk through its fields ([`walk`]).
pub const WALK_UP_TO: usize = 16;

/// The values of field `name` in `headers`, in the order of `get_all(name)`: the map's
/// iteration yields each field's values together, in order.
pub fn walk<'h>(headers: &'h HMap, name: &'h HeaderName) -> impl Iterator<Item = &'h HeaderValue> {
    headers
        .iter()
        .filter(move |(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// Whether `headers` has field `name`, as `headers.contains_key(name)`.
pub fn has_field(headers: &HMap, name: &HeaderName) -> bool {
    if headers.keys_len() <= WALK_UP_TO {
        headers.keys().any(|n| n == name)
    } else {
        headers.contains_key(name)
    }
}

/// The first value of field `name` in `headers`, as `headers.get(name)`: looked up only when
/// the header has the field.
pub fn field<'h>(headers: &'h HMap, name: &HeaderName) -> Option<&'h HeaderValue> {
    if headers.keys_len() <= WALK_UP_TO && !headers.keys().any(|n| n == name) {
        return None;
    }
    headers.get(name)
}

/// The first value of field `name` in `headers`, and whether the field has another, as
/// `headers.get_all(name)` tells: for a small header in which no name has two values
/// (`len() == keys_len()`), by a walk through its fields up to `name`, which reaches a
/// message's first field (`Host`, as clients send it) at once; otherwise by the lookup.
pub fn first_and_repeated<'h>(
    headers: &'h HMap,
    name: &'h HeaderName,
) -> (Option<&'h HeaderValue>, bool) {
    if headers.len() <= WALK_UP_TO && headers.len() == headers.keys_len() {
        (walk(headers, name).next(), false)
    } else {
        let mut values = headers.get_all(name).iter();
        (values.next(), values.next().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    /// A header of `n` fields besides the ones given, which are appended among them.
    fn header_with(n: usize, fields: &[(&HeaderName, &str)]) -> HMap {
        let mut h = HMap::new();
        for i in 0..n {
            let name = HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).unwrap();
            h.append(name, HeaderValue::from_static("f"));
            if let Some((name, value)) = fields.get(i) {
                h.append((*name).clone(), HeaderValue::from_str(value).unwrap());
            }
        }
        for (name, value) in fields.iter().skip(n) {
            h.append((*name).clone(), HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn fields_walked_for_and_looked_up_are_the_maps_own() {
        let custom = HeaderName::from_static("x-api-key");
        let fields: &[(&HeaderName, &str)] = &[
            (&header::HOST, "a.example"),
            (&custom, "k1"),
            (&header::CONNECTION, "keep-alive"),
            (&header::HOST, "b.example"),
            (&custom, "k2"),
        ];
        // Walked (a few fields, up to the limit) and looked up (over it).
        // The fields have 3 names; the fillers one each.
        for filler in [0, 3, WALK_UP_TO - 3, WALK_UP_TO - 2] {
            let h = header_with(filler, fields);
            assert_eq!(h.keys_len() <= WALK_UP_TO, filler + 3 <= WALK_UP_TO);
            for name in [
                &header::HOST,
                &custom,
                &header::CONNECTION,
                &header::UPGRADE,
                &HeaderName::from_static("x-absent"),
            ] {
                assert_eq!(
                    field(&h, name),
                    h.get(name),
                    "{name} among {filler} more fields"
                );
                assert_eq!(has_field(&h, name), h.contains_key(name), "{name}");
                let mut all = h.get_all(name).iter();
                let looked_up = (all.next(), all.next().is_some());
                assert_eq!(first_and_repeated(&h, name), looked_up, "{name}");
            }
        }
        let h = header_with(2, fields);
        assert_eq!(field(&h, &header::HOST).unwrap(), "a.example");
        assert_eq!(field(&h, &custom).unwrap(), "k1");
    }

    #[test]
    fn a_header_without_repeated_names_is_walked_to_its_field() {
        let mut h = HMap::new();
        h.append(header::HOST, HeaderValue::from_static("a.example"));
        h.append(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert_eq!(h.len(), h.keys_len());
        assert_eq!(
            first_and_repeated(&h, &header::HOST),
            (h.get(header::HOST), false)
        );
        assert_eq!(first_and_repeated(&h, &header::UPGRADE), (None, false));
        h.append(header::HOST, HeaderValue::from_static("b.example"));
        assert_eq!(
            first_and_repeated(&h, &header::HOST),
            (h.get(header::HOST), true)
        );
    }

    #[test]
    fn an_empty_header_has_no_field() {
        let h = HMap::new();
        assert_eq!(field(&h, &header::HOST), None);
        assert!(!has_field(&h, &header::HOST));
    }
}
