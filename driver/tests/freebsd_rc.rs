//! The FreeBSD rc.d scripts xdriver renders (no FreeBSD guest can be had
//! here: unverified on FreeBSD itself) executed on the host, not only
//! parsed, under two strict POSIX shells that are not dash: posh and
//! busybox ash. rc.subr is a stand-in that prints what the script set up
//! for `run_rc_command` (FreeBSD's rc.subr reads the same variables); the
//! unprivileged profile's copy of rc.subr is made by the same sed command
//! the bsdrc backend runs in the guest, from a text with rc.subr's limits
//! call.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use xdriver::runner;
use xdriver::spec::{image_for, Cell, Spec};
use xdriver_guests::{Manager, Os, ProfileKind};

/// Prints the variables rc.subr's run_rc_command would use.
const STUB_RC_SUBR: &str = r#"load_rc_config() { :; }
run_rc_command() {
  eval "enable=\${$rcvar}"
  printf 'verb=%s\nname=%s\nrcvar=%s\nenable=%s\ncommand=%s\ncommand_args=%s\npidfile=%s\nPORT=%s\n' \
    "$1" "$name" "$rcvar" "$enable" "$command" "$command_args" "$pidfile" "${PORT-}"
}
"#;

#[test]
fn the_webapps_rc_scripts_run_under_posh_and_busybox_ash() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/examples/webapps");
    let spec = Spec::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let work = tempfile::tempdir().expect("tempdir");
    let stub = work.path().join("rc.subr");
    std::fs::write(&stub, STUB_RC_SUBR).expect("write");
    let mut ran = 0;
    for profile in ProfileKind::ALL {
        let cell = Cell { os: Os::FREEBSD, manager: Manager::BSDRC, profile, image: image_for(Os::FREEBSD, Manager::BSDRC, profile) };
        let p = runner::prepare(&spec, &cell, &BTreeMap::new()).unwrap_or_else(|e| panic!("{}: {e}", cell.id()));
        let subr = if profile == ProfileKind::Privileged { "/etc/rc.subr".to_string() } else { "/home/unprivileged/etc/rc.subr".to_string() };
        for f in p.deploy.files.iter().filter(|f| f.path.contains("/rc.d/")) {
            let text = f.contents.as_deref().expect("a script");
            let sourced = format!("\n. {subr}\n");
            assert!(text.contains(&sourced), "{}: sources {subr}\n{text}", f.path);
            let script = work.path().join("script");
            std::fs::write(&script, text.replace(&sourced, &format!("\n. {}\n", stub.display()))).expect("write");
            let name = f.path.rsplit('/').next().expect("a name");
            for shell in [&["posh"][..], &["busybox", "ash"][..]] {
                let out = Command::new(shell[0]).args(&shell[1..]).arg(&script).arg("onestart").output().expect("the shell runs");
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(out.status.success(), "{shell:?} {}: {}\n{stdout}", f.path, String::from_utf8_lossy(&out.stderr));
                assert!(stdout.starts_with(&format!("verb=onestart\nname={name}\nrcvar={}_enable\nenable=NO\n", name.replace('-', "_"))), "{shell:?} {}:\n{stdout}", f.path);
                if name.starts_with("webapp") {
                    // bsdrc runs the daemon form (-D), its port exported.
                    assert!(stdout.contains("release/xdriver-webapp\ncommand_args=-D\n"), "{shell:?} {name}:\n{stdout}");
                    assert!(stdout.lines().any(|l| l.starts_with("PORT=50") && l.len() == 9), "{shell:?} {name}: no PORT\n{stdout}");
                }
                ran += 1;
            }
        }
    }
    assert_eq!(ran, 2 * 2 * 8, "8 instances, 2 profiles, 2 shells");
}

#[test]
fn the_unprivileged_rc_subr_copy_has_no_limits_call() {
    // The line of FreeBSD's rc.subr (libexec/rc/rc.subr, run_rc_command)
    // that needs root, and what the bsdrc backend's bootstrap makes of it.
    let cell = Cell { os: Os::FREEBSD, manager: Manager::BSDRC, profile: ProfileKind::Unprivileged, image: Ok("freebsd".into()) };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/examples/webapps");
    let spec = Spec::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let p = runner::prepare(&spec, &cell, &BTreeMap::new()).unwrap_or_else(|e| panic!("{e}"));
    let boot = p.deploy.run.iter().map(|c| c.command.as_str()).find(|c| c.contains("/etc/rc.subr")).expect("a bootstrap that copies rc.subr");
    // The sed expression, as quoted inside the su -c argument.
    let expr = boot.split("sed -e '\\''").nth(1).and_then(|r| r.split("'\\'' /etc/rc.subr").next()).expect("sed -e EXPR /etc/rc.subr");
    let subr = "\t\t_doit=\"$_cd $_chroot $_nice $_user $_env $_fib $_umask $_cpuset $_mac ${command} ${rc_flags} ${command_args}\"\n\t\t_doit=\"limits -C $_login_class $_limits $_doit\"\n";
    let mut child = Command::new("sed").arg("-e").arg(expr).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().expect("sed");
    {
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(subr.as_bytes()).expect("writes");
    }
    let out = child.wait_with_output().expect("sed ran");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !text.contains("limits -C") && text.contains("_doit=\" $_doit\""), "{expr}: {text}");
    assert_eq!(text.lines().count(), 2, "nothing else changed: {text}");
}

