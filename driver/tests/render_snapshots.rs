//! Snapshot tests of everything a cell deploys, for both examples under
//! every manager backend and both profiles: rendered config files, unit
//! files, init/rc.d scripts, run scripts, supervisord programs, deploy
//! commands and the rendered steps (`xdriver plan` output). bsdrc is
//! rendered for FreeBSD, where it cannot run here (unverified).

use std::collections::BTreeMap;
use std::path::Path;

use xdriver::runner;
use xdriver::spec::{image_for, Cell, Spec};
use xdriver_guests::{Manager, Os, ProfileKind};

fn cells() -> Vec<Cell> {
    let mut v = Vec::new();
    for m in Manager::all() {
        for p in ProfileKind::ALL {
            // OpenRC's user services need 0.60: Debian 14's.
            let os = if m == Manager::BSDRC {
                Os::FREEBSD
            } else if m == Manager::OPENRC && p == ProfileKind::Unprivileged {
                Os::DEBIAN_14
            } else {
                Os::DEBIAN_12
            };
            if p == ProfileKind::Unprivileged && m.unprivileged_support(&*os).is_err() {
                continue;
            }
            v.push(Cell { os, manager: m, profile: p, image: image_for(os, m, p).or_else(|_| Ok::<_, String>("(none)".into())) });
        }
    }
    v
}

/// `sh -n` (dash, as /bin/sh on Debian): every generated script and deploy
/// command must at least parse.
fn syntax_check(what: &str, script: &str) {
    let out = std::process::Command::new("sh")
        .args(["-n", "-c", script])
        .output()
        .expect("sh runs");
    assert!(out.status.success(), "{what} does not parse: {}\n{script}", String::from_utf8_lossy(&out.stderr));
}

fn snapshot_example(example: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/examples").join(example);
    let spec = Spec::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    for cell in cells() {
        let p = runner::prepare(&spec, &cell, &BTreeMap::new()).unwrap_or_else(|e| panic!("{}: {e}", cell.id()));
        for f in &p.deploy.files {
            if let Some(text) = f.contents.as_deref().filter(|t| t.starts_with("#!/bin/sh") || t.starts_with("#!/sbin/openrc-run")) {
                syntax_check(&format!("{} {}", cell.id(), f.path), text);
            }
        }
        for c in p.deploy.prepare.iter().chain(&p.deploy.run) {
            syntax_check(&format!("{} deploy command", cell.id()), &c.command);
        }
        let text = xdriver::cli::plan_text(&cell, Some(&p));
        insta::assert_snapshot!(format!("{example}__{}__{}", cell.manager, cell.profile), text);
    }
}

#[test]
fn webapps_every_backend() {
    snapshot_example("webapps");
}

#[test]
fn chain_every_backend() {
    snapshot_example("chain");
}
