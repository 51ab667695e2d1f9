//! The small initramfs xdriver boots every Debian guest with: a static
//! busybox, the virtio/ext4/9p/virtiofs modules in dependency order, and an
//! `/init` that mounts the root disk and hands over to the image's init.
//! About 2–5 MB, built in well under a second.

use crate::cpio::Cpio;

/// The initramfs's `/init`. It honours `root=`, `init=`, `rootfstype=` and
/// `ro` from the kernel command line and drops to a shell on the serial
/// console if the root disk cannot be mounted. `xdriver.net=ADDR/LEN,GW`
/// configures eth0 here, before the init starts: the image's own network
/// scripts then only bring up lo, so nothing in the boot waits for udev to
/// settle before sshd can start (that wait was ~4 s of a systemd boot).
/// `xdriver.ssh_key=BASE64` becomes /etc/xdriver/authorized_keys, the file
/// xdriver's sshd reads before root's own (root's ~/.ssh is the test's).
pub const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
load() { for m in $(cat "$1"); do insmod /lib/modules/$m || echo "xdriver-initramfs: insmod $m failed"; done; }
load /modules.order
# The modules nothing here needs (shares, the power button) load meanwhile,
# on the other CPU.
load /modules.later &
later=$!
root=/dev/vda; init=/sbin/init; fstype=ext4; rootflags=rw; net=; sshkey=
for x in $(cat /proc/cmdline); do
  case $x in
    root=*) root=${x#root=};;
    init=*) init=${x#init=};;
    rootfstype=*) fstype=${x#rootfstype=};;
    ro) rootflags=ro;;
    xdriver.net=*) net=${x#xdriver.net=};;
    xdriver.ssh_key=*) sshkey=${x#xdriver.ssh_key=};;
  esac
done
ip link set lo up
if [ -n "$net" ]; then
  n=0
  while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 200 ]; do usleep 10000; n=$((n+1)); done
  ip addr add "${net%,*}" dev eth0 && ip link set eth0 up && ip route add default via "${net#*,}" ||
    echo "xdriver-initramfs: cannot configure eth0 with $net"
fi
n=0
while [ ! -b "$root" ] && [ $n -lt 1000 ]; do usleep 10000; n=$((n+1)); done
if ! mount -t $fstype -o $rootflags "$root" /newroot; then
  echo "xdriver-initramfs: cannot mount root $root ($fstype)"
  exec sh
fi
if [ ! -x "/newroot$init" ] && [ ! -L "/newroot$init" ]; then
  echo "xdriver-initramfs: init $init not found in root $root"
  exec sh
fi
# The run's SSH client key (base64 of the OpenSSH public key): written to
# /etc/xdriver/authorized_keys (sshd's AuthorizedKeysFile for root, besides
# ~/.ssh, which stays the test's) on the VM's own copy-on-write overlay, so
# sshd needs no helper process per login and the image holds no key.
if [ -n "$sshkey" ] && [ "$rootflags" = rw ]; then
  mkdir -p /newroot/etc/xdriver && chmod 755 /newroot/etc/xdriver
  { echo "$sshkey" | base64 -d; echo; } >/newroot/etc/xdriver/authorized_keys && chmod 600 /newroot/etc/xdriver/authorized_keys ||
    echo "xdriver-initramfs: cannot write /etc/xdriver/authorized_keys"
fi
wait $later
echo "xdriver-initramfs: switching to $init"
mount --move /dev /newroot/dev
mount --move /sys /newroot/sys
mount --move /proc /newroot/proc
exec switch_root /newroot "$init"
"#;

/// Builds the initramfs from a static busybox and `(file name, bytes)` of
/// each module, already in load order: `boot` before the root disk is
/// mounted, `later` in the background meanwhile.
pub fn build(busybox: &[u8], boot: &[(String, Vec<u8>)], later: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut c = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules", "tmp"] {
        c.dir(d);
    }
    c.chardev("dev/console", 0o600, 5, 1);
    c.chardev("dev/null", 0o666, 1, 3);
    c.file("bin/busybox", 0o755, busybox);
    c.symlink("bin/sh", "busybox");
    c.file("init", 0o755, INIT_SCRIPT.as_bytes());
    for (list, modules) in [("modules.order", boot), ("modules.later", later)] {
        let mut order = String::new();
        for (name, data) in modules {
            c.file(&format!("lib/modules/{name}"), 0o644, data);
            order.push_str(name);
            order.push('\n');
        }
        c.file(list, 0o644, order.as_bytes());
    }
    c.finish()
}
