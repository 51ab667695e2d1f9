//! A manager bound to an OS and a profile ([`Backend`]), and the helpers
//! the manager files share.

use crate::model::{Mode, Process, Profile, System};

use super::registry::Manager;
use crate::os::Os;
use crate::shell::{join, quote};


/// A file (or symlink) a backend writes into the guest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GuestFile {
    /// Absolute guest path.
    pub path: String,
    /// Permission bits (ignored for symlinks).
    pub mode: u32,
    /// Text contents, or `None` for a symlink.
    pub contents: Option<String>,
    /// Symlink target.
    pub link: Option<String>,
}

impl GuestFile {
    /// A regular file.
    pub fn text(path: impl Into<String>, mode: u32, contents: impl Into<String>) -> GuestFile {
        GuestFile { path: path.into(), mode, contents: Some(contents.into()), link: None }
    }

    /// A symbolic link.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> GuestFile {
        GuestFile { path: path.into(), mode: 0o777, contents: None, link: Some(target.into()) }
    }
}

/// A model a backend cannot express.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The process offers neither a foreground nor a daemon command.
    #[error("instance `{0}` has neither a foreground nor a daemon command")]
    NoCommand(String),
    /// An extra (override) key this backend does not know.
    #[error("instance `{instance}`: {manager} override key `{key}` is not valid here ({hint})")]
    BadExtra {
        /// Instance.
        instance: String,
        /// Manager.
        manager: Manager,
        /// The key.
        key: String,
        /// What is accepted.
        hint: &'static str,
    },
}

/// Refuses every override key of `p`'s `extra` that `known` does not
/// accept (a backend's manager-specific keys).
pub(crate) fn check_extra(b: &Backend, p: &crate::model::Process, known: &[&str], hint: &'static str) -> Result<(), RenderError> {
    match p.extra.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(RenderError::BadExtra { instance: p.name.clone(), manager: b.manager, key: k.clone(), hint }),
        None => Ok(()),
    }
}

/// Refuses an override key of `p`'s `extra` that is not a shell variable
/// name (OpenRC's and rc.subr's scripts take their settings as variables).
pub(crate) fn check_extra_vars(b: &Backend, p: &crate::model::Process, hint: &'static str) -> Result<(), RenderError> {
    let ok = |k: &str| k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match p.extra.keys().find(|k| !ok(k)) {
        Some(k) => Err(RenderError::BadExtra { instance: p.name.clone(), manager: b.manager, key: k.clone(), hint }),
        None => Ok(()),
    }
}

/// One manager for one OS and profile: renders and controls deployments.
#[derive(Debug, Clone)]
pub struct Backend {
    /// The manager.
    pub manager: Manager,
    /// The guest OS.
    pub os: Os,
    /// The profile.
    pub profile: Profile,
}

impl Backend {
    /// The backend for `manager` on `os` under `profile`.
    pub fn new(manager: Manager, os: Os, profile: Profile) -> Backend {
        Backend { manager, os, profile }
    }

    /// The files that deploy `sys` under this manager (pure).
    pub fn render(&self, sys: &System) -> Result<Vec<GuestFile>, RenderError> {
        for p in &sys.processes {
            if p.foreground.is_none() && p.daemon.is_none() {
                return Err(RenderError::NoCommand(p.name.clone()));
            }
        }
        self.manager.render(self, sys)
    }

    /// A command that waits until the guest's init is far enough into its
    /// boot for a deployment, if the channels can answer before that.
    pub fn boot_wait(&self) -> Option<String> {
        self.manager.boot_wait(self)
    }

    /// Commands that bring the manager itself up, when the driver must
    /// (supervisord, s6-svscan, a user's runsvdir or `systemd --user`);
    /// each must exit 0.
    pub fn bootstrap(&self) -> Vec<String> {
        self.manager.bootstrap(self)
    }

    /// Commands that start every instance of `sys`, dependencies first.
    pub fn activate(&self, sys: &System) -> Vec<String> {
        self.manager.activate(self, sys)
    }

    /// Starts one instance.
    pub fn start(&self, name: &str) -> String {
        self.manager.start(self, name)
    }

    /// Stops one instance.
    pub fn stop(&self, name: &str) -> String {
        self.manager.stop(self, name)
    }

    /// Exits 0 when the instance is running (and ready, where the manager
    /// tracks readiness); prints the manager's own status text.
    pub fn status(&self, name: &str) -> String {
        self.manager.status(self, name)
    }

    /// Exits 0 when the manager holds the instance failed for good (see
    /// [`ManagerBackend::failed`](super::registry::ManagerBackend::failed)).
    pub fn failed(&self, name: &str) -> Option<String> {
        self.manager.failed(self, name)
    }

    /// `cmd` run as the profile's user (unchanged when privileged).
    pub fn as_user(&self, cmd: &str) -> String {
        self.os.as_user(&self.profile, cmd)
    }

    /// Whether user changes are disabled (unprivileged profile).
    pub fn no_user_change(&self) -> bool {
        self.profile.force_disable_user_change
    }

    /// The user `p` runs as, if the profile allows changing user.
    pub fn user_of<'a>(&self, p: &'a Process) -> Option<&'a str> {
        if self.no_user_change() {
            None
        } else {
            p.user.as_deref()
        }
    }

    /// The form `p` runs in under this manager.
    pub fn mode(&self, p: &Process) -> Mode {
        self.manager.mode_for(p)
    }
}

/// The argv of `p` in `mode` (the caller checked it exists).
pub(super) fn argv(p: &Process, mode: Mode) -> &[String] {
    let v = match mode {
        Mode::Foreground => p.foreground.as_ref(),
        Mode::Daemon => p.daemon.as_ref(),
    };
    v.or(p.foreground.as_ref()).or(p.daemon.as_ref()).map(Vec::as_slice).unwrap_or(&[])
}

/// A shell fragment for supervisors that need a foreground process (runit,
/// s6, supervisord) when an instance only offers a daemon: start it, then
/// stay alive while the pid in its pidfile does; SIGTERM is passed on.
pub(super) fn daemon_waiter(p: &Process, start: &str) -> String {
    let pf = quote(&p.pid_file);
    format!(
        "{start} || exit 1\n\
         trap 'kill $(cat {pf}) 2>/dev/null; exit 0' TERM INT\n\
         while kill -0 \"$(cat {pf} 2>/dev/null)\" 2>/dev/null; do sleep 1 & wait $!; done\n\
         exit 1\n"
    )
}

/// `export K='V'` lines for a shell script.
pub(super) fn exports(p: &Process) -> String {
    p.environment.iter().map(|(k, v)| format!("export {k}={}\n", quote(v))).collect()
}

/// `cd`/`umask` lines for a shell script.
pub(super) fn cd_umask(p: &Process) -> String {
    let mut s = String::new();
    if let Some(d) = &p.directory {
        s.push_str(&format!("cd {} || exit 1\n", quote(d)));
    }
    if let Some(u) = &p.umask {
        s.push_str(&format!("umask {u}\n"));
    }
    s
}

/// The argv with `nice` (and a user switch command, if given) in front.
pub(super) fn wrapped(p: &Process, argv: &[String], setuid: Option<String>) -> String {
    let mut s = String::new();
    if let Some(u) = setuid {
        s.push_str(&u);
        s.push(' ');
    }
    if let Some(n) = p.nice {
        s.push_str(&format!("nice -n {n} "));
    }
    s.push_str(&join(argv));
    s
}

/// A shell loop that waits up to `secs` for `cond` to hold.
pub(super) fn wait_until(cond: &str, secs: u32, what: &str) -> String {
    let tries = secs * 10;
    format!(
        "i=0; until {cond}; do i=$((i+1)); if [ $i -ge {tries} ]; then echo {} >&2; exit 1; fi; sleep 0.1; done",
        quote(&format!("timed out after {secs} s waiting for {what}"))
    )
}

/// Commands that link each instance's service directory from `sv` into
/// the supervisor's scan directory `scan` (runit, s6), as the profile's user.
pub(super) fn link_services(b: &Backend, sys: &System, sv: &str, scan: &str) -> Vec<String> {
    sys.processes
        .iter()
        .map(|p| b.as_user(&format!("ln -sfn {} {}", quote(&format!("{sv}/{}", p.name)), quote(&format!("{scan}/{}", p.name)))))
        .collect()
}
