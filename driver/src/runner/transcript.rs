//! Every command a cell ran, with its status, output and duration, kept as
//! the cell's `commands.log` (for people) and `commands.json` (for tools).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One guest command (also the report's `failed_commands` entries).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// deploy phase or step group.
    pub context: String,
    /// The command line.
    pub command: String,
    /// Exit status (None: the channel failed).
    pub status: Option<i32>,
    /// stdout (lossy UTF-8).
    pub stdout: String,
    /// stderr (lossy UTF-8), or the channel's error.
    pub stderr: String,
    /// Seconds.
    pub duration_s: f64,
}

/// The commands of one cell.
#[derive(Debug, Default)]
pub struct Transcript {
    /// In order.
    pub records: Vec<Record>,
}

impl Transcript {
    /// Adds a record.
    pub fn push(&mut self, context: &str, command: &str, status: Option<i32>, stdout: String, stderr: String, d: Duration) {
        self.records.push(Record { context: context.into(), command: command.into(), status, stdout, stderr, duration_s: d.as_secs_f64() });
    }

    /// Writes `commands.log` and `commands.json` into `dir`.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let mut f = std::fs::File::create(dir.join("commands.log"))?;
        for r in &self.records {
            let st = r.status.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
            writeln!(f, "[{}] $ {}\n  exit {st} in {:.2} s", r.context, r.command, r.duration_s)?;
            for (name, text) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
                if !text.is_empty() {
                    writeln!(f, "  --- {name} ---")?;
                    for l in text.lines() {
                        writeln!(f, "  {l}")?;
                    }
                }
            }
        }
        let json = serde_json::to_string_pretty(&self.records).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("commands.json"), json)
    }
}
