//! Connections as production has them: TLS with a CA file and a client certificate,
//! MONGODB-X509 authentication (a real mongod with `--tlsMode requireTLS` and certificates
//! generated here), and wire compression (`compressors=` in the URI).

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use crate::common::env_refs as refs;
use crate::common::*;
use mongodb::bson::{doc, Document};
use mongodb::Client;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The client certificate's subject, as MongoDB spells it (RFC 2253: last RDN first).
const CLIENT_SUBJECT: &str = "CN=cutover,OU=migrations,O=cutover-test-clients";

struct Certs {
    ca: PathBuf,
    server: PathBuf,
    client: PathBuf,
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files
/// (certificate and key in one file, as mongod and the driver take them).
fn certs(dir: &Path) -> Certs {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "cutover test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate().expect("server key");
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params");
    server.distinguished_name = rcgen::DistinguishedName::new();
    server
        .distinguished_name
        .push(DnType::OrganizationName, "cutover-test-servers");
    server
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    server.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let server_cert = server.signed_by(&server_key, &issuer).expect("server cert");

    let client_key = KeyPair::generate().expect("client key");
    let mut client = CertificateParams::new(Vec::<String>::new()).expect("client params");
    // rcgen's default name holds a CN ("rcgen self signed cert") whose position a later
    // push keeps: start empty so the subject is exactly O, OU, CN (CLIENT_SUBJECT reversed).
    client.distinguished_name = rcgen::DistinguishedName::new();
    client
        .distinguished_name
        .push(DnType::OrganizationName, "cutover-test-clients");
    client
        .distinguished_name
        .push(DnType::OrganizationalUnitName, "migrations");
    client
        .distinguished_name
        .push(DnType::CommonName, "cutover");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer).expect("client cert");

    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write pem");
        p
    };
    Certs {
        ca: write("ca.pem", ca_cert.pem()),
        server: write(
            "server.pem",
            server_cert.pem() + &server_key.serialize_pem(),
        ),
        client: write(
            "client.pem",
            client_cert.pem() + &client_key.serialize_pem(),
        ),
    }
}

/// A one-member replica set that requires TLS and client certificates, with access control
/// and an x.509 user (root) for [`CLIENT_SUBJECT`].
struct TlsReplicaSet {
    port: u16,
    name: String,
    certs: Certs,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for TlsReplicaSet {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl TlsReplicaSet {
    async fn start() -> Self {
        let mongod = mongod_path();
        assert!(
            mongod.exists(),
            "this test needs mongod at {}",
            mongod.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("cutover-tls-")
            .tempdir()
            .expect("temp dir");
        let certs = certs(dir.path());
        let db = dir.path().join("db");
        std::fs::create_dir_all(&db).expect("dbpath");
        let keyfile = dir.path().join("keyfile");
        std::fs::write(&keyfile, "cutoverTlsTestKeyFile0123456789abcdef").expect("keyfile");
        std::fs::set_permissions(
            &keyfile,
            std::os::unix::fs::PermissionsExt::from_mode(0o400),
        )
        .expect("chmod keyfile");
        let port = free_port();
        let name = format!("tls{port}");
        let args: Vec<String> = [
            "--replSet",
            &name,
            "--port",
            &port.to_string(),
            "--bind_ip",
            "127.0.0.1",
            "--dbpath",
            &db.display().to_string(),
            "--keyFile",
            &keyfile.display().to_string(),
            "--tlsMode",
            "requireTLS",
            "--tlsCertificateKeyFile",
            &certs.server.display().to_string(),
            "--tlsCAFile",
            &certs.ca.display().to_string(),
            "--wiredTigerCacheSizeGB",
            "0.25",
            "--oplogSize",
            "256",
            "--setParameter",
            "diagnosticDataCollectionEnabled=false",
            "--unixSocketPrefix",
            &db.display().to_string(),
            "--logpath",
            &dir.path().join("mongod.log").display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut child = spawn_with_deathsig(&mongod, &args);
        assert!(
            wait_listening(port, &mut child, Duration::from_secs(60)),
            "mongod with TLS did not start: {}",
            std::fs::read_to_string(dir.path().join("mongod.log")).unwrap_or_default()
        );
        let rs = TlsReplicaSet {
            port,
            name,
            certs,
            child: Some(child),
            _dir: dir,
        };
        // The localhost exception: initiate, then create the x.509 user.
        let direct = client(&rs.uri_with("directConnection=true", false)).await;
        direct
            .database("admin")
            .run_command(doc! {"replSetInitiate": {"_id": &rs.name, "members": [
            {"_id": 0, "host": format!("127.0.0.1:{port}")}]}})
            .await
            .expect("replSetInitiate over TLS");
        wait_until(Duration::from_secs(60), "a TLS primary", || async {
            direct
                .database("admin")
                .run_command(doc! {"hello": 1})
                .await
                .map(|h| h.get_bool("isWritablePrimary").unwrap_or(false))
                .unwrap_or(false)
        })
        .await;
        direct
            .database("$external")
            .run_command(doc! {"createUser": CLIENT_SUBJECT,
            "roles": [{"role": "root", "db": "admin"}], "writeConcern": {"w": "majority"}})
            .await
            .expect("create the x.509 user");
        rs
    }

    /// A URI with the CA file and the client certificate; `x509` adds MONGODB-X509 auth.
    fn uri_with(&self, extra: &str, x509: bool) -> String {
        let auth = if x509 {
            "&authMechanism=MONGODB-X509&authSource=$external"
        } else {
            ""
        };
        format!(
            "mongodb://127.0.0.1:{}/?{extra}&tls=true&tlsCAFile={}&tlsCertificateKeyFile={}{auth}",
            self.port,
            self.certs.ca.display(),
            self.certs.client.display()
        )
    }

    fn uri(&self) -> String {
        self.uri_with(&format!("replicaSet={}", self.name), true)
    }
}

/// TLS with a CA file and a client certificate, and MONGODB-X509 authentication: `check`
/// says so, and a whole migration runs from the TLS cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_x509_source() {
    let tls = TlsReplicaSet::start().await;
    let dst = ReplicaSet::start().await;
    let src = client(&tls.uri()).await;
    src.database("shop")
        .collection::<Document>("orders")
        .insert_many((0..300).map(|i| doc! {"_id": i, "n": i}))
        .await
        .expect("seed over TLS with x.509");
    // Without a client certificate the server refuses the connection.
    let plain = format!(
        "mongodb://127.0.0.1:{}/?directConnection=true&serverSelectionTimeoutMS=3000",
        tls.port
    );
    assert!(
        client(&plain)
            .await
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .is_err(),
        "the TLS cluster accepted a plain connection"
    );

    let (_dir, plan) = write_plan(&plan_text(
        "tls",
        "[[steps]]\nkind = \"sync\"\n\n[[steps]]\nkind = \"commit\"\n",
    ));
    let plan = plan.to_str().expect("utf-8");
    let env = vec![
        ("SOURCE_URI", tls.uri()),
        ("DESTINATION_URI", dst.root_uri()),
    ];
    let o = run_cutover(&["check", plan, "--format", "json"], &refs(&env));
    let report: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&o)));
    let reachable = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["id"] == "reachable" && c["cluster"] == "source")
        .unwrap_or_else(|| panic!("no reachable check: {}", show(&o)));
    let msg = reachable["message"].as_str().unwrap_or_default();
    assert_eq!(reachable["status"], "pass", "{}", show(&o));
    assert!(
        msg.contains("TLS on (CA file, client certificate)") && msg.contains("auth MONGODB-X509"),
        "{msg}"
    );

    let o = run_cutover(&["run", plan], &refs(&env));
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_same_data(&src, &dst.root_client().await, "__cutover").await;
}

async fn compression_counters(c: &Client, name: &str) -> i64 {
    let s = c
        .database("admin")
        .run_command(doc! {"serverStatus": 1})
        .await
        .expect("serverStatus");
    let n = s
        .get_document("network")
        .and_then(|n| n.get_document("compression"))
        .and_then(|c| c.get_document(name))
        .and_then(|c| c.get_document("decompressor"))
        .map(|d| match d.get("bytesIn") {
            Some(mongodb::bson::Bson::Int64(v)) => *v,
            Some(mongodb::bson::Bson::Int32(v)) => i64::from(*v),
            _ => 0,
        })
        .unwrap_or(0);
    n
}

/// `compressors=zstd|snappy|zlib` in a plan's URI compresses the wire traffic: the server's
/// decompressor counters for that algorithm grow while cutover talks to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_compression_from_the_uri() {
    let src = ReplicaSet::start().await;
    let dst = ReplicaSet::start().await;
    let sc = src.root_client().await;
    sc.database("shop")
        .collection::<Document>("orders")
        .insert_many((0..200).map(|i| doc! {"_id": i, "pad": "compressible ".repeat(50)}))
        .await
        .expect("seed");
    let (_dir, plan) = write_plan(&plan_text("zip", "[[steps]]\nkind = \"sync\"\n"));
    let plan = plan.to_str().expect("utf-8");
    for algo in ["zstd", "snappy", "zlib"] {
        let before = compression_counters(&sc, algo).await;
        let env = vec![
            (
                "SOURCE_URI",
                format!("{}&compressors={algo}", src.root_uri()),
            ),
            ("DESTINATION_URI", dst.root_uri()),
        ];
        let o = run_cutover(&["check", plan, "--format", "json"], &refs(&env));
        assert!(matches!(o.status.code(), Some(0) | Some(1)), "{}", show(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains(&format!("compression {algo}")),
            "check reports the compressor: {}",
            show(&o)
        );
        // `check` also weighs the destination's free disk space against the selected data.
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        let disk = report["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["id"] == "disk-space" && c["cluster"] == "destination")
            .unwrap_or_else(|| panic!("no disk-space check: {}", show(&o)));
        assert!(
            disk["message"]
                .as_str()
                .is_some_and(|m| m.contains("free on the destination")),
            "{disk}"
        );
        let after = compression_counters(&sc, algo).await;
        assert!(
            after > before,
            "{algo}: the server received no {algo}-compressed bytes ({before} → {after})"
        );
    }
}

/// MONGODB-AWS is compiled in (the driver's `aws-auth` feature): `check` with
/// `authMechanism=MONGODB-AWS` gets as far as the server, which refuses a mechanism it does not
/// offer (no AWS here), instead of the driver's "only supported with the aws-auth feature".
/// The access keys never appear in the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_auth_reaches_the_server() {
    let src = ReplicaSet::start().await;
    let dst = ReplicaSet::start().await;
    let (_dir, plan) = write_plan(&plan_text("aws", "[[steps]]\nkind = \"sync\"\n"));
    let plan = plan.to_str().expect("utf-8");
    let secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY";
    let env = vec![
        (
            "SOURCE_URI",
            format!(
                "mongodb://AKIAIOSFODNN7EXAMPLE:{secret}@{}/?replicaSet={}&authMechanism=MONGODB-AWS&authSource=%24external",
                src.hosts(),
                src.name
            ),
        ),
        ("DESTINATION_URI", dst.root_uri()),
    ];
    let o = run_cutover(&["check", plan], &refs(&env));
    let all = show(&o);
    assert!(!all.contains("aws-auth feature"), "{all}");
    assert!(!all.contains(secret), "the secret key leaked: {all}");
    assert_eq!(o.status.code(), Some(3), "an authentication failure: {all}");
    assert!(
        all.contains("MONGODB-AWS") || all.to_lowercase().contains("auth"),
        "{all}"
    );
}
