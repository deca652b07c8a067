//! MongoDB's BSON comparison order, for merging two `_id`-ordered streams.
//!
//! Mirrors the server's `canonicalizeBSONType` and `compareElementValues` for the simple
//! collation: values of different types compare by type bracket (MinKey < null < numbers <
//! strings < objects < arrays < binary < ObjectId < bool < date < timestamp < regex < MaxKey),
//! numbers compare by value across int/long/double, strings by bytes, binary by length, then
//! subtype, then bytes. Decimal128 values compare through their nearest double, which is
//! exact except for decimals that differ beyond a double's 17 significant digits.

use std::cmp::Ordering;

use mongodb::bson::{RawBsonRef, RawDocument};

fn bracket(v: &RawBsonRef<'_>) -> u8 {
    match v {
        RawBsonRef::MinKey => 0,
        RawBsonRef::Undefined => 1,
        RawBsonRef::Null => 5,
        RawBsonRef::Double(_)
        | RawBsonRef::Int32(_)
        | RawBsonRef::Int64(_)
        | RawBsonRef::Decimal128(_) => 10,
        RawBsonRef::String(_) | RawBsonRef::Symbol(_) => 15,
        RawBsonRef::Document(_) => 20,
        RawBsonRef::Array(_) => 25,
        RawBsonRef::Binary(_) => 30,
        RawBsonRef::ObjectId(_) => 35,
        RawBsonRef::Boolean(_) => 40,
        RawBsonRef::DateTime(_) => 45,
        RawBsonRef::Timestamp(_) => 47,
        RawBsonRef::RegularExpression(_) => 50,
        RawBsonRef::DbPointer(_) => 55,
        RawBsonRef::JavaScriptCode(_) => 60,
        RawBsonRef::JavaScriptCodeWithScope(_) => 65,
        RawBsonRef::MaxKey => 127,
    }
}

enum Num {
    Int(i64),
    Float(f64),
}

fn as_num(v: &RawBsonRef<'_>) -> Option<Num> {
    match v {
        RawBsonRef::Int32(i) => Some(Num::Int(i64::from(*i))),
        RawBsonRef::Int64(i) => Some(Num::Int(*i)),
        RawBsonRef::Double(d) => Some(Num::Float(*d)),
        // Display gives the exact decimal string ("1.5", "-Infinity", "NaN", "1E+400").
        RawBsonRef::Decimal128(d) => Some(Num::Float(
            d.to_string()
                .replace("Infinity", "inf")
                .parse::<f64>()
                .unwrap_or(f64::NAN),
        )),
        _ => None,
    }
}

/// Compares an integer with a double exactly; NaN sorts below every number, as on the server.
fn cmp_int_float(i: i64, f: f64) -> Ordering {
    if f.is_nan() {
        return Ordering::Greater;
    }
    // 2^63 and -2^63 are exact doubles.
    if f >= i64::MAX as f64 {
        return Ordering::Less;
    }
    if f < i64::MIN as f64 {
        return Ordering::Greater;
    }
    let t = f.trunc();
    // `t` is within i64 range here, so the cast is exact.
    match i.cmp(&(t as i64)) {
        Ordering::Equal => {
            if f > t {
                Ordering::Less
            } else if f < t {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        }
        o => o,
    }
}

fn cmp_float(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

fn cmp_num(a: Num, b: Num) -> Ordering {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        (Num::Float(x), Num::Float(y)) => cmp_float(x, y),
        (Num::Int(x), Num::Float(y)) => cmp_int_float(x, y),
        (Num::Float(x), Num::Int(y)) => cmp_int_float(y, x).reverse(),
    }
}

/// Compares two documents element by element: type bracket, then field name, then value;
/// a document that is a prefix of the other sorts first.
pub fn cmp_documents(a: &RawDocument, b: &RawDocument) -> Ordering {
    let mut ia = a.iter();
    let mut ib = b.iter();
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(Ok((ka, va))), Some(Ok((kb, vb)))) => {
                let o = bracket(&va)
                    .cmp(&bracket(&vb))
                    .then_with(|| ka.as_bytes().cmp(kb.as_bytes()))
                    .then_with(|| cmp_values(va, vb));
                if o != Ordering::Equal {
                    return o;
                }
            }
            // Malformed BSON cannot come from the server; fall back to byte order.
            _ => return a.as_bytes().cmp(b.as_bytes()),
        }
    }
}

/// Arrays compare like documents whose keys are "0", "1", ...: element by element.
fn cmp_arrays(a: &mongodb::bson::RawArray, b: &mongodb::bson::RawArray) -> Ordering {
    let mut ia = a.into_iter();
    let mut ib = b.into_iter();
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(Ok(va)), Some(Ok(vb))) => {
                let o = bracket(&va)
                    .cmp(&bracket(&vb))
                    .then_with(|| cmp_values(va, vb));
                if o != Ordering::Equal {
                    return o;
                }
            }
            _ => return Ordering::Equal,
        }
    }
}

fn cmp_approx(a: &RawBsonRef<'_>, b: &RawBsonRef<'_>) -> Ordering {
    match (as_num(a), as_num(b)) {
        (Some(nx), Some(ny)) => cmp_num(nx, ny),
        _ => Ordering::Equal,
    }
}

/// A finite decimal against an integer, exactly (decimal digits against the integer's):
/// `None` for NaN and infinities, which the double comparison orders right.
fn cmp_decimal_int(d: &mongodb::bson::Decimal128, i: i64) -> Option<Ordering> {
    let text = d.to_string();
    let (neg, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    if !body.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let (mantissa, exp) = match body.split_once(['E', 'e']) {
        Some((m, e)) => (m, e.parse::<i64>().ok()?),
        None => (body, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: String = format!("{int_part}{frac_part}");
    // value = digits × 10^(exp - frac digits)
    let scale = exp - frac_part.len() as i64;
    let (whole, frac_nonzero) = if scale >= 0 {
        if scale > 4000 {
            return None;
        }
        digits.push_str(&"0".repeat(scale as usize));
        (digits, false)
    } else {
        let cut = digits.len() as i64 + scale;
        if cut <= 0 {
            ("0".to_string(), digits.bytes().any(|b| b != b'0'))
        } else {
            let (w, f) = digits.split_at(cut as usize);
            (w.to_string(), f.bytes().any(|b| b != b'0'))
        }
    };
    let whole = whole.trim_start_matches('0');
    let zero = whole.is_empty() && !frac_nonzero;
    let ineg = i < 0;
    let imag = i.unsigned_abs().to_string();
    let imag = if imag == "0" { "" } else { imag.as_str() };
    // Magnitudes: |d| against |i|.
    let mag = whole
        .len()
        .cmp(&imag.len())
        .then_with(|| whole.cmp(imag))
        .then(if frac_nonzero {
            Ordering::Greater
        } else {
            Ordering::Equal
        });
    let dneg = neg && !zero;
    Some(match (dneg, ineg) {
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
        (false, false) => mag,
        (true, true) => mag.reverse(),
    })
}

/// Compares two BSON values in the server's order (simple collation).
pub fn cmp_values(a: RawBsonRef<'_>, b: RawBsonRef<'_>) -> Ordering {
    let (ba, bb) = (bracket(&a), bracket(&b));
    if ba != bb {
        return ba.cmp(&bb);
    }
    match (a, b) {
        (RawBsonRef::Decimal128(d), RawBsonRef::Int32(i)) => {
            cmp_decimal_int(&d, i64::from(i)).unwrap_or_else(|| cmp_approx(&a, &b))
        }
        (RawBsonRef::Decimal128(d), RawBsonRef::Int64(i)) => {
            cmp_decimal_int(&d, i).unwrap_or_else(|| cmp_approx(&a, &b))
        }
        (RawBsonRef::Int32(i), RawBsonRef::Decimal128(d)) => cmp_decimal_int(&d, i64::from(i))
            .map(Ordering::reverse)
            .unwrap_or_else(|| cmp_approx(&a, &b)),
        (RawBsonRef::Int64(i), RawBsonRef::Decimal128(d)) => cmp_decimal_int(&d, i)
            .map(Ordering::reverse)
            .unwrap_or_else(|| cmp_approx(&a, &b)),
        _ if ba == 10 => cmp_approx(&a, &b),
        (
            RawBsonRef::String(x) | RawBsonRef::Symbol(x),
            RawBsonRef::String(y) | RawBsonRef::Symbol(y),
        ) => x.as_bytes().cmp(y.as_bytes()),
        (RawBsonRef::Document(x), RawBsonRef::Document(y)) => cmp_documents(x, y),
        (RawBsonRef::Array(x), RawBsonRef::Array(y)) => cmp_arrays(x, y),
        (RawBsonRef::Binary(x), RawBsonRef::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then_with(|| u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then_with(|| x.bytes.cmp(y.bytes)),
        (RawBsonRef::ObjectId(x), RawBsonRef::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (RawBsonRef::Boolean(x), RawBsonRef::Boolean(y)) => x.cmp(&y),
        (RawBsonRef::DateTime(x), RawBsonRef::DateTime(y)) => {
            x.timestamp_millis().cmp(&y.timestamp_millis())
        }
        (RawBsonRef::Timestamp(x), RawBsonRef::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (RawBsonRef::RegularExpression(x), RawBsonRef::RegularExpression(y)) => x
            .pattern
            .cmp(y.pattern)
            .then_with(|| x.options.cmp(y.options)),
        (RawBsonRef::JavaScriptCode(x), RawBsonRef::JavaScriptCode(y)) => x.cmp(y),
        (RawBsonRef::JavaScriptCodeWithScope(x), RawBsonRef::JavaScriptCodeWithScope(y)) => x
            .code
            .cmp(y.code)
            .then_with(|| cmp_documents(x.scope, y.scope)),
        // MinKey, MaxKey, null, undefined: one value per bracket. DBPointer: not a valid `_id`
        // in practice; treated as equal within the bracket.
        _ => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, oid::ObjectId, Binary, Bson, DateTime, RawDocumentBuf};

    #[test]
    fn decimals_compare_exactly_with_integers() {
        let dec = |s: &str| Bson::Decimal128(s.parse().unwrap());
        // Each decimal is the same double as the integer, but not the same number.
        assert_eq!(
            cmp(dec("0.99999999999999999999"), Bson::Int32(1)),
            Ordering::Less
        );
        assert_eq!(
            cmp(dec("1.00000000000000000001"), Bson::Int32(1)),
            Ordering::Greater
        );
        assert_eq!(
            cmp(Bson::Int64(1), dec("1.00000000000000000001")),
            Ordering::Less
        );
        assert_eq!(cmp(dec("1.000"), Bson::Int32(1)), Ordering::Equal);
        assert_eq!(cmp(dec("1E+2"), Bson::Int64(100)), Ordering::Equal);
        assert_eq!(cmp(dec("-0"), Bson::Int32(0)), Ordering::Equal);
        assert_eq!(cmp(dec("-0.5"), Bson::Int32(0)), Ordering::Less);
        assert_eq!(cmp(dec("-2.5"), Bson::Int32(-2)), Ordering::Less);
        assert_eq!(cmp(dec("-1.5"), Bson::Int32(-2)), Ordering::Greater);
        assert_eq!(
            cmp(dec("9223372036854775807.5"), Bson::Int64(i64::MAX)),
            Ordering::Greater
        );
        assert_eq!(
            cmp(dec("Infinity"), Bson::Int64(i64::MAX)),
            Ordering::Greater
        );
        assert_eq!(cmp(dec("NaN"), Bson::Int32(0)), Ordering::Less);
    }

    fn cmp(a: Bson, b: Bson) -> Ordering {
        let da = RawDocumentBuf::from_document(&doc! {"v": a}).unwrap();
        let db = RawDocumentBuf::from_document(&doc! {"v": b}).unwrap();
        cmp_values(da.get("v").unwrap().unwrap(), db.get("v").unwrap().unwrap())
    }

    #[test]
    fn brackets_follow_server_order() {
        let ordered = [
            Bson::MinKey,
            Bson::Null,
            Bson::Double(-1.5),
            Bson::Int32(1),
            Bson::Int64(2),
            Bson::Double(2.5),
            Bson::String("a".into()),
            Bson::String("b".into()),
            Bson::Document(doc! {"a": 1}),
            Bson::Document(doc! {"a": 1, "b": 1}),
            Bson::Binary(Binary {
                subtype: mongodb::bson::spec::BinarySubtype::Generic,
                bytes: vec![9],
            }),
            Bson::Binary(Binary {
                subtype: mongodb::bson::spec::BinarySubtype::Generic,
                bytes: vec![1, 1],
            }),
            Bson::ObjectId(ObjectId::from_bytes([0; 12])),
            Bson::Boolean(false),
            Bson::Boolean(true),
            Bson::DateTime(DateTime::from_millis(-5)),
            Bson::DateTime(DateTime::from_millis(5)),
            Bson::MaxKey,
        ];
        for w in ordered.windows(2) {
            assert_eq!(
                cmp(w[0].clone(), w[1].clone()),
                Ordering::Less,
                "{:?} < {:?}",
                w[0],
                w[1]
            );
            assert_eq!(cmp(w[1].clone(), w[0].clone()), Ordering::Greater);
        }
    }

    #[test]
    fn numbers_compare_by_value_across_types() {
        assert_eq!(cmp(Bson::Int32(1), Bson::Double(1.0)), Ordering::Equal);
        assert_eq!(
            cmp(Bson::Int64(i64::MAX), Bson::Double(9.3e18)),
            Ordering::Less
        );
        assert_eq!(
            cmp(Bson::Double(f64::NAN), Bson::Int32(-100)),
            Ordering::Less
        );
        assert_eq!(cmp(Bson::Int64(3), Bson::Double(2.9)), Ordering::Greater);
        let dec = |s: &str| Bson::Decimal128(s.parse().unwrap());
        assert_eq!(cmp(Bson::Int32(1), dec("1.5")), Ordering::Less);
        assert_eq!(cmp(dec("1.5"), Bson::Int32(2)), Ordering::Greater.reverse());
        assert_eq!(cmp(dec("-Infinity"), Bson::Int64(i64::MIN)), Ordering::Less);
    }
}
