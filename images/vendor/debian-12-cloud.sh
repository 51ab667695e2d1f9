#!/usr/bin/env bash
# Builds a Debian 12 cloud image the way Debian ships its genericcloud
# image, so that xdriver's import path (vendor disk, its own boot loader,
# cloud-init reading a NoCloud seed) can be proven without downloading one:
#   - Debian's cloud kernel (linux-image-cloud-amd64) and an initramfs made
#     by initramfs-tools, on the disk;
#   - an MBR disk with an EFI system partition (FAT32, bootable) and an
#     ext4 root found by UUID; SYSLINUX boots it under BIOS and a GRUB EFI
#     image (EFI/BOOT/BOOTX64.EFI) under UEFI, both with the kernel on the
#     serial console as Debian's cloud images have it;
#   - systemd (with logind's PAM module, for user managers), cloud-init,
#     openssh-server, ifupdown with DHCP, sudo;
#   - and, beyond Debian's image, the Debian packages the webapps example
#     needs in the guest (nginx-light, s6, supervisor, curl, iproute2),
#     their own services disabled at boot, as a user's image would be.
# Nothing of xdriver's is inside: no backdoor, no key, no serial getty of
# ours. Everything comes from Debian's packages; no mounts or loop devices
# (mke2fs -d, mtools, sfdisk, dd at offsets).
#
# Usage (as root): images/vendor/debian-12-cloud.sh OUT.qcow2
# EXTRA_PACKAGES=a,b adds Debian packages and KERNEL_PACKAGE replaces the
# cloud kernel (scripts/bench-vmtest adds qemu-guest-agent, which vmtest's
# image mode runs commands through, and takes linux-image-amd64, whose 9p
# vmtest mounts its share with).
set -euo pipefail
out=$(realpath -m "$1")
export LC_ALL=C.UTF-8 SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
for t in mmdebstrap mke2fs mkfs.vfat mcopy syslinux sfdisk grub-mkstandalone qemu-img; do
  command -v "$t" >/dev/null || { echo "debian-12-cloud.sh: $t is missing (bash scripts/setup-host installs it)" >&2; exit 1; }
done
work=$(mktemp -d /var/tmp/xdriver-vendor.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs

disk_mib=2048
esp_mib=128
root_uuid=5d7e3c1a-6b2f-4c0e-9a51-0d1e2f3a4b5c
esp_id=12345678
esp_uuid=1234-5678

echo "debian-12-cloud: mmdebstrap" >&2
mmdebstrap --variant=apt --mode=root --format=directory --quiet \
  --include=${KERNEL_PACKAGE:-linux-image-cloud-amd64},initramfs-tools,systemd-sysv,udev,dbus,libpam-systemd,cloud-init,openssh-server,ifupdown,isc-dhcp-client,sudo,curl,iproute2,procps,netcat-openbsd,less,nginx-light,s6,supervisor${EXTRA_PACKAGES:+,$EXTRA_PACKAGES} \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='chroot "$1" systemctl disable nginx.service supervisor.service' \
  --customize-hook="echo 'UUID=$root_uuid / ext4 rw,discard,errors=remount-ro 0 1' > \"\$1/etc/fstab\"" \
  --customize-hook='echo localhost > "$1/etc/hostname"; rm -f "$1/etc/ssh/ssh_host_"*' \
  --customize-hook='printf "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n" > "$1/etc/hosts"' \
  --customize-hook='printf "# As in Debian'"'"'s cloud images\nmanage_etc_hosts: true\n" > "$1/etc/cloud/cloud.cfg.d/01_debian_cloud.cfg"' \
  --customize-hook='printf "auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n" > "$1/etc/network/interfaces"' \
  bookworm "$root" \
  "deb http://deb.debian.org/debian bookworm main" \
  "deb http://deb.debian.org/debian bookworm-updates main" \
  "deb http://deb.debian.org/debian-security bookworm-security main"

kernel=$(ls "$root"/boot/vmlinuz-* | head -1)
initrd=$(ls "$root"/boot/initrd.img-* | head -1)
[ -f "$kernel" ] && [ -f "$initrd" ] || { echo "debian-12-cloud.sh: no kernel or initramfs in /boot" >&2; exit 1; }
cmdline="root=UUID=$root_uuid ro console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0"

echo "debian-12-cloud: boot loaders and the EFI system partition" >&2
esp=$work/esp.img
mkfs.vfat -F 32 -n EFI -i "$esp_id" -C "$esp" $((esp_mib * 1024)) >/dev/null
cat > "$work/syslinux.cfg" <<CFG
SERIAL 0 115200
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND $cmdline
CFG
cat > "$work/grub.cfg" <<CFG
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
search --no-floppy --fs-uuid --set=root $esp_uuid
linux /vmlinuz $cmdline
initrd /initrd.img
boot
CFG
grub-mkstandalone -O x86_64-efi -o "$work/BOOTX64.EFI" \
  --modules="part_msdos fat search search_fs_uuid linux serial terminal normal echo" \
  --locales= --fonts= --themes= "boot/grub/grub.cfg=$work/grub.cfg"
mcopy -i "$esp" "$kernel" ::/vmlinuz
mcopy -i "$esp" "$initrd" ::/initrd.img
mcopy -i "$esp" "$work/syslinux.cfg" ::/syslinux.cfg
mmd -i "$esp" ::/EFI ::/EFI/BOOT
mcopy -i "$esp" "$work/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
syslinux --install "$esp"

echo "debian-12-cloud: root file system" >&2
root_mib=$((disk_mib - esp_mib - 1))
mke2fs -q -t ext4 -L root -U "$root_uuid" -E root_owner=0:0 -d "$root" "$work/root.img" "${root_mib}M"

echo "debian-12-cloud: disk" >&2
raw=$work/disk.raw
truncate -s "${disk_mib}M" "$raw"
sfdisk -q "$raw" <<TABLE
label: dos
label-id: 0x5eedc10d
start=2048, size=$((esp_mib * 2048)), type=ef, bootable
start=$((2048 + esp_mib * 2048)), size=$((root_mib * 2048)), type=83
TABLE
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none
dd if="$esp" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/root.img" of="$raw" bs=1M seek=$((1 + esp_mib)) conv=notrunc,sparse status=none
mkdir -p "$(dirname "$out")"
qemu-img convert -q -c -f raw -O qcow2 "$raw" "$out.tmp"
mv "$out.tmp" "$out"
echo "debian-12-cloud: $out ($(du -h "$out" | cut -f1))" >&2
