//! Tests written as Python for the NixOS test driver's `machine`, run by
//! the real binary on real Debian guests: most of the Machine API against
//! a running webapp (tests/examples/python), each call a recorded step,
//! and a failing script reported with its traceback and where its line was
//! written in the spec.

use xdriver_tests::run_xdriver as xdriver;
use xdriver_tests::example;

#[test]
fn a_python_script_drives_the_machine_api_and_a_failing_line_is_reported_where_it_was_written() {
    let work = xdriver_tests::workdir();
    let spec = example("python");
    let run = xdriver(&["test", spec.to_str().expect("utf-8"), "--accel", "tcg", "--no-progress", "--jobs", "2"], work.path());
    // systemd passes; sysvinit fails on the script's last line.
    assert_eq!(run.code, 100, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("PASS  debian-12/systemd/privileged"), "{}", run.stdout);
    assert!(run.stdout.contains("FAIL  debian-12/sysvinit/privileged"), "{}", run.stdout);
    let results = work.path().join("xdriver-results/python");
    // Every call is a step of the script's group, with the NixOS driver's
    // names.
    let ok: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results.join("debian-12-systemd-privileged/result.json")).expect("result.json")).expect("json");
    let steps: Vec<String> = ok["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter(|g| g["name"] == "python")
        .flat_map(|g| g["steps"].as_array().cloned().unwrap_or_default())
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect();
    for want in ["start_all()", "wait_for_unit('web')", "stop_job('web')", "copy_from_vm('/tmp/key', 'out')", "screenshot('screen')", "forward_port(0, 5300)"] {
        assert!(steps.iter().any(|s| s == want), "no step {want}: {steps:?}");
    }
    assert!(steps.len() >= 25, "{steps:?}");
    // The failing cell: the traceback names the script line, the spec line
    // it came from, and the command's output.
    let bad: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results.join("debian-12-sysvinit-privileged/result.json")).expect("result.json")).expect("json");
    let reason = bad["outcome"]["reason"].as_str().unwrap_or_default().to_string();
    let spec_text = std::fs::read_to_string(spec.join("xdriver.toml")).expect("spec");
    let line = spec_text.lines().position(|l| l.contains("echo this cell fails here")).expect("the failing line") + 1;
    assert!(reason.contains("RequestedAssertionFailed: command `echo this cell fails here; false` failed (exit code 1)"), "{reason}");
    assert!(reason.contains(&format!("xdriver.toml:{line}")), "the spec line {line} is not named:\n{reason}");
    assert!(reason.contains("stdout: this cell fails here"), "{reason}");
    assert!(run.stdout.contains("echo this cell fails here"), "{}", run.stdout);
    // The script, its harness and its log are kept with the cell.
    for f in ["test-script.py", "python.log", "commands.log"] {
        assert!(results.join("debian-12-sysvinit-privileged").join(f).is_file(), "{f}");
    }
}

/// The VM-level actions as TOML steps (tests/examples/steps): a port
/// forwarded from the host, the screen saved, the NIC down (the guest sees
/// no carrier) and up again, keys typed, and the cell ended by a power-off
/// from inside (sysvinit) or by QEMU stopping at once (systemd).
#[test]
fn toml_steps_block_forward_screenshot_type_shutdown_and_crash() {
    let work = xdriver_tests::workdir();
    let spec = example("steps");
    let run = xdriver(&["test", spec.to_str().expect("utf-8"), "--accel", "tcg", "--no-progress", "--jobs", "2"], work.path());
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for m in ["systemd", "sysvinit"] {
        assert!(run.stdout.contains(&format!("PASS  debian-12/{m}/privileged")), "{}", run.stdout);
        let cell = work.path().join(format!("xdriver-results/steps/debian-12-{m}-privileged"));
        let png = std::fs::read(cell.join("screen.png")).expect("screen.png");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let log = std::fs::read_to_string(cell.join("commands.log")).expect("commands.log");
        for call in ["forward_port(0, 5301)", "block()", "unblock()", "send_chars(\"Hello, tty1!\\n\")"] {
            assert!(log.contains(call), "{m}: no {call} in commands.log:\n{log}");
        }
        let last = if m == "sysvinit" { "shutdown()" } else { "crash()" };
        assert!(log.contains(last), "{m}: {last} not run");
    }
}
