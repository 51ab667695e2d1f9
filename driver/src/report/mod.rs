//! Run reports: the terminal summary (the matrix as a table), and the
//! files `--report-dir` writes: `report.json` (the versioned schema in
//! docs/reports.md, and the only input the other two need, so shards'
//! reports merge), `junit.xml` and a self-contained `report.html`.

mod html;
mod junit;
mod support;
mod table;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::runner::{CellResult, Outcome, Record, StepStatus};
// The runner's own types, shared rather than copied.
pub use crate::runner::{ConfigFile, NodeReport};

pub use support::support_matrix;
pub use table::summary;

/// The `schema` value of report.json files this xdriver writes and reads.
pub const SCHEMA: &str = "xdriver-report/1";

/// Longest command output kept per stream in the report.
const OUTPUT_CAP: usize = 8 * 1024;
/// Longest rendered config file kept.
const CONFIG_CAP: usize = 32 * 1024;

/// A whole run (or several shards merged).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The xdriver that wrote it.
    pub xdriver_version: String,
    /// The spec's name.
    pub spec: String,
    /// RFC 3339.
    pub created_at: String,
    /// Wall time of the run (merged: the longest shard's).
    pub duration_s: f64,
    /// `i/n` when the run was one shard; the shards when merged.
    pub shards: Vec<String>,
    /// Counts.
    pub summary: Summary,
    /// Every cell, sorted by id.
    pub cells: Vec<CellReport>,
}

/// Cell counts per status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// All cells.
    pub total: usize,
    /// Passed.
    pub passed: usize,
    /// Tests failed.
    pub failed: usize,
    /// Infrastructure errors.
    pub errors: usize,
    /// Skipped.
    pub skipped: usize,
    /// Cells that needed more than one attempt.
    pub retried: usize,
}

/// One cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellReport {
    /// `os/manager/profile`.
    pub id: String,
    /// Guest OS.
    pub os: String,
    /// Process manager.
    pub manager: String,
    /// Profile.
    pub profile: String,
    /// The image booted (None: skipped before choosing one).
    pub image: Option<String>,
    /// pass, fail, error or skip.
    pub status: String,
    /// Why it failed, errored or was skipped.
    pub reason: Option<String>,
    /// The group of the failing step.
    pub failed_group: Option<String>,
    /// The failing step.
    pub failed_step: Option<String>,
    /// Wall time, all attempts included.
    pub duration_s: f64,
    /// Steps that passed.
    pub steps_passed: usize,
    /// Steps planned.
    pub steps_total: usize,
    /// Deploy and step groups.
    pub groups: Vec<GroupReport>,
    /// Earlier attempts retried after an infrastructure failure.
    pub attempts: Vec<AttemptReport>,
    /// The cell's artifacts directory on the machine that ran it.
    pub artifacts_dir: String,
    /// Commands that exited non-zero or broke (capped output).
    pub failed_commands: Vec<Record>,
    /// The serial log's last lines.
    pub serial_tail: Option<String>,
    /// The guest's screen when the cell failed, PNG as base64.
    pub screenshot_png: Option<String>,
    /// The rendered files deployed into the guest.
    pub configs: Vec<ConfigFile>,
    /// A cell of several machines (`[nodes]`): each node, with its own
    /// console and screen (absent for a cell of one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeReport>,
    /// When the cell started (seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<f64>,
    /// Where its time went: phases, and each node's boot, in seconds from
    /// its start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<crate::runner::Span>,
    /// An infrastructure error's class, the lines that show it and where
    /// they are (absent for other cells).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<crate::runner::fault::Fault>,
}

/// A step group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupReport {
    /// Name.
    pub name: String,
    /// pass, fail, error or not_run.
    pub status: StepStatus,
    /// Wall time.
    pub duration_s: f64,
    /// Steps.
    pub steps: Vec<StepReport>,
}

/// A step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    /// Name.
    pub name: String,
    /// pass, fail, error or not_run.
    pub status: StepStatus,
    /// Wall time.
    pub duration_s: f64,
    /// Failure message.
    pub message: Option<String>,
}

/// An attempt that was retried.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptReport {
    /// Why it failed.
    pub reason: String,
    /// Wall time.
    pub duration_s: f64,
    /// Its artifacts, relative to the cell's directory.
    pub artifacts: String,
}

/// Report read/write failures.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A report.json is not one this xdriver reads.
    #[error("{path}: not an xdriver report: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Merged reports disagree.
    #[error("cannot merge: {0}")]
    Merge(String),
}

fn cap(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut start = s.len() - n;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[… {} bytes cut …]\n{}", start, &s[start..])
}

fn status_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Fail { .. } => "fail",
        Outcome::Error { .. } => "error",
        Outcome::Skip { .. } => "skip",
    }
}

/// The failed commands a report keeps: the last few (the failure is at the
/// end), their output capped. Waits that passed after failing tries are
/// recorded once, as passes: these are commands that really failed.
fn last_failed(records: &[Record]) -> Vec<Record> {
    let skip = records.len().saturating_sub(20);
    records[skip..].iter().cloned().map(|r| Record { stdout: cap(&r.stdout, OUTPUT_CAP), stderr: cap(&r.stderr, OUTPUT_CAP), ..r }).collect()
}

impl CellReport {
    /// The report of a finished cell, from what the runner carried in its
    /// result (no file is read back).
    pub fn from_result(r: &CellResult) -> CellReport {
        let (reason, group, step) = match &r.outcome {
            Outcome::Pass => (None, None, None),
            Outcome::Fail { group, step, reason } => (Some(reason.clone()), Some(group.clone()), Some(step.clone())),
            Outcome::Error { reason } | Outcome::Skip { reason } => (Some(reason.clone()), None, None),
        };
        let shown = &r.shown;
        let serial_tail = r.serial_tail.clone().or_else(|| shown.console_tail.clone());
        let screenshot_png = shown.screenshot_png.as_ref().map(|b| base64::engine::general_purpose::STANDARD.encode(b));
        CellReport {
            id: r.cell.id(),
            os: r.cell.os.to_string(),
            manager: r.cell.manager.to_string(),
            profile: r.cell.profile.to_string(),
            image: r.cell.image.as_ref().ok().cloned(),
            status: status_name(&r.outcome).into(),
            reason,
            failed_group: group,
            failed_step: step,
            duration_s: r.duration_s,
            steps_passed: r.steps_passed,
            steps_total: r.steps_total,
            groups: r
                .groups
                .iter()
                .map(|g| GroupReport {
                    name: g.name.clone(),
                    status: g.status,
                    duration_s: g.duration_s,
                    steps: g
                        .steps
                        .iter()
                        .map(|s| StepReport { name: s.name.clone(), status: s.status, duration_s: s.duration_s, message: s.message.clone() })
                        .collect(),
                })
                .collect(),
            attempts: r
                .attempts
                .iter()
                .map(|a| AttemptReport { reason: a.reason.clone(), duration_s: a.duration_s, artifacts: a.artifacts.clone() })
                .collect(),
            artifacts_dir: r.dir.display().to_string(),
            failed_commands: if matches!(r.outcome, Outcome::Pass | Outcome::Skip { .. }) { Vec::new() } else { last_failed(&shown.failed_commands) },
            serial_tail,
            screenshot_png,
            configs: shown.configs.iter().map(|c| ConfigFile { path: c.path.clone(), contents: cap(&c.contents, CONFIG_CAP) }).collect(),
            nodes: shown.nodes.clone(),
            started_at: Some(r.started_at).filter(|t| *t > 0.0),
            timeline: r.timeline.clone(),
            fault: match &r.outcome {
                Outcome::Error { reason } => Some(r.fault.clone().unwrap_or_else(|| crate::runner::fault::classify(reason, &[]))),
                _ => None,
            },
        }
    }
}

/// PASS, FAIL, ERROR or SKIP for a cell's status.
pub(crate) fn status_label(status: &str) -> &'static str {
    match status {
        "pass" => "PASS",
        "fail" => "FAIL",
        "error" => "ERROR",
        _ => "SKIP",
    }
}

impl Summary {
    /// `N cells: P passed, F failed, E infrastructure errors, S skipped`
    /// (and how many were retried).
    pub fn text(&self) -> String {
        format!(
            "{} cells: {} passed, {} failed, {} infrastructure errors, {} skipped{}",
            self.total,
            self.passed,
            self.failed,
            self.errors,
            self.skipped,
            if self.retried > 0 { format!(" ({} retried)", self.retried) } else { String::new() }
        )
    }
}

/// The matrix layout both the table and the page draw: OS / manager rows
/// in the order the cells come, profile columns sorted (privileged first).
pub(crate) struct Grid {
    /// (os, manager) per row.
    pub rows: Vec<(String, String)>,
    /// Profiles, one per column.
    pub profiles: Vec<String>,
}

impl Grid {
    pub(crate) fn of(r: &Report) -> Grid {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut profiles: Vec<String> = Vec::new();
        for c in &r.cells {
            let row = (c.os.clone(), c.manager.clone());
            if !rows.contains(&row) {
                rows.push(row);
            }
            if !profiles.contains(&c.profile) {
                profiles.push(c.profile.clone());
            }
        }
        profiles.sort();
        Grid { rows, profiles }
    }

    /// The index in `r.cells` of the cell at a row and profile.
    pub(crate) fn cell(r: &Report, (os, manager): &(String, String), profile: &str) -> Option<usize> {
        r.cells.iter().position(|c| &c.os == os && &c.manager == manager && c.profile == profile)
    }
}

fn summarize(cells: &[CellReport]) -> Summary {
    let mut s = Summary { total: cells.len(), ..Summary::default() };
    for c in cells {
        match c.status.as_str() {
            "pass" => s.passed += 1,
            "fail" => s.failed += 1,
            "error" => s.errors += 1,
            _ => s.skipped += 1,
        }
        if !c.attempts.is_empty() {
            s.retried += 1;
        }
    }
    s
}

impl Report {
    /// The report of a run.
    pub fn new(spec: &str, results: &[CellResult], duration_s: f64, shard: Option<String>) -> Report {
        let mut cells: Vec<CellReport> = results.iter().map(CellReport::from_result).collect();
        cells.sort_by(|a, b| a.id.cmp(&b.id));
        Report {
            schema: SCHEMA.into(),
            xdriver_version: env!("CARGO_PKG_VERSION").into(),
            spec: spec.into(),
            created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            duration_s,
            shards: shard.into_iter().collect(),
            summary: summarize(&cells),
            cells,
        }
    }

    /// Reads a report.json.
    pub fn load(path: &Path) -> Result<Report, ReportError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReportError::Io { path: path.into(), source })?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ReportError::Invalid { path: path.into(), detail: e.to_string() })?;
        match v.get("schema").and_then(|s| s.as_str()) {
            Some(SCHEMA) => {}
            Some(other) => {
                return Err(ReportError::Invalid { path: path.into(), detail: format!("schema `{other}`, this xdriver reads `{SCHEMA}`") })
            }
            None => return Err(ReportError::Invalid { path: path.into(), detail: "no `schema` field".into() }),
        }
        serde_json::from_value(v).map_err(|e| ReportError::Invalid { path: path.into(), detail: e.to_string() })
    }

    /// Merges shards' reports of one spec; a cell may appear only once.
    pub fn merge(reports: Vec<Report>) -> Result<Report, ReportError> {
        let mut it = reports.into_iter();
        let Some(mut out) = it.next() else { return Err(ReportError::Merge("no reports given".into())) };
        let mut seen: BTreeSet<String> = out.cells.iter().map(|c| c.id.clone()).collect();
        for r in it {
            if r.spec != out.spec {
                return Err(ReportError::Merge(format!("reports of different specs: `{}` and `{}`", out.spec, r.spec)));
            }
            for c in r.cells {
                if !seen.insert(c.id.clone()) {
                    return Err(ReportError::Merge(format!("cell {} is in more than one report (overlapping shards?)", c.id)));
                }
                out.cells.push(c);
            }
            out.shards.extend(r.shards);
            out.duration_s = out.duration_s.max(r.duration_s);
        }
        out.cells.sort_by(|a, b| a.id.cmp(&b.id));
        out.shards.sort();
        out.summary = summarize(&out.cells);
        out.created_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        Ok(out)
    }

    /// Writes report.json, junit.xml and report.html into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), ReportError> {
        std::fs::create_dir_all(dir).map_err(|source| ReportError::Io { path: dir.into(), source })?;
        let write = |name: &str, data: String| {
            let p = dir.join(name);
            std::fs::write(&p, data).map_err(|source| ReportError::Io { path: p, source })
        };
        write("report.json", serde_json::to_string_pretty(self).expect("report serializes"))?;
        write("junit.xml", junit::render(self))?;
        write("report.html", html::render(self))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
