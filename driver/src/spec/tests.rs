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
