//! Readers of the run document's records (the run's steps and commits).

use mongodb::bson::{Bson, Document};

pub(super) fn step_status(doc: &Document, i: usize) -> String {
    doc.get_array("steps")
        .ok()
        .and_then(|a| a.get(i))
        .and_then(Bson::as_document)
        .and_then(|s| s.get_str("status").ok())
        .unwrap_or("pending")
        .to_string()
}

/// The write-blocked window of the most recent commit, in milliseconds.
pub fn last_window_ms(doc: &Document) -> Option<i64> {
    let commits = doc.get_document("commits").ok()?;
    commits
        .iter()
        .filter_map(|(_, v)| v.as_document())
        .filter_map(|c| c.get_i64("window_ms").ok())
        .last()
}
