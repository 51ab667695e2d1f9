//! The init abstraction: every init system is one file in this folder
//! implementing [`InitSystem`], and one line of [`INITS`]. [`Init`] is a
//! handle on a registry entry, as [`Manager`](crate::Manager) is on a
//! manager's.

use std::fmt;
use std::str::FromStr;

use crate::provision::FsEntry;

use super::{bsdinit, openrc, runit, systemd, sysvinit};

/// What one init system (PID 1, with its rc system) does.
pub trait InitSystem: Sync + Send + fmt::Debug {
    /// The lowercase name used in image names, flags, recipes and manifests.
    fn name(&self) -> &'static str;
    /// Whether xdriver builds Debian images with it (FreeBSD's init comes
    /// with imported images only).
    fn built(&self) -> bool {
        true
    }
    /// The program the kernel starts as PID 1 (`init=` on the command line).
    fn init_path(&self) -> &'static str {
        "/sbin/init"
    }
    /// The in-guest command that powers the machine off cleanly. It returns
    /// at once; the caller waits for QEMU to exit.
    fn poweroff_command(&self) -> &'static str;
    /// The command that reboots the guest through its init (returns
    /// before the guest goes down).
    fn reboot_command(&self) -> &'static str;
    /// What a built image of this init gets so that its init starts
    /// xdriver's backdoor, busybox's acpid (`acpid`: the command line) and
    /// a serial getty, besides what every image gets
    /// ([`provision`](crate::provision)).
    fn boot_files(&self, acpid: &str) -> Vec<FsEntry>;
    /// Debian boot scripts an image of this init has switched off because
    /// its [`boot_files`](Self::boot_files) do their work (see
    /// `early.rs`).
    fn replaced_boot_scripts(&self) -> &'static [&'static str] {
        &[]
    }
    /// Scripts an image of this init deletes from /etc/init.d (besides
    /// switching them off), because the init reads every script there at
    /// each boot: OpenRC's dependency cache, rebuilt at every boot, sources
    /// each one (about 0.14 s per script under TCG).
    fn pruned_init_scripts(&self) -> &'static [&'static str] {
        &[]
    }
    /// A command that exits 0 once the init has finished its boot (at
    /// least the part a deployment waits for), when the backdoor can
    /// answer before that (None: the backdoor starts after the boot
    /// scripts). A RAM snapshot is saved only then, so restored VMs
    /// neither wait for it nor spend their first seconds on it.
    fn settled_probe(&self) -> Option<&'static str> {
        None
    }
}

/// Every init, in the order docs and matrices list them.
pub static INITS: &[&dyn InitSystem] = &[&systemd::Systemd, &sysvinit::Sysvinit, &openrc::Openrc, &runit::Runit, &bsdinit::Bsdinit];

/// An init system: a handle on its [`INITS`] entry, compared, ordered and
/// hashed by registry position.
#[derive(Clone, Copy)]
pub struct Init(&'static dyn InitSystem);

/// A name that is not in [`INITS`].
#[derive(Debug, thiserror::Error)]
#[error("unknown init system `{0}` (expected one of: {list})", list = INITS.iter().map(|i| i.name()).collect::<Vec<_>>().join(", "))]
pub struct UnknownInit(pub String);

impl Init {
    /// systemd (with udev).
    pub const SYSTEMD: Init = Init(&systemd::Systemd);
    /// sysvinit-core with sysv-rc.
    pub const SYSVINIT: Init = Init(&sysvinit::Sysvinit);
    /// sysvinit-core as PID 1 with OpenRC as the rc system.
    pub const OPENRC: Init = Init(&openrc::Openrc);
    /// runit-init as PID 1.
    pub const RUNIT: Init = Init(&runit::Runit);
    /// FreeBSD's init(8) with rc(8) (imported FreeBSD images).
    pub const BSDINIT: Init = Init(&bsdinit::Bsdinit);

    /// Every init, in registry order.
    pub fn all() -> impl Iterator<Item = Init> {
        INITS.iter().map(|i| Init(*i))
    }

    /// Every init a Debian image can be built with, in registry order.
    pub fn built() -> impl Iterator<Item = Init> {
        Init::all().filter(|i| i.0.built())
    }

    /// The init behind the handle.
    pub fn system(self) -> &'static dyn InitSystem {
        self.0
    }

    /// The lowercase name used in image names, flags and manifests.
    pub fn name(self) -> &'static str {
        self.0.name()
    }
}

crate::handle::registry_handle!(Init, InitSystem, INITS);

impl FromStr for Init {
    type Err = UnknownInit;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Init::all().find(|i| i.name() == s).ok_or_else(|| UnknownInit(s.to_string()))
    }
}

impl<'de> serde::Deserialize<'de> for Init {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let names: std::collections::BTreeSet<_> = Init::all().map(|i| i.name()).collect();
        assert_eq!(names.len(), INITS.len());
        for i in Init::all() {
            assert_eq!(i.name().parse::<Init>().expect("own name parses"), i);
            assert_eq!(serde_json::from_str::<Init>(&serde_json::to_string(&i).expect("serializes")).expect("parses"), i);
        }
        let e = "upstart".parse::<Init>().expect_err("unknown");
        assert!(e.to_string().contains("systemd, sysvinit, openrc, runit, bsdinit"), "{e}");
    }

    #[test]
    fn debian_builds_the_four_linux_inits() {
        let built: Vec<_> = Init::built().map(|i| i.name()).collect();
        assert_eq!(built, ["systemd", "sysvinit", "openrc", "runit"]);
        assert_eq!(Init::SYSTEMD.init_path(), "/lib/systemd/systemd");
        assert_eq!(Init::RUNIT.init_path(), "/sbin/init");
    }
}
