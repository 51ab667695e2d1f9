//! xdriver's early boot for the inits that run Debian's initscripts:
//! sysvinit (sysv-rc's rcS), OpenRC (its sysinit runlevel) and runit (its
//! stage 1 runs the rcS scripts). One script does what a test VM needs of
//! Debian's ten or twelve early boot scripts, which these images switch
//! off ([`REPLACED`]).

use crate::provision::{file, FsEntry};

/// Where the script lives: in /etc/init.d, with an LSB header, so sysv-rc
/// and runit's stage 1 can each run it as one of their own. OpenRC's images
/// keep it at [`OPENRC_SCRIPT_PATH`] instead.
pub(super) const SCRIPT_PATH: &str = "/etc/init.d/xdriver-sysinit";

/// Where an OpenRC image keeps the script: outside /etc/init.d, because
/// OpenRC rebuilds its dependency cache at every boot by reading each
/// script there (Debian's `gendepends.sh` runs `lsb2rcconf` on each LSB
/// script: ~0.1 s apiece under TCG), and inittab, not OpenRC, runs it.
pub(super) const OPENRC_SCRIPT_PATH: &str = "/usr/lib/xdriver/sysinit";

/// Debian's early boot scripts (from `initscripts`, `procps`, `ifupdown`,
/// `udev`, `kmod`) the script replaces, followed by the names given: one
/// list for [`REPLACED`] and for what an init adds to it (OpenRC's). Under
/// TCG each cost 0.3-9 s of shell (measured on Debian 12 by running each
/// again in a booted guest: checkroot.sh 8.7 s, mountall.sh 5.0 s,
/// mountkernfs.sh 4.3 s, mountdevsubfs.sh 3.3 s): 23 s of a sysvinit boot
/// against systemd's 5 s.
macro_rules! replaced_and {
    ($($extra:literal),* $(,)?) => {
        &[
            "hostname.sh",
            "mountkernfs.sh",
            "mountdevsubfs.sh",
            "checkroot.sh",
            "checkroot-bootclean.sh",
            "mountall.sh",
            "mountall-bootclean.sh",
            "bootmisc.sh",
            "procps",
            "networking",
            "udev",
            "kmod",
            // No-ops in these images, each a second of OpenRC's LSB wrapper:
            // the early boot makes no /etc/nologin for rmnologin to remove,
            // and there is no /etc/rc.local (xdriver's systemd images mask
            // its generator).
            "rmnologin",
            "rc.local",
            $($extra),*
        ]
    };
}
pub(super) use replaced_and;

/// The boot scripts the script replaces (see [`replaced_and`]).
pub(super) const REPLACED: &[&str] = replaced_and!();

/// The script. `start` does the work; `boot` (sysvinit's `si::sysinit`
/// line) then hands over to Debian's rcS when rcS.d still has scripts (ones
/// a package added later); `openrc` also does the work of OpenRC's
/// `cgroups` service.
const SCRIPT: &str = r#"#!/bin/sh
### BEGIN INIT INFO
# Provides:          xdriver-sysinit
# Required-Start:
# Required-Stop:
# Default-Start:     S
# Default-Stop:
# Short-Description: A test VM's early boot, in one script (xdriver)
### END INIT INFO
# Written by xdriver. Its images switch off Debian's early boot scripts
# (hostname.sh, mountkernfs.sh, mountdevsubfs.sh, checkroot.sh, mountall.sh,
# the two *-bootclean.sh, bootmisc.sh, procps, networking, udev, kmod): under
# TCG they cost ~20 s of shell, for a VM whose root xdriver's initramfs has
# mounted read-write (nothing to check: a fresh copy-on-write overlay), with
# /proc, /sys and /dev moved in, lo and eth0 configured, and no kernel
# modules on its disk for kmod or udev to load (devtmpfs makes the device
# nodes). What is left of their work is done here, with as few processes as
# possible (each costs 40-90 ms under TCG).
case "${1:-start}" in
  start|boot|openrc) ;;
  stop|restart|force-reload|status) exit 0 ;;
  *) echo "Usage: $0 start" >&2; exit 3 ;;
esac
PATH=/sbin:/usr/sbin:/bin:/usr/bin
mounted() {
  while read -r _ m _; do [ "$m" = "$1" ] && return 0; done </proc/mounts
  return 1
}
# hostname.sh
read -r h </etc/hostname && [ -n "$h" ] && echo "$h" >/proc/sys/kernel/hostname
# mountkernfs.sh, mountdevsubfs.sh (sysvinit makes its /run/initctl again
# once /run is mounted over it, as after Debian's own mountkernfs.sh)
mounted /run || mount -t tmpfs -o nosuid,nodev,mode=0755,size=20% tmpfs /run
mkdir -p /run/lock /run/network /run/sendsigs.omit.d /dev/pts /dev/shm
chmod 1777 /run/lock
mounted /dev/pts || mount -t devpts -o noexec,nosuid,gid=5,mode=0620,ptmxmode=000 devpts /dev/pts
mounted /dev/shm || mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
# checkroot.sh's remount with fstab's options, and mountall.sh: whatever
# else /etc/fstab names
mount -o remount /
mount -a -O no_netdev
# bootmisc.sh; /etc/mtab as checkroot.sh links it
[ -e /etc/mtab ] || ln -s ../proc/self/mounts /etc/mtab
[ -e /run/utmp ] || install -m 664 -g utmp /dev/null /run/utmp
# procps
sysctl -q --system
# OpenRC's cgroups service, as it is in rc_cgroup_mode="unified" (the
# OpenRC image's /etc/rc.conf): cgroup v2 at /sys/fs/cgroup, every
# controller enabled for the services below (as a service, 1.3 s of
# openrc-run under TCG)
if [ "${1:-}" = openrc ]; then
  mounted /sys/fs/cgroup || mount -t cgroup2 -o nosuid,nodev,noexec,nsdelegate none /sys/fs/cgroup
  read -r c </sys/fs/cgroup/cgroup.controllers && for x in $c; do echo "+$x" >/sys/fs/cgroup/cgroup.subtree_control; done
fi
if [ "${1:-}" = boot ]; then
  for s in /etc/rcS.d/S*; do [ -e "$s" ] && exec /etc/init.d/rcS; done
fi
exit 0
"#;

/// The script, as an image file at `path` ([`SCRIPT_PATH`] or
/// [`OPENRC_SCRIPT_PATH`]).
pub(super) fn script(path: &str) -> FsEntry {
    file(path, 0o755, SCRIPT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_parses_under_dash() {
        let dir = std::env::temp_dir().join(format!("xdriver-early-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let p = dir.join("xdriver-sysinit");
        std::fs::write(&p, SCRIPT).expect("write");
        let st = std::process::Command::new("sh").arg("-n").arg(&p).status().expect("sh runs");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(st.success(), "sh -n rejected the early boot script");
    }

    #[test]
    fn unknown_actions_are_refused_and_stop_is_a_no_op() {
        for (arg, code) in [("stop", 0), ("status", 0), ("frobnicate", 3)] {
            let st = std::process::Command::new("sh").arg("-c").arg(SCRIPT).arg("xdriver-sysinit").arg(arg).status().expect("sh runs");
            assert_eq!(st.code(), Some(code), "{arg}");
        }
    }
}
