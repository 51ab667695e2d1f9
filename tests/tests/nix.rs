//! The Nix front end through the real binary: the seed's webapps system
//! written in Nix with step lists means the same as the TOML example
//! (identical plans); the seed's own Nix text (Python tests) passes on
//! every Debian cell with the webapp built by the host's Nix and run from
//! /nix/store over 9p and virtiofs; Nix's own errors reach the user with
//! their location.

use std::path::Path;

use xdriver_tests::run_xdriver as xdriver;
use xdriver_tests::{example, Run};

#[test]
fn the_webapps_system_in_nix_has_the_same_plan_as_in_toml() {
    let here = xdriver_tests::workdir();
    let toml = example("webapps");
    let nix = example("webapps-nix-steps");
    for json in [false, true] {
        let mut a = vec!["plan", toml.to_str().expect("utf-8")];
        let mut b = vec!["plan", nix.to_str().expect("utf-8")];
        if json {
            a.push("--json");
            b.push("--json");
        }
        let (t, n) = (xdriver(&a, here.path()), xdriver(&b, here.path()));
        assert_eq!((t.code, n.code), (0, 0), "{}\n{}", t.stderr, n.stderr);
        // The whole matrix: 12 cells, every process, file, command and step.
        assert_eq!(t.stdout.matches("=== cell ").count() + t.stdout.matches("\"cell\"").count(), 12);
        assert!(t.stdout.contains("nginx.conf"));
        assert!(t.stdout == n.stdout, "the Nix plan differs from the TOML plan (json: {json})");
    }
    // One cell by attribute, as nix-processmgmt names them.
    let one = xdriver(&["plan", nix.to_str().expect("utf-8"), "-A", "nginx-reverse-proxy-hostbased.unprivileged.runit"], here.path());
    assert_eq!(one.code, 0, "{}", one.stderr);
    assert_eq!(one.stdout.matches("=== cell ").count(), 1);
    assert!(one.stdout.contains("=== cell debian-12/runit/unprivileged"), "{}", one.stdout);
    let toml_one = xdriver(&["plan", toml.to_str().expect("utf-8"), "--manager", "runit", "--profile", "unprivileged"], here.path());
    assert_eq!(one.stdout, toml_one.stdout);
}

fn run_seed(extra: &[&str]) -> (Run, xdriver_tests::Work) {
    let work = xdriver_tests::workdir();
    let nix = example("webapps-nix");
    let mut args = vec!["test", nix.to_str().expect("utf-8"), "--accel", "tcg", "--no-progress", "--retries", "1"];
    args.extend_from_slice(extra);
    let run = xdriver(&args, work.path());
    (run, work)
}

/// The seed's own text (tests/examples/webapps-nix): its composition, its
/// test file whose readiness and tests are Python for `machine`, its
/// processes-advanced.nix, and constructors that import nix-processmgmt's
/// universal createManagedProcess, the webapp built by the host's Nix and
/// run from /nix/store over 9p: sysvinit (daemons) and s6 (supervised,
/// readiness notification) in both profiles. (Every Debian cell passes by
/// hand, `xdriver test tests/examples/webapps-nix -A
/// nginx-reverse-proxy-hostbased`; the TOML example covers every cell in
/// the suite, with a plan the Nix steps form matches.)
#[test]
fn the_seeds_nix_files_pass_under_sysvinit_and_s6_with_the_webapp_from_the_host_store_over_9p() {
    let (run, work) = run_seed(&["-A", "nginx-reverse-proxy-hostbased", "--manager", "sysvinit,s6", "--share-fs", "9p", "--jobs", "2"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("store /nix/store shared into debian-12 guests over 9p (--share-fs 9p)"), "{}", run.stderr);
    for m in ["sysvinit", "s6"] {
        for p in ["privileged", "unprivileged"] {
            assert!(run.stdout.contains(&format!("PASS  debian-12/{m}/{p}")), "{m}/{p}: {}", run.stdout);
        }
    }
    assert!(run.stdout.contains("4 cells: 4 passed"), "{}", run.stdout);
    let cell = work.path().join("xdriver-results/nginx-reverse-proxy-hostbased/debian-12-sysvinit-privileged");
    // The seed's Python ran: one step per call, in nix-processmgmt's order.
    let result: serde_json::Value = serde_json::from_slice(&std::fs::read(cell.join("result.json")).expect("result.json")).expect("json");
    let groups: Vec<&str> = result["groups"].as_array().expect("groups").iter().map(|g| g["name"].as_str().unwrap_or_default()).collect();
    assert_eq!(&groups[1..4], ["initialTests", "readiness/nginx", "readiness/nginx2"], "{groups:?}");
    let script = std::fs::read_to_string(cell.join("test-script.py")).expect("test-script.py");
    assert!(script.contains("machine.wait_for_open_port(80)") && script.contains("curl --fail -H 'Host: webapp6.local' http://localhost:81 | grep ': 5005'"), "{script}");
    // The services ran the webapp from /nix/store, built by the host.
    let init = std::fs::read_to_string(cell.join("configs/etc/init.d/webapp1")).expect("rendered init script");
    let bin = init.split_whitespace().find(|w| w.starts_with("/nix/store/") && w.contains("-xdriver-webapp/bin/")).expect("store path");
    assert!(Path::new(bin.trim_matches(|c| c == '"' || c == '\'')).is_file(), "{bin} not built on the host");
    // nix-processmgmt's runlevels override reached the sysvinit backend.
    assert!(init.contains("# Default-Start:     3 4 5"), "{init}");
}

#[test]
fn the_seeds_nix_files_pass_with_the_store_over_virtiofs() {
    let (run, _work) = run_seed(&["-A", "nginx-reverse-proxy-hostbased.privileged.systemd", "--share-fs", "virtiofs"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("over virtiofs (--share-fs virtiofs"), "{}", run.stderr);
    assert!(run.stdout.contains("PASS  debian-12/systemd/privileged"), "{}", run.stdout);
}

/// A test in the style of nix-processmgmt-services' sshd test
/// (tests/examples/sshd-nix): two sshd instances deployed by the cell's
/// manager, a key made by initialTests and authorized for root (a fresh
/// `mkdir -m 700 /root/.ssh`: xdriver's own key is elsewhere, and Debian's
/// systemd no longer makes the directory at boot) or for `unprivileged`,
/// and logins over SSH to each instance, under systemd: privileged on 22
/// (free: xdriver's sshd is on 10022) and 23, unprivileged on 2222 and
/// 2223 through `su`. (Every cell passes by hand: docs/nix.md.)
#[test]
fn the_sshd_test_logs_in_to_two_sshd_instances_as_root_on_22_and_as_unprivileged() {
    let work = xdriver_tests::workdir();
    let spec = example("sshd-nix");
    let runs: [(&[&str], &[&str]); 1] =
        [(&["--manager", "systemd", "--jobs", "2"], &["debian-12/systemd/privileged", "debian-12/systemd/unprivileged"])];
    for (extra, cells) in runs {
        let mut args = vec!["test", spec.to_str().expect("utf-8"), "--accel", "tcg", "--no-progress", "--retries", "1"];
        args.extend_from_slice(extra);
        let run = xdriver(&args, work.path());
        assert_eq!(run.code, 0, "{extra:?}:\n{}\n{}", run.stdout, run.stderr);
        for cell in cells {
            assert!(run.stdout.contains(&format!("PASS  {cell}")), "{}", run.stdout);
            let dir = work.path().join("xdriver-results/sshd").join(cell.replace('/', "-"));
            let log = std::fs::read_to_string(dir.join("commands.log")).expect("commands.log");
            let logins: Vec<&str> = log.lines().filter(|l| l.contains("$ ") && l.contains("ssh -i key")).collect();
            assert_eq!(logins.len(), 2, "{logins:?}");
            if cell.ends_with("/privileged") {
                assert!(logins[0].contains("StrictHostKeyChecking=no localhost") && logins[1].contains("-p 23 localhost"), "{logins:?}");
            } else {
                assert!(logins.iter().all(|l| l.contains("su unprivileged -c")) && logins[1].contains("-p 2223 "), "{logins:?}");
            }
        }
    }
}

#[test]
fn nix_errors_come_with_nixs_message_and_location() {
    let d = xdriver_tests::workdir();
    let write = |name: &str, text: &str| write_file(d.path(), name, text);
    // A syntax error: Nix's message, file and line; a usage error (2).
    let bad = write("syntax.nix", "{ xdriver ? import <xdriver> { } }:\n{\n  broken = ;\n}\n");
    let r = xdriver(&["plan", &bad], d.path());
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("syntax error") && r.stderr.contains(&format!("{bad}:3")), "{}", r.stderr);
    // A misspelt process attribute: createManagedProcess names it and says where.
    let model = write(
        "model.nix",
        "{ createManagedProcess, ... }:\n{\n  a = {\n    port = 1;\n    pkg = createManagedProcess {\n      instanceName = \"a\";\n      foregroundProces = \"/bin/true\";\n    };\n  };\n}\n",
    );
    let spec = write(
        "spec.nix",
        "{ xdriver ? import <xdriver> { } }:\n{\n  t = xdriver.testService { name = \"t\"; exprFile = ./model.nix; processManagers = [ \"sysvinit\" ]; profiles = [ \"privileged\" ]; };\n}\n",
    );
    let r = xdriver(&["plan", &spec], d.path());
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("createManagedProcess: unknown attribute `foregroundProces`") && r.stderr.contains(&format!("{model}:7")),
        "{}",
        r.stderr
    );
    let _ = model;
    // A misspelt attribute in a node's own guest table names the node.
    write("good.nix", "{ createManagedProcess, ... }:\n{\n  a = {\n    pkg = createManagedProcess {\n      instanceName = \"a\";\n      foregroundProcess = \"/bin/true\";\n    };\n  };\n}\n");
    let nodes = write(
        "nodes.nix",
        "{ xdriver ? import <xdriver> { } }:\n{\n  t = xdriver.testService { name = \"t\"; exprFile = ./good.nix; processManagers = [ \"sysvinit\" ]; profiles = [ \"privileged\" ]; nodes = { a = { guest = { pakages = [ ]; }; }; }; };\n}\n",
    );
    let r = xdriver(&["plan", &nodes], d.path());
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("nodes.a.guest has no attribute `pakages`"), "{}", r.stderr);
    // An attribute that is not there.
    let r = xdriver(&["plan", &spec, "-A", "t.privileged.systemd"], d.path());
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("attribute 'systemd'") && r.stderr.contains("t.privileged.systemd"), "{}", r.stderr);
    // A value that holds no cells.
    let none = write("none.nix", "{ }:\n{ a = 1; }\n");
    let r = xdriver(&["plan", &none], d.path());
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("holds no xdriver cells"), "{}", r.stderr);
    // TOML-only and Nix-only flags are refused, not ignored.
    let r = xdriver(&["plan", &spec, "--set", "x=1"], d.path());
    assert!(r.code == 2 && r.stderr.contains("--arg NAME EXPR"), "{}", r.stderr);
    let toml = example("webapps");
    let r = xdriver(&["plan", toml.to_str().expect("utf-8"), "-A", "x"], d.path());
    assert!(r.code == 2 && r.stderr.contains("for Nix specs"), "{}", r.stderr);
}

/// nix-processmgmt lets `extraParams` hold any Nix value and `nixosConfig`
/// be a module function: the cell still evaluates (a function becomes a
/// note of what it was, a big attribute set such as nixpkgs' `pkgs` is not
/// walked, a path becomes its string), and nixosConfig is reported as
/// ignored on a guest that is not NixOS.
/// Writes `text` to `dir/name`; returns the path.
fn write_file(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

#[test]
fn extra_params_may_hold_functions_and_nixos_config_may_be_a_module_function() {
    let d = xdriver_tests::workdir();
    write_file(
        d.path(),
        "model.nix",
        "{ createManagedProcess, n, ... }:\n{ a = { port = 7000 + n; pkg = createManagedProcess { instanceName = \"a\"; foreground = [ \"/bin/sleep\" \"100${toString n}\" ]; }; }; }\n",
    );
    write_file(
        d.path(),
        "default.nix",
        "{ xdriver ? import <xdriver> { } }:\n{ t = xdriver.testService {\n  name = \"t\"; exprFile = ./model.nix; processManagers = [ \"sysvinit\" ]; profiles = [ \"privileged\" ];\n  \
         extraParams = { n = 1; f = x: x; here = ./model.nix; big = builtins.listToAttrs (builtins.genList (i: { name = \"a${toString i}\"; value = i; }) 100); };\n  \
         nixosConfig = { config, pkgs, ... }: { services.openssh.enable = true; };\n}; }\n",
    );
    let r = xdriver(&["plan", d.path().to_str().expect("utf-8"), "--json"], d.path());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("nixosConfig applies to NixOS guests only; ignored on debian-12"), "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    let text = v.to_string();
    assert!(text.contains("\"/bin/sleep\",\"1001\""), "the model got n = 1 from extraParams: {text}");
}

#[test]
fn system_packages_and_store_paths_of_a_nix_spec_reach_the_plan() {
    // A tool added to the store by the spec itself (`builtins.path` in
    // read-write evaluation) and listed in systemPackages: linked onto the
    // guest's PATH first, and used by a test step.
    let d = xdriver_tests::workdir();
    std::fs::create_dir_all(d.path().join("tool/bin")).expect("mkdir");
    std::fs::write(d.path().join("tool/bin/xd-hello"), "#!/bin/sh\necho hello\n").expect("write");
    write_file(
        d.path(),
        "model.nix",
        "{ createManagedProcess, ... }:\n{ a = { port = 7000; pkg = createManagedProcess { instanceName = \"a\"; foreground = [ \"/bin/sleep\" \"1000\" ]; }; }; }\n",
    );
    write_file(
        d.path(),
        "default.nix",
        "{ xdriver ? import <xdriver> { } }:\nlet tool = builtins.path { path = ./tool; name = \"xd-tool\"; }; in\n{ t = xdriver.testService {\n  name = \"t\"; exprFile = ./model.nix; processManagers = [ \"sysvinit\" ]; profiles = [ \"privileged\" ];\n  systemPackages = [ tool ];\n  tests = { instance, ... }: [ { succeed = \"xd-hello | grep hello\"; name = \"tool on PATH\"; } ];\n}; }\n",
    );
    let r = xdriver(&["plan", d.path().to_str().expect("utf-8"), "--json"], d.path());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    let steps = v[0]["steps"].as_array().expect("steps");
    let first = &steps[0];
    assert_eq!(first["group"], "initialTests");
    assert_eq!(first["name"], "systemPackages on PATH");
    let cmd = first["action"].to_string();
    let at = cmd.find("/nix/store/").unwrap_or_else(|| panic!("no store path in {cmd}"));
    let name_end = cmd[at + 11..].find('/').map(|i| at + 11 + i).expect("path end");
    let path = &cmd[at..name_end];
    assert!(path.ends_with("-xd-tool"), "{cmd}");
    assert!(Path::new(path).join("bin/xd-hello").is_file(), "{path} was not added to the host store");
    assert_eq!(steps.last().expect("a step")["name"], "tool on PATH");
}
