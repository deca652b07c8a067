//! `database.collection`, as a type rather than a string.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Namespace {
    pub db: String,
    pub coll: String,
}

impl Namespace {
    pub fn new(db: impl Into<String>, coll: impl Into<String>) -> Self {
        Self {
            db: db.into(),
            coll: coll.into(),
        }
    }

    /// Splits at the first `.`: database names cannot contain dots, collection names can.
    pub fn parse(full: &str) -> Option<Self> {
        let (db, coll) = full.split_once('.')?;
        (!db.is_empty() && !coll.is_empty()).then(|| Self::new(db, coll))
    }

    /// A change event's `ns` / `to` field: `{db, coll}`.
    pub fn from_event_ns(ns: &mongodb::bson::RawDocument) -> Option<Self> {
        let db = ns.get_str("db").ok()?;
        let coll = ns.get_str("coll").ok()?;
        Some(Self::new(db, coll))
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.db, self.coll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_splits_at_first_dot() {
        let ns = Namespace::parse("shop.orders.2024").unwrap();
        assert_eq!(ns.db, "shop");
        assert_eq!(ns.coll, "orders.2024");
        assert_eq!(ns.to_string(), "shop.orders.2024");
        assert!(Namespace::parse("nodot").is_none());
    }
}
