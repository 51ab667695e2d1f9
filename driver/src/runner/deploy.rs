//! The deployment of one cell as data: the commands (as root in the guest)
//! and the files, in order. Pure, so `xdriver plan` prints exactly what
//! `xdriver test` does.

use serde::Serialize;
use xdriver_guests::shell::quote;
use xdriver_guests::{Backend, GuestFile, RenderError, System};

/// One deploy command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeployCommand {
    /// prepare / initialize / bootstrap / activate.
    pub phase: &'static str,
    /// Shell command line, run as root.
    pub command: String,
}

/// Everything a deployment does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeployPlan {
    /// Commands before the files are written: the profile's user and
    /// directories, the instances' credentials.
    pub prepare: Vec<DeployCommand>,
    /// Files: the instances' config files, then the manager's files.
    pub files: Vec<GuestFile>,
    /// Commands after the files: ownership, `initialize`, the manager's
    /// bootstrap, activation (dependencies first).
    pub run: Vec<DeployCommand>,
}

fn cmd(phase: &'static str, command: String) -> DeployCommand {
    DeployCommand { phase, command }
}

/// The deployment of `sys` with `backend`.
pub fn plan(backend: &Backend, sys: &System) -> Result<DeployPlan, RenderError> {
    let os = backend.os;
    let profile = &backend.profile;
    let mut prepare = Vec::new();
    if let Some(c) = backend.boot_wait() {
        prepare.push(cmd("prepare", c));
    }
    if let Some(c) = os.add_profile_user(profile) {
        prepare.push(cmd("prepare", c));
    }
    let dirs: Vec<String> = profile.dirs().iter().map(|d| quote(d)).collect();
    prepare.push(cmd("prepare", format!("mkdir -p {}", dirs.join(" "))));
    if let Some(u) = &profile.user {
        prepare.push(cmd("prepare", format!("chown -R {n}:{g} {}", quote(&profile.state_dir), n = quote(&u.name), g = quote(&u.group))));
    } else {
        prepare.push(cmd("prepare", format!("chmod 1777 {}", quote(&profile.tmp_dir))));
    }
    // Every group, then every user, in one command: each command is a
    // round trip to the guest (a quarter to half a second under TCG).
    let groups: Vec<_> = sys.processes.iter().flat_map(|p| p.credentials.groups.iter().cloned()).collect();
    let users: Vec<_> = sys.processes.iter().flat_map(|p| p.credentials.users.iter().cloned()).collect();
    if let Some(c) = os.add_credentials(&groups, &users) {
        prepare.push(cmd("prepare", c));
    }
    let mut files: Vec<GuestFile> = sys
        .processes
        .iter()
        .flat_map(|p| p.config_files.iter().map(|c| GuestFile::text(c.path.clone(), c.mode, c.contents.clone())))
        .collect();
    files.extend(backend.render(sys)?);
    let mut run = Vec::new();
    if let Some(u) = &profile.user {
        run.push(cmd("prepare", format!("chown -R {n}:{g} {}", quote(&u.home), n = quote(&u.name), g = quote(&u.group))));
    }
    for p in &sys.processes {
        if let Some(init) = &p.initialize {
            run.push(cmd("initialize", backend.as_user(init)));
        }
    }
    for c in backend.bootstrap() {
        run.push(cmd("bootstrap", c));
    }
    for c in backend.activate(sys) {
        run.push(cmd("activate", c));
    }
    Ok(DeployPlan { prepare, files, run })
}

/// The files as a tar archive to extract at the guest's `/`.
pub fn tar(files: &[GuestFile]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for f in files {
        let rel = f.path.trim_start_matches('/');
        let mut acc = String::new();
        if let Some((parent, _)) = rel.rsplit_once('/') {
            for part in parent.split('/') {
                if !acc.is_empty() {
                    acc.push('/');
                }
                acc.push_str(part);
                if dirs.insert(acc.clone()) {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{acc}/"), std::io::empty())?;
                }
            }
        }
        let mut h = tar::Header::new_gnu();
        match (&f.contents, &f.link) {
            (_, Some(target)) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                b.append_link(&mut h, rel, target)?;
            }
            (Some(text), None) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(f.mode);
                h.set_size(text.len() as u64);
                b.append_data(&mut h, rel, text.as_bytes())?;
            }
            (None, None) => {}
        }
    }
    b.into_inner()
}
