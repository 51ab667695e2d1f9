//! Files an image build writes into a Debian rootfs so xdriver can drive it:
//! the backdoor shell on a virtio-serial port, started by the image's own
//! init system, a
//! serial getty on ttyS0, SSH settings that take the per-run client key from
//! the kernel command line, and a static network configuration.

use crate::os::{GuestOs, Os};
use crate::Init;

/// Where the backdoor script lives in the guest.
pub const BACKDOOR_PATH: &str = "/usr/lib/xdriver/backdoor";
/// The guest port of xdriver's own sshd: not 22, so the guest's ports stay
/// free for the service under test (nix-processmgmt-services' sshd test
/// runs its own sshd on 22 and 23, unprivileged on 2222 and 2223).
pub const SSH_PORT: u16 = 10022;
/// What busybox's acpid runs when the ACPI power button is pressed.
pub const ACPI_POWER_HANDLER: &str = "/etc/acpi/PWRF/00000080";
/// How each init starts busybox's acpid (in the foreground, supervised).
const ACPID: &str = "/bin/busybox acpid -f";
/// The line the backdoor prints on its port when it is ready for commands.
pub const BACKDOOR_READY: &str = "XDRIVER-BACKDOOR-READY 1";

const BACKDOOR_SH: &str = include_str!("../files/backdoor.sh");

/// The backdoor script for `os`: the POSIX shell body with the OS's own
/// parts (finding the port, base64, file sizes) spliced in.
pub fn backdoor_script(os: &dyn GuestOs) -> String {
    let part = format!(
        "# --- {} ---\n{}{}{}{}# ---\n",
        os.name(),
        os.backdoor_env(),
        os.backdoor_port(),
        os.backdoor_base64(),
        os.backdoor_fsize(),
    );
    BACKDOOR_SH.replacen("#@OS@\n", &part, 1)
}

/// One filesystem entry to create in the rootfs (paths are absolute in the
/// guest; the builder joins them under the rootfs directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsEntry {
    /// A regular file, replacing any file already there.
    File {
        /// Absolute guest path.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Contents.
        contents: String,
    },
    /// A symbolic link, replacing anything already there.
    Symlink {
        /// Absolute guest path of the link.
        path: String,
        /// Link target, as written.
        target: String,
    },
    /// Lines appended to an existing text file (created if missing).
    Append {
        /// Absolute guest path.
        path: String,
        /// Text appended verbatim.
        text: String,
    },
}

fn file(path: &str, mode: u32, contents: impl Into<String>) -> FsEntry {
    FsEntry::File { path: path.into(), mode, contents: contents.into() }
}

fn symlink(path: &str, target: &str) -> FsEntry {
    FsEntry::Symlink { path: path.into(), target: target.into() }
}

/// Everything xdriver adds to a Debian rootfs built for `init`.
/// `hostname` goes to /etc/hostname.
pub fn provision(init: Init, hostname: &str) -> Vec<FsEntry> {
    let mut v = vec![
        file(BACKDOOR_PATH, 0o755, backdoor_script(&*Os::DEBIAN_12)),
        file("/etc/hostname", 0o644, format!("{hostname}\n")),
        file("/etc/hosts", 0o644, format!("127.0.0.1 localhost\n127.0.1.1 {hostname}\n::1 localhost ip6-localhost ip6-loopback\n")),
        file("/etc/fstab", 0o644, "/dev/vda / ext4 rw,noatime 0 0\n"),
        // QEMU user networking: the guest is 10.0.2.15, the host 10.0.2.2;
        // `restrict=on` keeps it from reaching anything else. The initramfs
        // configures eth0 (xdriver.net= on the kernel command line), so
        // ifupdown only has lo and nothing waits for udev to settle.
        file(
            "/etc/network/interfaces",
            0o644,
            "# eth0 is configured by xdriver's initramfs (xdriver.net= on the kernel command line).\nauto lo\niface lo inet loopback\n",
        ),
        file("/etc/resolv.conf", 0o644, "nameserver 10.0.2.3\n"),
        file(
            "/etc/ssh/sshd_config.d/xdriver.conf",
            0o644,
            "# Written by xdriver: key-only root login with the per-run key\n\
             # (the initramfs writes it to /etc/xdriver/authorized_keys from the\n\
             # kernel command line; root's ~/.ssh is the test's); one pinned host key. No PAM: a PAM session\n\
             # would start a logind session and root's systemd --user on the\n\
             # first login, seconds of CPU under TCG that no test needs.\n\
             # Port 10022 (xdriver_guests::SSH_PORT) and its own pid file:\n\
             # 22 and /run/sshd.pid are the test's (its own sshd instance).\n\
             Port 10022\n\
             PidFile /run/xdriver-sshd.pid\n\
             AuthorizedKeysFile /etc/xdriver/authorized_keys .ssh/authorized_keys\n\
             PermitRootLogin prohibit-password\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UseDNS no\n\
             UsePAM no\n\
             HostKey /etc/ssh/ssh_host_ed25519_key\n\
             MaxSessions 64\n\
             MaxStartups 64:30:128\n",
        ),
    ];
    // The ACPI power button (QMP `system_powerdown`, the second step of
    // xdriver's shutdown): busybox's acpid reads the button's key from the
    // event devices (the initramfs loads `button` and `evdev`) and runs
    // /etc/acpi/PWRF/00000080 for it. Started by each init below.
    v.push(file(ACPI_POWER_HANDLER, 0o755, format!("#!/bin/sh\n# xdriver: the ACPI power button powers the guest off.\n{}\n", init.poweroff_command())));
    match init {
        Init::Systemd => {
            // Debian's systemd makes /root/.ssh at every boot (tmpfiles'
            // provision.conf, for keys passed as systemd credentials, which
            // xdriver does not use): root's ~/.ssh is the test's to make.
            v.push(symlink("/etc/tmpfiles.d/provision.conf", "/dev/null"));
            v.push(file(
                "/etc/systemd/system/xdriver-acpid.service",
                0o644,
                format!(
                    "[Unit]\n\
                     Description=xdriver: the ACPI power button powers off (busybox acpid)\n\n\
                     [Service]\n\
                     ExecStart={ACPID}\n\
                     Restart=on-failure\n\n\
                     [Install]\n\
                     WantedBy=multi-user.target\n"
                ),
            ));
            v.push(symlink(
                "/etc/systemd/system/multi-user.target.wants/xdriver-acpid.service",
                "/etc/systemd/system/xdriver-acpid.service",
            ));
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
            v.push(file("/etc/tmpfiles.d/tmp.conf", 0o644, "# xdriver: /tmp starts empty on every VM's fresh overlay; never wipe it at boot.\nd /tmp 1777 root root -\n"));
            v.push(file(
                "/etc/systemd/system/ssh.service.d/xdriver.conf",
                0o644,
                "[Unit]\nDefaultDependencies=no\nConflicts=shutdown.target\nBefore=shutdown.target\n\n[Service]\nStartupCPUWeight=1000\nExecStartPre=\nExecStart=\nExecStart=/usr/sbin/sshd -D -r $SSHD_OPTS\n",
            ));
            v.push(file(
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
                 KillMode=process\n\n\
                 [Install]\n\
                 WantedBy=multi-user.target\n",
            ));
            v.push(symlink(
                "/etc/systemd/system/multi-user.target.wants/xdriver-backdoor.service",
                "/etc/systemd/system/xdriver-backdoor.service",
            ));
        }
        Init::Sysvinit | Init::Openrc => {
            v.push(FsEntry::Append {
                path: "/etc/inittab".into(),
                text: format!(
                    "\n# xdriver: serial login\nT0:2345:respawn:/sbin/getty -L ttyS0 115200 vt100\n\
                     # xdriver: the ACPI power button powers off\nXA:2345:respawn:{ACPID}\n"
                ),
            });
            if init == Init::Sysvinit {
                // inittab entries start after the runlevel's `wait` rc line,
                // so the backdoor comes up once the boot scripts have run.
                v.push(FsEntry::Append {
                    path: "/etc/inittab".into(),
                    text: "XD:2345:respawn:/usr/lib/xdriver/backdoor\n".into(),
                });
            } else {
                v.push(file(
                    "/etc/init.d/xdriver-backdoor",
                    0o755,
                    "#!/sbin/openrc-run\n\
                     description=\"xdriver backdoor root shell\"\n\
                     command=/usr/lib/xdriver/backdoor\n\
                     supervisor=supervise-daemon\n\
                     respawn_max=0\n\
                     depend() {\n\tafter networking ssh nginx\n}\n",
                ));
                v.push(symlink("/etc/runlevels/default/xdriver-backdoor", "/etc/init.d/xdriver-backdoor"));
            }
        }
        Init::Runit => {
            v.push(file("/etc/sv/xdriver-acpid/run", 0o755, format!("#!/bin/sh\nexec {ACPID}\n")));
            v.push(symlink("/etc/service/xdriver-acpid", "/etc/sv/xdriver-acpid"));
            v.push(file("/etc/sv/xdriver-backdoor/run", 0o755, "#!/bin/sh\nexec /usr/lib/xdriver/backdoor\n"));
            v.push(symlink("/etc/service/xdriver-backdoor", "/etc/sv/xdriver-backdoor"));
            v.push(file(
                "/etc/sv/getty-ttyS0/run",
                0o755,
                "#!/bin/sh\nexec /sbin/getty -L ttyS0 115200 vt100\n",
            ));
            v.push(symlink("/etc/service/getty-ttyS0", "/etc/sv/getty-ttyS0"));
        }
        // Debian images are never built with FreeBSD's init.
        Init::Bsdinit => {}
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_init_starts_the_backdoor() {
        for init in Init::ALL {
            let entries = provision(init, "vm");
            let starts = entries.iter().any(|e| match e {
                FsEntry::File { contents, .. } | FsEntry::Append { text: contents, .. } => {
                    contents.contains(BACKDOOR_PATH) && !contents.starts_with("#!/bin/bash")
                }
                FsEntry::Symlink { .. } => false,
            });
            assert!(starts, "{init}: nothing starts the backdoor");
        }
    }

    #[test]
    fn every_init_starts_acpid_and_the_handler_powers_off() {
        for init in Init::ALL {
            let entries = provision(init, "vm");
            let starts = entries.iter().any(|e| match e {
                FsEntry::File { contents, .. } | FsEntry::Append { text: contents, .. } => contents.contains(ACPID),
                FsEntry::Symlink { .. } => false,
            });
            assert!(starts, "{init}: nothing starts acpid");
            let handler = entries.iter().find_map(|e| match e {
                FsEntry::File { path, mode, contents } if path == ACPI_POWER_HANDLER => Some((*mode, contents.clone())),
                _ => None,
            });
            let (mode, contents) = handler.unwrap_or_else(|| panic!("{init}: no power-button handler"));
            assert_eq!(mode & 0o111, 0o111, "{init}: handler not executable");
            assert!(contents.starts_with("#!/bin/sh\n") && contents.contains(init.poweroff_command()), "{init}: {contents}");
        }
    }

    #[test]
    fn every_sshd_config_xdriver_writes_uses_its_port_and_keys_file() {
        // Port 22 and root's ~/.ssh belong to the test (nix-processmgmt-services'
        // sshd test runs sshd on 22 and makes /root/.ssh with `mkdir -m 700`).
        let port = format!("Port {SSH_PORT}");
        let keys = "AuthorizedKeysFile /etc/xdriver/authorized_keys";
        for init in crate::init::Init::ALL {
            let sshd = provision(init, "x").into_iter().find_map(|e| match e {
                FsEntry::File { path, contents, .. } if path == "/etc/ssh/sshd_config.d/xdriver.conf" => Some(contents),
                _ => None,
            });
            let sshd = sshd.expect("sshd config");
            assert!(sshd.contains(&format!("\n{port}\n")) && sshd.contains(keys) && sshd.contains("PidFile /run/xdriver-sshd.pid"), "built {init:?} images");
        }
        for os in Os::all() {
            if matches!(os.images(), crate::os::Images::Imported { .. }) {
                assert!(os.prepare_finish().contains(&port) && os.prepare_finish().contains(keys), "{os}: prepared images");
                assert!(os.authorize_ssh_key("k").contains("/etc/xdriver/authorized_keys"), "{os}");
            }
        }
        let module = include_str!("../../nix/nixos-module.nix");
        assert!(module.contains(&format!("ports = [ {SSH_PORT} ]")) && module.contains("authorizedKeysFiles = [ \"/etc/xdriver/authorized_keys\" ]"), "the NixOS module");
    }

    #[test]
    fn backdoor_script_announces_the_ready_line() {
        assert!(BACKDOOR_SH.contains(&format!("printf '\\n{BACKDOOR_READY} %s\\n' \"$$\"")));
    }

    #[test]
    fn every_os_gets_a_posix_backdoor_with_its_own_parts() {
        for os in Os::all() {
            let s = backdoor_script(&*os);
            assert!(s.starts_with("#!/bin/sh\n") && !s.contains("#@OS@"), "{os}");
            for f in ["find_port()", "b64enc()", "b64dec()", "fsize()", "killtree()"] {
                assert!(s.contains(f), "{os}: no {f}");
            }
            // dash parses it (sh -n: syntax only).
            let out = std::process::Command::new("dash").args(["-n", "-c", &s]).output().expect("dash");
            assert!(out.status.success(), "{os}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}
