//! The example systems under every Debian manager and both profiles, on
//! real VMs under TCG, through the real `xdriver test` binary: the seed's
//! webapps system and the chain system must pass on every supported cell
//! (openrc's unprivileged cell is skipped with its reason), the daemons
//! example from Debian's packages (a derived image per init), and the chain's
//! deliberately broken test must be reported as a failure (exit 100).

use std::process::Command;

use xdriver_tests::{webapp_dir, example, xdriver_bin};

struct Run {
    code: i32,
    stdout: String,
    results: xdriver_tests::Work,
}

fn xdriver_test(example_name: &str, args: &[&str]) -> Run {
    let results = xdriver_tests::workdir();
    let out = Command::new(xdriver_bin())
        .arg("test")
        .arg(example(example_name))
        .args(["--accel", "tcg", "--results-dir"])
        .arg(results.path())
        // nextest already runs two tests at once: one VM per test keeps the
        // host at two 2-vCPU guests on two cores (more starve under TCG).
        .args(["--jobs", "1"])
        // A guest that does not come up (once in a clean-clone run here: an
        // RCU stall under TCG before the init ran) is booted again, as CI
        // users run it; a failing test is never retried, and the report
        // says how many tries a cell took.
        .args(["--retries", "1"])
        .args(args)
        .env("XDRIVER_WEBAPP_DIR", webapp_dir())
        .output()
        .expect("xdriver runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    Run { code: out.status.code().unwrap_or(-1), stdout, results }
}

fn both_profiles_pass(example_name: &str, manager: &str) {
    let run = xdriver_test(example_name, &["--manager", manager]);
    if run.code != 0 {
        // Show the failing cells' transcripts in the test output.
        for e in xdriver_tests::files_under(run.results.path()).into_iter().filter(|p| p.ends_with("commands.log")) {
            eprintln!("=== {}\n{}", e.display(), std::fs::read_to_string(&e).unwrap_or_default());
        }
    }
    assert_eq!(run.code, 0, "{example_name} under {manager}:\n{}", run.stdout);
    assert!(run.stdout.contains(&format!("PASS  debian-12/{manager}/privileged")), "{}", run.stdout);
    if manager == "openrc" {
        assert!(run.stdout.contains("SKIP  debian-12/openrc/unprivileged"), "{}", run.stdout);
        assert!(run.stdout.contains("no user services"), "{}", run.stdout);
    } else {
        assert!(run.stdout.contains(&format!("PASS  debian-12/{manager}/unprivileged")), "{}", run.stdout);
    }
    if example_name == "chain" {
        // copy_to_vm took the spec's template into the guest and
        // copy_from_vm brought that directory back into the cell's results.
        let want = std::fs::read(example("chain").join("proxy.conf.j2")).expect("template");
        for profile in ["privileged", "unprivileged"] {
            if manager == "openrc" && profile == "unprivileged" {
                continue;
            }
            let got = run.results.path().join(format!("chain/debian-12-{manager}-{profile}/from-guest/from-host/proxy.conf.j2"));
            assert_eq!(std::fs::read(&got).ok().as_ref(), Some(&want), "{}: not the spec's file", got.display());
        }
    }
}

macro_rules! cells {
    ($($name:ident: $example:literal, $manager:literal;)*) => {
        $(
            #[test]
            fn $name() {
                both_profiles_pass($example, $manager);
            }
        )*
    };
}

cells! {
    webapps_systemd: "webapps", "systemd";
    webapps_sysvinit: "webapps", "sysvinit";
    webapps_openrc: "webapps", "openrc";
    webapps_runit: "webapps", "runit";
    webapps_s6: "webapps", "s6";
    webapps_supervisord: "webapps", "supervisord";
    chain_systemd: "chain", "systemd";
    chain_sysvinit: "chain", "sysvinit";
    chain_openrc: "chain", "openrc";
    chain_runit: "chain", "runit";
    chain_s6: "chain", "s6";
    chain_supervisord: "chain", "supervisord";
}

#[test]
fn a_failing_test_is_reported_as_failing() {
    let run = xdriver_test("chain", &["--manager", "supervisord", "--profile", "privileged", "--set", "brokenTest=true"]);
    assert_eq!(run.code, 100, "{}", run.stdout);
    assert!(run.stdout.contains("FAIL  debian-12/supervisord/privileged"), "{}", run.stdout);
    assert!(run.stdout.contains("postTests › deliberately broken test"), "{}", run.stdout);
    let cell = run.results.path().join("chain/debian-12-supervisord-privileged");
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cell.join("result.json")).expect("result.json")).expect("json");
    assert_eq!(result["outcome"]["status"], "fail");
    assert_eq!(result["outcome"]["group"], "postTests");
    // Everything before the broken step passed, and the artifacts are kept.
    assert_eq!(result["steps_passed"].as_u64(), result["steps_total"].as_u64().map(|t| t - 1));
    let log = std::fs::read_to_string(cell.join("commands.log")).expect("commands.log");
    assert!(log.contains("text that is not on the page"), "{log}");
    assert!(cell.join("serial.log").metadata().expect("serial.log").len() > 0);
    assert!(cell.join("configs/var/lib/supervisord/conf.d/backend.conf").is_file());
    assert!(cell.join("guest-logs/backend.log").is_file());
}

/// Debian's own daemons, installed by the spec's `[guest]` table into a
/// derived image per init system, run by `manager` in both profiles; the
/// packages' own services stay off (their default ports are the
/// instances'), and the derived image's manifest says which it disabled.
fn daemons_pass(manager: &str) {
    both_profiles_pass("daemons", manager);
    let init = match manager {
        "s6" | "supervisord" => "sysvinit",
        other => other,
    };
    let spec_packages = ["redis-server", "postgresql", "memcached", "xinetd", "cron"];
    let derived = xdriver_tests::image_cache()
        .list()
        .expect("list")
        .into_iter()
        .find(|e| e.current && e.manifest.init.to_string() == init && e.manifest.derived.as_ref().is_some_and(|d| d.additions.packages == spec_packages))
        .unwrap_or_else(|| panic!("no derived debian-12-{init} image in the cache"));
    assert!(derived.manifest.name.starts_with(&format!("debian-12-{init}+")), "{}", derived.manifest.name);
    let d = derived.manifest.derived.as_ref().expect("derived");
    for s in ["redis-server.service", "postgresql.service", "memcached.service", "cron.service", "/etc/init.d/xinetd", "/etc/init.d/redis-server"] {
        assert!(d.disabled_services.iter().any(|x| x == s), "{}: {s} not disabled: {:?}", derived.manifest.name, d.disabled_services);
    }
}

macro_rules! daemons {
    ($($name:ident: $manager:literal;)*) => {
        $(
            #[test]
            fn $name() {
                daemons_pass($manager);
            }
        )*
    };
}

daemons! {
    daemons_systemd: "systemd";
    daemons_sysvinit: "sysvinit";
    daemons_openrc: "openrc";
    daemons_runit: "runit";
    daemons_s6: "s6";
    daemons_supervisord: "supervisord";
}
