//! Debian 13 (trixie, stable) built by xdriver, every init, on real VMs
//! under TCG through the real `xdriver test`: the seed's webapps example,
//! one cell per manager (three privileged, three unprivileged), as CI's
//! share of the multi-release matrix (the whole 36-cell matrix over
//! Debian 12, 13 and 14 is `bash scripts/releases-matrix`). Debian 14
//! (testing) is left out of the suite on purpose: a transition in testing
//! must not keep work from landing.

use std::process::Command;

use xdriver_tests::{example, webapp_dir, xdriver_bin};

fn webapps_on(os: &str, managers: &str, profile: &str) {
    let results = xdriver_tests::workdir();
    let out = Command::new(xdriver_bin())
        .arg("test")
        .arg(example("webapps"))
        .args(["--accel", "tcg", "--os", os, "--manager", managers, "--profile", profile, "--jobs", "1", "--retries", "1", "--no-progress", "--results-dir"])
        .arg(results.path())
        .env("XDRIVER_WEBAPP_DIR", webapp_dir())
        .output()
        .expect("xdriver runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{stdout}");
    let n = managers.split(',').count();
    for m in managers.split(',') {
        assert!(stdout.contains(&format!("PASS  {os}/{m}/{profile}")), "{m}:\n{stdout}");
    }
    assert!(stdout.contains(&format!("{n} cells: {n} passed")), "{stdout}");
}

#[test]
fn debian_13_runs_the_webapps_example_privileged_under_systemd_openrc_and_s6() {
    webapps_on("debian-13", "systemd,openrc,s6", "privileged");
}

#[test]
fn debian_13_runs_the_webapps_example_unprivileged_under_sysvinit_runit_and_supervisord() {
    webapps_on("debian-13", "sysvinit,runit,supervisord", "unprivileged");
}

/// A guest without logind (a minimal image: no dbus, so neither
/// `loginctl enable-linger` nor user@UID.service can work) still gets the
/// unprivileged profile's `systemd --user`: the systemd backend's own
/// bootstrap commands, as `xdriver plan` prints them, run on a Debian 13
/// guest whose D-Bus and logind are masked, then a user service runs.
#[test]
fn the_unprivileged_systemd_bootstrap_starts_a_user_manager_without_logind() {
    let work = xdriver_tests::workdir();
    let plan = xdriver_tests::run_xdriver(
        &["plan", example("webapps").to_str().expect("utf-8"), "--os", "debian-13", "--manager", "systemd", "--profile", "unprivileged"],
        work.path(),
    );
    let bootstrap: Vec<&str> = plan.stdout.lines().filter_map(|l| l.strip_prefix("[bootstrap] $ ")).collect();
    assert_eq!(bootstrap.len(), 2, "{}", plan.stdout);
    let user = "runuser -u unprivileged -- env XDG_RUNTIME_DIR=/run/user/1000";
    let script = format!(
        "systemctl mask --now dbus.socket dbus.service systemd-logind.service >/dev/null 2>&1; \
         useradd -m -u 1000 -g users unprivileged; loginctl list-users >/dev/null 2>&1 || echo no-logind; \
         {} && {} && {user} systemd-run --user --quiet --unit=probe sleep 600 && {user} systemctl --user is-active probe",
        bootstrap[0], bootstrap[1]
    );
    let run = xdriver_tests::run_xdriver(&["run", "--image", "debian-13-systemd", "--accel", "tcg", "--no-store", "--channel", "backdoor", "--", &script], work.path());
    assert_eq!((run.code, run.stdout.as_str()), (0, "no-logind\nactive\n"), "{}", run.stderr);
    assert!(run.stderr.contains("no logind to linger with"), "{}", run.stderr);
}

/// xdriver's early boot (one script instead of Debian's rcS scripts) and
/// its SSH channel on every Debian 13 image: the hostname, /dev/pts,
/// /run/utmp and /etc/mtab are as Debian's scripts leave them, and sshd
/// answers on xdriver's port (Debian 13's runit image had no sshd until
/// its service was linked).
#[test]
fn every_debian_13_init_boots_through_xdrivers_early_boot_and_serves_ssh() {
    let work = xdriver_tests::workdir();
    let probe = "hostname; grep -c ' /dev/pts devpts ' /proc/mounts; readlink /etc/mtab; \
                 stat -c '%G %a' /run/utmp 2>&1; ls -d /run/network 2>&1; true";
    for init in ["systemd", "sysvinit", "openrc", "runit"] {
        let image = format!("debian-13-{init}");
        let run = xdriver_tests::run_xdriver(&["run", "--image", &image, "--accel", "tcg", "--no-store", "--channel", "ssh", "--", probe], work.path());
        assert_eq!(run.code, 0, "{image}: {}", run.stderr);
        // Debian 13's systemd keeps no utmp (wtmpdb), and ifupdown is
        // masked there: the last two lines are the other inits' only.
        let want = if init == "systemd" { "xdriver\n1\n../proc/self/mounts\n" } else { "xdriver\n1\n../proc/self/mounts\nutmp 664\n/run/network\n" };
        assert!(run.stdout.starts_with(want), "{image}: {:?}", run.stdout);
    }
}
