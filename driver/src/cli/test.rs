//! `xdriver test`: run a spec's cells — several at once within the host's
//! limits — with live progress, a line per finished cell, the matrix as a
//! table at the end, optional reports, and an exit code that tells test
//! failures from infrastructure failures.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures::FutureExt;
use tokio::sync::Semaphore;

use super::args::TestArgs;
use super::error::CliError;
use crate::vm::accel;
use crate::exit;
use crate::report::Report;
use crate::runner::progress::{self, Progress};
use crate::runner::{self, CellResult, Outcome, RunOptions};

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
            format!("ERROR {id:<36} {:>6.1} s  infrastructure{tries}: {}", r.duration_s, reason.replace('\n', "\n      "))
        }
    }
}

/// The exit code for a set of results: tests failed (100) beats
/// infrastructure failed (125) beats no cell run (4) beats success.
pub fn exit_code(results: &[CellResult]) -> i32 {
    if results.iter().any(|r| matches!(r.outcome, Outcome::Fail { .. })) {
        exit::TESTS_FAILED
    } else if results.iter().any(|r| matches!(r.outcome, Outcome::Error { .. })) {
        exit::INFRA
    } else if !results.iter().any(|r| matches!(r.outcome, Outcome::Pass)) {
        exit::NO_CELLS_RUN
    } else {
        exit::SUCCESS
    }
}

pub(super) async fn main(args: TestArgs) -> Result<i32, CliError> {
    let started = Instant::now();
    let deadline = args.timeout.map(|t| tokio::time::Instant::now() + t);
    let (spec, cells, realise) = super::plan::load_with_realise(&args.cells)?;
    if !realise.is_empty() {
        // A Nix spec's packages: built or added on the host, reached by the
        // guest through the shared store.
        eprintln!("xdriver: realising {} store path(s) the Nix spec refers to", realise.len());
        crate::spec::nix::realise(&realise).map_err(|e| CliError { code: exit::INFRA, message: e })?;
    }
    let cells = super::list::shard_of(cells, args.shard);
    let shares = runner::shares(&spec).map_err(|e| CliError { code: exit::USAGE, message: e.to_string() })?;
    let runnable = cells.iter().filter(|(c, _)| c.image.is_ok()).count();
    if args.interactive && runnable != 1 {
        let names: Vec<String> = cells.iter().filter(|(c, _)| c.image.is_ok()).map(|(c, _)| c.id()).collect();
        return Err(CliError::usage(format!(
            "--interactive needs exactly one cell to run; {runnable} are selected{} (pick one with --os/--manager/--profile, or -A in Nix)",
            if names.is_empty() { String::new() } else { format!(": {}", names.join(", ")) }
        )));
    }
    let mut accel_choice = crate::vm::qemu::Accel::Tcg;
    if runnable > 0 {
        let cache = xdriver_images::ImageCache::open_default().map_err(|e| CliError::infra(&e))?;
        let d = accel::decide(args.vm.accel, "qemu-system-x86_64", cache.root())
            .await
            .map_err(|e| CliError { code: exit::INFRA, message: e.to_string() })?;
        eprintln!("xdriver: accel {}: {}", d.accel.name(), d.reason);
        accel_choice = d.accel;
    }
    let (jobs, why) = match args.jobs {
        Some(0) => return Err(CliError::usage("--jobs must be at least 1")),
        Some(j) => (j, "--jobs".to_string()),
        None => {
            // The default budgets VMs, not cells: a cell of N nodes runs N.
            let (vms, why) = super::list::default_jobs(args.vm.mem_mib.unwrap_or(spec.file.guest.memory()));
            let per_cell = cells.iter().filter_map(|(_, p)| p.as_ref().map(|p| p.nodes.len())).max().unwrap_or(1);
            if per_cell > 1 {
                ((vms / per_cell).max(1), format!("{why}; {vms} VMs at a time, {per_cell} per cell"))
            } else {
                (vms, why)
            }
        }
    };
    let mut store = crate::vm::nix_store::StorePlan::from_flags(args.vm.store.as_deref(), args.vm.no_store, args.vm.share_fs).map_err(CliError::usage)?;
    if let Some(plan) = &mut store {
        plan.snapshots = !args.vm.cold;
    }
    if let Some(plan) = &store {
        // Say which transport each OS's guests get.
        let mut oses: Vec<xdriver_guests::Os> = cells.iter().filter(|(c, _)| c.image.is_ok()).map(|(c, _)| c.os).collect();
        oses.sort();
        oses.dedup();
        for os in oses {
            match plan.share_for(os) {
                Ok((s, why)) => eprintln!("xdriver: store {} shared into {os} guests over {} ({why})", s.host.display(), s.fs.name()),
                Err(e) => return Err(CliError::usage(format!("{os}: {e}"))),
            }
        }
    }
    let opts = RunOptions {
        accel: accel_choice,
        results_dir: args.results_dir.clone(),
        mem_mib: args.vm.mem_mib,
        cpus: args.vm.cpus,
        retries: args.retries,
        deadline,
        store,
        interactive: args.interactive,
        keep: args.keep,
        snapshots: !args.vm.cold,
    };
    if args.prepare_only {
        return prepare_only(&spec, cells, &shares, &opts, jobs).await;
    }
    eprintln!(
        "xdriver: {} — {} cells ({runnable} to run{}), {jobs} at a time ({why}); results in {}",
        spec.file.name,
        cells.len(),
        args.shard.map(|s| format!(", shard {s}")).unwrap_or_default(),
        args.results_dir.join(&spec.file.name).display()
    );
    // A prompt shares the terminal: no progress bars under it.
    let plain = args.no_progress || args.interactive || args.keep;
    let progress: Box<dyn Progress> = if plain { Box::new(progress::Lines::new()) } else { progress::for_terminal(runnable) };
    let progress = progress.as_ref();
    let permits = Semaphore::new(jobs);
    let stop = AtomicBool::new(false);
    let run_cell = |cell: crate::spec::Cell, prepared| {
        let (spec, shares, opts, permits, stop) = (&spec, &shares, &opts, &permits, &stop);
        async move {
            let not_run = |outcome| CellResult::new(&cell, opts.cell_dir(spec, &cell), outcome);
            let r = if cell.image.is_err() {
                runner::run(spec, &cell, prepared, shares, opts, progress).await
            } else {
                let _permit = permits.acquire().await.expect("semaphore open");
                if stop.load(Ordering::SeqCst) {
                    not_run(Outcome::Skip { reason: "not run: --fail-fast stopped the run after a failure".into() })
                } else {
                    // A panic in one cell must not take the others down.
                    match AssertUnwindSafe(runner::run(spec, &cell, prepared, shares, opts, progress)).catch_unwind().await {
                        Ok(r) => r,
                        Err(p) => {
                            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                            not_run(Outcome::Error { reason: format!("xdriver bug: the cell's task panicked: {}", msg.unwrap_or_default()) })
                        }
                    }
                }
            };
            if args.fail_fast && matches!(r.outcome, Outcome::Fail { .. } | Outcome::Error { .. }) {
                stop.store(true, Ordering::SeqCst);
            }
            progress.finished(&r, &cell_line(&r));
            r
        }
    };
    // Cells take their turns (the semaphore is fair) in an order that
    // starts the first cell of every image before the second of any: an
    // image's first cell boots it cold and saves its RAM snapshot, and the
    // later ones restore it, rather than waiting beside it.
    let order = start_order(cells.iter().map(|(c, _)| c.image.as_ref().ok().map(String::as_str)));
    let mut slots: Vec<Option<(crate::spec::Cell, _)>> = cells.into_iter().map(Some).collect();
    let started_cells = order.iter().map(|&i| {
        let (c, p) = slots[i].take().expect("each cell once");
        let fut = run_cell(c, p);
        async move { (i, fut.await) }
    });
    let mut indexed: Vec<(usize, CellResult)> = futures::future::join_all(started_cells.collect::<Vec<_>>()).await;
    indexed.sort_by_key(|(i, _)| *i);
    let results: Vec<CellResult> = indexed.into_iter().map(|(_, r)| r).collect();
    let report = Report::new(&spec.file.name, &results, started.elapsed().as_secs_f64(), args.shard.map(|s| s.to_string()));
    println!();
    print!("{}", crate::report::summary(&report));
    if let Some(dir) = &args.report_dir {
        match report.write(dir) {
            Ok(()) => eprintln!("xdriver: report in {} (report.html, junit.xml, report.json)", dir.display()),
            Err(e) => {
                eprintln!("xdriver: writing the report: {e}");
                let code = exit_code(&results);
                return Ok(if code == exit::SUCCESS { exit::INFRA } else { code });
            }
        }
    }
    let mut code = exit_code(&results);
    if args.interactive && results.iter().any(|r| matches!(&r.outcome, Outcome::Skip { reason } if reason == runner::INTERACTIVE)) {
        // The session is what was asked for; it is not a pass (the report
        // says skip), nor a run that ran nothing.
        code = exit::SUCCESS;
    }
    if code == exit::NO_CELLS_RUN {
        eprintln!("xdriver: no cell ran (every selected cell was skipped); exit {}", exit::NO_CELLS_RUN);
    }
    Ok(code)
}

/// `--prepare-only`: one cell per image (and per `[guest]` table) warms
/// what the others need (see [`runner::warm`]), `jobs` at a time; a line
/// per image says what it took. Exit 0 when every image is ready, else
/// the infrastructure code (a spec whose cells all skip prepares nothing:
/// exit 0 too, with a note).
async fn prepare_only(
    spec: &crate::spec::Spec,
    cells: Vec<(crate::spec::Cell, Option<runner::Prepared>)>,
    shares: &[crate::vm::qemu::Share],
    opts: &RunOptions,
    jobs: usize,
) -> Result<i32, CliError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = Vec::new();
    for (cell, prepared) in cells {
        let (Ok(image), Some(p)) = (&cell.image, prepared) else { continue };
        let key = (image.clone(), p.additions.as_ref().map(|a| a.tag()), p.mem_mib, p.cpus);
        if seen.insert(key) {
            todo.push((cell, p));
        }
    }
    eprintln!("xdriver: {} — preparing {} image(s) for its cells, {jobs} at a time", spec.file.name, todo.len());
    let permits = Semaphore::new(jobs);
    let failed = AtomicBool::new(false);
    let work = todo.iter().map(|(cell, p)| {
        let (permits, failed) = (&permits, &failed);
        async move {
            let _permit = permits.acquire().await.expect("semaphore open");
            let t = Instant::now();
            let image = cell.image.as_deref().unwrap_or_default();
            match runner::warm(cell, p, shares, opts).await {
                Ok(how) => println!("READY {image:<28} {:>6.1} s  (for {}; {how})", t.elapsed().as_secs_f64(), cell.id()),
                Err(e) => {
                    failed.store(true, Ordering::SeqCst);
                    println!("ERROR {image:<28} {:>6.1} s  (for {}): {e}", t.elapsed().as_secs_f64(), cell.id());
                }
            }
        }
    });
    futures::future::join_all(work).await;
    Ok(if failed.load(Ordering::SeqCst) { exit::INFRA } else { exit::SUCCESS })
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
