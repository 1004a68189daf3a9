//! TLS for tests: a CA made on the spot (rcgen), a server certificate for 127.0.0.1 signed by
//! it, a client certificate, and a second, unrelated CA — written where the server and the
//! client read them. For a test PostgreSQL ([`enable_tls`]), then `ssl = on` with a
//! configuration reload; for tarn's own listeners ([`listener_tls`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

pub use rcgen::ExtendedKeyUsagePurpose;

use crate::PostgresServer;

/// A certificate authority for tests.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, PEM.
    pub pem: String,
}

/// Makes a CA named `name`.
pub fn make_ca(name: &str) -> Result<Ca> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    Ok(Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    })
}

/// A certificate signed by `ca` for `names`: (certificate PEM, key PEM).
pub fn leaf(
    ca: &Ca,
    common_name: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, &ca.issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `text` to `path` with `mode`, owned like `owner_of` (the server runs as the owner
/// of its directory and must read its key, which must not be readable by others).
pub fn write_owned(path: &Path, text: &str, mode: u32, owner_of: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    let meta = std::fs::metadata(owner_of)?;
    std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()))?;
    Ok(())
}

/// The client side of a TLS-enabled test server, and what a test needs to change the server's.
pub struct ClientTls {
    /// Keeps the client's files.
    pub dir: tempfile::TempDir,
    /// The CA that signed the server's certificate, to sign others.
    pub ca: Ca,
    /// Where the server's `server.crt` and `server.key` are (owned by the server's user).
    pub server_dir: PathBuf,
    /// The CA that signed the server's certificate.
    pub ca_file: PathBuf,
    /// A CA that did not.
    pub other_ca_file: PathBuf,
    /// A client certificate for user `certuser`, and its key.
    pub client_cert_file: PathBuf,
    /// The key of `client_cert_file`.
    pub client_key_file: PathBuf,
}

/// Turns on TLS in `pg` (server certificate for 127.0.0.1; `hostssl ... certuser ... cert`
/// for client-certificate logins) and returns the client's files.
pub fn enable_tls(pg: &PostgresServer) -> Result<ClientTls> {
    let tls = pg.dir().join("tls");
    std::fs::create_dir_all(&tls)?;
    let owner = pg.dir();
    let ca = make_ca("tarn test CA")?;
    let other_ca = make_ca("some other CA")?;
    let (server_cert, server_key) = leaf(
        &ca,
        "127.0.0.1",
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_cert, client_key) = leaf(&ca, "certuser", &[], ExtendedKeyUsagePurpose::ClientAuth)?;
    write_owned(&tls.join("ca.crt"), &ca.pem, 0o644, owner)?;
    write_owned(&tls.join("server.crt"), &server_cert, 0o644, owner)?;
    write_owned(&tls.join("server.key"), &server_key, 0o600, owner)?;
    let dir = tempfile::tempdir()?;
    let file = |name: &str, text: &str| -> Result<PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let client = ClientTls {
        ca_file: file("ca.crt", &ca.pem)?,
        other_ca_file: file("other-ca.crt", &other_ca.pem)?,
        client_cert_file: file("client.crt", &client_cert)?,
        client_key_file: file("client.key", &client_key)?,
        dir,
        ca,
        server_dir: tls.clone(),
    };
    let hba = pg.dir().join("data").join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba)?;
    std::fs::write(&hba, format!("hostssl all certuser 127.0.0.1/32 cert\n{rules}"))?;
    for setting in [
        format!("ssl_cert_file = '{}'", tls.join("server.crt").display()),
        format!("ssl_key_file = '{}'", tls.join("server.key").display()),
        format!("ssl_ca_file = '{}'", tls.join("ca.crt").display()),
        "ssl = on".to_string(),
    ] {
        pg.psql("postgres", &format!("ALTER SYSTEM SET {setting}"))?;
    }
    pg.psql("postgres", "SELECT pg_reload_conf()")?;
    Ok(client)
}

/// TLS material for a tarn listener under test, in one temporary directory.
pub struct ListenerTls {
    /// Keeps the files.
    pub dir: tempfile::TempDir,
    /// The CA that signed the server's and the client's certificates, to sign more.
    pub ca: Ca,
    /// `ca`'s certificate.
    pub ca_file: PathBuf,
    /// A CA that signed neither.
    pub other_ca_file: PathBuf,
    /// The server's certificate, for 127.0.0.1, ::1 and localhost.
    pub cert_file: PathBuf,
    /// Its key.
    pub key_file: PathBuf,
    /// A client certificate with common name `client_cn`.
    pub client_cert_file: PathBuf,
    /// Its key.
    pub client_key_file: PathBuf,
}

impl ListenerTls {
    /// A new server certificate and key signed by `ca` (e.g. for a reload): (certificate PEM,
    /// key PEM).
    pub fn new_server_cert(&self) -> Result<(String, String)> {
        leaf(
            &self.ca,
            "127.0.0.1",
            &["127.0.0.1", "::1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }
}

/// Makes the files of [`ListenerTls`], the client certificate for `client_cn`.
pub fn listener_tls(client_cn: &str) -> Result<ListenerTls> {
    let dir = tempfile::Builder::new().prefix("tarn-tls-").tempdir()?;
    let ca = make_ca("tarn test CA")?;
    let other_ca = make_ca("some other CA")?;
    let (cert, key) = leaf(
        &ca,
        "127.0.0.1",
        &["127.0.0.1", "::1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_cert, client_key) = leaf(&ca, client_cn, &[], ExtendedKeyUsagePurpose::ClientAuth)?;
    let file = |name: &str, text: &str, mode: u32| -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        Ok(path)
    };
    Ok(ListenerTls {
        ca_file: file("ca.crt", &ca.pem, 0o644)?,
        other_ca_file: file("other-ca.crt", &other_ca.pem, 0o644)?,
        cert_file: file("server.crt", &cert, 0o644)?,
        key_file: file("server.key", &key, 0o600)?,
        client_cert_file: file("client.crt", &client_cert, 0o644)?,
        // libpq refuses a client key that others can read.
        client_key_file: file("client.key", &client_key, 0o600)?,
        ca,
        dir,
    })
}
