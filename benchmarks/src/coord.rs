//! What the coordinator benchmarks share: a CA with a certificate per site, a client of
//! the coordinator as one of them, and a process's CPU time and peak memory.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA and a certificate per name (PEM files in `dir`).
pub fn pki(dir: &Path, names: &[String]) -> PathBuf {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "load CA");
    let key = KeyPair::generate().expect("key");
    let ca = params.self_signed(&key).expect("CA");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    let issuer = Issuer::new(params, key);
    for n in names {
        let mut p = CertificateParams::new(vec![n.clone()]).expect("params");
        p.distinguished_name.push(DnType::CommonName, n);
        let k = KeyPair::generate().expect("key");
        let c = p.signed_by(&k, &issuer).expect("sign");
        std::fs::write(dir.join(format!("{n}.pem")), c.pem()).expect("write");
        std::fs::write(dir.join(format!("{n}.key")), k.serialize_pem()).expect("write");
    }
    dir.join("ca.pem")
}

/// A client of the coordinator at `url` as `who` (its certificate from `dir`).
pub fn client(url: &str, dir: &Path, who: &str) -> pulpdist_agent::Client {
    let read = |f: String| std::fs::read(dir.join(f)).expect("pem");
    let http = pulpdist_sync::HttpOptions {
        ca_pem: Some(read("ca.pem".into())),
        client_cert_pem: Some((read(format!("{who}.pem")), read(format!("{who}.key")))),
        ..Default::default()
    };
    pulpdist_agent::Client::new(url, &http).expect("client")
}

/// CPU seconds (user + system) and peak RSS (MB) of a process, from /proc.
pub fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (cpu, kb("VmHWM:") / 1024.0)
}
