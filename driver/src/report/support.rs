//! The support matrix from results: `xdriver report support-matrix`
//! turns report.json files (any specs, any runs) into the OS × manager ×
//! profile table of docs/support-matrix.md, one line per OS and manager,
//! with what ran there and how it ended, and the OSes no run could reach
//! listed as unverified with the OS profile's own reason.

use std::collections::{BTreeMap, BTreeSet};

use xdriver_guests::{Manager, Os, ProfileKind};

use super::Report;

/// What the reports say of one OS/manager/profile.
#[derive(Debug, Default)]
struct Seen {
    /// Specs whose cell passed.
    passed: BTreeSet<String>,
    /// Specs whose cell failed or errored, with the status.
    failed: BTreeSet<String>,
    /// Skip reasons.
    skipped: BTreeSet<String>,
}

impl Seen {
    fn text(&self) -> String {
        if !self.failed.is_empty() {
            let mut s = format!("**FAIL** ({})", self.failed.iter().cloned().collect::<Vec<_>>().join(", "));
            if !self.passed.is_empty() {
                s.push_str(&format!("; pass ({})", self.passed.iter().cloned().collect::<Vec<_>>().join(", ")));
            }
            s
        } else if !self.passed.is_empty() {
            format!("**verified** ({})", self.passed.iter().cloned().collect::<Vec<_>>().join(", "))
        } else {
            format!("skipped: {}", self.skipped.iter().cloned().collect::<Vec<_>>().join("; "))
        }
    }
}

/// The table (Markdown) of what `reports` ran, then every registered OS
/// none of them ran that says why it is unverified. `header` goes first
/// (the command and date that made it).
pub fn support_matrix(reports: &[Report], header: &str) -> String {
    let mut cells: BTreeMap<(Os, Manager), BTreeMap<ProfileKind, Seen>> = BTreeMap::new();
    for r in reports {
        for c in &r.cells {
            let (Ok(os), Ok(m), Ok(p)) = (c.os.parse::<Os>(), c.manager.parse::<Manager>(), c.profile.parse::<ProfileKind>()) else {
                continue;
            };
            let seen = cells.entry((os, m)).or_default().entry(p).or_default();
            let label = if c.attempts.is_empty() { r.spec.clone() } else { format!("{}, retried", r.spec) };
            match c.status.as_str() {
                "pass" => {
                    seen.passed.insert(label);
                }
                "skip" => {
                    seen.skipped.insert(c.reason.clone().unwrap_or_default());
                }
                other => {
                    seen.failed.insert(format!("{}: {other}", r.spec));
                }
            }
        }
    }
    let mut out = String::from(header);
    out.push_str("\n| OS | manager | privileged | unprivileged |\n|---|---|---|---|\n");
    for ((os, m), by_profile) in &cells {
        let col = |p: ProfileKind| by_profile.get(&p).map_or_else(|| "not run".to_string(), Seen::text);
        out.push_str(&format!("| {os} | {m} | {} | {} |\n", col(ProfileKind::Privileged), col(ProfileKind::Unprivileged)));
    }
    let ran: BTreeSet<Os> = cells.keys().map(|(o, _)| *o).collect();
    for os in Os::all().filter(|o| !ran.contains(o)) {
        if let Some(why) = os.unverified() {
            let managers: Vec<&str> = Manager::all().filter(|m| os.image_for(*m).is_ok()).map(|m| m.name()).collect();
            out.push_str(&format!("| {os} | {} | *unverified*: {why} | *unverified* |\n", managers.join(", ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{CellReport, Summary};

    fn cell(os: &str, m: &str, p: &str, status: &str, reason: Option<&str>) -> CellReport {
        CellReport {
            id: format!("{os}/{m}/{p}"),
            os: os.into(),
            manager: m.into(),
            profile: p.into(),
            image: None,
            status: status.into(),
            reason: reason.map(str::to_string),
            failed_group: None,
            failed_step: None,
            duration_s: 1.0,
            steps_passed: 0,
            steps_total: 0,
            groups: Vec::new(),
            attempts: Vec::new(),
            artifacts_dir: String::new(),
            failed_commands: Vec::new(),
            serial_tail: None,
            screenshot_png: None,
            configs: Vec::new(),
            nodes: Vec::new(),
            started_at: None,
            timeline: Vec::new(),
            fault: None,
        }
    }

    fn report(spec: &str, cells: Vec<CellReport>) -> Report {
        Report {
            schema: crate::report::SCHEMA.into(),
            xdriver_version: "0".into(),
            spec: spec.into(),
            created_at: String::new(),
            duration_s: 0.0,
            shards: Vec::new(),
            summary: Summary::default(),
            cells,
        }
    }

    #[test]
    fn the_table_says_per_cell_what_ran_and_lists_unreached_oses_as_unverified() {
        let a = report(
            "webapps",
            vec![
                cell("debian-13", "openrc", "privileged", "pass", None),
                cell("debian-13", "openrc", "unprivileged", "skip", Some("OpenRC 0.56 (debian-13) has no user services")),
                cell("debian-14", "openrc", "unprivileged", "pass", None),
            ],
        );
        let b = report("daemons", vec![cell("debian-13", "openrc", "privileged", "fail", Some("step x"))]);
        let t = support_matrix(&[a, b], "# Support\n");
        assert!(t.starts_with("# Support\n"), "{t}");
        assert!(t.contains("| debian-13 | openrc | **FAIL** (daemons: fail); pass (webapps) | skipped: OpenRC 0.56 (debian-13) has no user services |"), "{t}");
        assert!(t.contains("| debian-14 | openrc | not run | **verified** (webapps) |"), "{t}");
        assert!(t.contains("| freebsd | bsdrc | *unverified*: "), "{t}");
        assert!(t.contains("| nixos | systemd, s6, supervisord | *unverified*: "), "{t}");
        assert!(!t.contains("| debian-12 |"), "a verified OS nothing ran is not listed: {t}");
    }
}
