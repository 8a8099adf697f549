//! `pulpdist keygen FILE`: a signing key and its public half.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use pulpdist_format::SecretKey;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Where to write the secret key (mode 0600); the public key goes to FILE.pub.
    file: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

pub(crate) fn run(a: Args) -> Result<()> {
    let key = SecretKey::generate()?;
    let pub_path = PathBuf::from(format!("{}.pub", a.file.display()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if a.force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts
        .open(&a.file)
        .with_context(|| format!("creating {} (use --force to overwrite)", a.file.display()))?;
    f.write_all(key.to_text().as_bytes())
        .with_context(|| format!("writing {}", a.file.display()))?;
    let comment = a
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::write(&pub_path, key.public().to_text(&comment))
        .with_context(|| format!("writing {}", pub_path.display()))?;
    super::say(format_args!(
        "wrote {} and {} (key {})\n",
        a.file.display(),
        pub_path.display(),
        key.public()
    ))?;
    Ok(())
}
