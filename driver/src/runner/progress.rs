//! Where a running cell is: its phase, reported to whoever shows progress
//! (indicatif bars on a terminal, plain log lines otherwise).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::cell::{CellResult, Outcome};
use super::event::{Event, Reporter};
use crate::spec::Cell;

/// The phases of a cell, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Finding or building the image.
    Image,
    /// Booting the VM until its channels answer.
    Boot,
    /// Installing the system under test.
    Deploy,
    /// Readiness steps.
    Readiness,
    /// Test steps (initial, per instance, post).
    Tests,
    /// Collecting logs and powering off.
    Shutdown,
}

impl Phase {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Image => "image",
            Phase::Boot => "boot",
            Phase::Deploy => "deploy",
            Phase::Readiness => "readiness",
            Phase::Tests => "tests",
            Phase::Shutdown => "shutdown",
        }
    }

    /// The phase a step group belongs to.
    pub fn of_group(group: &str) -> Phase {
        if group.starts_with("readiness") {
            Phase::Readiness
        } else {
            Phase::Tests
        }
    }
}

/// The note both displays print for a retried cell.
fn retried_line(cell: &Cell, attempt: usize, of: u32) -> String {
    format!("{}: boot failed, retrying (attempt {attempt} of {of})", cell.id())
}

/// Plain lines for logs and CI: a line on stderr at every phase change,
/// the result line on stdout.
pub struct Lines {
    started: Mutex<HashMap<String, Instant>>,
}

impl Lines {
    /// New.
    pub fn new() -> Lines {
        Lines { started: Mutex::new(HashMap::new()) }
    }
}

impl Default for Lines {
    fn default() -> Self {
        Lines::new()
    }
}

impl Reporter for Lines {
    fn event(&self, e: &Event<'_>) {
        match e {
            Event::Phase { cell, phase } => self.phase(cell, *phase),
            Event::Finished { line, .. } => println!("{line}"),
            Event::Note(line) => eprintln!("xdriver: {line}"),
            Event::Retried { cell, attempt, of, .. } => eprintln!("xdriver: {}", retried_line(cell, *attempt, *of)),
            Event::Started { .. } | Event::NodeUp { .. } | Event::Step { .. } => {}
        }
    }
}

impl Lines {
    fn phase(&self, cell: &Cell, phase: Phase) {
        let id = cell.id();
        let mut m = self.started.lock().expect("progress lock");
        let t0 = *m.entry(id.clone()).or_insert_with(Instant::now);
        eprintln!("xdriver: {id}: {} (at {:.1} s)", phase.name(), t0.elapsed().as_secs_f64());
    }
}

/// indicatif bars: one line per running cell (phase and elapsed time) and
/// an overall bar; finished cells print their result line above the bars.
pub struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    running: Mutex<HashMap<String, ProgressBar>>,
    counts: Mutex<[usize; 4]>,
}

impl Bars {
    /// Bars for `total` cells to run.
    pub fn new(total: usize) -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(total as u64));
        overall.set_style(
            ProgressStyle::with_template("{elapsed_precise:.dim} [{bar:30.cyan/blue}] {pos}/{len} cells  {msg}")
                .expect("template")
                .progress_chars("=> "),
        );
        overall.enable_steady_tick(Duration::from_millis(250));
        Bars { multi, overall, running: Mutex::new(HashMap::new()), counts: Mutex::new([0; 4]) }
    }
}

impl Reporter for Bars {
    fn event(&self, e: &Event<'_>) {
        match e {
            Event::Phase { cell, phase } => self.phase(cell, *phase),
            Event::Finished { result, line } => self.finished(result, line),
            Event::Note(line) => self.note(line),
            Event::Retried { cell, attempt, of, .. } => self.note(&retried_line(cell, *attempt, *of)),
            Event::Started { .. } | Event::NodeUp { .. } | Event::Step { .. } => {}
        }
    }
}

impl Bars {
    fn phase(&self, cell: &Cell, phase: Phase) {
        let id = cell.id();
        let mut running = self.running.lock().expect("progress lock");
        let bar = running.entry(id.clone()).or_insert_with(|| {
            let b = self.multi.insert_before(&self.overall, ProgressBar::new_spinner());
            b.set_style(ProgressStyle::with_template("  {spinner:.green} {prefix:40} {msg:10} {elapsed:>5}").expect("template"));
            b.set_prefix(id.clone());
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        bar.set_message(phase.name());
    }

    fn finished(&self, result: &CellResult, line: &str) {
        if let Some(b) = self.running.lock().expect("progress lock").remove(&result.cell.id()) {
            b.finish_and_clear();
            self.multi.remove(&b);
        }
        let _ = self.multi.println(line);
        let mut c = self.counts.lock().expect("progress lock");
        let i = match result.outcome {
            Outcome::Pass => 0,
            Outcome::Fail { .. } => 1,
            Outcome::Error { .. } => 2,
            Outcome::Skip { .. } => 3,
        };
        c[i] += 1;
        if i != 3 {
            self.overall.inc(1);
        }
        self.overall.set_message(format!("{} passed, {} failed, {} errors, {} skipped", c[0], c[1], c[2], c[3]));
    }

    fn note(&self, line: &str) {
        let _ = self.multi.println(format!("xdriver: {line}"));
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.overall.finish_and_clear();
    }
}

/// Bars when stderr is a terminal, plain lines otherwise.
pub fn for_terminal(total: usize) -> Box<dyn Reporter> {
    if std::io::stderr().is_terminal() && std::env::var_os("CI").is_none() {
        Box::new(Bars::new(total))
    } else {
        Box::new(Lines::new())
    }
}
