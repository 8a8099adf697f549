//! `--progress`: how a long command shows how far it is, on stderr. A bar on a terminal
//! (`auto`, the default: nothing when stderr is not a terminal, under systemd or in a
//! pipe), JSON lines for programs (`json`), or nothing (`none`).

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pulpdist_progress::{Progress, Reporter};

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A progress bar when stderr is a terminal, else nothing.
    #[default]
    Auto,
    /// One JSON object a line: each phase's start, its advances (at most five a second)
    /// and its end.
    Json,
    /// Nothing.
    None,
}

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ProgressArgs {
    /// Progress on stderr: auto (a bar on a terminal), json (JSON lines) or none.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    progress: Mode,
}

impl ProgressArgs {
    /// What the libraries report to.
    pub(crate) fn reporter(&self) -> Reporter {
        match self.progress {
            Mode::Json => Reporter::new(Arc::new(JsonLines::default())),
            Mode::Auto if std::io::stderr().is_terminal() && !super::logs::quiet() => {
                Reporter::new(Arc::new(Bar::default()))
            }
            _ => Reporter::default(),
        }
    }
}

/// A bar per phase: bytes when the phase knows them, else items; rate and ETA.
#[derive(Default)]
struct Bar(Mutex<Option<(ProgressBar, bool)>>);

impl Progress for Bar {
    fn start(&self, what: &str, items: u64, bytes: u64) {
        let by_bytes = bytes > 0;
        let bar = ProgressBar::with_draw_target(
            Some(if by_bytes { bytes } else { items }),
            ProgressDrawTarget::stderr(),
        );
        let template = match by_bytes {
            true => "{msg:>6} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            false => "{msg:>6} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}",
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        if let Ok(mut b) = self.0.lock() {
            *b = Some((bar, by_bytes));
        }
    }
    fn advance(&self, items: u64, bytes: u64) {
        if let Ok(b) = self.0.lock() {
            if let Some((bar, by_bytes)) = b.as_ref() {
                bar.inc(if *by_bytes { bytes } else { items });
            }
        }
    }
    fn finish(&self) {
        if let Ok(mut b) = self.0.lock() {
            if let Some((bar, _)) = b.take() {
                bar.finish_and_clear();
            }
        }
    }
}

/// JSON lines on stderr.
#[derive(Default)]
struct JsonLines(Mutex<Phase>);

#[derive(Default)]
struct Phase {
    what: String,
    items: u64,
    bytes: u64,
    items_done: u64,
    bytes_done: u64,
    last: Option<Instant>,
}

impl Phase {
    fn emit(&self, event: &str) {
        let line = serde_json::json!({
            "phase": self.what, "event": event,
            "items": self.items, "items_done": self.items_done,
            "bytes": self.bytes, "bytes_done": self.bytes_done,
        });
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}

impl Progress for JsonLines {
    fn start(&self, what: &str, items: u64, bytes: u64) {
        if let Ok(mut p) = self.0.lock() {
            *p = Phase {
                what: what.to_string(),
                items,
                bytes,
                last: Some(Instant::now()),
                ..Phase::default()
            };
            p.emit("start");
        }
    }
    fn advance(&self, items: u64, bytes: u64) {
        if let Ok(mut p) = self.0.lock() {
            p.items_done += items;
            p.bytes_done += bytes;
            if p.last
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(200))
            {
                p.last = Some(Instant::now());
                p.emit("progress");
            }
        }
    }
    fn finish(&self) {
        if let Ok(p) = self.0.lock() {
            p.emit("end");
        }
    }
}
