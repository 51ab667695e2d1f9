//! The matrix as a CI job, on real VMs under TCG through the real binary:
//! two cells at once whose deliberately broken test fails, with every
//! report (table, junit.xml, report.json, report.html checked in headless
//! Chromium) and the failure's screenshot; boot failures retried and
//! reported as such; the run's deadline; shards and their merge.

use std::path::{Path, PathBuf};
use std::process::Command;

use xdriver_tests::run_xdriver as xdriver;
use xdriver_tests::{example, webapp_dir, xdriver_bin, Run};

/// `xdriver test <the chain example> --accel tcg ARGS…` in `dir`.
fn test_chain(args: &[&str], dir: &Path) -> Run {
    let spec = example("chain");
    let mut all = vec!["test", spec.to_str().expect("utf-8"), "--accel", "tcg"];
    all.extend_from_slice(args);
    xdriver(&all, dir)
}

fn chromium() -> PathBuf {
    for c in ["chromium-headless-shell", "chromium", "chromium-browser"] {
        for d in ["/usr/bin", "/usr/lib/chromium"] {
            let p = Path::new(d).join(c);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("headless Chromium is not installed (bash scripts/setup-host installs chromium-headless-shell)");
}

/// The DOM after Chromium has loaded the page and run its script.
fn rendered_dom(page: &Path, fragment: &str) -> String {
    let profile = xdriver_tests::workdir();
    let out = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}#{fragment}", page.display()))
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!dom.is_empty(), "chromium printed no DOM: {}", String::from_utf8_lossy(&out.stderr));
    dom
}

#[test]
fn two_failing_cells_at_once_with_reports() {
    let work = xdriver_tests::workdir();
    let spec = example("chain");
    let run = test_chain(
        &[
            "--manager",
            "supervisord,s6",
            "--profile",
            "privileged",
            "--set",
            "brokenTest=true",
            "--jobs",
            "2",
            // A guest that hangs at boot (seen once under heavy load: an RCU
            // stall) is an infrastructure failure; retry it rather than
            // fail the test. A failing test is never retried.
            "--retries",
            "1",
            "--report-dir",
            "report",
        ],
        work.path(),
    );
    assert_eq!(run.code, 100, "a failing test exits 100");
    // Progress without a terminal: plain lines naming each cell's phases
    // (the chain's initialTests make "tests" come before "readiness" too).
    for m in ["supervisord", "s6"] {
        let phases: Vec<&str> = run
            .stderr
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("xdriver: debian-12/{m}/privileged: ")))
            .filter_map(|l| l.split(" (at ").next())
            .collect();
        // After a retried boot, the phases start again from "image".
        let last_try = phases.iter().rposition(|p| *p == "image").unwrap_or(0);
        assert_eq!(phases[last_try..], ["image", "boot", "deploy", "tests", "readiness", "tests", "shutdown"], "{m}");
    }
    for m in ["supervisord", "s6"] {
        assert!(run.stdout.contains(&format!("FAIL  debian-12/{m}/privileged")), "{}", run.stdout);
    }
    // The table, then each failure's reason.
    let table_row = run.stdout.lines().find(|l| l.starts_with("debian-12 / s6")).expect("table row");
    assert!(table_row.contains("FAIL"), "{table_row}");
    assert!(run.stdout.contains("Failures:") && run.stdout.contains("at postTests › deliberately broken test"), "{}", run.stdout);

    // Artifacts of a failing cell: screenshot (a real PNG) and serial tail.
    let cell = work.path().join("xdriver-results/chain/debian-12-s6-privileged");
    let png = std::fs::read(cell.join("screenshot.png")).expect("screenshot.png");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000, "not a PNG ({} bytes)", png.len());
    assert!(std::fs::read_to_string(cell.join("serial-tail.txt")).expect("serial-tail.txt").contains("login"));

    // report.json
    let report = work.path().join("report");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).expect("report.json")).expect("json");
    assert_eq!(json["schema"], "xdriver-report/1");
    assert_eq!(json["summary"]["failed"], 2);
    // The two cells ran at the same time: the run took well under the sum
    // of the cells' own durations.
    let cells_sum: f64 = json["cells"].as_array().expect("cells").iter().map(|c| c["duration_s"].as_f64().expect("duration")).sum();
    let wall = json["duration_s"].as_f64().expect("duration");
    assert!(wall < 0.8 * cells_sum, "not parallel: run {wall:.1} s, cells {cells_sum:.1} s");
    let c = &json["cells"][0];
    assert_eq!(c["status"], "fail");
    assert_eq!(c["failed_group"], "postTests");
    assert!(c["screenshot_png"].as_str().is_some_and(|s| s.len() > 1000));
    let groups = c["groups"].as_array().expect("groups");
    assert_eq!(groups[0]["name"], "deploy");
    assert!(groups.iter().any(|g| g["name"].as_str().is_some_and(|n| n.starts_with("readiness/")) && g["status"] == "pass"));
    assert_eq!(groups.last().expect("a group")["status"], "fail");
    assert!(c["failed_commands"].as_array().expect("commands").iter().any(|f| f["command"].as_str().is_some_and(|s| s.contains("not on the page"))));
    assert!(c["configs"].as_array().expect("configs").iter().any(|f| f["path"].as_str().is_some_and(|p| p.ends_with("backend.conf"))));

    // junit.xml: a suite per cell, a case per group, the failure's message.
    let junit = std::fs::read_to_string(report.join("junit.xml")).expect("junit.xml");
    assert_eq!(junit.matches("<testsuite ").count(), 2, "{junit}");
    assert_eq!(junit.matches("<failure ").count(), 2, "{junit}");
    assert!(junit.contains("name=\"postTests\"") && junit.contains("not on the page"), "{junit}");

    // report.html, as Chromium renders it.
    let page = report.join("report.html");
    let html = std::fs::read_to_string(&page).expect("report.html");
    // Self-contained: every src is a data: URL, every link an anchor in
    // the page, no stylesheet or script is loaded from elsewhere.
    for attr in html.split(" src=\"").skip(1) {
        assert!(attr.starts_with("data:"), "external src: {}", &attr[..attr.len().min(60)]);
    }
    for attr in html.split(" href=\"").skip(1) {
        assert!(attr.starts_with('#'), "external link: {}", &attr[..attr.len().min(60)]);
    }
    assert!(!html.contains("<link") && !html.contains("@import") && !html.contains("url("), "external resources");
    let dom = rendered_dom(&page, "cell-1");
    assert!(dom.contains("data-js=\"ok\""), "the page's script did not run");
    assert_eq!(dom.matches("<td class=\"fail\"").count(), 2, "{dom}");
    // The fragment opened the second cell's panel, and only that one.
    let opened: Vec<&str> = dom.split("<details class=\"cell").skip(1).map(|d| d.split('>').next().unwrap_or("")).collect();
    assert_eq!(opened.len(), 2);
    assert!(opened[1].contains("open") && !opened[0].contains("open"), "{opened:?}");
    assert!(dom.contains("data:image/png;base64,"), "screenshot shown");

    // Shards of the same selection partition it; their reports merge.
    let list1 = xdriver(&["list", spec.to_str().expect("utf-8"), "--manager", "supervisord,s6", "--profile", "privileged", "--shard", "1/2", "--json"], work.path());
    let list2 = xdriver(&["list", spec.to_str().expect("utf-8"), "--manager", "supervisord,s6", "--profile", "privileged", "--shard", "2/2", "--json"], work.path());
    let ids = |r: &Run| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("list json");
        v["cells"].as_array().expect("cells").iter().map(|c| c["cell"].as_str().expect("id").to_string()).collect()
    };
    let (a, b) = (ids(&list1), ids(&list2));
    assert_eq!(a.len() + b.len(), 2);
    assert!(a.iter().all(|x| !b.contains(x)));
    // Splitting the run's report into two per-shard files and merging them
    // gives back the same cells.
    for (i, id) in [a[0].clone(), b[0].clone()].iter().enumerate() {
        let mut part = json.clone();
        part["cells"] = serde_json::Value::Array(json["cells"].as_array().expect("cells").iter().filter(|c| c["cell"] == *id || c["id"] == *id).cloned().collect());
        part["shards"] = serde_json::json!([format!("{}/2", i + 1)]);
        let d = work.path().join(format!("shard{}", i + 1));
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("report.json"), serde_json::to_string(&part).expect("json")).expect("write");
    }
    let merged = xdriver(&["report", "merge", "shard1", "shard2", "--report-dir", "merged"], work.path());
    assert_eq!(merged.code, 100, "merged report has failures");
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(work.path().join("merged/report.json")).expect("merged")).expect("json");
    assert_eq!(m["summary"]["total"], 2);
    assert_eq!(m["shards"], serde_json::json!(["1/2", "2/2"]));
    let again = xdriver(&["report", "merge", "shard1", "shard1", "--report-dir", "merged2"], work.path());
    assert_eq!(again.code, 2, "the same shard twice is refused");
}

#[test]
fn boot_failures_are_retried_and_reported() {
    let work = xdriver_tests::workdir();
    // 48 MiB is too little for the guest kernel to boot: each attempt fails
    // fast, for infrastructure reasons.
    let runs = xdriver_tests::Runs::under(&work.path().join("runs"));
    let run = test_chain(
        &[
            "--manager",
            "sysvinit",
            "--profile",
            "privileged",
            "--mem-mib",
            "48",
            "--retries",
            "2",
            "--timeout",
            "10m",
            "--report-dir",
            "report",
        ],
        work.path(),
    );
    assert_eq!(run.code, 125, "an infrastructure failure exits 125");
    assert!(run.stdout.contains("ERROR debian-12/sysvinit/privileged") && run.stdout.contains("[3 tries]"), "{}", run.stdout);
    assert_eq!(run.stderr.matches("boot failed, retrying").count(), 2, "{}", run.stderr);
    let cell = work.path().join("xdriver-results/chain/debian-12-sysvinit-privileged");
    for a in ["attempt-1", "attempt-2"] {
        assert!(cell.join(a).join("serial.log").is_file(), "{a} keeps its serial log");
    }
    // The failed VMs' logs are with the cell; their run directories went.
    for f in ["serial.log", "qemu.log", "qemu.cmdline", "launch.plan"] {
        assert!(cell.join(f).is_file(), "{f} is with the cell's artifacts");
    }
    runs.assert_nothing_left();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(work.path().join("report/report.json")).expect("report")).expect("json");
    assert_eq!(json["summary"]["retried"], 1);
    assert_eq!(json["cells"][0]["attempts"].as_array().expect("attempts").len(), 2);
    // QEMU quit before the guest printed anything: the tail is there, empty.
    assert!(json["cells"][0]["serial_tail"].is_string());
    assert!(json["cells"][0]["reason"].as_str().is_some_and(|r| r.contains("QEMU exited")));
    assert!(std::fs::read_to_string(work.path().join("report/junit.xml")).expect("junit").contains("type=\"infrastructure:boot\""));
}

#[test]
fn fail_fast_starts_no_cell_after_a_failure() {
    let work = xdriver_tests::workdir();
    // 48 MiB: the first cell's QEMU exits at once (an infrastructure error).
    let run = test_chain(
        &["--manager", "sysvinit,runit", "--profile", "privileged", "--mem-mib", "48", "--jobs", "1", "--fail-fast"],
        work.path(),
    );
    assert_eq!(run.code, 125, "{}", run.stdout);
    assert!(run.stdout.contains("ERROR debian-12/sysvinit/privileged"), "{}", run.stdout);
    assert!(run.stdout.contains("SKIP  debian-12/runit/privileged") && run.stdout.contains("--fail-fast stopped the run"), "{}", run.stdout);
    assert!(!run.stderr.contains("debian-12/runit/privileged: boot"), "the second cell must not boot:\n{}", run.stderr);
}

#[test]
fn progress_bars_on_a_terminal() {
    // `script` gives xdriver a terminal; the typescript holds what it drew.
    let work = xdriver_tests::workdir();
    let spec = example("chain");
    let typescript = work.path().join("typescript");
    let cmd = format!(
        "{} test {} --accel tcg --manager sysvinit --profile privileged --mem-mib 48",
        xdriver_bin().display(),
        spec.display()
    );
    let st = Command::new("script")
        .args(["-qfec", &cmd])
        .arg(&typescript)
        .env_remove("CI")
        .env("TERM", "xterm")
        .env("XDRIVER_WEBAPP_DIR", webapp_dir())
        .current_dir(work.path())
        .status()
        .expect("script runs");
    assert_eq!(st.code(), Some(125));
    let t = String::from_utf8_lossy(&std::fs::read(&typescript).expect("typescript")).into_owned();
    // A spinner line for the running cell with its phase, the overall bar,
    // cursor movement to redraw them; and no plain progress lines.
    assert!(t.contains("debian-12/sysvinit/privileged") && t.contains("boot"), "{t}");
    assert!(t.contains("cells") && t.contains("1 errors"), "overall bar:\n{t}");
    assert!(t.contains("\x1b["), "no terminal drawing:\n{t}");
    assert!(!t.contains("privileged: boot (at"), "plain lines on a terminal:\n{t}");
    assert!(t.contains("ERROR debian-12/sysvinit/privileged"), "{t}");
}

#[test]
fn the_run_deadline_cuts_a_step_and_fails_what_never_started() {
    // The deadline falls where the spec itself waits (a step that waits
    // for a file that never appears), not at a moment of the boot that a
    // faster or slower host would pass at another time: the first cell
    // reaches that step well inside 150 s on any host that runs the rest
    // of the suite, and waits there until the deadline cuts it; the
    // second cell (one at a time) never starts.
    let work = xdriver_tests::workdir();
    std::fs::write(
        work.path().join("xdriver.toml"),
        r#"name = "deadline"

[matrix]
os = ["debian-12"]
managers = ["systemd", "sysvinit"]
profiles = ["privileged"]

[instances.sleeper]
process.description = "a process that only sleeps"
process.foreground = ["/bin/sleep", "infinity"]

[tests]
post_tests = [
  { name = "wait for a file that never appears", wait_for_file = "/nonexistent", timeout = 900 },
]
"#,
    )
    .expect("spec");
    let started = std::time::Instant::now();
    let run = xdriver(&["test", ".", "--accel", "tcg", "--jobs", "1", "--timeout", "150s"], work.path());
    let took = started.elapsed().as_secs_f64();
    assert_eq!(run.code, 100, "the step failed at the deadline:\n{}", run.stdout);
    assert!(run.stdout.contains("postTests › wait for a file that never appears"), "{}", run.stdout);
    assert!(run.stdout.contains("the run's deadline (--timeout) expired during this step"), "{}", run.stdout);
    assert!(run.stdout.contains("waiting for file /nonexistent") && run.stdout.contains("last try: `test -e /nonexistent` exited 1"), "{}", run.stdout);
    assert!(run.stdout.contains("deadline (--timeout) expired before the cell started"), "{}", run.stdout);
    // It ended at the deadline, not after the step's own 900 s (shutdown
    // and reports come after the deadline).
    assert!(took < 150.0 + 100.0, "took {took:.0} s");
}
