//! `xdriver test`: run a spec's cells — several at once within the host's
//! limits — with live progress, a line per finished cell, the matrix as a
//! table at the end, optional reports, and an exit code that tells test
//! failures from infrastructure failures.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::Semaphore;

pub use crate::runner::schedule::cell_line;

use super::args::TestArgs;
use super::error::CliError;
use crate::vm::accel;
use crate::exit;
use crate::report::Report;
use crate::runner::event::{Collector, Dispatcher, Reporter};
use crate::runner::progress;
use crate::runner::{self, CellResult, Outcome, RunOptions};

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
        None => super::list::default_cell_jobs(args.vm.mem_mib.unwrap_or(spec.file.guest.memory()), &cells),
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
    let display: Box<dyn Reporter> = if plain { Box::new(progress::Lines::new()) } else { progress::for_terminal(runnable) };
    // The run's events go to the display and to the collector the
    // reports are made from.
    let collector = Collector::new();
    let events = Dispatcher::new(vec![display.as_ref(), &collector]);
    let order: Vec<crate::spec::Cell> = cells.iter().map(|(c, _)| c.clone()).collect();
    runner::schedule::run_cells(&spec, cells, &shares, &opts, jobs, args.fail_fast, &events).await;
    drop(events);
    drop(display);
    let results = collector.results_in(&order);
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
