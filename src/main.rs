//! `pulpdist`: publish directory trees into a signed, chunked store and sync mirrors from it.
//!
//! One module per subcommand. This is the only place that uses `anyhow`; library errors
//! are typed and gain their context here.
//!
//! Exit codes: 0 success; 1 failure; 2 usage error; 3 refused by verification (bad or
//! foreign signature, rollback, expired head, wrong tree, tampered object); 4 another
//! publisher holds the tree, or the head changed during publish.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(
    name = "pulpdist",
    version,
    about = "Mirror software repositories over slow WAN links: signed, chunked, content-addressed"
)]
struct Cli {
    /// More log lines on stderr: -v what each phase did, -vv details (RUST_LOG, when set,
    /// chooses instead: e.g. RUST_LOG=pulpdist_sync=debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors on stderr (no warnings, no progress bar).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A small certificate authority for sites: init, issue, revoke.
    Ca(cmd::ca::Args),
    /// ISO images outside a mirror: make a template, rebuild an image from files (jigdo-like).
    Iso(cmd::iso::Args),
    /// Make an Ed25519 signing key (FILE) and its public half (FILE.pub).
    Keygen(cmd::keygen::Args),
    /// Publish a directory as the next version of a tree.
    Publish(cmd::publish::Args),
    /// Serve a store directory over HTTP (GET, HEAD, ranges, ETags, /metrics).
    Serve(cmd::serve::Args),
    /// Bring a mirror directory to the tree's current version.
    Sync(cmd::sync::Args),
    /// List a tree's versions (from the heads its store archives).
    Log(cmd::history::LogArgs),
    /// The paths that differ between two versions of a tree.
    Diff(cmd::history::DiffArgs),
    /// Check a store: heads, index nodes, packs, and with --read-data every chunk.
    Verify(cmd::verify::Args),
    /// The coordinator: the network's desired state, the sites' assignments and reports (HTTPS).
    Coordinator(cmd::coordinator::Args),
    /// The site agent: keep the assigned trees synced, report every run to the coordinator.
    Agent(cmd::agent::Args),
    /// The network file: check it, apply it to the coordinator, export it, push a tree.
    Network(cmd::coordinator::NetworkArgs),
    /// Every site's state per tree, from the coordinator.
    Status(cmd::coordinator::StatusArgs),
    /// Copy trees' current versions from one store into another (a relay), verified.
    Replicate(cmd::replicate::Args),
    /// Keep the versions a policy names; remove what nothing kept reaches (two phases).
    Gc(cmd::gc::Args),
    /// Write the man pages and shell completions into a directory (for packaging).
    #[command(hide = true)]
    Docs(cmd::docs::Args),
    /// Run the main job on a bundled sample tree: publish to a local store, sync a copy, twice.
    Demo(cmd::demo::Args),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    cmd::logs::init(cli.verbose, cli.quiet);
    // rsync's filter flags apply in the order given, across the three of them.
    if let (Command::Publish(a), Some(m)) =
        (&mut cli.command, matches.subcommand_matches("publish"))
    {
        a.set_rule_order(m);
    }
    let result = match cli.command {
        Command::Ca(a) => cmd::ca::run(a),
        Command::Iso(a) => cmd::iso::run(a),
        Command::Keygen(a) => cmd::keygen::run(a),
        Command::Publish(a) => cmd::publish::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Sync(a) => cmd::sync::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Gc(a) => cmd::gc::run(a),
        Command::Replicate(a) => cmd::replicate::run(a),
        Command::Coordinator(a) => cmd::coordinator::run(a),
        Command::Agent(a) => cmd::agent::run(a),
        Command::Network(a) => cmd::coordinator::network(a),
        Command::Status(a) => cmd::coordinator::status(a),
        Command::Log(a) => cmd::history::log(a),
        Command::Diff(a) => cmd::history::diff(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Docs(a) => cmd::docs::run(a, Cli::command()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.chain().any(|c| c.is::<cmd::StdoutClosed>()) {
                return ExitCode::SUCCESS;
            }
            eprintln!("pulpdist: error: {}", cmd::describe(&e));
            ExitCode::from(cmd::exit_code(&e))
        }
    }
}
