//! The small initramfs xdriver boots every Debian guest with: a static
//! busybox, the virtio/ext4/9p/virtiofs modules in dependency order, and an
//! `/init` that mounts the root disk and hands over to the image's init.
//! About 2–5 MB, built in well under a second.

use crate::cpio::Cpio;

/// The initramfs's `/init`. It honours `root=`, `init=`, `rootfstype=` and
/// `ro` from the kernel command line and drops to a shell on the serial
/// console if the root disk cannot be mounted.
pub const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m || echo "xdriver-initramfs: insmod $m failed"; done
root=/dev/vda; init=/sbin/init; fstype=ext4; rootflags=rw
for x in $(cat /proc/cmdline); do
  case $x in
    root=*) root=${x#root=};;
    init=*) init=${x#init=};;
    rootfstype=*) fstype=${x#rootfstype=};;
    ro) rootflags=ro;;
  esac
done
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
echo "xdriver-initramfs: switching to $init"
mount --move /dev /newroot/dev
mount --move /sys /newroot/sys
mount --move /proc /newroot/proc
exec switch_root /newroot "$init"
"#;

/// Builds the initramfs from a static busybox and `(file name, bytes)` of
/// each module, already in load order.
pub fn build(busybox: &[u8], modules: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut c = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules", "tmp"] {
        c.dir(d);
    }
    c.chardev("dev/console", 0o600, 5, 1);
    c.chardev("dev/null", 0o666, 1, 3);
    c.file("bin/busybox", 0o755, busybox);
    c.symlink("bin/sh", "busybox");
    c.file("init", 0o755, INIT_SCRIPT.as_bytes());
    let mut order = String::new();
    for (name, data) in modules {
        c.file(&format!("lib/modules/{name}"), 0o644, data);
        order.push_str(name);
        order.push('\n');
    }
    c.file("modules.order", 0o644, order.as_bytes());
    c.finish()
}
