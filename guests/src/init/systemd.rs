//! systemd as PID 1 (with udev): Debian's `systemd-sysv`.

use crate::provision::{file, symlink, FsEntry};

use super::registry::InitSystem;

/// systemd.
#[derive(Debug)]
pub struct Systemd;

impl InitSystem for Systemd {
    // The backdoor and sshd start as soon as systemd runs (no default
    // dependencies); the systemd backend's deployments wait for
    // basic.target (`boot_wait`). A snapshot waits for the whole boot (no
    // job left: `running`, or `degraded` with a unit failed): saved at
    // basic.target, every restored guest went on starting its gettys and
    // user sessions beside the VM's own set-up (Debian 12: ~2 s of guest
    // work under TCG).
    fn settled_probe(&self) -> Option<&'static str> {
        Some("case $(systemctl is-system-running) in running|degraded) true ;; *) false ;; esac")
    }
    fn name(&self) -> &'static str {
        "systemd"
    }
    fn init_path(&self) -> &'static str {
        // /lib is /usr/lib on a merged-/usr system (every Debian from 12).
        "/lib/systemd/systemd"
    }
    fn poweroff_command(&self) -> &'static str {
        "systemctl --no-block poweroff"
    }
    fn reboot_command(&self) -> &'static str {
        "systemctl --no-block reboot"
    }
    fn boot_files(&self, acpid: &str) -> Vec<FsEntry> {
        vec![
            // Debian's systemd makes /root/.ssh at every boot (tmpfiles'
            // provision.conf, for keys passed as systemd credentials, which
            // xdriver does not use): root's ~/.ssh is the test's to make.
            symlink("/etc/tmpfiles.d/provision.conf", "/dev/null"),
            file(
                "/etc/systemd/system/xdriver-acpid.service",
                0o644,
                format!(
                    "[Unit]\n\
                     Description=xdriver: the ACPI power button powers off (busybox acpid)\n\n\
                     [Service]\n\
                     ExecStart={acpid}\n\
                     Restart=on-failure\n\n\
                     [Install]\n\
                     WantedBy=multi-user.target\n"
                ),
            ),
            symlink("/etc/systemd/system/multi-user.target.wants/xdriver-acpid.service", "/etc/systemd/system/xdriver-acpid.service"),
            // sshd and the backdoor start as soon as systemd runs, not after
            // basic.target: all they need is there before any unit starts
            // (root mounted read-write and eth0 configured by the
            // initramfs, /run mounted by systemd itself, host key and
            // privilege-separation user in the image). That takes both off
            // the boot's critical path (basic.target came 5.6 s into
            // userspace under TCG). Without default dependencies they still
            // stop at shutdown. `sshd -t` before every start is one more
            // sshd exec; the config is fixed at image build.
            // systemd-tmpfiles would empty /tmp at boot ('D' in tmp.conf),
            // possibly after the first commands already put files there now
            // that they can run before sysinit.target. Every VM's /tmp is
            // fresh from the image anyway.
            file("/etc/tmpfiles.d/tmp.conf", 0o644, "# xdriver: /tmp starts empty on every VM's fresh overlay; never wipe it at boot.\nd /tmp 1777 root root -\n"),
            // Commands run over SSH and the backdoor live in these two
            // services' cgroups (no logind here to give them sessions):
            // with systemd's default OOMPolicy=stop, the OOM killer taking
            // a test's memory hog would make systemd stop the whole
            // service, sshd or the backdoor with it. `continue`: only the
            // process the kernel chose dies.
            file(
                "/etc/systemd/system/ssh.service.d/xdriver.conf",
                0o644,
                "[Unit]\nDefaultDependencies=no\nConflicts=shutdown.target\nBefore=shutdown.target\n\n[Service]\nStartupCPUWeight=1000\nOOMPolicy=continue\nExecStartPre=\nExecStart=\nExecStart=/usr/sbin/sshd -D -r $SSHD_OPTS\n",
            ),
            file(
                "/etc/systemd/system/xdriver-backdoor.service",
                0o644,
                "[Unit]\n\
                 Description=xdriver backdoor root shell (virtio-serial port org.xdriver.backdoor)\n\
                 DefaultDependencies=no\n\
                 Conflicts=shutdown.target\n\
                 Before=shutdown.target\n\n\
                 [Service]\n\
                 StartupCPUWeight=1000\n\
                 ExecStart=/usr/lib/xdriver/backdoor\n\
                 Restart=always\n\
                 RestartSec=0\n\
                 KillMode=process\n\
                 OOMPolicy=continue\n\n\
                 [Install]\n\
                 WantedBy=multi-user.target\n",
            ),
            symlink("/etc/systemd/system/multi-user.target.wants/xdriver-backdoor.service", "/etc/systemd/system/xdriver-backdoor.service"),
        ]
    }
}
