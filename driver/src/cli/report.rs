//! `xdriver report merge`: shards' report.json files into one report;
//! `xdriver report support-matrix`: the support matrix from reports.

use std::path::PathBuf;

use super::args::ReportCommand;
use super::error::CliError;
use crate::exit;
use crate::report::Report;

fn load_all(inputs: Vec<PathBuf>) -> Result<Vec<Report>, CliError> {
    inputs
        .into_iter()
        .map(|i| {
            let path: PathBuf = if i.is_dir() { i.join("report.json") } else { i };
            Report::load(&path).map_err(|e| CliError::usage(e.to_string()))
        })
        .collect()
}

pub(super) fn main(cmd: ReportCommand) -> Result<i32, CliError> {
    match cmd {
        ReportCommand::SupportMatrix { inputs, output } => {
            let args: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
            let reports = load_all(inputs)?;
            let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            let header = format!(
                "<!-- written by `xdriver report support-matrix {}` on {} from {} report(s) -->\n",
                args.join(" "),
                &date[..10],
                reports.len()
            );
            let text = crate::report::support_matrix(&reports, &header);
            match output {
                Some(path) => std::fs::write(&path, text).map_err(|e| CliError { code: exit::INFRA, message: format!("{}: {e}", path.display()) })?,
                None => print!("{text}"),
            }
            Ok(exit::SUCCESS)
        }
        ReportCommand::Merge { inputs, report_dir } => {
            let reports = load_all(inputs)?;
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
