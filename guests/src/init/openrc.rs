//! OpenRC as the rc system under sysvinit as PID 1: Debian's `openrc`
//! with `sysvinit-core`.

use crate::provision::{file, symlink, FsEntry};

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
}
