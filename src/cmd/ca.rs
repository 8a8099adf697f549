//! `pulpdist ca`: a small certificate authority for sites, for a quick start (rcgen).
//! Certificates made with openssl or any other CA work the same way.
//!
//! `ca init` makes `ca.pem` and `ca.key`; `ca issue --site NAME` makes `NAME.pem` and
//! `NAME.key` (a client certificate with subject CN=NAME, or a server certificate with
//! `--server --dns HOST`); `ca revoke --site NAME` adds it to `crl.pem`, which
//! `serve --crl` reads. Issued serial numbers are recorded in `issued.txt`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Make a CA: DIR/ca.pem and DIR/ca.key.
    Init {
        /// The CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "PulpDist site CA")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// Issue a certificate: DIR/NAME.pem and DIR/NAME.key.
    Issue {
        /// The CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// The site (subject CN, and the file names).
        #[arg(long)]
        site: String,
        /// A server certificate (for `serve --tls-cert`) instead of a client one.
        #[arg(long)]
        server: bool,
        /// DNS names or IP addresses (subject alternative names); may be repeated.
        #[arg(long)]
        dns: Vec<String>,
        /// URI subject alternative names (e.g. spiffe://org/site); may be repeated.
        #[arg(long)]
        uri: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
    /// Revoke a site's certificates: adds them to DIR/crl.pem (for `serve --crl`).
    Revoke {
        /// The CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// The site whose certificates are revoked.
        #[arg(long)]
        site: String,
    },
}

pub(crate) fn run(a: Args) -> Result<()> {
    match a.command {
        Command::Init { dir, name, days } => init(&dir, &name, days, true),
        Command::Issue {
            dir,
            site,
            server,
            dns,
            uri,
            days,
        } => issue(&dir, &site, server, (&dns, &uri), days, true),
        Command::Revoke { dir, site } => revoke(&dir, &site),
    }
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn random_serial() -> Result<SerialNumber> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).context("reading random bytes")?;
    b[0] &= 0x7f; // positive
    Ok(SerialNumber::from_slice(&b))
}

pub(crate) fn init(dir: &Path, name: &str, days: i64, announce: bool) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(days);
    p.serial_number = Some(random_serial()?);
    let key = KeyPair::generate().context("generating the CA key")?;
    let cert = p.self_signed(&key).context("signing the CA certificate")?;
    write_new(&dir.join("ca.key"), &key.serialize_pem(), 0o600)?;
    write_new(&dir.join("ca.pem"), &cert.pem(), 0o644)?;
    // An empty revocation list from the start, so `serve --crl` can name it before the
    // first revocation (which then takes a SIGHUP, not a restart).
    write_crl(dir, &Issuer::new(p, key), "")?;
    if !announce {
        return Ok(());
    }
    super::say(format_args!(
        "CA '{name}': {} (give to servers as --client-ca and to clients as --ca), key {}\n",
        dir.join("ca.pem").display(),
        dir.join("ca.key").display()
    ))?;
    Ok(())
}

fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>> {
    let (cp, kp) = (dir.join("ca.pem"), dir.join("ca.key"));
    let key_pem = fs::read_to_string(&kp).with_context(|| format!("reading {}", kp.display()))?;
    let key = KeyPair::from_pem(&key_pem).with_context(|| format!("parsing {}", kp.display()))?;
    let ca_pem = fs::read_to_string(&cp).with_context(|| format!("reading {}", cp.display()))?;
    Issuer::from_ca_cert_pem(&ca_pem, key).with_context(|| format!("parsing {}", cp.display()))
}

pub(crate) fn issue(
    dir: &Path,
    site: &str,
    server: bool,
    (dns, uri): (&[String], &[String]),
    days: i64,
    announce: bool,
) -> Result<()> {
    if site.is_empty()
        || site.starts_with('.')
        || !site
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        bail!("site name '{site}' must be letters, digits, '.', '_' or '-' (it names files)");
    }
    let issuer = load_issuer(dir)?;
    let mut p = CertificateParams::new(dns.to_vec())
        .with_context(|| format!("subject alternative names {dns:?}"))?;
    for u in uri {
        p.subject_alt_names.push(rcgen::SanType::URI(
            u.as_str()
                .try_into()
                .with_context(|| format!("URI '{u}'"))?,
        ));
    }
    p.distinguished_name.push(DnType::CommonName, site);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(days);
    let serial = random_serial()?;
    p.serial_number = Some(serial.clone());
    let key = KeyPair::generate().context("generating the key")?;
    let cert = p
        .signed_by(&key, &issuer)
        .context("signing the certificate")?;
    write_new(
        &dir.join(format!("{site}.key")),
        &key.serialize_pem(),
        0o600,
    )?;
    write_new(&dir.join(format!("{site}.pem")), &cert.pem(), 0o644)?;
    let issued = dir.join("issued.txt");
    let mut log = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&issued)
        .with_context(|| format!("opening {}", issued.display()))?;
    writeln!(log, "{} {site}", hex::encode(serial.as_ref()))
        .with_context(|| format!("writing {}", issued.display()))?;
    if !announce {
        return Ok(());
    }
    super::say(format_args!(
        "{} certificate for '{site}': {} and {}\n",
        if server { "server" } else { "client" },
        dir.join(format!("{site}.pem")).display(),
        dir.join(format!("{site}.key")).display()
    ))?;
    Ok(())
}

fn revoke(dir: &Path, site: &str) -> Result<()> {
    let issuer = load_issuer(dir)?;
    let issued = dir.join("issued.txt");
    let text =
        fs::read_to_string(&issued).with_context(|| format!("reading {}", issued.display()))?;
    let revoked_file = dir.join("revoked.txt");
    let mut revoked = fs::read_to_string(&revoked_file).unwrap_or_default();
    let mut n = 0;
    for line in text.lines() {
        if let Some((serial, name)) = line.split_once(' ') {
            if name == site && !revoked.lines().any(|l| l == serial) {
                revoked.push_str(serial);
                revoked.push('\n');
                n += 1;
            }
        }
    }
    if !text
        .lines()
        .any(|l| l.split_once(' ').is_some_and(|(_, name)| name == site))
    {
        bail!("no certificate issued to '{site}' in {}", issued.display());
    }
    write_crl(dir, &issuer, &revoked)?;
    fs::write(&revoked_file, &revoked)
        .with_context(|| format!("writing {}", revoked_file.display()))?;
    super::say(format_args!(
        "revoked {n} certificate(s) of '{site}'; {} lists {} (serve --crl reloads it on SIGHUP)\n",
        dir.join("crl.pem").display(),
        revoked.lines().count()
    ))?;
    Ok(())
}

/// Writes DIR/crl.pem listing the serials (hex, one per line) in `revoked`.
fn write_crl(dir: &Path, issuer: &Issuer<'_, KeyPair>, revoked: &str) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    let mut certs = Vec::new();
    for serial in revoked.lines().filter(|l| !l.is_empty()) {
        let bytes = hex::decode(serial).with_context(|| format!("bad serial '{serial}'"))?;
        certs.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&bytes),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let crl = CertificateRevocationListParams {
        this_update: now - Duration::minutes(5),
        next_update: now + Duration::days(30),
        crl_number: random_serial()?,
        issuing_distribution_point: None,
        revoked_certs: certs,
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(issuer)
    .context("signing the revocation list")?;
    let tmp = dir.join("crl.pem.tmp");
    fs::write(&tmp, crl.pem()?).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, dir.join("crl.pem"))
        .with_context(|| format!("writing {}", dir.join("crl.pem").display()))
}
