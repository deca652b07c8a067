//! A connected cluster: the driver client plus what cutover needs to know about it.

use std::time::Duration;

use mongodb::bson::{doc, Document};
use mongodb::error::ErrorKind;
use mongodb::options::ClientOptions;
use mongodb::Client;

use crate::redact;
use crate::report::Scope;
use crate::uri::ClusterUri;

/// Why a cluster could not be used. Messages name the cluster and never hold credentials.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{cluster} cluster ({hosts}) is unreachable: {detail}")]
    Unreachable { cluster: &'static str, hosts: String, detail: String },
    #[error("{cluster} cluster ({hosts}): authentication failed: {detail}")]
    Auth { cluster: &'static str, hosts: String, detail: String },
    #[error("{cluster} cluster ({hosts}): {detail}")]
    Other { cluster: &'static str, hosts: String, detail: String },
}

impl ClusterError {
    /// Unreachable and authentication failures exit 3; the rest exit 1.
    pub fn is_connectivity(&self) -> bool {
        matches!(self, ClusterError::Unreachable { .. } | ClusterError::Auth { .. })
    }

    pub fn hint(&self) -> &'static str {
        match self {
            ClusterError::Unreachable { .. } => {
                "check the URI's hosts and ports, the network path and TLS options; cutover waits `--connect-timeout` for a server"
            }
            ClusterError::Auth { .. } => {
                "check the user name and password in the URI (percent-encoded), and `authSource` (default `admin`)"
            }
            ClusterError::Other { .. } => "see the server's message above",
        }
    }
}

/// A connected cluster.
#[derive(Clone)]
pub struct Cluster {
    pub scope: Scope,
    pub uri: ClusterUri,
    pub client: Client,
}

impl Cluster {
    /// Connects and authenticates (a `ping` on `admin`), waiting at most `timeout` for a server.
    pub async fn connect(scope: Scope, uri: &ClusterUri, timeout: Duration) -> Result<Self, ClusterError> {
        let name = scope_name(scope);
        let hosts = uri.hosts_display();
        let mut opts = ClientOptions::parse(uri.expose()).await.map_err(|e| ClusterError::Other {
            cluster: name,
            hosts: hosts.clone(),
            detail: redact::scrub(&e.to_string()),
        })?;
        opts.app_name = Some("cutover".into());
        opts.server_selection_timeout = Some(timeout);
        opts.connect_timeout = Some(timeout.min(Duration::from_secs(10)));
        let client = Client::with_options(opts).map_err(|e| classify(name, &hosts, &e))?;
        client
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .map_err(|e| classify(name, &hosts, &e))?;
        Ok(Self { scope, uri: uri.clone(), client })
    }

    pub fn name(&self) -> &'static str {
        scope_name(self.scope)
    }

    pub async fn admin_command(&self, cmd: Document) -> Result<Document, ClusterError> {
        self.client
            .database("admin")
            .run_command(cmd)
            .await
            .map_err(|e| classify(self.name(), &self.uri.hosts_display(), &e))
    }
}

pub fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Source => "source",
        Scope::Destination => "destination",
        Scope::Plan => "plan",
    }
}

/// Sorts a driver error into unreachable / authentication / other, by kind and code.
pub fn classify(cluster: &'static str, hosts: &str, e: &mongodb::error::Error) -> ClusterError {
    let detail = redact::scrub(&short_message(e));
    let hosts = hosts.to_string();
    match e.kind.as_ref() {
        ErrorKind::ServerSelection { .. } | ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => {
            ClusterError::Unreachable { cluster, hosts, detail }
        }
        ErrorKind::Authentication { .. } => ClusterError::Auth { cluster, hosts, detail },
        // 18 AuthenticationFailed, 13 Unauthorized on ping means no valid login.
        ErrorKind::Command(c) if c.code == 18 => ClusterError::Auth { cluster, hosts, detail },
        _ => ClusterError::Other { cluster, hosts, detail },
    }
}

/// The driver's message without its debug dump of the topology and labels.
pub fn short_message(e: &mongodb::error::Error) -> String {
    match e.kind.as_ref() {
        ErrorKind::ServerSelection { message, .. } => {
            // "... Servers: [ { Address: h:1, Type: Unknown, Error: Kind: I/O error: refused, labels ..."
            let mut reasons: Vec<String> = Vec::new();
            for part in message.split("Address: ").skip(1) {
                let addr = part.split(',').next().unwrap_or_default().trim();
                let why = part
                    .split("Error: ")
                    .nth(1)
                    .map(|w| w.trim_start_matches("Kind: ").split(", labels").next().unwrap_or(w))
                    .unwrap_or("no answer");
                reasons.push(format!("{addr}: {}", why.trim()));
            }
            if reasons.is_empty() {
                "no server answered in time".to_string()
            } else {
                format!("no usable server answered in time ({})", reasons.join("; "))
            }
        }
        ErrorKind::Command(c) => format!("{} ({}, code {})", c.message, c.code_name, c.code),
        other => {
            let s = other.to_string();
            s.split(", labels:").next().unwrap_or(&s).to_string()
        }
    }
}
