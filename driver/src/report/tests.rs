use super::*;

fn cell(id: &str, status: &str) -> CellReport {
    let parts: Vec<&str> = id.split('/').collect();
    CellReport {
        id: id.into(),
        os: parts[0].into(),
        manager: parts[1].into(),
        profile: parts[2].into(),
        image: Some(format!("{}-{}", parts[0], parts[1])),
        status: status.into(),
        reason: (status != "pass").then(|| format!("why {id} <b>&</b>")),
        failed_group: (status == "fail").then(|| "tests/web".into()),
        failed_step: (status == "fail").then(|| "curl".into()),
        duration_s: 12.5,
        steps_passed: 3,
        steps_total: 4,
        groups: vec![
            GroupReport {
                name: "deploy".into(),
                status: StepStatus::Pass,
                duration_s: 1.0,
                steps: vec![StepReport { name: "files".into(), status: StepStatus::Pass, duration_s: 1.0, message: None }],
            },
            GroupReport {
                name: "tests/web".into(),
                status: if status == "fail" { StepStatus::Fail } else { StepStatus::Pass },
                duration_s: 2.0,
                steps: vec![StepReport {
                    name: "curl".into(),
                    status: if status == "fail" { StepStatus::Fail } else { StepStatus::Pass },
                    duration_s: 2.0,
                    message: (status == "fail").then(|| "`curl x` exited 7 <script>alert(1)</script>".into()),
                }],
            },
        ],
        attempts: Vec::new(),
        artifacts_dir: format!("/r/{id}"),
        failed_commands: Vec::new(),
        serial_tail: Some("login:".into()),
        screenshot_png: None,
        configs: vec![ConfigFile { path: "/etc/x.conf".into(), contents: "a < b".into() }],
        nodes: Vec::new(),
        started_at: None,
        timeline: Vec::new(),
        fault: (status == "error").then(|| crate::runner::fault::Fault {
            class: crate::runner::fault::FaultClass::GuestPanic,
            evidence: vec!["[ 5.1] Kernel panic - not syncing: sysrq triggered crash".into()],
            log: Some("serial.log:40-52".into()),
        }),
    }
}

fn report(cells: Vec<CellReport>, shard: &str) -> Report {
    Report {
        schema: SCHEMA.into(),
        xdriver_version: "0".into(),
        spec: "webapps".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        duration_s: 30.0,
        shards: vec![shard.into()],
        summary: summarize(&cells),
        cells,
    }
}

#[test]
fn summary_counts_and_table() {
    let r = report(
        vec![cell("debian-12/systemd/privileged", "pass"), cell("debian-12/systemd/unprivileged", "fail"), cell("freebsd/bsdrc/privileged", "skip")],
        "1/1",
    );
    assert_eq!(r.summary, Summary { total: 3, passed: 1, failed: 1, errors: 0, skipped: 1, retried: 0 });
    let t = summary(&r);
    let lines: Vec<&str> = t.lines().collect();
    assert!(lines[0].starts_with("os / manager") && lines[0].contains("privileged") && lines[0].contains("unprivileged"), "{t}");
    let row = lines.iter().find(|l| l.starts_with("debian-12 / systemd")).expect("systemd row");
    assert!(row.contains("PASS") && row.contains("FAIL"), "{row}");
    let bsd = lines.iter().find(|l| l.starts_with("freebsd / bsdrc")).expect("bsdrc row");
    assert!(bsd.contains("SKIP") && bsd.contains('-'), "{bsd}");
    assert!(t.contains("FAIL debian-12/systemd/unprivileged at tests/web › curl"), "{t}");
}

#[test]
fn junit_has_a_suite_per_cell_and_a_case_per_group() {
    let r = report(vec![cell("debian-12/systemd/privileged", "pass"), cell("debian-12/runit/privileged", "fail"), cell("freebsd/bsdrc/privileged", "skip")], "");
    let x = junit::render(&r);
    assert_eq!(x.matches("<testsuite ").count(), 3);
    assert_eq!(x.matches("<testcase ").count(), 5, "{x}");
    assert!(x.contains("<testsuites name=\"webapps\" tests=\"5\" failures=\"1\" errors=\"0\" skipped=\"1\""), "{x}");
    assert!(x.contains("<failure message=\"step `curl` failed\" type=\"step\">`curl x` exited 7 &lt;script&gt;"), "{x}");
    assert!(!x.contains("<script>"));
}

#[test]
fn html_is_self_contained_and_escaped() {
    let mut failing = cell("debian-12/runit/privileged", "fail");
    failing.screenshot_png = Some("iVBORw0KGgo=".into());
    let r = report(vec![cell("debian-12/systemd/privileged", "pass"), failing], "");
    let h = html::render(&r);
    for attr in h.split(" src=\"").skip(1) {
        assert!(attr.starts_with("data:"), "the page must not fetch anything");
    }
    for attr in h.split(" href=\"").skip(1) {
        assert!(attr.starts_with('#'), "links stay in the page");
    }
    assert!(!h.contains("<script>alert"), "step output must be escaped");
    assert!(h.contains("class=\"fail\" data-cell=\"debian-12/runit/privileged\""));
    assert!(h.contains("src=\"data:image/png;base64,iVBORw0KGgo=\""));
    assert_eq!(h.matches("<details class=\"cell").count(), 2);
}

#[test]
fn merge_joins_shards_and_refuses_overlap() {
    let a = report(vec![cell("debian-12/systemd/privileged", "pass")], "1/2");
    let b = report(vec![cell("debian-12/runit/privileged", "fail")], "2/2");
    let m = Report::merge(vec![a.clone(), b]).expect("merge");
    assert_eq!(m.summary.total, 2);
    assert_eq!(m.shards, vec!["1/2".to_string(), "2/2".to_string()]);
    assert_eq!(m.cells[0].id, "debian-12/runit/privileged", "sorted by id");
    let e = Report::merge(vec![a.clone(), a]).expect_err("must fail").to_string();
    assert!(e.contains("more than one report"), "{e}");
}

#[test]
fn load_checks_the_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("report.json");
    let mut r = report(vec![cell("debian-12/systemd/privileged", "pass")], "");
    r.write(dir.path()).expect("write");
    assert_eq!(Report::load(&p).expect("load").cells.len(), 1);
    r.schema = "xdriver-report/99".into();
    std::fs::write(&p, serde_json::to_string(&r).expect("json")).expect("write");
    let e = Report::load(&p).expect_err("must fail").to_string();
    assert!(e.contains("xdriver-report/99") && e.contains(SCHEMA), "{e}");
    std::fs::write(&p, "{}").expect("write");
    assert!(Report::load(&p).expect_err("must fail").to_string().contains("no `schema`"));
}

#[test]
fn output_is_capped_at_the_end() {
    let s = "x".repeat(100) + "END";
    let c = cap(&s, 10);
    assert!(c.ends_with("END") && c.starts_with("[…"), "{c}");
}

#[test]
fn nodes_get_their_own_sections_and_older_reports_without_them_still_load() {
    let mut c = cell("debian-12/s6/privileged", "fail");
    c.nodes = vec![NodeReport {
        name: "server".into(),
        id: "debian-12/s6/privileged".into(),
        image: Some("debian-12-sysvinit".into()),
        artifacts_dir: "/r/nodes/server".into(),
        serial_tail: Some("server <console>".into()),
        screenshot_png: Some("iVBORw0KGgo=".into()),
    }];
    let html = super::html::render(&report(vec![c.clone()], "1/1"));
    assert!(html.contains("Node <code>server</code> (debian-12/s6/privileged, image debian-12-sysvinit)"), "{html}");
    assert!(html.contains("server &lt;console&gt;") && html.contains("alt=\"screenshot of node server\""));
    // A cell of one writes no `nodes`; a report.json from before they
    // existed reads as cells of one.
    let one = serde_json::to_value(cell("debian-12/s6/privileged", "pass")).expect("json");
    assert!(one.get("nodes").is_none(), "{one}");
    let back: CellReport = serde_json::from_value(one).expect("reads");
    assert!(back.nodes.is_empty());
}

#[test]
fn the_timeline_puts_every_cells_phases_and_nodes_on_one_axis() {
    use crate::runner::Span;
    let span = |what: &str, node: Option<&str>, a: f64, b: f64| Span { what: what.into(), node: node.map(Into::into), start_s: a, end_s: b };
    let mut first = cell("debian-12/s6/privileged", "pass");
    first.started_at = Some(1000.0);
    first.timeline = vec![span("boot", None, 0.0, 5.0), span("tests", None, 5.0, 10.0), span("boot", Some("server"), 0.0, 4.0)];
    first.nodes = vec![NodeReport {
        name: "server".into(),
        id: "debian-12/s6/privileged".into(),
        image: None,
        artifacts_dir: String::new(),
        serial_tail: None,
        screenshot_png: None,
    }];
    let mut second = cell("debian-12/systemd/privileged", "pass");
    second.started_at = Some(1010.0);
    second.timeline = vec![span("deploy", None, 0.0, 10.0)];
    let html = super::html::render(&report(vec![first, second], "1/1"));
    assert!(html.contains("0 s … 20.0 s"), "the axis spans the run: {html}");
    // The second cell starts half-way along the run, and lasts half of it.
    assert!(html.contains("class=\"tl-deploy\" style=\"left:50.000%;width:50.000%\""), "{html}");
    assert!(html.contains("class=\"tl-boot\" style=\"left:0.000%;width:20.000%\" title=\"boot: 4.0 s (at 0.0 s)\""), "the node's row: {html}");
    // A report without timelines (older, or merged from one) has none.
    assert!(!super::html::render(&report(vec![cell("debian-12/s6/privileged", "pass")], "1/1")).contains("<h2>Timeline</h2>"));
}

/// An infrastructure error names its fault class and evidence in every
/// report: the JUnit error's type and message, the HTML panel, report.json.
#[test]
fn an_infrastructure_error_names_its_fault_class_everywhere() {
    let mut broken = cell("debian-12/openrc/privileged", "error");
    broken.groups[1].status = StepStatus::Error;
    broken.groups[1].steps[0].status = StepStatus::Error;
    broken.groups[1].steps[0].message = Some("the guest kernel panicked while running a command".into());
    let r = report(vec![broken], "");
    let x = junit::render(&r);
    assert!(
        x.contains("<error message=\"infrastructure failure: the guest kernel panicked (serial.log:40-52) in step `curl`\" type=\"infrastructure:guest-panic\">"),
        "{x}"
    );
    assert!(x.contains("--- evidence ---\n[ 5.1] Kernel panic - not syncing: sysrq triggered crash"), "{x}");
    let h = html::render(&r);
    assert!(h.contains("Infrastructure fault: <b>guest-panic</b> (the guest kernel panicked), shown in <code>serial.log:40-52</code>"), "{h}");
    let j = serde_json::to_value(&r).expect("json");
    assert_eq!(j["cells"][0]["fault"]["class"], "guest-panic");
    assert_eq!(j["cells"][0]["fault"]["log"], "serial.log:40-52");
}
