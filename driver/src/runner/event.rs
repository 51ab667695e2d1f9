//! The runner as an event stream: every running cell reports what happens
//! to it as [`Event`]s, to one [`Reporter`] (a [`Dispatcher`] passes each
//! to several). The progress display (`progress::Lines`, `progress::Bars`),
//! each cell's timeline and the run's results (for report.json, JUnit and
//! HTML: [`Collector`]) are reporters.

use std::sync::Mutex;

use super::cell::{CellResult, StepResult};
use super::progress::Phase;
use crate::spec::Cell;

/// What happened to a cell (or to the run).
#[derive(Debug)]
pub enum Event<'a> {
    /// The cell's turn came (its VMs are about to be found or built).
    Started {
        /// The cell.
        cell: &'a Cell,
    },
    /// The cell entered a phase.
    Phase {
        /// The cell.
        cell: &'a Cell,
        /// The phase.
        phase: Phase,
    },
    /// One of the cell's machines is up (booted or restored, and on its
    /// vlans).
    NodeUp {
        /// The cell.
        cell: &'a Cell,
        /// The node (`machine` in a cell of one).
        node: &'a str,
        /// How it started (cold boot, restored from which RAM snapshot).
        how: &'a str,
        /// Seconds from the cell's start.
        at_s: f64,
    },
    /// A step ended (or was not reached), as the cell's result records it.
    Step {
        /// The cell.
        cell: &'a Cell,
        /// Its group (`deploy`, `readiness/web`, `python`, …).
        group: &'a str,
        /// The step.
        step: &'a StepResult,
    },
    /// The cell's VM failed to boot and the cell is tried again.
    Retried {
        /// The cell.
        cell: &'a Cell,
        /// The attempt about to start (2 for the first retry).
        attempt: usize,
        /// Of how many at most.
        of: u32,
        /// Why the attempt before failed.
        reason: &'a str,
    },
    /// A note about the run.
    Note(&'a str),
    /// The cell finished (any outcome, skips included), with its line.
    Finished {
        /// Everything the cell did.
        result: &'a CellResult,
        /// The line the run prints for it.
        line: &'a str,
    },
}

/// Receives events from running cells (called from several tasks).
pub trait Reporter: Send + Sync {
    /// One event.
    fn event(&self, e: &Event<'_>);
}

/// Drops every event (steps recorded at a `--keep` prompt, whose cell has
/// already been reported).
pub struct Quiet;

impl Reporter for Quiet {
    fn event(&self, _: &Event<'_>) {}
}

/// Passes every event to each of its reporters, in order.
pub struct Dispatcher<'a> {
    reporters: Vec<&'a dyn Reporter>,
}

impl<'a> Dispatcher<'a> {
    /// A dispatcher to `reporters`.
    pub fn new(reporters: Vec<&'a dyn Reporter>) -> Dispatcher<'a> {
        Dispatcher { reporters }
    }
}

impl Reporter for Dispatcher<'_> {
    fn event(&self, e: &Event<'_>) {
        for r in &self.reporters {
            r.event(e);
        }
    }
}

/// Keeps every finished cell's result, for the run's reports.
#[derive(Default)]
pub struct Collector {
    results: Mutex<Vec<CellResult>>,
}

impl Collector {
    /// An empty collector.
    pub fn new() -> Collector {
        Collector::default()
    }

    /// The results, ordered as `cells` lists their cells (the run's
    /// order, not the order they finished in); cells that never finished
    /// are left out.
    pub fn results_in(&self, cells: &[Cell]) -> Vec<CellResult> {
        let mut got = std::mem::take(&mut *self.results.lock().expect("collector lock"));
        let mut out = Vec::with_capacity(got.len());
        for c in cells {
            if let Some(i) = got.iter().position(|r| r.cell == *c) {
                out.push(got.swap_remove(i));
            }
        }
        out.extend(got);
        out
    }
}

impl Reporter for Collector {
    fn event(&self, e: &Event<'_>) {
        if let Event::Finished { result, .. } = e {
            self.results.lock().expect("collector lock").push((*result).clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Count(Mutex<Vec<String>>);
    impl Reporter for Count {
        fn event(&self, e: &Event<'_>) {
            let what = match e {
                Event::Started { .. } => "started",
                Event::Phase { phase, .. } => phase.name(),
                Event::NodeUp { .. } => "node up",
                Event::Step { .. } => "step",
                Event::Retried { .. } => "retried",
                Event::Note(_) => "note",
                Event::Finished { .. } => "finished",
            };
            self.0.lock().expect("lock").push(what.into());
        }
    }

    #[test]
    fn the_dispatcher_passes_every_event_to_each_reporter_and_the_collector_keeps_the_run_order() {
        let cell = |m: xdriver_guests::Manager| Cell { os: xdriver_guests::Os::DEBIAN_12, manager: m, profile: xdriver_guests::ProfileKind::Privileged, image: Ok("i".into()) };
        let (a, b) = (cell(xdriver_guests::Manager::SYSTEMD), cell(xdriver_guests::Manager::S6));
        let (one, two, collector) = (Count(Mutex::new(Vec::new())), Count(Mutex::new(Vec::new())), Collector::new());
        let d = Dispatcher::new(vec![&one, &two, &collector]);
        d.event(&Event::Started { cell: &a });
        d.event(&Event::Phase { cell: &a, phase: Phase::Boot });
        d.event(&Event::Note("n"));
        let rb = CellResult::new(&b, "b".into(), super::super::cell::Outcome::Pass);
        let ra = CellResult::new(&a, "a".into(), super::super::cell::Outcome::Pass);
        d.event(&Event::Finished { result: &rb, line: "B" });
        d.event(&Event::Finished { result: &ra, line: "A" });
        for c in [&one, &two] {
            assert_eq!(*c.0.lock().expect("lock"), ["started", "boot", "note", "finished", "finished"]);
        }
        let got: Vec<_> = collector.results_in(&[a.clone(), b.clone()]).into_iter().map(|r| r.cell).collect();
        assert_eq!(got, [a, b], "as the run lists them, not as they finished");
    }
}
