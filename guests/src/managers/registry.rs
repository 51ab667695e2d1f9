//! The manager abstraction: every process manager is one file in this
//! folder implementing [`ManagerBackend`], and one line of [`MANAGERS`].
//! [`Manager`] is a handle on a registry entry.

use std::fmt;
use std::str::FromStr;


use crate::init::Init;
use crate::model::{Mode, Process, System};
use crate::os::Family;

use super::deploy::{wait_until, Backend, GuestFile, RenderError};
use super::{bsdrc, openrc, runit, s6, supervisord, systemd, sysvinit};

/// What one process manager does: a pure `render` (the files of a
/// deployment) and the control side (shell command lines run as root in
/// the guest). Methods with a body are the common case.
pub trait ManagerBackend: Sync + Send + fmt::Debug {
    /// The name in flags, specs, cell ids and reports.
    fn name(&self) -> &'static str;
    /// The form it runs when a process offers both (as nix-processmgmt's
    /// generators choose).
    fn prefers(&self) -> Mode;
    /// Whether it can deploy the unprivileged profile (a normal user's own
    /// instance of the manager) on `os`, and if not, why (a per-release
    /// fact is read from [`GuestOs::versions`](crate::os::GuestOs::versions)).
    fn unprivileged_support(&self, _os: &dyn crate::os::GuestOs) -> Result<(), String> {
        Ok(())
    }
    /// The init it must run as PID 1 (or as the rc system of), if any;
    /// None: xdriver brings it up itself on whatever init the guest has.
    fn needs_init(&self) -> Option<Init> {
        None
    }
    /// The OS family it exists on.
    fn family(&self) -> Family {
        Family::Linux
    }
    /// The override keys (`overrides.<manager>.KEY`) it understands, for
    /// error messages; empty: none.
    fn override_hint(&self) -> &'static str {
        "this manager takes no overrides"
    }
    /// The files that deploy `sys` (pure).
    fn render(&self, b: &Backend, sys: &System) -> Result<Vec<GuestFile>, RenderError>;
    /// A command that waits until the guest's init is far enough into its
    /// boot for a deployment, if the channels can answer before that.
    fn boot_wait(&self, _b: &Backend) -> Option<String> {
        None
    }
    /// Commands that bring the manager itself up, when the driver must;
    /// each must exit 0.
    fn bootstrap(&self, _b: &Backend) -> Vec<String> {
        Vec::new()
    }
    /// Commands that start every instance of `sys`, dependencies first.
    fn activate(&self, b: &Backend, sys: &System) -> Vec<String>;
    /// Starts one instance.
    fn start(&self, b: &Backend, name: &str) -> String;
    /// Stops one instance.
    fn stop(&self, b: &Backend, name: &str) -> String;
    /// Exits 0 when the instance is running (and ready, where the manager
    /// tracks readiness); prints the manager's own status text.
    fn status(&self, b: &Backend, name: &str) -> String;
    /// A command that exits 0 when the manager holds the instance failed
    /// for good (it will not start it again by itself), as `wait_for_unit`
    /// needs to fail at once; None where the manager has no such state
    /// (a supervisor that restarts for ever).
    fn failed(&self, _b: &Backend, _name: &str) -> Option<String> {
        None
    }
}

/// Every manager, in the order docs and matrices list them.
pub static MANAGERS: &[&dyn ManagerBackend] = &[
    &systemd::Systemd,
    &sysvinit::Sysvinit,
    &openrc::Openrc,
    &runit::Runit,
    &s6::S6,
    &supervisord::Supervisord,
    &bsdrc::Bsdrc,
];

/// A process manager: a handle on its [`MANAGERS`] entry, compared,
/// ordered and hashed by registry position.
#[derive(Clone, Copy)]
pub struct Manager(&'static dyn ManagerBackend);

/// A manager name that is not in [`MANAGERS`].
#[derive(Debug, thiserror::Error)]
#[error("unknown process manager `{0}` (expected one of: {list})", list = Manager::names().join(", "))]
pub struct UnknownManager(pub String);

impl Manager {
    /// systemd (PID 1; `systemd --user` for the unprivileged profile).
    pub const SYSTEMD: Manager = Manager(&systemd::Systemd);
    /// LSB init scripts run with start-stop-daemon.
    pub const SYSVINIT: Manager = Manager(&sysvinit::Sysvinit);
    /// OpenRC services (openrc-run scripts).
    pub const OPENRC: Manager = Manager(&openrc::Openrc);
    /// runit service directories supervised by runsvdir.
    pub const RUNIT: Manager = Manager(&runit::Runit);
    /// s6 service directories supervised by s6-svscan.
    pub const S6: Manager = Manager(&s6::S6);
    /// supervisord programs.
    pub const SUPERVISORD: Manager = Manager(&supervisord::Supervisord);
    /// FreeBSD rc.d scripts (rc.subr).
    pub const BSDRC: Manager = Manager(&bsdrc::Bsdrc);

    /// Every manager, in matrix order.
    pub fn all() -> impl Iterator<Item = Manager> {
        MANAGERS.iter().map(|m| Manager(*m))
    }

    /// Every manager's name, in matrix order.
    pub fn names() -> Vec<&'static str> {
        MANAGERS.iter().map(|m| m.name()).collect()
    }

    /// The backend behind the handle.
    pub fn backend(self) -> &'static dyn ManagerBackend {
        self.0
    }

    /// Lowercase name, as in flags, specs and reports.
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// The form used for `p` under this manager.
    pub fn mode_for(self, p: &Process) -> Mode {
        match (self.0.prefers(), p.foreground.is_some(), p.daemon.is_some()) {
            (Mode::Daemon, _, true) | (Mode::Foreground, false, true) => Mode::Daemon,
            _ => Mode::Foreground,
        }
    }
}

crate::handle::registry_handle!(Manager, ManagerBackend, MANAGERS);

impl FromStr for Manager {
    type Err = UnknownManager;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Manager::all().find(|m| m.name() == s).ok_or_else(|| UnknownManager(s.into()))
    }
}

/// systemd's wait for `basic.target`, for the systemd backend's
/// [`ManagerBackend::boot_wait`]: xdriver's systemd images start sshd and
/// the backdoor as soon as systemd has loaded its units, before
/// `basic.target` (sockets, D-Bus, tmpfiles, system users).
pub(super) fn systemd_boot_wait() -> String {
    wait_until("systemctl is-active -q basic.target", 300, "systemd to reach basic.target")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        let names = Manager::names();
        let set: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(set.len(), names.len(), "{names:?}");
        for m in Manager::all() {
            assert_eq!(m.name().parse::<Manager>().expect("parses"), m);
        }
        let e = "upstart".parse::<Manager>().expect_err("unknown");
        assert!(e.to_string().contains("systemd, sysvinit, openrc, runit, s6, supervisord, bsdrc"), "{e}");
        assert!(Manager::SYSTEMD < Manager::BSDRC);
    }

    /// The managers that give up on a service have a failed check, and it
    /// is a shell command line dash accepts, in both profiles; the ones that
    /// restart for ever have none.
    #[test]
    fn failed_checks_exist_where_the_manager_gives_up_and_parse() {
        use crate::model::Profile;
        let with: Vec<&str> = Manager::all().filter(|m| Backend::new(*m, crate::Os::DEBIAN_12, Profile::privileged()).failed("x").is_some()).map(|m| m.name()).collect();
        assert_eq!(with, ["systemd", "sysvinit", "openrc", "supervisord"]);
        for m in Manager::all().filter(|m| m.family() == crate::os::Family::Linux) {
            for p in [Profile::privileged(), Profile::unprivileged("u", 1000)] {
                if let Some(c) = Backend::new(m, crate::Os::DEBIAN_14, p).failed("web") {
                    let st = std::process::Command::new("sh").args(["-n", "-c", &c]).status().expect("sh");
                    assert!(st.success(), "{m}: {c}");
                }
            }
        }
    }
}
