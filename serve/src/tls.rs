//! TLS for `serve` (rustls): the server certificate, optional client certificates verified
//! against a site CA (and its revocation lists), and the identities a client certificate
//! carries.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::authz::Identity;

/// Where the TLS material is.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA certificates (PEM) client certificates must chain to; none: no client certificates.
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM) of the client CA.
    pub crls: Vec<PathBuf>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The path involved.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

fn file_err(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The rustls provider used everywhere in PulpDist (explicit: more than one is compiled in).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration and the client certificate verifier in it (with its CRLs).
#[derive(Clone, Debug)]
pub struct TlsSetup {
    /// The rustls configuration new connections get.
    pub config: Arc<ServerConfig>,
    /// The client certificate verifier, when client certificates are required.
    pub verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl TlsSetup {
    /// Whether a client certificate chain accepted earlier still passes this
    /// configuration's verifier (a CRL loaded since may revoke it).
    pub fn still_valid(&self, chain: &[CertificateDer<'static>]) -> bool {
        match (&self.verifier, chain.split_first()) {
            (None, _) => true,
            (Some(v), Some((end, rest))) => v
                .verify_client_cert(end, rest, rustls::pki_types::UnixTime::now())
                .is_ok(),
            (Some(_), None) => false,
        }
    }
}

/// Builds the server configuration (HTTP/1.1 only).
pub fn server_config(files: &TlsFiles) -> Result<TlsSetup, TlsError> {
    let mut verifier_in_force = None;
    let chain = certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_err(&files.key, e))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| file_err(ca, e))?;
            }
            let mut crls = Vec::new();
            for path in &files.crls {
                let list = CertificateRevocationListDer::pem_file_iter(path)
                    .map_err(|e| file_err(path, e))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| file_err(path, e))?;
                if list.is_empty() {
                    return Err(file_err(path, "no revocation list in the file"));
                }
                crls.extend(list);
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .with_crls(crls)
                .build()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
            verifier_in_force = Some(Arc::clone(&verifier));
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(format!("{}: {e}", files.cert.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsSetup {
        config: Arc::new(config),
        verifier: verifier_in_force,
    })
}

/// The identities of a (verified) client certificate: its subject CN, DNS and URI SANs.
/// `None` for a certificate that does not parse or whose subject holds more than one CN
/// (`CN=berlin, CN=ops`: which one names the site?): such a certificate is granted nothing.
pub fn identities(cert: &CertificateDer<'_>) -> Option<Vec<Identity>> {
    let mut out = Vec::new();
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cns: Vec<_> = x.subject().iter_common_name().collect();
    if cns.len() > 1 {
        return None;
    }
    for cn in cns {
        out.push(Identity::Cn(cn.as_str().ok()?.to_string()));
    }
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    out.push(Identity::Dns(d.to_ascii_lowercase()))
                }
                x509_parser::extensions::GeneralName::URI(u) => {
                    out.push(Identity::Uri(u.to_string()))
                }
                _ => {}
            }
        }
    }
    Some(out)
}
