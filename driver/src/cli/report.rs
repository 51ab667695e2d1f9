//! `xdriver report merge`: shards' report.json files into one report.

use std::path::PathBuf;

use super::args::ReportCommand;
use super::error::CliError;
use crate::exit;
use crate::report::Report;

pub(super) fn main(cmd: ReportCommand) -> Result<i32, CliError> {
    match cmd {
        ReportCommand::Merge { inputs, report_dir } => {
            let mut reports = Vec::new();
            for i in inputs {
                let path: PathBuf = if i.is_dir() { i.join("report.json") } else { i };
                reports.push(Report::load(&path).map_err(|e| CliError::usage(e.to_string()))?);
            }
            let merged = Report::merge(reports).map_err(|e| CliError::usage(e.to_string()))?;
            merged.write(&report_dir).map_err(|e| CliError { code: exit::INFRA, message: e.to_string() })?;
            print!("{}", crate::report::summary(&merged));
            eprintln!("xdriver: merged report in {}", report_dir.display());
            Ok(if merged.summary.failed > 0 {
                exit::TESTS_FAILED
            } else if merged.summary.errors > 0 {
                exit::INFRA
            } else {
                exit::SUCCESS
            })
        }
    }
}
