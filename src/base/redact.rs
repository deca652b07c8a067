//! Credentials never leave the process: URIs display without their user info, and every
//! line cutover prints or stores can be scrubbed of the secrets it has seen.

use std::sync::{OnceLock, RwLock};

fn registry() -> &'static RwLock<Vec<String>> {
    static SECRETS: OnceLock<RwLock<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| RwLock::new(Vec::new()))
}

/// Remembers a secret (a password, a full URI) so that [`scrub`] removes it from any text.
/// Secrets shorter than 3 characters are ignored: scrubbing them would mangle ordinary text.
pub fn register_secret(secret: &str) {
    if secret.len() < 3 {
        return;
    }
    let mut guard = match registry().write() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    if !guard.iter().any(|s| s == secret) {
        guard.push(secret.to_string());
        // Longest first, so a URI is replaced whole before the password inside it.
        guard.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Replaces every registered secret, and the user info of any MongoDB URI, with `***`.
pub fn scrub(text: &str) -> String {
    let mut out = strip_userinfo(text);
    let guard = match registry().read() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    for secret in guard.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

/// `mongodb://user:pw@host/` → `mongodb://***@host/`, anywhere in a text.
fn strip_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let scheme_ok = head.ends_with("mongodb://") || head.ends_with("mongodb+srv://");
        // The authority ends at the first '/', '?', whitespace or quote.
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        if scheme_ok {
            if let Some(at) = authority.rfind('@') {
                out.push_str("***@");
                out.push_str(&authority[at + 1..]);
                rest = &tail[end..];
                continue;
            }
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_removed_from_uris_in_text() {
        assert_eq!(
            strip_userinfo("failed: mongodb://root:hunter2@127.0.0.1:27017/?replicaSet=rs"),
            "failed: mongodb://***@127.0.0.1:27017/?replicaSet=rs"
        );
        assert_eq!(
            strip_userinfo("mongodb+srv://a%40b:p%2Fw@cluster0.example.net"),
            "mongodb+srv://***@cluster0.example.net"
        );
        assert_eq!(
            strip_userinfo("https://x@y/ mongodb://h:1"),
            "https://x@y/ mongodb://h:1"
        );
    }

    #[test]
    fn registered_secrets_are_scrubbed() {
        register_secret("s3cr3t-pass");
        assert_eq!(
            scrub("auth failed for s3cr3t-pass."),
            "auth failed for ***."
        );
    }
}
