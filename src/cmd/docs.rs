//! `pulpdist docs --out DIR` (hidden): the man pages and shell completions, generated from
//! the command-line definition itself, so they cannot drift from it. The Debian package
//! installs them (`scripts/deb`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap_complete::Shell;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Where to write `man/*.1` and `completions/` (bash, zsh, fish).
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn run(a: Args, mut cmd: clap::Command) -> Result<()> {
    let man = a.out.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    cmd.build();
    write_man(&man, &cmd, "pulpdist")?;
    let shown = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help");
    for sub in shown {
        let name = format!("pulpdist-{}", sub.get_name());
        let page = sub
            .clone()
            .name(name.clone())
            .version(env!("CARGO_PKG_VERSION"));
        write_man(&man, &page, &name)?;
    }
    let comp = a.out.join("completions");
    std::fs::create_dir_all(&comp).with_context(|| format!("creating {}", comp.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "pulpdist", &comp)
            .with_context(|| format!("writing {shell} completions into {}", comp.display()))?;
    }
    Ok(())
}

fn write_man(dir: &Path, cmd: &clap::Command, name: &str) -> Result<()> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut out)
        .with_context(|| format!("rendering the man page of {name}"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
}
