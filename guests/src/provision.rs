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
    /// A line of an existing text file replaced by another; the build fails
    /// if the file has no such line.
    ReplaceLine {
        /// Absolute guest path.
        path: String,
        /// The whole line as the package wrote it.
        old: String,
        /// Its replacement.
        new: String,
    },
    /// A line of an existing text file commented out (`#` put before it)
    /// where the file has it; nothing where it has not (releases differ).
    CommentOut {
        /// Absolute guest path.
        path: String,
        /// The whole line as the package wrote it.
        line: String,
    },
    /// A file or symbolic link removed where there is one.
    Remove {
        /// Absolute guest path.
        path: String,
    },
}

pub(crate) fn file(path: &str, mode: u32, contents: impl Into<String>) -> FsEntry {
    FsEntry::File { path: path.into(), mode, contents: contents.into() }
}

pub(crate) fn symlink(path: &str, target: &str) -> FsEntry {
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
    v.extend(init.boot_files(ACPID));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_init_starts_the_backdoor() {
        for init in Init::built() {
            let entries = provision(init, "vm");
            let starts = entries.iter().any(|e| match e {
                FsEntry::File { contents, .. } | FsEntry::Append { text: contents, .. } | FsEntry::ReplaceLine { new: contents, .. } => {
                    contents.contains(BACKDOOR_PATH) && !contents.starts_with("#!/bin/bash")
                }
                FsEntry::Symlink { .. } | FsEntry::CommentOut { .. } | FsEntry::Remove { .. } => false,
            });
            assert!(starts, "{init}: nothing starts the backdoor");
        }
    }

    #[test]
    fn inits_that_switch_off_debians_early_boot_run_xdrivers_instead() {
        for init in Init::built() {
            let entries = provision(init, "vm");
            // In /etc/init.d (sysvinit, runit) or, for OpenRC, outside it;
            // started from inittab or by a link in rcS.d.
            let path = entries.iter().find_map(|e| match e {
                FsEntry::File { path, contents, .. } if contents.contains("# Provides:          xdriver-sysinit") => Some(path.clone()),
                _ => None,
            });
            let has_script = path.is_some();
            let path = path.unwrap_or_default();
            let name = path.trim_start_matches("/etc/init.d/");
            let started = has_script
                && entries.iter().any(|e| match e {
                    FsEntry::Symlink { target, .. } => path.starts_with("/etc/init.d/") && target.ends_with(&format!("init.d/{name}")),
                    FsEntry::ReplaceLine { new, .. } => new.contains(&path),
                    _ => false,
                });
            let replaces = !init.replaced_boot_scripts().is_empty();
            assert_eq!(replaces, has_script && started, "{init}: switches off Debian's scripts: {replaces}, runs its own: {}", has_script && started);
        }
        assert!(Init::SYSTEMD.replaced_boot_scripts().is_empty());
    }

    #[test]
    fn every_init_starts_acpid_and_the_handler_powers_off() {
        for init in Init::built() {
            let entries = provision(init, "vm");
            let starts = entries.iter().any(|e| match e {
                FsEntry::File { contents, .. } | FsEntry::Append { text: contents, .. } => contents.contains(ACPID),
                FsEntry::Symlink { .. } | FsEntry::ReplaceLine { .. } | FsEntry::CommentOut { .. } | FsEntry::Remove { .. } => false,
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
        for init in Init::built() {
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
