//! Identities: the broker is a certificate authority; every buyer and
//! seller holds a key whose certificate the broker issued; every connection
//! is QUIC with mutual TLS 1.3.
//!
//! A certificate's subject says who and what: `CN=<account>`,
//! `OU=<role>`. A party's id is the hash of its public key, printed short.

use crate::id::ContentId;
use crate::msg::Role;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
    UnixTime,
};
use rustls::RootCertStore;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The name every broker certificate carries; clients verify it.
pub const BROKER_NAME: &str = "cpushare-broker";
/// ALPN of the control protocol.
pub const ALPN: &[u8] = b"cpushare/1";
/// ALPN of the enrollment endpoint.
pub const ALPN_ENROLL: &[u8] = b"cpushare-enroll/1";
/// How long an issued client certificate is valid.
pub const CLIENT_CERT_DAYS: i64 = 365;
/// Largest PEM/DER identity file read from disk.
const MAX_IDENTITY_FILE: u64 = 64 << 10;

/// Why an identity operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// certificate generation failed: {0}
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// TLS configuration failed: {0}
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    /// the certificate signing request is invalid: {0}
    #[error("the certificate signing request is invalid: {0}")]
    BadCsr(rcgen::Error),
    /// certificate is not valid X.509: {0}
    #[error("certificate is not valid X.509: {0}")]
    BadCertificate(String),
    /// {path}: {source}
    #[error("{path}: {source}")]
    File {
        /// File involved.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// {path} is not a valid PEM file: {reason}
    #[error("{path} is not a valid PEM file: {reason}")]
    Pem {
        /// File involved.
        path: String,
        /// Cause.
        reason: String,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a DER certificate: what an enrollment token pins.
pub fn fingerprint(cert_der: &[u8]) -> [u8; 32] {
    Sha256::digest(cert_der).into()
}

/// The broker's certificate authority.
pub struct Ca {
    cert_der: CertificateDer<'static>,
    key: KeyPair,
}

impl Ca {
    /// A fresh CA with a new key.
    pub fn generate() -> Result<Ca, IdentityError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "cpushare broker CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_der: cert.der().clone(),
            key,
        })
    }

    /// Loads `ca.pem` and `ca.key` from `dir`, or creates and saves them.
    pub fn load_or_create(dir: &Path) -> Result<Ca, IdentityError> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        if cert_path.exists() {
            let cert_der = read_cert(&cert_path)?;
            let key_pem = read_small(&key_path)?;
            let key = KeyPair::from_pem(&key_pem)?;
            return Ok(Ca { cert_der, key });
        }
        let ca = Ca::generate()?;
        write_private(&key_path, ca.key.serialize_pem().as_bytes())?;
        write_file(&cert_path, pem_cert(&ca.cert_der).as_bytes())?;
        Ok(ca)
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate.
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.cert_der)
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, IdentityError> {
        Ok(Issuer::from_ca_cert_der(&self.cert_der, &self.key)?)
    }

    /// A server certificate for the broker, valid for [`BROKER_NAME`] and `ips`.
    pub fn issue_server(
        &self,
        ips: &[IpAddr],
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), IdentityError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![BROKER_NAME.to_string()])?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params
            .distinguished_name
            .push(DnType::CommonName, BROKER_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(CLIENT_CERT_DAYS);
        let cert = params.signed_by(&key, &self.issuer()?)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((cert.der().clone(), key_der))
    }

    /// Turns an enrollee's CSR into a client certificate for `name` with
    /// `role`. Only the CSR's public key is used: the subject and usages
    /// come from the broker, never from the request.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        name: &str,
        role: Role,
    ) -> Result<CertificateDer<'static>, IdentityError> {
        let der = CertificateSigningRequestDer::from(csr_der.to_vec());
        let mut csr =
            CertificateSigningRequestParams::from_der(&der).map_err(IdentityError::BadCsr)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, role.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(CLIENT_CERT_DAYS);
        csr.params = params;
        Ok(csr.signed_by(&self.issuer()?)?.der().clone())
    }
}

/// A new key and a CSR for it, as an enrollee makes them.
pub fn new_key_and_csr(name: &str) -> Result<(KeyPair, Vec<u8>), IdentityError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    let csr = params.serialize_request(&key)?;
    Ok((key, csr.der().to_vec()))
}

/// Who is on the other end of a connection, from its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Account name (certificate CN).
    pub name: String,
    /// Role (certificate OU).
    pub role: Role,
    /// `K-` id: hash of the certificate's public key.
    pub key_id: String,
}

impl Peer {
    /// Reads name, role and key id from a DER certificate the CA issued.
    pub fn from_cert(der: &[u8]) -> Result<Peer, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let subject = cert.subject();
        let field = |it: Option<&x509_parser::x509::AttributeTypeAndValue>| {
            it.and_then(|a| a.as_str().ok()).map(str::to_string)
        };
        let name = field(subject.iter_common_name().next())
            .ok_or_else(|| IdentityError::BadCertificate("no common name".into()))?;
        let role = field(subject.iter_organizational_unit().next())
            .and_then(|r| Role::parse(&r))
            .ok_or_else(|| IdentityError::BadCertificate("no role in OU".into()))?;
        let key_id = ContentId::of(cert.public_key().raw).short();
        Ok(Peer { name, role, key_id })
    }

    /// The verified client of a QUIC connection (mutual TLS guarantees the
    /// certificate chains to our CA).
    pub fn of_connection(conn: &quinn::Connection) -> Result<Peer, IdentityError> {
        let certs = conn
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
            .ok_or_else(|| IdentityError::BadCertificate("peer sent no certificate".into()))?;
        let leaf = certs
            .first()
            .ok_or_else(|| IdentityError::BadCertificate("empty certificate chain".into()))?;
        Peer::from_cert(leaf)
    }
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // A lost peer is noticed within 15 s even if the application is idle;
    // keep-alives every 4 s hold the path (and NAT bindings) open.
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(15)).expect("15 s fits a VarInt"),
    ));
    t.keep_alive_interval(Some(Duration::from_secs(4)));
    t.max_concurrent_bidi_streams(4096u32.into());
    Arc::new(t)
}

fn tls13(
    p: &Arc<CryptoProvider>,
) -> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier>, IdentityError> {
    Ok(rustls::ServerConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?)
}

fn roots(ca_der: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, IdentityError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca_der.clone())?;
    Ok(Arc::new(roots))
}

/// The broker's control endpoint: clients must present a certificate our CA issued.
pub fn server_config(
    ca_der: &CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ServerConfig, IdentityError> {
    let p = provider();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca_der)?, p.clone())
            .build()
            .map_err(|e| IdentityError::Tls(rustls::Error::General(e.to_string())))?;
    let mut tls = tls13(&p)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    quic_server(tls)
}

/// The broker's enrollment endpoint: no client certificate (the enrollee
/// has none yet); it serves [`crate::msg::Request::Enroll`] only. The
/// chain includes the CA so the enrollee can check the token's pin.
pub fn enroll_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ServerConfig, IdentityError> {
    let mut tls = tls13(&provider())?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN_ENROLL.to_vec()];
    quic_server(tls)
}

fn quic_server(tls: rustls::ServerConfig) -> Result<quinn::ServerConfig, IdentityError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| IdentityError::Tls(rustls::Error::General(e.to_string())))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport());
    Ok(cfg)
}

fn quic_client(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, IdentityError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| IdentityError::Tls(rustls::Error::General(e.to_string())))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// A client's configuration: verifies the broker against our CA and
/// presents the client's own certificate.
pub fn client_config(
    ca_der: &CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ClientConfig, IdentityError> {
    let p = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_der)?)
        .with_client_auth_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    quic_client(tls)
}

/// A configuration with no client certificate, verifying the broker
/// against `ca_der`. The broker refuses it at the handshake; it exists to
/// test exactly that.
pub fn anonymous_client_config(
    ca_der: &CertificateDer<'static>,
) -> Result<quinn::ClientConfig, IdentityError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_der)?)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    quic_client(tls)
}

/// The enrollee's configuration: it has no CA certificate yet, only the
/// token's pin, so it accepts the broker only if the chain the broker sends
/// ends in a CA with that SHA-256 and the leaf verifies against it.
pub fn enroll_client_config(ca_pin: [u8; 32]) -> Result<quinn::ClientConfig, IdentityError> {
    let p = provider();
    let verifier = Arc::new(PinnedCa {
        pin: ca_pin,
        provider: p.clone(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_ENROLL.to_vec()];
    quic_client(tls)
}

/// Server verifier that trusts exactly the CA whose fingerprint it pins.
#[derive(Debug)]
struct PinnedCa {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint(c) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the broker's CA does not match the token's fingerprint; the token is for another broker, or someone is in the way".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// PEM text of a DER certificate.
pub fn pem_cert(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn read_small(path: &Path) -> Result<String, IdentityError> {
    let err = |source| IdentityError::File {
        path: path.display().to_string(),
        source,
    };
    let len = std::fs::metadata(path).map_err(err)?.len();
    if len > MAX_IDENTITY_FILE {
        return Err(IdentityError::Pem {
            path: path.display().to_string(),
            reason: format!("{len} bytes is too large for an identity file"),
        });
    }
    std::fs::read_to_string(path).map_err(err)
}

/// Reads one PEM certificate.
pub fn read_cert(path: &Path) -> Result<CertificateDer<'static>, IdentityError> {
    let text = read_small(path)?;
    CertificateDer::from_pem_slice(text.as_bytes()).map_err(|e| IdentityError::Pem {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Reads one PEM private key.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, IdentityError> {
    let text = read_small(path)?;
    PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| IdentityError::Pem {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Writes a file readable by its owner only (keys).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| IdentityError::File {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    std::fs::write(path, bytes).map_err(|source| IdentityError::File {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_becomes_a_certificate_with_the_brokers_subject() {
        let ca = Ca::generate().unwrap();
        let (_key, csr) = new_key_and_csr("mallory-wants-admin").unwrap();
        let cert = ca.sign_csr(&csr, "alice", Role::Seller).unwrap();
        let peer = Peer::from_cert(&cert).unwrap();
        assert_eq!(peer.name, "alice");
        assert_eq!(peer.role, Role::Seller);
        assert!(peer.key_id.starts_with("K-"));
    }

    #[test]
    fn garbage_csr_is_refused() {
        let ca = Ca::generate().unwrap();
        assert!(matches!(
            ca.sign_csr(b"not a csr", "x", Role::Buyer),
            Err(IdentityError::BadCsr(_))
        ));
    }

    #[test]
    fn ca_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let a = Ca::load_or_create(dir.path()).unwrap();
        let b = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let (_k, csr) = new_key_and_csr("n").unwrap();
        b.sign_csr(&csr, "n", Role::Buyer).unwrap();
    }
}
