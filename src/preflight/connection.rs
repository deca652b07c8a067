//! How cutover talks to a cluster (TLS, authentication, compression), for `check`'s
//! `reachable` line, and the destination's free disk space against the data to copy.

use mongodb::bson::{doc, Bson};
use mongodb::options::{HostInfo, Tls};

use crate::base::role::Role;
use crate::base::uri::ClusterUri;
use crate::cluster::Cluster;
use crate::preflight::checks::Check;

/// `TLS on (CA file, client certificate), auth MONGODB-X509, compression zstd`.
pub fn describe(uri: &ClusterUri) -> String {
    let cs = uri.connection_string();
    let srv = matches!(cs.host_info, HostInfo::DnsRecord(_));
    let tls = match &cs.tls {
        Some(Tls::Enabled(o)) => {
            let mut parts = Vec::new();
            if o.ca_file_path.is_some() {
                parts.push("CA file");
            }
            if o.cert_key_file_path.is_some() {
                parts.push("client certificate");
            }
            if o.allow_invalid_certificates == Some(true) {
                parts.push("certificates NOT verified");
            }
            if parts.is_empty() {
                "TLS on".to_string()
            } else {
                format!("TLS on ({})", parts.join(", "))
            }
        }
        Some(Tls::Disabled) => "TLS off".to_string(),
        None if srv => "TLS on (mongodb+srv default)".to_string(),
        None => "TLS off".to_string(),
    };
    let auth = match &cs.credential {
        None => "no authentication".to_string(),
        Some(c) => match &c.mechanism {
            Some(m) => format!("auth {}", m.as_str()),
            None => "auth SCRAM (negotiated)".to_string(),
        },
    };
    let compression = match &cs.compressors {
        Some(list) if !list.is_empty() => format!(
            "compression {}",
            list.iter()
                .map(|c| {
                    let name = format!("{c:?}").to_lowercase();
                    name.split(|ch: char| !ch.is_alphanumeric())
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect::<Vec<_>>()
                .join(",")
        ),
        _ => "no compression".to_string(),
    };
    format!("{tls}, {auth}, {compression}")
}

/// Free and total bytes of the filesystem holding a server's data (`dbStats` with
/// `freeStorage`: `fsTotalSize - fsUsedSize`, and `fsTotalSize`), as `cutover check` reads
/// them; `None` when the server does not say.
pub async fn free_space(client: &mongodb::Client) -> Option<(i64, i64)> {
    let stats = client
        .database("admin")
        .run_command(doc! {"dbStats": 1, "freeStorage": 1})
        .await
        .ok()?;
    let num = |k: &str| match stats.get(k) {
        Some(Bson::Int32(v)) => Some(i64::from(*v)),
        Some(Bson::Int64(v)) => Some(*v),
        Some(Bson::Double(v)) => Some(*v as i64),
        _ => None,
    };
    let total = num("fsTotalSize")?;
    Some((total - num("fsUsedSize")?, total))
}

/// The destination's free disk space (of the filesystem holding its data) against the size
/// of the selected data on the source: a warning below 1.5×, a failure below 1×.
pub async fn disk_check(dest: &Cluster, selected_bytes: i64) -> Check {
    let free = free_space(&dest.client).await.map(|(free, _)| free);
    let Some(free) = free else {
        return Check::warn(
            "disk-space",
            Role::Destination,
            "could not read the destination's free disk space (dbStats fsTotalSize/fsUsedSize)",
            "make sure the destination has more free space than the selected data's size",
        );
    };
    let (h_free, h_need) = (super::human_bytes(free), super::human_bytes(selected_bytes));
    let message = format!(
        "{h_free} free on the destination's data filesystem for {h_need} of selected data on the source (uncompressed)"
    );
    if free < selected_bytes {
        Check::fail(
            "disk-space",
            Role::Destination,
            message,
            "free space on the destination (or select less data): the copy would fill its disk",
        )
    } else if (free as f64) < selected_bytes as f64 * 1.5 {
        Check::warn(
            "disk-space",
            Role::Destination,
            message,
            "indexes and the oplog need room too: keep at least 1.5× the selected data free",
        )
    } else {
        Check::pass("disk-space", Role::Destination, message)
    }
}
