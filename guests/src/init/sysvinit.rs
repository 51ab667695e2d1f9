//! sysvinit as PID 1 with sysv-rc: Debian's `sysvinit-core`.

use crate::provision::FsEntry;

use super::early;
use super::registry::InitSystem;

/// sysvinit with sysv-rc.
#[derive(Debug)]
pub struct Sysvinit;

impl InitSystem for Sysvinit {
    fn name(&self) -> &'static str {
        "sysvinit"
    }
    fn poweroff_command(&self) -> &'static str {
        // sysvinit's poweroff talks to init over /run/initctl and returns.
        "poweroff"
    }
    fn reboot_command(&self) -> &'static str {
        "reboot"
    }
    fn boot_files(&self, acpid: &str) -> Vec<FsEntry> {
        vec![
            early::script(early::SCRIPT_PATH),
            // init runs xdriver's early boot instead of Debian's rcS, which
            // it then runs only if rcS.d still has scripts.
            FsEntry::ReplaceLine {
                path: "/etc/inittab".into(),
                old: "si::sysinit:/etc/init.d/rcS".into(),
                new: format!("si::sysinit:{} boot", early::SCRIPT_PATH),
            },
            inittab(acpid),
            backdoor_inittab(),
        ]
        .into_iter()
        .chain(spare_gettys_off())
        .collect()
    }
    fn replaced_boot_scripts(&self) -> &'static [&'static str] {
        early::REPLACED
    }
}

/// The inittab lines every sysvinit-as-PID-1 image gets: a serial getty
/// and busybox's acpid, respawned by init.
pub(super) fn inittab(acpid: &str) -> FsEntry {
    FsEntry::Append {
        path: "/etc/inittab".into(),
        text: format!(
            "\n# xdriver: serial login\nT0:2345:respawn:/sbin/getty -L ttyS0 115200 vt100\n\
             # xdriver: the ACPI power button powers off\nXA:2345:respawn:{acpid}\n"
        ),
    }
}

/// The inittab line that has PID 1 respawn xdriver's backdoor. inittab
/// entries start after the runlevel's `wait` rc line (sysv-rc's or
/// `openrc default`), so the backdoor comes up once the boot scripts have
/// run.
pub(super) fn backdoor_inittab() -> FsEntry {
    FsEntry::Append { path: "/etc/inittab".into(), text: format!("{BACKDOOR_INITTAB_LINE}\n") }
}

/// The inittab line itself.
pub(super) const BACKDOOR_INITTAB_LINE: &str = "XD:2345:respawn:/usr/lib/xdriver/backdoor";

/// Debian 12's inittab runs a getty on each of tty1-tty6; Debian 13's and
/// 14's on none (tty1's comes from elsewhere). The images keep tty1's (the
/// screen a test reads) and comment out tty2-tty6's: five gettys that init
/// starts beside the backdoor, at the moment it comes up, for consoles a
/// test VM never switches to. As systemd starts `getty@tty1` only.
pub(super) fn spare_gettys_off() -> Vec<FsEntry> {
    (2..=6)
        .map(|n| FsEntry::CommentOut { path: "/etc/inittab".into(), line: format!("{n}:23:respawn:/sbin/getty 38400 tty{n}") })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_inittab_line_starts_the_backdoor() {
        assert!(super::BACKDOOR_INITTAB_LINE.ends_with(crate::provision::BACKDOOR_PATH));
    }
}
