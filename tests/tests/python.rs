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
    let run = xdriver(&["test", spec.to_str().expect("utf-8"), "--accel", "tcg", "--no-progress", "--jobs", "2", "--retries", "1"], work.path());
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
    // The console went to the script's log while serial_stdout was on only.
    let log = std::fs::read_to_string(results.join("debian-12-systemd-privileged/python.log")).expect("python.log");
    assert!(log.lines().any(|l| l == "machine # console-while-on"), "{log}");
    assert!(!log.contains("machine # console-while-off"), "{log}");
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
/// no carrier) and up again, keys typed, a reboot, a power-off from inside
/// (sysvinit) or QEMU stopping at once (systemd), and a new QEMU on the
/// same disk.
#[test]
fn toml_steps_block_forward_screenshot_type_reboot_shutdown_crash_and_start() {
    let work = xdriver_tests::workdir();
    let spec = example("steps");
    let run = xdriver(&["test", spec.to_str().expect("utf-8"), "--accel", "tcg", "--no-progress", "--jobs", "2", "--retries", "1"], work.path());
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for m in ["systemd", "sysvinit"] {
        assert!(run.stdout.contains(&format!("PASS  debian-12/{m}/privileged")), "{}", run.stdout);
        let cell = work.path().join(format!("xdriver-results/steps/debian-12-{m}-privileged"));
        let png = std::fs::read(cell.join("screen.png")).expect("screen.png");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let log = std::fs::read_to_string(cell.join("commands.log")).expect("commands.log");
        for call in ["forward_port(0, 5301)", "block()", "unblock()", "send_chars(\"Hello, tty1!\\n\")", "reboot()"] {
            assert!(log.contains(call), "{m}: no {call} in commands.log:\n{log}");
        }
        let stop = if m == "sysvinit" { "shutdown()" } else { "crash()" };
        assert!(log.contains(stop), "{m}: {stop} not run");
        assert!(log.contains("booted again on its disk"), "{m}: start() did not boot a new QEMU:\n{log}");
    }
}

/// `--interactive`, the NixOS driver's interactive mode: the one selected
/// cell is booted and deployed, then a Python prompt reads what it is
/// given (here stdin, not a terminal) with `machine` ready, and
/// `test_script()` runs the cell's script. The cell is a skip, not a pass,
/// and the session exits 0.
#[test]
fn interactive_opens_a_python_prompt_with_machine_after_the_deploy() {
    use std::io::Write;
    let work = xdriver_tests::workdir();
    let spec = example("python");
    let mut child = xdriver_tests::xdriver_command(&["test", spec.to_str().expect("utf-8"), "--accel", "tcg", "--manager", "systemd", "--interactive"], work.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("xdriver runs");
    let lines = "print('GOT', machine.succeed('curl -sf localhost:5300/ | grep -c 5300').strip())\n\
                 test_script(); print('SCRIPT-DONE')\n\
                 machine.succeed('false')\n\
                 print('STILL-HERE')\n";
    child.stdin.take().expect("stdin").write_all(lines.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("xdriver ends");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{stdout}\n{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    // The webapp answers with its port; the script ran and passed; a failed
    // call at the prompt is an exception there, not the end of the session.
    assert!(stdout.lines().any(|l| l.trim_start_matches(">>> ").starts_with("GOT ") && l.split_whitespace().last().and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n > 0)), "{stdout}");
    assert!(stdout.contains("SCRIPT-DONE") && stdout.contains("STILL-HERE"), "{stdout}");
    // Exactly one failure at the prompt: the deliberate one.
    assert_eq!(stderr.matches("Traceback").count(), 1, "{stderr}");
    assert!(stderr.contains("RequestedAssertionFailed: command `false` failed"), "{stderr}");
    assert!(stdout.contains("SKIP  debian-12/systemd/privileged"), "{stdout}");
    assert!(stdout.contains("interactive session"), "{stdout}");
    // Two cells selected: a usage error, before anything boots.
    let two = xdriver(&["test", spec.to_str().expect("utf-8"), "--interactive"], work.path());
    assert_eq!(two.code, 2, "{}", two.stderr);
    assert!(two.stderr.contains("--interactive needs exactly one cell to run; 2 are selected"), "{}", two.stderr);
}

/// `--keep`: the failed cell's VM stays up; xdriver prints an SSH command
/// that reaches it (run here, from the host) and holds it until SIGTERM,
/// then stops QEMU and exits with the tests' failure code.
#[test]
fn keep_holds_a_failed_cells_vm_reachable_over_ssh_until_sigterm() {
    use std::io::BufRead;
    let work = xdriver_tests::workdir();
    let spec = example("python");
    let mut child = xdriver_tests::xdriver_command(&["test", spec.to_str().expect("utf-8"), "--accel", "tcg", "--manager", "sysvinit", "--keep"], work.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("xdriver runs");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut seen = Vec::new();
    let (mut ssh, mut qemu_pid) = (None, None);
    while ssh.is_none() {
        let l = rx.recv_timeout(std::time::Duration::from_secs(400)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("no ssh line:\n{}", seen.join("\n"))
        });
        if let Some(p) = l.split("QEMU pid ").nth(1) {
            qemu_pid = p.split('.').next().and_then(|n| n.trim().parse::<i32>().ok());
        }
        if l.trim_start().starts_with("ssh -i ") {
            ssh = Some(l.trim().to_string());
        }
        seen.push(l);
    }
    let qemu_pid = qemu_pid.expect("QEMU pid printed");
    assert!(xdriver_tests::alive(qemu_pid));
    let reached = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{} -o BatchMode=yes 'cat /proc/1/comm; ls /etc/init.d/web'", ssh.expect("ssh")))
        .output()
        .expect("ssh runs");
    let text = String::from_utf8_lossy(&reached.stdout);
    assert!(reached.status.success() && text.contains("init") && text.contains("/etc/init.d/web"), "{text}\n{}", String::from_utf8_lossy(&reached.stderr));
    // SAFETY: a plain kill(2) of the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().expect("xdriver ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(100), "{stdout}\n{}", seen.join("\n"));
    assert!(stdout.contains("FAIL  debian-12/sysvinit/privileged"), "{stdout}");
    for _ in 0..100 {
        if !xdriver_tests::alive(qemu_pid) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!xdriver_tests::alive(qemu_pid), "QEMU {qemu_pid} still runs");
}
