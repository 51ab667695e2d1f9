//! `xdriver test`: run a spec's cells, a line per cell, a summary, and an
//! exit code that tells test failures from infrastructure failures.

use std::time::Instant;

use super::args::TestArgs;
use super::error::CliError;
use crate::accel;
use crate::exit;
use crate::runner::{self, CellResult, Outcome, RunOptions};

/// The line printed for a finished cell.
pub fn cell_line(r: &CellResult) -> String {
    let id = r.cell.id();
    match &r.outcome {
        Outcome::Pass => format!("PASS  {id:<36} {:>6.1} s  ({} steps)", r.duration_s, r.steps_passed),
        Outcome::Fail { group, step, reason } => {
            format!("FAIL  {id:<36} {:>6.1} s  {group} › {step}\n      {}", r.duration_s, reason.replace('\n', "\n      "))
        }
        Outcome::Skip { reason } => format!("SKIP  {id:<36}           {reason}"),
        Outcome::Error { reason } => {
            format!("ERROR {id:<36} {:>6.1} s  infrastructure: {}", r.duration_s, reason.replace('\n', "\n      "))
        }
    }
}

/// The exit code for a set of results: tests failed (100) beats
/// infrastructure failed (125) beats success.
pub fn exit_code(results: &[CellResult]) -> i32 {
    if results.iter().any(|r| matches!(r.outcome, Outcome::Fail { .. })) {
        exit::TESTS_FAILED
    } else if results.iter().any(|r| matches!(r.outcome, Outcome::Error { .. })) {
        exit::INFRA
    } else {
        exit::SUCCESS
    }
}

pub(super) async fn main(args: TestArgs) -> Result<i32, CliError> {
    let (spec, cells) = super::plan::load(&args.cells)?;
    let shares = runner::shares(&spec).map_err(|e| CliError { code: exit::USAGE, message: e.to_string() })?;
    let runnable = cells.iter().filter(|(c, _)| c.image.is_ok()).count();
    let mut accel_choice = crate::qemu::Accel::Tcg;
    if runnable > 0 {
        let store = xdriver_images::Store::open_default().map_err(|e| CliError::infra(&e))?;
        let d = accel::decide(args.vm.accel, "qemu-system-x86_64", store.root())
            .await
            .map_err(|e| CliError { code: exit::INFRA, message: e.to_string() })?;
        eprintln!("xdriver: accel {}: {}", d.accel.name(), d.reason);
        accel_choice = d.accel;
    }
    let opts = RunOptions {
        accel: accel_choice,
        results_dir: args.results_dir.clone(),
        mem_mib: args.vm.mem_mib,
        cpus: args.vm.cpus,
    };
    eprintln!("xdriver: {} — {} cells ({runnable} to run); results in {}", spec.file.name, cells.len(), args.results_dir.join(&spec.file.name).display());
    let started = Instant::now();
    let mut results = Vec::new();
    for (cell, prepared) in cells {
        let r = runner::run(&spec, &cell, prepared, &shares, &opts).await;
        println!("{}", cell_line(&r));
        results.push(r);
    }
    let count = |f: fn(&Outcome) -> bool| results.iter().filter(|r| f(&r.outcome)).count();
    let (pass, fail, skip, err) = (
        count(|o| matches!(o, Outcome::Pass)),
        count(|o| matches!(o, Outcome::Fail { .. })),
        count(|o| matches!(o, Outcome::Skip { .. })),
        count(|o| matches!(o, Outcome::Error { .. })),
    );
    println!(
        "xdriver: {pass} cells passed, {fail} failed, {err} infrastructure errors, {skip} skipped in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(exit_code(&results))
}
