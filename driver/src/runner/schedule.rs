//! The run's schedule: a spec's cells, `jobs` at a time (a fair
//! semaphore), started so that every image's first cell goes before any
//! image's second, `--fail-fast` stopping the rest, a panicking cell kept
//! from taking the others down; each finished cell reported to the
//! progress display.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::FutureExt;
use tokio::sync::Semaphore;

use super::cell::{CellResult, Outcome, Prepared, RunOptions};
use super::event::{Event, Reporter};
use crate::spec::{Cell, Spec};
use crate::vm::qemu::Share;

/// The line printed for a finished cell.
pub fn cell_line(r: &CellResult) -> String {
    let id = r.cell.id();
    let tries = if r.attempts.is_empty() { String::new() } else { format!(" [{} tries]", r.attempts.len() + 1) };
    match &r.outcome {
        Outcome::Pass => format!("PASS  {id:<36} {:>6.1} s  ({} steps){tries}", r.duration_s, r.steps_passed),
        Outcome::Fail { group, step, reason } => {
            format!("FAIL  {id:<36} {:>6.1} s  {group} › {step}{tries}\n      {}", r.duration_s, reason.replace('\n', "\n      "))
        }
        Outcome::Skip { reason } => format!("SKIP  {id:<36}           {reason}"),
        Outcome::Error { reason } => {
            let f = r.fault.clone().unwrap_or_else(|| super::fault::classify(reason, &[]));
            let at = f.log.as_deref().map(|l| format!(", {l}")).unwrap_or_default();
            format!("ERROR {id:<36} {:>6.1} s  infrastructure ({}{at}){tries}: {}", r.duration_s, f.class.name(), reason.replace('\n', "\n      "))
        }
    }
}

/// Runs `cells`, `jobs` at a time; each result goes to `progress` as its
/// cell's [`Event::Finished`] (a [`super::event::Collector`] keeps them).
pub async fn run_cells(spec: &Spec, cells: Vec<(Cell, Option<Prepared>)>, shares: &[Share], opts: &RunOptions, jobs: usize, fail_fast: bool, progress: &dyn Reporter) {
    let permits = Semaphore::new(jobs);
    let stop = AtomicBool::new(false);
    let run_cell = |cell: Cell, prepared| {
        let (spec, shares, opts, permits, stop) = (&spec, &shares, &opts, &permits, &stop);
        async move {
            let not_run = |outcome| CellResult::new(&cell, opts.cell_dir(spec, &cell), outcome);
            let r = if cell.image.is_err() {
                super::cell::run(spec, &cell, prepared, shares, opts, progress).await
            } else {
                let _permit = permits.acquire().await.expect("semaphore open");
                if stop.load(Ordering::SeqCst) {
                    not_run(Outcome::Skip { reason: "not run: --fail-fast stopped the run after a failure".into() })
                } else {
                    // A panic in one cell must not take the others down.
                    match AssertUnwindSafe(super::cell::run(spec, &cell, prepared, shares, opts, progress)).catch_unwind().await {
                        Ok(r) => r,
                        Err(p) => {
                            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                            not_run(Outcome::Error { reason: format!("xdriver bug: the cell's task panicked: {}", msg.unwrap_or_default()) })
                        }
                    }
                }
            };
            if fail_fast && matches!(r.outcome, Outcome::Fail { .. } | Outcome::Error { .. }) {
                stop.store(true, Ordering::SeqCst);
            }
            progress.event(&Event::Finished { result: &r, line: &cell_line(&r) });
        }
    };
    // Cells take their turns (the semaphore is fair) in an order that
    // starts the first cell of every image before the second of any: an
    // image's first cell boots it cold and saves its RAM snapshot, and the
    // later ones restore it, rather than waiting beside it.
    let order = start_order(cells.iter().map(|(c, _)| c.image.as_ref().ok().map(String::as_str)));
    let mut slots: Vec<Option<(Cell, _)>> = cells.into_iter().map(Some).collect();
    let started_cells: Vec<_> = order.iter().map(|&i| {
        let (c, p) = slots[i].take().expect("each cell once");
        run_cell(c, p)
    }).collect();
    futures::future::join_all(started_cells).await;
}

/// The order cells start in: by how many cells of the same image come
/// before them (first cells of every image, then second ones, …), else as
/// listed. Cells without an image (skipped) keep their place in front.
fn start_order<'a>(images: impl Iterator<Item = Option<&'a str>>) -> Vec<usize> {
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut rank: Vec<(usize, usize)> = images
        .enumerate()
        .map(|(i, img)| match img {
            None => (0, i),
            Some(img) => {
                let n = seen.entry(img).or_default();
                *n += 1;
                (*n - 1, i)
            }
        })
        .collect();
    rank.sort();
    rank.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_images_first_cell_starts_before_any_second_one() {
        let images = [Some("systemd"), Some("systemd"), Some("sysvinit"), None, Some("sysvinit"), Some("openrc"), Some("sysvinit")];
        assert_eq!(super::start_order(images.into_iter()), vec![0, 2, 3, 5, 1, 4, 6]);
    }
}
