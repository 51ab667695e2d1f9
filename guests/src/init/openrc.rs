//! OpenRC as the rc system under sysvinit as PID 1: Debian's `openrc`
//! with `sysvinit-core`.

use crate::provision::{file, symlink, FsEntry};

use super::early;
use super::registry::InitSystem;

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
            early::script(),
            FsEntry::ReplaceLine {
                path: "/etc/inittab".into(),
                old: "si::sysinit:/etc/init.d/rcS".into(),
                new: format!("si::sysinit:/bin/sh -c '{} start; exec /etc/init.d/rcS'", early::SCRIPT_PATH),
            },
            // cgroup v2 only, as systemd mounts it on these releases: the
            // default "hybrid" mounts every v1 controller too, 2-3 s of
            // OpenRC's `cgroups` service under TCG.
            FsEntry::Append {
                path: "/etc/rc.conf".into(),
                text: "\n# xdriver: cgroup v2 only (the default, hybrid, mounts each v1 controller too)\nrc_cgroup_mode=\"unified\"\n".into(),
            },
            file(
                "/etc/init.d/xdriver-backdoor",
                0o755,
                "#!/sbin/openrc-run\n\
                 description=\"xdriver backdoor root shell\"\n\
                 command=/usr/lib/xdriver/backdoor\n\
                 supervisor=supervise-daemon\n\
                 respawn_max=0\n\
                 depend() {\n\tafter networking ssh nginx\n}\n",
            ),
            symlink("/etc/runlevels/default/xdriver-backdoor", "/etc/init.d/xdriver-backdoor"),
        ]
    }
    fn replaced_boot_scripts(&self) -> &'static [&'static str] {
        early::REPLACED
    }
}
