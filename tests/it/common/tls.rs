//! A throwaway certificate authority for TLS tests (rcgen): a CA and certificates it signs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

pub(crate) struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

/// A certificate and its key, as PEM files.
pub(crate) struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub(crate) fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA cert");
        TestCa {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        }
    }

    /// Writes the CA certificate to `path`.
    pub(crate) fn write_ca(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.cert_pem).expect("write CA");
        path.to_path_buf()
    }

    /// A certificate for `names` (DNS names or IP addresses), written as `<stem>.pem` and
    /// `<stem>.key` in `dir`.
    pub(crate) fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> Pair {
        self.issue_until(dir, stem, names, None)
    }

    /// [`TestCa::issue`], expiring at `not_after` if given.
    pub(crate) fn issue_until(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        not_after: Option<time::OffsetDateTime>,
    ) -> Pair {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or(stem));
        if let Some(t) = not_after {
            params.not_after = t;
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        let pair = Pair {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).expect("write cert");
        std::fs::write(&pair.key, key.serialize_pem()).expect("write key");
        pair
    }
}
