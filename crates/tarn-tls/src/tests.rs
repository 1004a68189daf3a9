//! Loading and reloading against certificates made by the test CA.

use std::path::Path;

use tarn_test_utils::tls::{ExtendedKeyUsagePurpose, leaf, make_ca};

use super::*;

struct Material {
    dir: tempfile::TempDir,
    files: TlsFiles,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn material(with_client_ca: bool) -> Material {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca("tarn test CA").unwrap();
    let (cert, key) = leaf(
        &ca,
        "127.0.0.1",
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    )
    .unwrap();
    let files = TlsFiles {
        cert: write(dir.path(), "server.crt", &cert),
        key: write(dir.path(), "server.key", &key),
        client_ca: with_client_ca.then(|| write(dir.path(), "clients.crt", &ca.pem)),
    };
    Material { dir, files }
}

/// The leaf certificate the HTTPS configuration presents.
fn presented(tls: &ServerTls) -> Vec<u8> {
    let resolver = tls.current().https.cert_resolver.clone();
    // A resolver of one certificate answers any hello; build one from a real client's.
    let client =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny))
            .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(Arc::new(client), "127.0.0.1".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    let mut server = rustls::server::Acceptor::default();
    server.read_tls(&mut hello.as_slice()).unwrap();
    let accepted = server.accept().ok().flatten().unwrap();
    let key = resolver.resolve(accepted.client_hello()).unwrap();
    key.cert[0].as_ref().to_vec()
}

#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

#[test]
fn loads_and_names_each_bad_file() {
    let m = material(true);
    let tls = ServerTls::load(m.files.clone()).unwrap();
    assert!(tls.verifies_clients());
    assert_eq!(tls.current().pgwire.alpn_protocols, vec![b"postgresql".to_vec()]);

    let missing = TlsFiles {
        cert: m.dir.path().join("absent.crt"),
        ..m.files.clone()
    };
    let e = ServerTls::load(missing).unwrap_err();
    assert_eq!(e.key, "server.tls.cert");
    assert!(
        e.to_string().contains("absent.crt") && e.to_string().contains("cannot read it"),
        "{e}"
    );

    let not_pem = TlsFiles {
        cert: write(m.dir.path(), "garbage.crt", "hello\n"),
        ..m.files.clone()
    };
    let e = ServerTls::load(not_pem).unwrap_err();
    assert_eq!(
        (e.key, e.file.file_name().unwrap().to_str().unwrap()),
        ("server.tls.cert", "garbage.crt")
    );
    assert!(e.problem.contains("no PEM certificate"), "{e}");

    // A certificate where the key should be.
    let no_key = TlsFiles {
        key: m.files.cert.clone(),
        ..m.files.clone()
    };
    let e = ServerTls::load(no_key).unwrap_err();
    assert_eq!(e.key, "server.tls.key");
    assert!(e.problem.contains("no usable PEM private key"), "{e}");

    // Another certificate's key.
    let other = material(false);
    let mismatched = TlsFiles {
        key: other.files.key.clone(),
        ..m.files.clone()
    };
    let e = ServerTls::load(mismatched).unwrap_err();
    assert_eq!(e.key, "server.tls.key");
    assert!(e.problem.contains("does not fit the certificate"), "{e}");

    let bad_ca = TlsFiles {
        client_ca: Some(write(m.dir.path(), "empty-ca.crt", "")),
        ..m.files.clone()
    };
    let e = ServerTls::load(bad_ca).unwrap_err();
    assert_eq!(e.key, "server.tls.client_ca");
    assert!(e.to_string().contains("empty-ca.crt"), "{e}");
}

#[test]
fn reload_replaces_a_changed_set_and_keeps_the_old_one_when_the_new_one_is_bad() {
    let m = material(false);
    let tls = ServerTls::load(m.files.clone()).unwrap();
    let first = presented(&tls);
    assert_eq!(tls.reload(), Ok(false), "nothing changed");

    // A half-written rotation: the new certificate, the old key.
    let ca = make_ca("rotated CA").unwrap();
    let (cert, key) = leaf(
        &ca,
        "127.0.0.1",
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    )
    .unwrap();
    std::fs::write(&m.files.cert, &cert).unwrap();
    let e = tls.reload().unwrap_err();
    assert_eq!(e.key, "server.tls.key");
    assert_eq!(presented(&tls), first, "the old certificate stays in use");

    std::fs::write(&m.files.key, &key).unwrap();
    assert_eq!(tls.reload(), Ok(true));
    assert_eq!(presented(&tls), der_of(&cert));
    assert_ne!(presented(&tls), first);
}

#[test]
fn common_name_of_a_client_certificate() {
    let ca = make_ca("tarn test CA").unwrap();
    let (cert, _) = leaf(&ca, "certuser", &[], ExtendedKeyUsagePurpose::ClientAuth).unwrap();
    let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    assert_eq!(common_name(&der).as_deref(), Some("certuser"));
    assert_eq!(common_name(&CertificateDer::from(vec![1u8, 2, 3])), None);
}
