//! Cells of several machines, for real, through `xdriver test`: the
//! client-server examples (nginx on a `server` node whose manager and
//! profile the cell gives, a Debian 13 sysvinit `client` node that stays
//! fixed) on a vde vlan, by name, over IPv4 and IPv6, across a partition
//! (`block()` cuts the server's vlan NIC), as TOML steps and as a NixOS-style
//! Python testScript, and from Nix. One cell each (CI's share; the whole
//! matrix is `xdriver test tests/examples/client-server`).

use xdriver_tests::{example, run_xdriver};

fn cell(example_name: &str, os: &str, manager: &str, profile: &str) -> (xdriver_tests::Work, std::path::PathBuf) {
    let work = xdriver_tests::workdir();
    let spec = example(example_name);
    let run = run_xdriver(
        &["test", spec.to_str().expect("utf-8"), "--accel", "tcg", "--os", os, "--manager", manager, "--profile", profile, "--retries", "1", "--no-progress", "--results-dir", "results"],
        work.path(),
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, run.stdout);
    assert!(run.stdout.contains(&format!("PASS  {os}/{manager}/{profile}")), "{}", run.stdout);
    let dir = work.path().join("results").join(example_name).join(format!("{os}-{manager}-{profile}"));
    (work, dir)
}

fn steps_of(dir: &std::path::Path) -> Vec<(String, String)> {
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("result.json")).expect("result.json")).expect("json");
    let mut out = Vec::new();
    for g in r["groups"].as_array().expect("groups") {
        for s in g["steps"].as_array().expect("steps") {
            out.push((s["name"].as_str().unwrap_or_default().to_string(), s["status"].as_str().unwrap_or_default().to_string()));
        }
    }
    out
}

#[test]
fn a_client_node_reaches_the_server_node_by_name_until_it_is_cut_off_in_toml_and_in_python() {
    // TOML steps, the server under systemd, privileged.
    let (_w, dir) = cell("client-server", "debian-12", "systemd", "privileged");
    let steps = steps_of(&dir);
    for want in [
        "client: the client reaches the server by name",
        "client: and over IPv6",
        // The client's own [guest] (wget), not the server's.
        "client: the client's own [guest] brought wget",
        "server: which the server's image has not",
        "server: block()",
        "client: the client's request fails while the server is cut off",
        "server: unblock()",
        "client: and succeeds once it is back",
    ] {
        let found = steps.iter().find(|(n, _)| n == want);
        assert_eq!(found.map(|(_, s)| s.as_str()), Some("pass"), "{want}: {steps:?}");
    }
    for node in ["server", "client"] {
        let log = std::fs::read_to_string(dir.join("nodes").join(node).join("serial.log")).expect("the node's serial log");
        assert!(!log.is_empty(), "{node}");
        assert!(dir.join("nodes").join(node).join("commands.json").is_file(), "{node}");
    }
    // The server's nginx config went to the server only.
    assert!(dir.join("configs/server").is_dir() && !dir.join("configs/client").exists());

    // The same test as Python, the server under runit, unprivileged, on
    // Debian 13 (the client node is Debian 13 sysvinit in both).
    let (_w, dir) = cell("client-server-python", "debian-13", "runit", "unprivileged");
    let steps = steps_of(&dir);
    for want in ["server.wait_for_unit('web')", "client.fail('curl -sf --max-time 5 http://server:8080/')", "server.block()", "server.unblock()", "client.reboot()", "client.start()"] {
        let found = steps.iter().find(|(n, _)| n == want);
        assert_eq!(found.map(|(_, s)| s.as_str()), Some("pass"), "{want}: {steps:?}");
    }

    // And from Nix (testService's `nodes`, Python hooks), the server under
    // s6, unprivileged: Nix sorts the nodes, so `client` is node 1 there.
    let (_w, dir) = cell("client-server-nix", "debian-12", "s6", "unprivileged");
    let steps = steps_of(&dir);
    for want in [
        "server.wait_for_open_port(8080)",
        "client.succeed(\"wget -qO- http://server:8080/ | grep -q 'hello from the server'\")",
        "server.fail('command -v wget')",
        "server.block()",
        "client.fail('curl -sf --max-time 5 http://server:8080/')",
    ] {
        let found = steps.iter().find(|(n, _)| n == want);
        assert_eq!(found.map(|(_, s)| s.as_str()), Some("pass"), "{want}: {steps:?}");
    }
    let plan: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("plan.json")).expect("plan.json")).expect("json");
    assert_eq!(plan["nodes"][0]["node"]["name"], "client", "{plan}");
    assert_eq!(plan["nodes"][0]["node"]["index"], 1);
}

#[test]
fn a_bad_node_is_a_spec_error_with_its_place() {
    let work = xdriver_tests::workdir();
    std::fs::write(
        work.path().join("xdriver.toml"),
        "name = \"n\"\n[nodes.server]\n[nodes.client]\nvlans = [300]\n[instances.web]\nprocess.foreground = [\"/bin/true\"]\n",
    )
    .expect("write");
    let run = run_xdriver(&["test", "xdriver.toml", "--os", "debian-12", "--manager", "systemd"], work.path());
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("xdriver.toml:4:10") && run.stderr.contains("vlan 300 is out of range"), "{}", run.stderr);
}

/// A node that cannot boot (40 MiB of RAM: the guest dies before its
/// kernel prints a line and QEMU, run with -no-reboot, exits) makes
/// the cell an infrastructure error naming it; the node that came up is
/// torn down with its console kept, the failed one's logs are kept, and no
/// QEMU or vde_switch of the cell is left.
#[test]
fn a_node_that_fails_to_boot_is_an_infrastructure_error_and_nothing_is_left_running() {
    let work = xdriver_tests::workdir();
    std::fs::write(
        work.path().join("xdriver.toml"),
        "name = \"nodefail\"\n[nodes.lonely]\n[nodes.starved]\nmemory_mib = 40\n[instances.web]\nprocess.foreground = [\"/bin/sleep\", \"600\"]\n",
    )
    .expect("write");
    let run = run_xdriver(
        &["test", "xdriver.toml", "--os", "debian-12", "--manager", "systemd", "--profile", "privileged", "--accel", "tcg", "--no-progress", "--results-dir", "results"],
        work.path(),
    );
    assert_eq!(run.code, 125, "{}\n{}", run.stderr, run.stdout);
    assert!(run.stdout.contains("ERROR debian-12/systemd/privileged") && run.stdout.contains("node starved: boot: QEMU exited"), "{}", run.stdout);
    let cell = work.path().join("results/nodefail/debian-12-systemd-privileged/nodes");
    let up = std::fs::read_to_string(cell.join("lonely/serial.log")).expect("the node that came up keeps its console");
    assert!(up.contains("Linux version"), "{up}");
    assert!(cell.join("starved/qemu.cmdline").is_file(), "the failed node's logs");
    // No QEMU of either node is left.
    for label in ["cell-lonely-debian-12-sy", "cell-starved-debian-12-s"] {
        let left = std::process::Command::new("pgrep").args(["-f", label]).output().expect("pgrep");
        assert!(left.stdout.is_empty(), "{label}: {}", String::from_utf8_lossy(&left.stdout));
    }
    // Every vde_switch still running (other tests' included) has its
    // socket directory: a leaked one would name the cell's removed one.
    let out = std::process::Command::new("pgrep").args(["-a", "vde_switch"]).output().expect("pgrep");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let sock = line.split_whitespace().skip_while(|w| *w != "-s" && *w != "--sock").nth(1).unwrap_or_default();
        assert!(std::path::Path::new(sock).is_dir(), "a vde_switch outlived its run directory: {line}");
    }
}
