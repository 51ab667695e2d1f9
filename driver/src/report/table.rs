//! The terminal summary: the matrix as a table (OS × manager rows, profile
//! columns) with each cell's status and duration, then every failure's
//! reason.

use std::fmt::Write;

use super::{status_label, Grid, Report};

/// The summary text (ends with a newline).
pub fn summary(r: &Report) -> String {
    let Grid { rows, profiles } = Grid::of(r);
    let label = |(os, m): &(String, String)| format!("{os} / {m}");
    let w0 = rows.iter().map(|r| label(r).len()).max().unwrap_or(0).max("os / manager".len());
    let cell_text = |row: &(String, String), p: &str| -> String {
        match Grid::cell(r, row, p).map(|i| &r.cells[i]) {
            None => "-".into(),
            Some(c) if c.status == "skip" => "SKIP".into(),
            Some(c) => {
                let retried = if c.attempts.is_empty() { String::new() } else { format!(" ({} tries)", c.attempts.len() + 1) };
                format!("{} {:>6.1} s{retried}", status_label(&c.status), c.duration_s)
            }
        }
    };
    let widths: Vec<usize> = profiles
        .iter()
        .map(|p| rows.iter().map(|row| cell_text(row, p).len()).max().unwrap_or(0).max(p.len()))
        .collect();
    let mut o = String::new();
    let _ = write!(o, "{:<w0$}", "os / manager");
    for (p, w) in profiles.iter().zip(&widths) {
        let _ = write!(o, "  {p:<w$}");
    }
    o.push('\n');
    let _ = write!(o, "{}", "-".repeat(w0));
    for w in &widths {
        let _ = write!(o, "  {}", "-".repeat(*w));
    }
    o.push('\n');
    for row in &rows {
        let _ = write!(o, "{:<w0$}", label(row));
        for (p, w) in profiles.iter().zip(&widths) {
            let _ = write!(o, "  {:<w$}", cell_text(row, p));
        }
        o.push('\n');
    }
    let _ = writeln!(o, "\n{} in {:.1} s", r.summary.text(), r.duration_s);
    let bad: Vec<_> = r.cells.iter().filter(|c| c.status == "fail" || c.status == "error").collect();
    if !bad.is_empty() {
        o.push_str("\nFailures:\n");
        for c in bad {
            let at = match (&c.failed_group, &c.failed_step) {
                (Some(g), Some(st)) => format!(" at {g} › {st}"),
                _ => String::new(),
            };
            let _ = writeln!(o, "  {} {}{at}", status_label(&c.status), c.id);
            let reason = c.reason.as_deref().unwrap_or("");
            for l in reason.lines().take(20) {
                let _ = writeln!(o, "      {l}");
            }
            let _ = writeln!(o, "      artifacts: {}", c.artifacts_dir);
        }
    }
    o
}
