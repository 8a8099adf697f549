//! Reports waiting for the coordinator, one JSON line each in a file of the agent's state:
//! appended and flushed before the agent goes on, cleared only once delivered, so a report
//! survives the coordinator being away and the agent being restarted.

use std::io::Write;
use std::path::PathBuf;

use pulpdist_network::Report;

use crate::AgentError;

/// The queue file.
pub struct Queue {
    path: PathBuf,
}

impl Queue {
    /// The queue in `path`.
    pub fn new(path: PathBuf) -> Queue {
        Queue { path }
    }

    fn io(&self, source: std::io::Error) -> AgentError {
        AgentError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends a report, flushed.
    pub fn push(&self, r: &Report) -> Result<(), AgentError> {
        let mut line = serde_json::to_vec(r).map_err(|e| self.io(std::io::Error::other(e)))?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        f.write_all(&line)
            .and_then(|()| f.sync_data())
            .map_err(|e| self.io(e))
    }

    /// The reports waiting (a line torn by a crash is skipped).
    pub fn pending(&self) -> Result<Vec<Report>, AgentError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Replaces the queue with `reports` (those not yet delivered), durably.
    pub fn rewrite(&self, reports: &[Report]) -> Result<(), AgentError> {
        if reports.is_empty() {
            return self.clear();
        }
        let mut text = Vec::new();
        for r in reports {
            text.extend(serde_json::to_vec(r).map_err(|e| self.io(std::io::Error::other(e)))?);
            text.push(b'\n');
        }
        crate::write_durably(&self.path, &text).map_err(|e| self.io(e))
    }

    /// Sets aside reports the coordinator refused, in `rejected.jsonl` beside the queue.
    pub fn park(&self, reports: &[Report]) -> Result<(), AgentError> {
        let aside = Queue::new(self.path.with_file_name("rejected.jsonl"));
        reports.iter().try_for_each(|r| aside.push(r))
    }

    /// Empties the queue (after delivery).
    pub fn clear(&self) -> Result<(), AgentError> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.io(e)),
            _ => Ok(()),
        }
    }
}
