//! junit.xml: one `<testsuite>` per cell, one `<testcase>` per step group
//! (deploy, readiness/<instance>, tests/<instance>, …), failures with the
//! failing step's message, errors for infrastructure failures, skipped
//! cells and groups as `<skipped>`.

use std::fmt::Write;

use super::{CellReport, Report};
use crate::runner::StepStatus;

/// Escapes text for XML attributes and character data, dropping characters
/// XML 1.0 cannot carry.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\t' | '\n' | '\r' => o.push(c),
            c if (c as u32) < 0x20 => {}
            c => o.push(c),
        }
    }
    o
}

fn counts(c: &CellReport) -> (usize, usize, usize, usize) {
    if c.status == "skip" || c.groups.is_empty() {
        let (f, e, s) = match c.status.as_str() {
            "fail" => (1, 0, 0),
            "error" => (0, 1, 0),
            "skip" => (0, 0, 1),
            _ => (0, 0, 0),
        };
        return (1, f, e, s);
    }
    let n = c.groups.len();
    let f = c.groups.iter().filter(|g| g.status == StepStatus::Fail).count();
    let e = c.groups.iter().filter(|g| g.status == StepStatus::Error).count();
    let s = c.groups.iter().filter(|g| g.status == StepStatus::NotRun).count();
    (n, f, e, s)
}

/// The whole junit.xml.
pub fn render(r: &Report) -> String {
    let mut o = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let (mut t, mut f, mut e, mut s) = (0, 0, 0, 0);
    for c in &r.cells {
        let (a, b, cc, d) = counts(c);
        t += a;
        f += b;
        e += cc;
        s += d;
    }
    let _ = writeln!(
        o,
        "<testsuites name=\"{}\" tests=\"{t}\" failures=\"{f}\" errors=\"{e}\" skipped=\"{s}\" time=\"{:.3}\">",
        escape(&r.spec),
        r.duration_s
    );
    for c in &r.cells {
        let (t, f, e, s) = counts(c);
        let _ = writeln!(
            o,
            "  <testsuite name=\"{}\" tests=\"{t}\" failures=\"{f}\" errors=\"{e}\" skipped=\"{s}\" time=\"{:.3}\">",
            escape(&c.id),
            c.duration_s
        );
        let _ = writeln!(
            o,
            "    <properties><property name=\"os\" value=\"{}\"/><property name=\"manager\" value=\"{}\"/><property name=\"profile\" value=\"{}\"/><property name=\"image\" value=\"{}\"/><property name=\"attempts\" value=\"{}\"/></properties>",
            escape(&c.os),
            escape(&c.manager),
            escape(&c.profile),
            escape(c.image.as_deref().unwrap_or("")),
            c.attempts.len() + 1
        );
        let groups: &[super::GroupReport] = if c.status == "skip" { &[] } else { &c.groups };
        // An infrastructure error's class in the error's type and message,
        // its evidence after the reason.
        let (etype, emsg, evidence) = match &c.fault {
            Some(f) => (
                format!("infrastructure:{}", f.class.name()),
                format!("infrastructure failure: {}{}", f.class.words(), f.log.as_deref().map(|l| format!(" ({l})")).unwrap_or_default()),
                if f.evidence.is_empty() { String::new() } else { format!("\n--- evidence ---\n{}", f.evidence.join("\n")) },
            ),
            None => ("infrastructure".to_string(), "infrastructure failure".to_string(), String::new()),
        };
        if groups.is_empty() {
            // Skipped, or failed before any group (image, results dir).
            let _ = write!(o, "    <testcase classname=\"{}\" name=\"cell\" time=\"{:.3}\"", escape(&c.id), c.duration_s);
            let reason = escape(c.reason.as_deref().unwrap_or(""));
            match c.status.as_str() {
                "skip" => {
                    let _ = writeln!(o, "><skipped message=\"{reason}\"/></testcase>");
                }
                "error" => {
                    let _ = writeln!(o, "><error message=\"{}\" type=\"{}\">{reason}{}</error></testcase>", escape(&emsg), escape(&etype), escape(&evidence));
                }
                "fail" => {
                    let _ = writeln!(o, "><failure message=\"failed\" type=\"step\">{reason}</failure></testcase>");
                }
                _ => {
                    let _ = writeln!(o, "/>");
                }
            }
        }
        for g in groups {
            let _ = write!(o, "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">", escape(&c.id), escape(&g.name), g.duration_s);
            let bad = g.steps.iter().find(|s| matches!(s.status, StepStatus::Fail | StepStatus::Error));
            match (g.status, bad) {
                (StepStatus::Fail, Some(st)) => {
                    let _ = write!(
                        o,
                        "<failure message=\"step `{}` failed\" type=\"step\">{}</failure>",
                        escape(&st.name),
                        escape(st.message.as_deref().unwrap_or(""))
                    );
                }
                (StepStatus::Error, Some(st)) => {
                    let _ = write!(
                        o,
                        "<error message=\"{} in step `{}`\" type=\"{}\">{}{}</error>",
                        escape(&emsg),
                        escape(&st.name),
                        escape(&etype),
                        escape(st.message.as_deref().unwrap_or("")),
                        escape(&evidence)
                    );
                }
                (StepStatus::NotRun, _) => {
                    let _ = write!(o, "<skipped message=\"not run: an earlier step ended the cell\"/>");
                }
                _ => {}
            }
            let steps: Vec<String> =
                g.steps.iter().map(|s| format!("{:<8} {:>7.2} s  {}", format!("{:?}", s.status).to_lowercase(), s.duration_s, s.name)).collect();
            let _ = writeln!(o, "<system-out>{}</system-out></testcase>", escape(&steps.join("\n")));
        }
        if c.status == "fail" || c.status == "error" {
            let mut err = String::new();
            for a in &c.attempts {
                let _ = writeln!(err, "earlier attempt ({:.1} s, artifacts {}): {}", a.duration_s, a.artifacts, a.reason);
            }
            if let Some(t) = &c.serial_tail {
                let _ = write!(err, "--- serial log (tail) ---\n{t}");
            }
            let _ = writeln!(o, "    <system-err>{}</system-err>", escape(&err));
        }
        let _ = writeln!(o, "  </testsuite>");
    }
    o.push_str("</testsuites>\n");
    o
}
