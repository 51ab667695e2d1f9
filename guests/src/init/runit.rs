//! runit as PID 1: Debian's `runit-init`.

use crate::provision::{file, symlink, FsEntry};

use super::early;
use super::registry::InitSystem;

/// runit.
#[derive(Debug)]
pub struct Runit;

impl InitSystem for Runit {
    fn name(&self) -> &'static str {
        "runit"
    }
    fn poweroff_command(&self) -> &'static str {
        // Stage 3 runs once /run/runit.stopit is executable and runit gets
        // SIGCONT; `poweroff` here is runit's own wrapper.
        "touch /run/runit.stopit; chmod 100 /run/runit.stopit; kill -CONT 1"
    }
    fn reboot_command(&self) -> &'static str {
        // runit reboots, not halts, after stage 3 when /etc/runit/reboot is
        // executable (Debian links it to /run/runit.reboot).
        "touch /run/runit.reboot /run/runit.stopit; chmod 100 /run/runit.reboot /run/runit.stopit; kill -CONT 1"
    }
    fn boot_files(&self, acpid: &str) -> Vec<FsEntry> {
        vec![
            // Stage 1 runs /etc/rcS.d/S* in order: xdriver's early boot
            // first, instead of Debian's scripts.
            early::script(early::SCRIPT_PATH),
            symlink("/etc/rcS.d/S00xdriver-sysinit", "../init.d/xdriver-sysinit"),
            file("/etc/sv/xdriver-acpid/run", 0o755, format!("#!/bin/sh\nexec {acpid}\n")),
            symlink("/etc/service/xdriver-acpid", "/etc/sv/xdriver-acpid"),
            file("/etc/sv/xdriver-backdoor/run", 0o755, "#!/bin/sh\nexec /usr/lib/xdriver/backdoor\n"),
            symlink("/etc/service/xdriver-backdoor", "/etc/sv/xdriver-backdoor"),
            file("/etc/sv/getty-ttyS0/run", 0o755, "#!/bin/sh\nexec /sbin/getty -L ttyS0 115200 vt100\n"),
            symlink("/etc/service/getty-ttyS0", "/etc/sv/getty-ttyS0"),
            // sshd (xdriver's SSH channel): openssh-server ships /etc/sv/ssh;
            // Debian 12's runit-helper enabled it at install, Debian 13's
            // and 14's leave it off in a chroot (and then skip the sysv
            // script because the runit service exists), so no sshd ran.
            symlink("/etc/service/ssh", "/etc/sv/ssh"),
        ]
        .into_iter()
        // Debian 12's getty-run enables a getty on tty1-tty6, 13's and 14's
        // on tty1 only: tty2-tty6 go, as in the sysvinit images (see
        // `sysvinit::spare_gettys_off`).
        .chain((2..=6).map(|n| FsEntry::Remove { path: format!("/etc/service/getty-tty{n}") }))
        .collect()
    }
    fn replaced_boot_scripts(&self) -> &'static [&'static str] {
        early::REPLACED
    }
}
