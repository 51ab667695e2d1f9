//! report.html: the matrix as a coloured grid; each cell opens its steps,
//! durations, the output of failing commands, the serial log, rendered
//! configs and the screenshot. One file: inline CSS, a few lines of
//! script, images as data: URLs; nothing is fetched from anywhere.

use std::fmt::Write;

use super::junit::escape;
use super::{status_label, CellReport, Grid, Report};
use crate::runner::StepStatus;

const STYLE: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
.timeline{margin:1em 0;max-width:70em}.axis{color:#666;font-size:12px;margin-left:16em}
.tl-row{display:flex;align-items:center;height:1.3em}.tl-label{width:16em;flex:none;font-size:12px;white-space:pre;overflow:hidden;text-overflow:ellipsis}
.tl-bar{position:relative;flex:1;height:1em;background:#f3f3f3}.tl-bar span{position:absolute;top:0;height:100%;min-width:1px}
.tl-key span{display:inline-block;width:1em;height:.8em;margin:0 .2em 0 .8em;vertical-align:middle}
.tl-image{background:#9e9e9e}.tl-boot{background:#5c6bc0}.tl-vlans{background:#26a69a}.tl-deploy{background:#ffa726}.tl-readiness{background:#ab47bc}.tl-tests{background:#66bb6a}.tl-shutdown{background:#bdbdbd}
h1{font-size:1.3em} h2{font-size:1.1em;margin-top:1.5em}
table.grid{border-collapse:collapse;margin:1em 0}
table.grid th,table.grid td{border:1px solid #bbb;padding:.4em .8em;text-align:left}
td.pass{background:#c8efc8} td.fail{background:#f5b5b5} td.error{background:#f7d59a} td.skip{background:#e4e4e4;color:#555}
td.none{background:#fafafa;color:#999}
td a{color:inherit;text-decoration:none;display:block}
details.cell{border:1px solid #ccc;border-radius:4px;margin:.6em 0;padding:.3em .6em}
details.cell>summary{cursor:pointer;font-weight:600}
details.cell.pass>summary{color:#176317} details.cell.fail>summary{color:#a31515} details.cell.error>summary{color:#8a5300} details.cell.skip>summary{color:#666}
table.steps{border-collapse:collapse;margin:.4em 0}
table.steps td,table.steps th{border-bottom:1px solid #eee;padding:.15em .6em;vertical-align:top;text-align:left}
span.pass{color:#176317} span.fail{color:#a31515;font-weight:600} span.error{color:#8a5300;font-weight:600} span.not_run{color:#999}
pre{background:#f6f6f6;padding:.5em;overflow:auto;max-height:30em;white-space:pre-wrap}
img.shot{max-width:100%;border:1px solid #999}
.summary{font-size:1.05em}
"#;

const SCRIPT: &str = r#"
function xdOpen(){var h=decodeURIComponent(location.hash.slice(1));if(!h)return;var d=document.getElementById(h);if(d&&d.tagName==='DETAILS'){d.open=true;d.scrollIntoView();}}
window.addEventListener('hashchange',xdOpen);
document.addEventListener('DOMContentLoaded',function(){xdOpen();document.body.setAttribute('data-js','ok');});
"#;

fn step_class(s: StepStatus) -> &'static str {
    match s {
        StepStatus::Pass => "pass",
        StepStatus::Fail => "fail",
        StepStatus::Error => "error",
        StepStatus::NotRun => "not_run",
    }
}

fn anchor(i: usize) -> String {
    format!("cell-{i}")
}

fn cell_panel(o: &mut String, i: usize, c: &CellReport) {
    let _ = writeln!(
        o,
        "<details class=\"cell {st}\" id=\"{a}\"><summary>{id} — {s} {d:.1} s ({p}/{t} steps)</summary>",
        st = escape(&c.status),
        a = anchor(i),
        id = escape(&c.id),
        s = status_label(&c.status),
        d = c.duration_s,
        p = c.steps_passed,
        t = c.steps_total
    );
    let _ = writeln!(o, "<p>image: <code>{}</code>; artifacts: <code>{}</code></p>", escape(c.image.as_deref().unwrap_or("none")), escape(&c.artifacts_dir));
    if let Some(r) = &c.reason {
        let at = match (&c.failed_group, &c.failed_step) {
            (Some(g), Some(s)) => format!(" at {} › {}", escape(g), escape(s)),
            _ => String::new(),
        };
        let _ = writeln!(o, "<h3>Reason{at}</h3><pre class=\"reason\">{}</pre>", escape(r));
        if let Some(f) = &c.fault {
            let _ = writeln!(
                o,
                "<p class=\"fault\">Infrastructure fault: <b>{}</b> ({}){}</p>",
                escape(f.class.name()),
                escape(f.class.words()),
                f.log.as_deref().map(|l| format!(", shown in <code>{}</code>", escape(l))).unwrap_or_default()
            );
            if !f.evidence.is_empty() {
                let _ = writeln!(o, "<pre class=\"evidence\">{}</pre>", escape(&f.evidence.join("\n")));
            }
        }
    }
    if !c.attempts.is_empty() {
        o.push_str("<h3>Retried attempts (infrastructure)</h3><ul>");
        for a in &c.attempts {
            let _ = write!(o, "<li>{:.1} s, artifacts <code>{}</code>: <pre>{}</pre></li>", a.duration_s, escape(&a.artifacts), escape(&a.reason));
        }
        o.push_str("</ul>\n");
    }
    if let Some(png) = &c.screenshot_png {
        let _ = writeln!(o, "<h3>Screen at the failure</h3><img class=\"shot\" alt=\"screenshot of {}\" src=\"data:image/png;base64,{png}\">", escape(&c.id));
    }
    if !c.groups.is_empty() {
        o.push_str("<h3>Steps</h3><table class=\"steps\"><tr><th>group</th><th>step</th><th>status</th><th>time</th></tr>\n");
        for g in &c.groups {
            for (k, s) in g.steps.iter().enumerate() {
                let group = if k == 0 { format!("<b>{}</b> ({:.1} s)", escape(&g.name), g.duration_s) } else { String::new() };
                let _ = write!(
                    o,
                    "<tr><td>{group}</td><td>{}</td><td><span class=\"{cl}\">{cl}</span></td><td>{:.2} s</td></tr>",
                    escape(&s.name),
                    s.duration_s,
                    cl = step_class(s.status)
                );
                if let Some(m) = &s.message {
                    let _ = write!(o, "<tr><td></td><td colspan=\"3\"><pre>{}</pre></td></tr>", escape(m));
                }
                o.push('\n');
            }
        }
        o.push_str("</table>\n");
    }
    if !c.failed_commands.is_empty() {
        o.push_str("<h3>Failing commands</h3>\n");
        for f in &c.failed_commands {
            let st = f.status.map(|s| s.to_string()).unwrap_or_else(|| "channel failed".into());
            let _ = writeln!(
                o,
                "<p><code>{}</code> in {} exited {st} after {:.2} s</p><pre>stdout:\n{}\nstderr:\n{}</pre>",
                escape(&f.command),
                escape(&f.context),
                f.duration_s,
                escape(&f.stdout),
                escape(&f.stderr)
            );
        }
    }
    if let Some(t) = &c.serial_tail {
        let _ = writeln!(o, "<details><summary>Serial log (tail)</summary><pre class=\"serial\">{}</pre></details>", escape(t));
    }
    for n in &c.nodes {
        let image = n.image.as_deref().map(|i| format!(", image {}", escape(i))).unwrap_or_default();
        let _ = writeln!(o, "<details class=\"node\"><summary>Node <code>{}</code> ({}{image})</summary>", escape(&n.name), escape(&n.id));
        let _ = writeln!(o, "<p>artifacts <code>{}</code></p>", escape(&n.artifacts_dir));
        if let Some(png) = &n.screenshot_png {
            let _ = writeln!(o, "<img class=\"shot\" alt=\"screenshot of node {}\" src=\"data:image/png;base64,{png}\">", escape(&n.name));
        }
        if let Some(t) = &n.serial_tail {
            let _ = writeln!(o, "<details><summary>Serial log of {} (tail)</summary><pre class=\"serial\">{}</pre></details>", escape(&n.name), escape(t));
        }
        o.push_str("</details>\n");
    }
    if !c.configs.is_empty() {
        let _ = writeln!(o, "<details><summary>Rendered configs ({})</summary>", c.configs.len());
        for f in &c.configs {
            let _ = writeln!(o, "<details><summary><code>{}</code></summary><pre>{}</pre></details>", escape(&f.path), escape(&f.contents));
        }
        o.push_str("</details>\n");
    }
    o.push_str("</details>\n");
}

/// The whole page.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>xdriver: {spec}</title><style>{STYLE}</style><script>{SCRIPT}</script></head><body>",
        spec = escape(&r.spec)
    );
    let _ = writeln!(
        o,
        "<h1>xdriver: {}</h1><p class=\"summary\">{} — {:.1} s{}. Written {} by xdriver {}.</p>",
        escape(&r.spec),
        r.summary.text(),
        r.duration_s,
        if r.shards.is_empty() { String::new() } else { format!(", shards {}", escape(&r.shards.join(", "))) },
        escape(&r.created_at),
        escape(&r.xdriver_version)
    );
    let Grid { rows, profiles } = Grid::of(r);
    o.push_str("<table class=\"grid\"><tr><th>OS / manager</th>");
    for p in &profiles {
        let _ = write!(o, "<th>{}</th>", escape(p));
    }
    o.push_str("</tr>\n");
    for row in &rows {
        let _ = write!(o, "<tr><th>{} / {}</th>", escape(&row.0), escape(&row.1));
        for p in &profiles {
            match Grid::cell(r, row, p) {
                Some(i) => {
                    let c = &r.cells[i];
                    let text = if c.status == "skip" { "SKIP".to_string() } else { format!("{} {:.1} s", status_label(&c.status), c.duration_s) };
                    let title = c.reason.as_deref().map(|r| r.lines().next().unwrap_or("")).unwrap_or("");
                    let _ = write!(
                        o,
                        "<td class=\"{st}\" data-cell=\"{id}\" title=\"{t}\"><a href=\"#{a}\">{text}</a></td>",
                        st = escape(&c.status),
                        id = escape(&c.id),
                        t = escape(title),
                        a = anchor(i)
                    );
                }
                None => o.push_str("<td class=\"none\">–</td>"),
            }
        }
        o.push_str("</tr>\n");
    }
    o.push_str("</table>\n");
    timeline(&mut o, r);
    o.push_str("<h2>Cells</h2>\n");
    for (i, c) in r.cells.iter().enumerate() {
        cell_panel(&mut o, i, c);
    }
    o.push_str("</body></html>\n");
    o
}

/// Every cell's phases (and each node's boot and vlans) on one time axis
/// of the run: where the time went, at a glance.
fn timeline(o: &mut String, r: &Report) {
    let cells: Vec<(usize, &CellReport, f64)> = r.cells.iter().enumerate().filter_map(|(i, c)| c.started_at.filter(|_| !c.timeline.is_empty()).map(|t| (i, c, t))).collect();
    let Some(t0) = cells.iter().map(|c| c.2).reduce(f64::min) else { return };
    let end = cells.iter().map(|(_, c, t)| t - t0 + c.timeline.iter().map(|s| s.end_s).fold(0.0, f64::max)).fold(0.0, f64::max).max(1.0);
    let pct = |s: f64| format!("{:.3}%", (s / end * 100.0).clamp(0.0, 100.0));
    let _ = writeln!(o, "<h2>Timeline</h2>\n<div class=\"timeline\"><div class=\"axis\">0 s … {end:.1} s</div>");
    for (i, c, t) in cells {
        let off = t - t0;
        let mut rows: Vec<(String, Vec<&crate::runner::Span>)> = vec![(c.id.clone(), c.timeline.iter().filter(|s| s.node.is_none()).collect())];
        for n in &c.nodes {
            rows.push((format!("  {}", n.name), c.timeline.iter().filter(|s| s.node.as_deref() == Some(&n.name)).collect()));
        }
        for (label, spans) in rows {
            let _ = write!(o, "<div class=\"tl-row\"><a class=\"tl-label\" href=\"#{}\">{}</a><div class=\"tl-bar\">", anchor(i), escape(&label));
            for s in spans {
                let _ = write!(
                    o,
                    "<span class=\"tl-{w}\" style=\"left:{l};width:{wd}\" title=\"{w}: {d:.1} s (at {a:.1} s)\"></span>",
                    w = escape(&s.what),
                    l = pct(off + s.start_s),
                    wd = pct((s.end_s - s.start_s).max(0.0)),
                    d = s.end_s - s.start_s,
                    a = off + s.start_s
                );
            }
            o.push_str("</div></div>\n");
        }
    }
    o.push_str("<p class=\"tl-key\"><span class=\"tl-image\"></span>image <span class=\"tl-boot\"></span>boot or restore <span class=\"tl-vlans\"></span>vlans <span class=\"tl-deploy\"></span>deploy <span class=\"tl-readiness\"></span>readiness <span class=\"tl-tests\"></span>tests <span class=\"tl-shutdown\"></span>shutdown</p></div>\n");
}
