//! The `xdriver` binary as users run it: exit codes, usage errors, and
//! what happens to QEMU when xdriver is interrupted or killed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xdriver_tests::{alive, image, pids_mentioning, xdriver_bin};

fn xdriver() -> Command {
    let mut c = Command::new(xdriver_bin());
    c.env_remove("XDRIVER_LOG");
    c
}

#[test]
fn usage_errors_exit_2_and_say_what_is_wrong() {
    let cache = xdriver_tests::workdir();
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--image", "debian-12-upstart", "--", "true"], "unknown image `debian-12-upstart`"),
        (&["run", "--image", "debian-12-systemd", "--share", "/nonexistent-xd:/mnt", "--", "true"], "--share `/nonexistent-xd:/mnt`"),
        (&["run", "--image", "debian-12-systemd", "--share", "/tmp:relative", "--", "true"], "must be absolute"),
        (&["image", "rm", "debian-12-systemd"], "no image named `debian-12-systemd`"),
        (&["image", "build", "fedora-40"], "unknown image `fedora-40`"),
        (&["run", "--accel", "warp", "--", "true"], "invalid value 'warp'"),
    ];
    for (args, needle) in cases {
        let out = xdriver().args(*args).env("XDRIVER_CACHE_DIR", cache.path()).output().expect("spawn");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: expected `{needle}` in: {err}");
    }
}

#[test]
fn help_documents_exit_codes() {
    let out = xdriver().arg("--help").output().expect("spawn");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in ["125 infrastructure failure", "2 usage error", "130 interrupted"] {
        assert!(text.contains(needle), "{needle} missing from --help");
    }
}

#[test]
fn run_passes_the_command_status_and_streams_output() {
    image(xdriver_guests::Init::SYSVINIT);
    let share = xdriver_tests::workdir();
    std::fs::write(share.path().join("f"), "shared\n").expect("write");
    for channel in ["ssh", "backdoor"] {
        let out = xdriver()
            .args(["run", "--image", "debian-12-sysvinit", "--accel", "tcg", "--channel", channel])
            .arg("--share")
            .arg(format!("{}:/mnt/s", share.path().display()))
            .args(["--", "cat /mnt/s/f; echo oops >&2; exit 3"])
            .output()
            .expect("spawn");
        let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(3), "{channel}: {se}");
        assert_eq!(so, "shared\n", "{channel}");
        assert!(se.contains("oops\n"), "{channel}: {se}");
        assert!(se.contains("accel tcg"), "{channel}: {se}");
    }
}

/// Starts `xdriver run … -- sleep 600`, waits until the VM is up and
/// returns (child, run dir).
fn start_long_run() -> (std::process::Child, String) {
    image(xdriver_guests::Init::SYSTEMD);
    let mut child = xdriver()
        .args(["run", "--image", "debian-12-systemd", "--accel", "tcg", "--channel", "backdoor", "--", "sleep 600"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("piped");
    let mut lines = BufReader::new(stderr).lines();
    let mut run_dir = None;
    for line in lines.by_ref() {
        let line = line.expect("read");
        if let Some(rest) = line.split("run dir ").nth(1) {
            run_dir = Some(rest.trim().to_string());
            break;
        }
    }
    // Keep reading: a closed pipe would make xdriver's last words fail.
    std::thread::spawn(move || lines.for_each(drop));
    (child, run_dir.expect("xdriver printed its run dir"))
}

fn assert_no_qemu_for(run_dir: &str) {
    let t = Instant::now();
    while !pids_mentioning(run_dir).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "QEMU outlived xdriver: {:?}", pids_mentioning(run_dir));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn killing_xdriver_kills_its_qemu() {
    let (mut child, run_dir) = start_long_run();
    let qemu = pids_mentioning(&run_dir);
    assert_eq!(qemu.len(), 1, "one QEMU for {run_dir}");
    // SAFETY: SIGKILL to the xdriver we spawned.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();
    assert_no_qemu_for(&run_dir);
    // Its command line goes first, the process a moment later (tearing
    // down 1 GiB of guest RAM, a shared memfd with a virtiofs store).
    let t = Instant::now();
    while alive(qemu[0]) {
        assert!(t.elapsed() < Duration::from_secs(10), "QEMU {} outlived xdriver", qemu[0]);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ctrl_c_stops_the_vm_and_exits_130() {
    let (mut child, run_dir) = start_long_run();
    // SAFETY: SIGINT to the xdriver we spawned.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130));
    assert_no_qemu_for(&run_dir);
}

#[test]
fn one_build_for_concurrent_requests_and_interrupted_builds_leave_no_entry() {
    let cache = xdriver_tests::workdir();
    let build = || {
        xdriver()
            .args(["image", "build", "debian-12", "--init", "runit", "--json"])
            .env("XDRIVER_CACHE_DIR", cache.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    // An interrupted build: killed mid-way, it must leave no usable entry.
    // Killed once its temporary directory has something in it (whatever
    // the host's speed, the build is then under way and far from done).
    let mut victim = build();
    let images = cache.path().join("images");
    let t = Instant::now();
    let under_way = || {
        std::fs::read_dir(&images).into_iter().flatten().flatten().any(|e| {
            e.file_name().to_string_lossy().starts_with(".tmp-") && std::fs::read_dir(e.path()).map(|mut rd| rd.next().is_some()).unwrap_or(false)
        })
    };
    while !under_way() {
        assert!(t.elapsed() < Duration::from_secs(120), "the build made no temporary directory in 2 minutes");
        assert!(victim.try_wait().expect("try_wait").is_none(), "the build ended before it could be interrupted");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: SIGKILL to the build we spawned.
    unsafe {
        libc::kill(victim.id() as i32, libc::SIGKILL);
    }
    let _ = victim.wait();
    let list = xdriver().args(["image", "list", "--json"]).env("XDRIVER_CACHE_DIR", cache.path()).output().expect("list");
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]", "a killed build left an entry");
    let leftovers = std::fs::read_dir(&images).map(|rd| rd.count()).unwrap_or(0);
    assert!(leftovers > 0, "expected the interrupted build's .tmp directory");
    // The killed build's mmdebstrap may still be running (and have its
    // mounts inside the rootfs) for a while; gc leaves the directory alone
    // until then, and removes it afterwards.
    let t = Instant::now();
    loop {
        let gc = xdriver().args(["image", "gc"]).env("XDRIVER_CACHE_DIR", cache.path()).output().expect("gc");
        assert!(gc.status.success());
        if std::fs::read_dir(&images).map(|rd| rd.count()).unwrap_or(0) == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(180), "gc left the .tmp directory for 3 minutes");
        std::thread::sleep(Duration::from_secs(3));
    }

    // Two builds at once: both succeed with the same image, built once.
    let (a, b) = (build(), build());
    let (a, b) = (a.wait_with_output().expect("a"), b.wait_with_output().expect("b"));
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let ma: serde_json::Value = serde_json::from_slice(&a.stdout).expect("json");
    let mb: serde_json::Value = serde_json::from_slice(&b.stdout).expect("json");
    assert_eq!(ma[0]["ssh_host_key"], mb[0]["ssh_host_key"], "two different builds");
    assert_eq!(ma[0]["created_at"], mb[0]["created_at"]);
    assert_eq!(std::fs::read_dir(&images).expect("images").count(), 1);
}
