//! OpenRC as the rc system under sysvinit as PID 1: Debian's `openrc`
//! with `sysvinit-core`.

use crate::provision::FsEntry;

use super::early;
use super::registry::InitSystem;

/// The boot scripts an OpenRC image switches off: Debian's that xdriver's
/// early boot replaces, and OpenRC's `cgroups` (its `openrc` action mounts
/// cgroup v2 as that service does in the unified mode these images set; the
/// script stays, for services that name it).
const REPLACED: &[&str] = early::replaced_and!("cgroups");

/// What an OpenRC image deletes from /etc/init.d: the scripts xdriver's
/// early boot replaces (not `cgroups`) and the boot scripts that are off
/// in every image (none is in a runlevel, and no script left `need`s one).
/// OpenRC forces a rebuild of its dependency cache at every boot (rc.c,
/// `do_sysinit`), which reads every script in /etc/init.d: measured in a
/// booted Debian 12 guest, `rc-update -u` took 5.2 s over 37 scripts, 1.15
/// s over the 12 left before `rcS`, `savecache` and xdriver's early boot
/// script went too.
const PRUNED: &[&str] = early::replaced_and!(
    // Off in these images already: no fsck (the root is checked by
    // nothing: a test VM's overlay is new), no NFS, the kernel sets the
    // clock from the RTC and seeds its own RNG.
    "checkfs.sh",
    "mountnfs.sh",
    "mountnfs-bootclean.sh",
    "hwclock.sh",
    "urandom",
    "bootlogs",
    "brightness",
    "motd",
    "mount-configfs",
    // The recovery runlevel (single-user mode) and OpenRC's own getty
    // (the serial getty is inittab's), unused in a test VM; no NFS.
    "killprocs",
    "single",
    "agetty",
    "umountnfs.sh",
    // inittab runs `openrc sysinit` itself (Debian's rcS only execs it);
    // savecache keeps the dependency cache across reboots on a disk a
    // test VM throws away, and OpenRC rebuilds that cache at every boot
    // all the same (rc.c, `do_sysinit`).
    "rcS",
    "savecache",
);

/// sysvinit's inittab line for runlevel 2 (Debian's OpenRC `rc` script
/// runs `openrc default` for it).
const DEFAULT_RUNLEVEL_LINE: &str = "l2:2:wait:/etc/init.d/rc 2";

/// OpenRC has finished its boot: it is in the default runlevel and no
/// `openrc` process is changing runlevels (`openrc sysinit` leaves
/// `sysinit` in softlevel; `openrc default` writes `default` there before
/// it starts the runlevel's services and exits when they have started).
/// (The file has no newline: `read` sets the variable and fails.)
pub(crate) const SETTLED: &str = "{ read -r l </run/openrc/softlevel; [ \"$l\" = default ]; } && ! pidof openrc >/dev/null";

/// OpenRC.
#[derive(Debug)]
pub struct Openrc;

impl InitSystem for Openrc {
    fn name(&self) -> &'static str {
        "openrc"
    }
    // PID 1 is sysvinit's: it powers off and reboots.
    fn poweroff_command(&self) -> &'static str {
        super::sysvinit::Sysvinit.poweroff_command()
    }
    fn reboot_command(&self) -> &'static str {
        super::sysvinit::Sysvinit.reboot_command()
    }
    fn boot_files(&self, acpid: &str) -> Vec<FsEntry> {
        vec![
            super::sysvinit::inittab(acpid),
            // init runs xdriver's early boot, then OpenRC's sysinit (Debian's
            // rcS here is `exec openrc sysinit`): as an OpenRC service it
            // cost a second more of openrc-run under TCG.
            // Debian's rcS is `exec /sbin/openrc sysinit`, named here
            // instead, so that neither script is in /etc/init.d for
            // OpenRC's dependency cache to read at every boot.
            early::script(early::OPENRC_SCRIPT_PATH),
            FsEntry::ReplaceLine {
                path: "/etc/inittab".into(),
                old: "si::sysinit:/etc/init.d/rcS".into(),
                new: format!("si::sysinit:/bin/sh -c '{} openrc; exec /sbin/openrc sysinit'", early::OPENRC_SCRIPT_PATH),
            },
            // cgroup v2 only, as systemd mounts it on these releases: the
            // default "hybrid" mounts every v1 controller too, 2-3 s of
            // OpenRC's `cgroups` service under TCG.
            FsEntry::Append {
                path: "/etc/rc.conf".into(),
                text: "\n# xdriver: cgroup v2 only (the default, hybrid, mounts each v1 controller too)\nrc_cgroup_mode=\"unified\"\n".into(),
            },
            // PID 1 (sysvinit) respawns the backdoor, as in the sysvinit
            // image, but from the line before `openrc default`'s: init
            // starts a runlevel's inittab entries in order and waits at a
            // `wait` entry, so the backdoor comes up once OpenRC's sysinit
            // is done, not after the default runlevel (1.2 s later on
            // Debian 12 under TCG), as systemd's comes up before its boot
            // is done. Deployments wait for the default runlevel
            // ([`SETTLED`], the OpenRC backend's boot wait), and a RAM
            // snapshot is saved only once it is reached. As an OpenRC
            // service the backdoor cost a second more of openrc-run and
            // supervise-daemon, and its script a share of every boot's
            // dependency cache.
            FsEntry::ReplaceLine {
                path: "/etc/inittab".into(),
                old: DEFAULT_RUNLEVEL_LINE.into(),
                new: format!("{}\n{DEFAULT_RUNLEVEL_LINE}", super::sysvinit::BACKDOOR_INITTAB_LINE),
            },
        ]
        .into_iter()
        .chain(super::sysvinit::spare_gettys_off())
        .collect()
    }
    fn replaced_boot_scripts(&self) -> &'static [&'static str] {
        REPLACED
    }
    fn pruned_init_scripts(&self) -> &'static [&'static str] {
        PRUNED
    }
    fn settled_probe(&self) -> Option<&'static str> {
        Some(SETTLED)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn openrc_replaces_what_the_early_boot_replaces_and_prunes_it() {
        for s in super::early::REPLACED {
            assert!(super::REPLACED.contains(s), "{s} is replaced by the early boot but left on");
            assert!(super::PRUNED.contains(s), "{s} is replaced but left in /etc/init.d");
        }
    }
}
