//! A cluster's connection string: parsed once, displayed without credentials.

use std::collections::BTreeSet;
use std::fmt;

use mongodb::options::{ConnectionString, HostInfo, ServerAddress};

use crate::base::redact;

/// A MongoDB URI whose `Display` and `Debug` never show credentials.
#[derive(Clone)]
pub struct ClusterUri {
    raw: String,
    parsed: ConnectionString,
}

impl ClusterUri {
    /// Parses a URI. The error message is already scrubbed of credentials.
    pub fn parse(raw: &str) -> Result<Self, String> {
        // A URI with user info is a secret as a whole; one without is plain configuration
        // (and plan diagnostics show it, so a malformed one can be fixed).
        if raw.contains('@') {
            redact::register_secret(raw);
        }
        let parsed = ConnectionString::parse(raw).map_err(|e| {
            let msg = match e.kind.as_ref() {
                mongodb::error::ErrorKind::InvalidArgument { message, .. } => message.clone(),
                other => other.to_string(),
            };
            redact::scrub(&msg)
        })?;
        if let Some(cred) = &parsed.credential {
            if let Some(pw) = &cred.password {
                redact::register_secret(pw);
            }
        }
        Ok(Self {
            raw: raw.to_string(),
            parsed,
        })
    }

    /// The full URI, credentials included: only for handing to the driver.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    pub fn connection_string(&self) -> &ConnectionString {
        &self.parsed
    }

    /// `host:port` for every seed host, lower-cased, the default port made explicit;
    /// for `mongodb+srv://` the SRV name.
    pub fn hosts(&self) -> BTreeSet<String> {
        match &self.parsed.host_info {
            HostInfo::HostIdentifiers(hosts) => hosts.iter().map(host_key).collect(),
            HostInfo::DnsRecord(name) => [format!("srv:{}", name.to_lowercase())].into(),
            _ => BTreeSet::new(),
        }
    }

    pub fn replica_set(&self) -> Option<&str> {
        self.parsed.replica_set.as_deref()
    }

    pub fn has_credentials(&self) -> bool {
        self.parsed.credential.is_some()
    }

    /// Hosts only, e.g. `127.0.0.1:27017,127.0.0.1:27018`: what status documents show.
    pub fn hosts_display(&self) -> String {
        self.hosts().into_iter().collect::<Vec<_>>().join(",")
    }
}

fn host_key(addr: &ServerAddress) -> String {
    match addr {
        ServerAddress::Tcp { host, port } => {
            format!("{}:{}", host.to_lowercase(), port.unwrap_or(27017))
        }
        other => other.to_string(),
    }
}

impl fmt::Display for ClusterUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact::scrub(&self.raw))
    }
}

impl fmt::Debug for ClusterUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterUri({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_debug_hide_credentials() {
        let u = ClusterUri::parse("mongodb://root:pw-xyz-123@Db1:27017,db2/?replicaSet=rs0")
            .expect("valid uri");
        let shown = format!("{u} {u:?}");
        assert!(!shown.contains("pw-xyz-123"), "{shown}");
        assert!(!shown.contains("root:"), "{shown}");
        assert_eq!(u.hosts_display(), "db1:27017,db2:27017");
        assert_eq!(u.replica_set(), Some("rs0"));
    }

    #[test]
    fn malformed_uris_are_rejected_without_echoing_secrets() {
        let err = ClusterUri::parse("mongodb://root:topsecret-9@host:99999/").unwrap_err();
        assert!(!err.contains("topsecret-9"), "{err}");
        assert!(ClusterUri::parse("postgres://x").is_err());
    }
}
