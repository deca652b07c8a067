//! Which change events may concern the same destination document.
//!
//! The apply spreads a round's events over workers and regroups each worker's statements by a
//! key per document; two events whose keys differ may be applied in any order. The key cannot
//! be the `documentKey`'s bytes: MongoDB finds a document by *comparing* its `_id`, and unequal
//! bytes can compare equal. An application that deletes `{_id: 1}` and inserts `{_id: 1.0}`
//! (or `NumberLong(1)`, `NumberDecimal("1")`) names one slot of the `_id` index twice, and in a
//! collection with a case-insensitive default collation so do `"a"` and `"A"`. Applied out of
//! order (the insert first, then the delete) the destination loses the new document.
//!
//! The key here is coarser than equality and never finer: every number becomes the `f64`
//! nearest to it (`-0` as `0`, every NaN one NaN), a symbol a string, and in a collection with
//! a non-simple default collation every string the empty string. Equal `_id`s get equal keys;
//! some unequal ones share a key too, which only means they are applied in source order on one
//! worker.

use mongodb::bson::{RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};

/// The key of the document an event with this `documentKey` concerns, in a collection whose
/// default collation is non-simple when `collated`.
pub fn identity_key(document_key: &RawDocument, collated: bool) -> Vec<u8> {
    match canonical_doc(document_key, collated) {
        Some(d) => d.into_bytes(),
        // Unreadable (cannot happen for a key the server sent): one key for all such events.
        None => Vec::new(),
    }
}

fn canonical_doc(d: &RawDocument, collated: bool) -> Option<RawDocumentBuf> {
    let mut out = RawDocumentBuf::new();
    for e in d {
        let (k, v) = e.ok()?;
        out.append(k, canonical(v, collated)?);
    }
    Some(out)
}

fn canonical(v: RawBsonRef<'_>, collated: bool) -> Option<RawBson> {
    let number = |x: f64| {
        RawBson::Double(if x.is_nan() {
            f64::NAN
        } else if x == 0.0 {
            0.0
        } else {
            x
        })
    };
    Some(match v {
        RawBsonRef::Int32(n) => number(f64::from(n)),
        RawBsonRef::Int64(n) => number(n as f64),
        RawBsonRef::Double(x) => number(x),
        // `Display` writes e.g. `1`, `1.50E+3`, `-0`, `NaN`, `Infinity`: all read by `f64`'s
        // parser, which rounds to nearest, so a decimal equal to a double reads as that double.
        RawBsonRef::Decimal128(d) => number(d.to_string().parse::<f64>().ok()?),
        RawBsonRef::String(_) | RawBsonRef::Symbol(_) if collated => RawBson::String(String::new()),
        RawBsonRef::String(s) | RawBsonRef::Symbol(s) => RawBson::String(s.to_string()),
        RawBsonRef::Document(d) => RawBson::Document(canonical_doc(d, collated)?),
        RawBsonRef::Array(a) => {
            let mut out = RawArrayBuf::new();
            for v in a {
                out.push(canonical(v.ok()?, collated)?);
            }
            RawBson::Array(out)
        }
        other => other.to_raw_bson(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{rawdoc, Decimal128};

    fn key(d: RawDocumentBuf, collated: bool) -> Vec<u8> {
        identity_key(&d, collated)
    }

    #[test]
    fn equal_numbers_of_every_type_share_a_key() {
        let one = key(rawdoc! {"_id": 1i32}, false);
        assert_eq!(one, key(rawdoc! {"_id": 1i64}, false));
        assert_eq!(one, key(rawdoc! {"_id": 1.0f64}, false));
        let dec: Decimal128 = "1.000".parse().unwrap();
        assert_eq!(one, key(rawdoc! {"_id": dec}, false));
        assert_eq!(
            key(rawdoc! {"_id": 0i32}, false),
            key(rawdoc! {"_id": -0.0f64}, false)
        );
        assert_eq!(
            key(rawdoc! {"_id": f64::NAN}, false),
            key(rawdoc! {"_id": -f64::NAN}, false)
        );
        let half: Decimal128 = "5E-1".parse().unwrap();
        assert_eq!(
            key(rawdoc! {"_id": {"a": 0.5f64}}, false),
            key(rawdoc! {"_id": {"a": half}}, false)
        );
        assert_ne!(one, key(rawdoc! {"_id": 2i32}, false));
        assert_ne!(one, key(rawdoc! {"_id": "1"}, false));
    }

    #[test]
    fn strings_share_a_key_only_under_a_collation() {
        let (a, b) = (rawdoc! {"_id": "a"}, rawdoc! {"_id": "A"});
        assert_ne!(key(a.clone(), false), key(b.clone(), false));
        assert_eq!(key(a, true), key(b, true));
        assert_eq!(
            key(rawdoc! {"_id": {"n": 1i64, "s": "x"}}, true),
            key(rawdoc! {"_id": {"n": 1.0f64, "s": "Y"}}, true)
        );
        // Field order is part of a document's identity: not merged.
        assert_ne!(
            key(rawdoc! {"_id": {"a": 1, "b": 2}}, false),
            key(rawdoc! {"_id": {"b": 2, "a": 1}}, false)
        );
    }
}
