//! Resolution of the processes model: profiles, constructors, references,
//! order, conflicts, steps.

use std::collections::BTreeMap;
use std::path::Path;

use xdriver_guests::{Manager, Os, Profile};

use super::{CellCtx, Spec};

const SPEC: &str = r#"
name = "t"
[params]
greeting = "hi"
[constructors.app]
params.port = { type = "int" }
params.peers = { type = "instances", default = [] }
[constructors.app.process]
foreground = ["/bin/app", "{{ port }}"]
user = "{{ instanceName }}"
credentials.users = [{ name = "{{ instanceName }}" }]
environment = { GREETING = "{{ greeting }}" }
overrides.systemd = { environment = { EXTRA = "1" }, extra = { "Service.LimitNOFILE" = "99" } }
[instances.front]
constructor = "app"
port = "{{ 8080 if forceDisableUserChange else 80 }}"
peers = ["back"]
[instances.back]
constructor = "app"
port = 5000
dnsName = "back.local"
[tests]
tests = [ { if = "instanceName == 'front'", for = "p in instance.peers", succeed = "curl {{ p.dnsName }}:{{ p.port }}" } ]
"#;

fn cell(manager: Manager, unprivileged: bool) -> CellCtx {
    let profile = if unprivileged { Profile::unprivileged("u", 1000) } else { Profile::privileged() };
    CellCtx { os: Os::DEBIAN_12, manager, profile, overrides: BTreeMap::new() }
}

fn spec(text: &str) -> Spec {
    Spec::parse(Path::new("t.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn profiles_shape_the_model() {
    let s = spec(SPEC);
    let r = s.resolve(&cell(Manager::SYSVINIT, false)).expect("resolves");
    let names: Vec<&str> = r.system.processes.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["back", "front"], "dependencies first");
    let front = &r.system.processes[1];
    assert_eq!(front.foreground.as_deref(), Some(&["/bin/app".to_string(), "80".to_string()][..]));
    assert_eq!(front.user.as_deref(), Some("front"));
    assert_eq!(front.pid_file, "/tmp/front.pid", "a user-switching process keeps its pidfile in tmpDir");
    assert_eq!(front.dependencies, ["back"]);
    assert_eq!(front.credentials.users.len(), 1);
    assert_eq!(front.environment.get("GREETING").map(String::as_str), Some("hi"));
    assert!(front.extra.is_empty(), "systemd overrides stay with systemd");

    let r = s.resolve(&cell(Manager::SYSTEMD, true)).expect("resolves");
    let front = &r.system.processes[1];
    assert_eq!(front.foreground.as_ref().map(|a| a[1].as_str()), Some("8080"));
    assert_eq!(front.user, None, "user changes are disabled");
    assert!(front.credentials.users.is_empty());
    assert_eq!(front.pid_file, "/home/u/var/tmp/front.pid", "a process that names a user keeps its pidfile in tmpDir, as in nix-processmgmt");
    assert_eq!(front.environment.get("EXTRA").map(String::as_str), Some("1"));
    assert_eq!(front.extra.get("Service.LimitNOFILE").map(String::as_str), Some("99"));
}

#[test]
fn steps_expand_if_and_for_with_resolved_references() {
    let s = spec(SPEC);
    let r = s.resolve(&cell(Manager::S6, false)).expect("resolves");
    let steps = s.steps(&r).expect("steps");
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].group, "tests/front");
    assert_eq!(steps[0].action, super::Action::Succeed("curl back.local:5000".into()));
}

#[test]
fn only_instances_parameters_resolve_to_instances() {
    // A free attribute that happens to list instance names stays names.
    let s = spec(&SPEC.replace("peers = [\"back\"]", "peers = [\"back\"]\ntags = [\"back\"]"));
    let r = s.resolve(&cell(Manager::S6, false)).expect("resolves");
    let front = &r.instances["front"];
    assert_eq!(front["tags"], serde_json::json!(["back"]));
    assert_eq!(front["peers"][0]["dnsName"], "back.local");
}

#[test]
fn cycles_and_conflicts_are_errors() {
    let cyc = SPEC.replace("dnsName = \"back.local\"", "dnsName = \"back.local\"\npeers = [\"front\"]");
    let e = spec(&cyc).resolve(&cell(Manager::RUNIT, false)).expect_err("cycle");
    assert!(e.message.contains("dependency cycle among instances: back, front"), "{e}");
    let clash = SPEC.replace("port = 5000", "port = 80");
    let e = spec(&clash).resolve(&cell(Manager::RUNIT, false)).expect_err("conflict");
    assert!(e.message.contains("`back` and `front` both use port 80"), "{e}");
    // Unprivileged, front moves to 8080 and the clash disappears.
    assert!(spec(&clash).resolve(&cell(Manager::RUNIT, true)).is_ok());
}

#[test]
fn cells_follow_the_matrix_and_skip_with_reasons() {
    let s = spec(&format!("{SPEC}\n[matrix]\nmanagers = [\"openrc\", \"bsdrc\"]\n"));
    let cells = s.cells(&super::Selection::default()).expect("cells");
    let ids: Vec<(String, bool)> = cells.iter().map(|c| (c.id(), c.image.is_ok())).collect();
    assert_eq!(
        ids,
        [
            ("debian-12/openrc/privileged".to_string(), true),
            ("debian-12/openrc/unprivileged".to_string(), false),
            ("debian-12/bsdrc/privileged".to_string(), false),
            ("debian-12/bsdrc/unprivileged".to_string(), false),
        ]
    );
}

#[test]
fn nix_processmgmts_command_fields_derive_both_forms() {
    let s = spec(
        r#"
name = "t"
[instances.sshd]
port = 2222
process.process = "/usr/sbin/sshd"
process.args = ["-p", "{{ port }}", "-f", "/etc/x"]
process.foreground_process_extra_args = ["-D"]
process.path = ["/opt/tools"]
[instances.web]
process.process = "/bin/web"
process.daemon_args = ["-D"]
"#,
    );
    let r = s.resolve(&cell(Manager::SYSVINIT, false)).expect("resolves");
    let p = |n: &str| r.system.processes.iter().find(|p| p.name == n).expect("process").clone();
    let sshd = p("sshd");
    assert_eq!(sshd.foreground.as_deref().map(|a| a.join(" ")), Some("/usr/sbin/sshd -p 2222 -f /etc/x -D".into()));
    assert_eq!(sshd.daemon.as_deref().map(|a| a.join(" ")), Some("/usr/sbin/sshd -p 2222 -f /etc/x".into()), "daemonArgs = args ++ daemonExtraArgs");
    assert!(sshd.environment["PATH"].starts_with("/opt/tools/bin:/usr/local/sbin"), "{:?}", sshd.environment);
    let web = p("web");
    assert_eq!(web.daemon.as_deref().map(|a| a.join(" ")), Some("/bin/web -D".into()));
    assert_eq!(web.foreground.as_deref().map(|a| a.join(" ")), Some("/bin/web".into()));
    // Both forms of one command are refused, with where and what.
    let both = spec("name = \"t\"\n[instances.a]\nprocess.process = \"/bin/a\"\nprocess.daemon = [\"/bin/a\", \"-D\"]\n");
    let e = both.resolve(&cell(Manager::SYSVINIT, false)).expect_err("refused").to_string();
    assert!(e.contains("instance `a`: give `daemon` (an argv list) or `process`/`daemon_process`, not both") && e.contains("t.toml:2"), "{e}");
    let args_only = spec("name = \"t\"\n[instances.a]\nprocess.args = [\"x\"]\nprocess.foreground = [\"/bin/a\"]\n");
    let e = args_only.resolve(&cell(Manager::SYSVINIT, false)).expect_err("refused").to_string();
    assert!(e.contains("need `process`"), "{e}");
}

#[test]
fn an_instance_whose_if_is_false_is_not_in_the_cell() {
    let text = format!("{SPEC}\n[instances.rootonly]\nif = \"not forceDisableUserChange\"\nprocess.foreground = [\"/bin/cron\", \"-f\"]\n");
    let s = spec(&text);
    let names = |unprivileged| -> Vec<String> {
        let mut v: Vec<String> = s.resolve(&cell(Manager::RUNIT, unprivileged)).expect("resolves").system.processes.iter().map(|p| p.name.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(names(false), ["back", "front", "rootonly"]);
    assert_eq!(names(true), ["back", "front"]);
    // A reference to it where it is left out says why.
    let text = format!("{text}\n[instances.needy]\nprocess.foreground = [\"/bin/x\"]\nprocess.dependencies = [\"rootonly\"]\n");
    let e = spec(&text).resolve(&cell(Manager::RUNIT, true)).expect_err("depends on a left-out instance");
    assert!(e.to_string().contains("`rootonly`, which is not in this cell (its `if` is false here)"), "{e}");
    let e = Spec::parse(Path::new("t.toml"), &format!("{SPEC}\n[instances.x]\nif = true\nprocess.foreground = [\"/bin/x\"]\n"))
        .expect("parses")
        .resolve(&cell(Manager::RUNIT, true))
        .expect_err("if is not an expression");
    assert!(e.to_string().contains("`if` must be an expression"), "{e}");
}

#[test]
fn the_guest_table_gives_each_os_its_additions_and_checks_values_where_written() {
    let text = format!(
        "{SPEC}\n[guest]\npackages = [\"redis-server\", \"cron=3.0pl1-162\"]\nprepare = [\"pg_dropcluster 15 main\"]\nmemory_mib = 1536\ncpus = 1\n\
         [guest.os.debian-12-nix]\npackages = [\"memcached\"]\n"
    );
    let s = spec(&text);
    let a = s.file.guest.additions(Os::DEBIAN_12).expect("built OS").expect("adds");
    assert_eq!(a.packages, ["redis-server", "cron=3.0pl1-162"]);
    assert_eq!(a.prepare, ["pg_dropcluster 15 main"]);
    let nix_os: Os = "debian-12-nix".parse().expect("registered");
    let a = s.file.guest.additions(nix_os).expect("built OS").expect("adds");
    assert_eq!(a.packages, ["memcached"], "[guest.os.NAME] replaces the packages for that OS");
    assert_eq!(a.prepare, ["pg_dropcluster 15 main"], "and keeps what it does not say");
    // An imported Debian image takes packages (fetched by the host's apt at
    // its preparation), not a disk size; FreeBSD's take them through pkg
    // (unverified), NixOS's none.
    let cloud: Os = "debian-12-cloud".parse().expect("registered");
    let a = s.file.guest.additions(cloud).expect("Debian's packages").expect("adds");
    assert_eq!(a.packages, ["redis-server", "cron=3.0pl1-162"]);
    let sized = spec(&format!("{SPEC}\n[guest]\ndisk_mib = 4096\n"));
    let e = sized.file.guest.additions(cloud).expect_err("a vendor's disk keeps its size");
    assert!(e.contains("disk_mib applies to built images only"), "{e}");
    assert!(s.file.guest.additions(Os::FREEBSD).expect("pkg").is_some());
    let e = s.file.guest.additions(Os::NIXOS).expect_err("not wired for NixOS");
    assert!(e.contains("not implemented for imported nixos images") && e.contains("[guest.os.nixos]"), "{e}");
    // Nothing to add: the base image serves.
    assert!(spec(SPEC).file.guest.additions(Os::DEBIAN_12).expect("ok").is_none());

    for (bad, want) in [
        ("[guest]\npackages = [\"Redis\"]\n", "`Redis` is not a package name"),
        ("[guest]\npackages = [\"redis; rm -rf /\"]\n", "is not a package name"),
        ("[guest]\nmemory_mib = 64\n", "memory_mib = 64 is out of range"),
        ("[guest]\ncpus = 0\n", "cpus = 0 is out of range"),
        ("[guest]\ndisk_mib = 100\n", "disk_mib = 100 is too small"),
        ("[guest]\nprepare = [\" \"]\n", "an empty prepare command"),
        ("[guest]\nboot_services = [\"/etc/init.d/cron\"]\n", "is not a service name"),
        ("[guest.os.debian-11]\npackages = [\"x1\"]\n", "[guest.os.debian-11]"),
        ("[guest]\npackage = [\"x1\"]\n", "unknown field `package`"),
    ] {
        let text = format!("{SPEC}\n{bad}");
        let e = Spec::parse(Path::new("t.toml"), &text).expect_err(bad).to_string();
        assert!(e.contains(want), "{bad}: {e}");
        // It points into the [guest] lines, not at the file.
        let line: usize = e.split("t.toml:").nth(1).and_then(|r| r.split(':').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
        assert!(line > SPEC.lines().count(), "{bad}: where? {e}");
    }
}

const NODES: &str = r#"
name = "n"
[nodes.server]
instances = ["web"]
[nodes.client]
os = "debian-13"
manager = "sysvinit"
profile = "privileged"
vlans = [1, 2]
[instances.web]
process.foreground = ["/bin/web"]
[instances.other]
process.foreground = ["/bin/other"]
process.dependencies = ["web"]
[tests]
tests = [ { node = "client", succeed = "curl server" } ]
"#;

#[test]
fn nodes_take_what_they_do_not_set_from_the_cell() {
    use xdriver_guests::ProfileKind;
    let s = spec(NODES);
    let cell = super::Cell { os: Os::DEBIAN_12, manager: Manager::OPENRC, profile: ProfileKind::Unprivileged, image: Err("no image here".into()) };
    let nodes = s.nodes(&cell);
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["server", "client"], "file order");
    let (server, client) = (&nodes[0], &nodes[1]);
    assert_eq!((server.index, server.os, server.manager, server.profile), (1, Os::DEBIAN_12, Manager::OPENRC, ProfileKind::Unprivileged));
    assert_eq!(server.image, Err("no image here".into()), "the cell's own image and reason");
    assert_eq!(server.vlans, [1], "vlan 1 by default");
    assert_eq!((client.index, client.os, client.manager, client.profile), (2, Os::DEBIAN_13, Manager::SYSVINIT, ProfileKind::Privileged));
    assert_eq!(client.image.as_deref(), Ok("debian-13-sysvinit"));
    assert_eq!(client.vlans, [1, 2]);
    // Unplaced instances go to the first node.
    assert_eq!(super::node_of(&nodes, "web").name, "server");
    assert_eq!(super::node_of(&nodes, "other").name, "server");
    let steps = s.steps(&s.resolve(&self::cell(Manager::OPENRC, true)).expect("resolves")).expect("steps");
    assert!(steps.iter().all(|st| st.node.as_deref() == Some("client")), "{steps:?}");
    // Without [nodes]: one node, `machine`, the cell, on no vlan.
    let one = spec(SPEC).nodes(&cell);
    assert_eq!(one.len(), 1);
    assert_eq!((one[0].name.as_str(), one[0].vlans.len(), one[0].instances.is_none()), ("machine", 0, true));
}

#[test]
fn bad_nodes_are_spec_errors_that_say_where() {
    let cases = [
        ("[nodes.2fast]\n", "not a Python identifier", 2),
        ("[nodes.start_all]\n", "is taken", 2),
        ("[nodes.a]\nvlans = [0]\n", "vlan 0 is out of range", 3),
        ("[nodes.a]\nvlans = [3, 3]\n", "vlan 3 is listed twice", 3),
        ("[nodes.a]\ninstances = [\"nope\"]\n", "no instance `nope`", 3),
        ("[nodes.a]\ninstances = [\"web\"]\n[nodes.b]\ninstances = [\"web\"]\n", "placed on another node too", 5),
        ("[nodes.a]\nos = \"plan9\"\n", "node `a`", 3),
        ("[nodes.a]\nmanager = \"upstart\"\n", "node `a`", 3),
        ("[nodes.a]\n[nodes.a.guest]\npackages = [\"Not_A_Package\"]\n", "Not_A_Package", 4),
        ("[nodes.a.guest]\nmemory_mib = 1\n", "memory_mib", 3),
    ];
    for (nodes, want, line) in cases {
        let text = format!("name = \"n\"\n{nodes}[instances.web]\nprocess.foreground = [\"/bin/web\"]\n");
        let e = Spec::parse(Path::new("t.toml"), &text).expect_err(nodes);
        assert!(e.message.contains(want), "{nodes}: {e}");
        assert_eq!(e.at.map(|a| a.0), Some(line), "{nodes}: {e}");
    }
    // A step on a node the spec does not have: at the step.
    let text = "name = \"n\"\n[nodes.a]\n[instances.web]\nprocess.foreground = [\"/bin/web\"]\n[tests]\npost_tests = [ { node = \"b\", succeed = \"true\" } ]\n";
    let s = spec(text);
    let e = s.steps(&s.resolve(&cell(Manager::SYSTEMD, false)).expect("resolves")).expect_err("unknown node");
    assert!(e.message.contains("node `b`"), "{e}");
    assert_eq!(e.at.map(|a| a.0), Some(6), "{e}");
    // Without [nodes], only `machine`.
    let s = spec("name = \"n\"\n[instances.web]\nprocess.foreground = [\"/bin/web\"]\n[tests]\npost_tests = [ { node = \"machine\", succeed = \"true\" }, { node = \"x\", succeed = \"true\" } ]\n");
    let e = s.steps(&s.resolve(&cell(Manager::SYSTEMD, false)).expect("resolves")).expect_err("unknown node");
    assert!(e.message.contains("node `x`"), "{e}");
}
