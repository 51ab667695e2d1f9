#!/usr/bin/env bash
# Builds a Debian 12 or 13 cloud image the way Debian builds its
# genericcloud image (debian-cloud-images, FAI classes SYSTEM_BOOT, CLOUD,
# GENERIC, TIME_SYSTEMD, EXTRAS, AMD64, LINUX_VARIANT_CLOUD), so that
# xdriver's import path (vendor disk, its own boot loader, cloud-init
# reading a NoCloud seed) is proven on what a user downloads, without
# downloading it:
#   - Debian's genericcloud package set for the release, nothing added for
#     tests: a minbase system, openssh-server, cloud-init,
#     cloud-guest-utils, netplan.io with systemd-networkd and
#     systemd-resolved (no ifupdown), sudo, libpam-systemd, polkitd,
#     unattended-upgrades, apparmor, the EXTRAS tools (curl, vim, tcpdump,
#     ...), linux-image-cloud-amd64 and grub-cloud-amd64;
#   - the network as Debian's images have it: cloud-init renders netplan,
#     systemd-networkd is enabled, systemd-resolved is enabled and (Debian
#     12) /etc/resolv.conf links to its full resolv.conf, (Debian 13) to
#     the package's stub;
#   - cloud.cfg.d/01_debian_cloud.cfg (the `debian` default user, apt
#     mirror lists), deb822 apt sources through mirror+file lists of
#     https://deb.debian.org (with -backports and deb-src, as Debian's
#     images have them), fstab by UUID, an empty hostname
#     and machine-id, no SSH host keys;
#   - the kernel on the serial console (console=tty0 console=ttyS0,115200
#     earlyprintk=ttyS0,115200 consoleblank=0, grub-cloud-amd64's line).
# One difference, the loader: Debian's disk is GPT with a BIOS boot
# partition and grub-install'ed GRUB for BIOS and EFI, which needs a loop
# device with partitions; here (no partition scanning) the disk is MBR with
# an EFI system partition holding the kernel and initramfs made by the
# image's own initramfs-tools, SYSLINUX for BIOS and a standalone GRUB EFI
# image for UEFI. The services under test are not in the image: a spec
# brings them with its [guest] table, as it must on Debian's own image.
# No mounts or loop devices (mke2fs -d, mtools, sfdisk, dd at offsets).
#
# Usage (as root): images/vendor/debian-cloud.sh RELEASE OUT.qcow2
#   RELEASE: 12 (bookworm) or 13 (trixie)
# EXTRA_PACKAGES=a,b adds Debian packages, WITHOUT=a,b leaves packages of
# the set out (e.g. WITHOUT=libpam-systemd,polkitd: an image without
# logind's PAM module), KERNEL_PACKAGE replaces the cloud kernel
# (scripts/bench-vmtest adds qemu-guest-agent, which vmtest's image mode
# runs commands through, and takes linux-image-amd64, whose 9p vmtest
# mounts its share with).
set -euo pipefail
release=${1:?usage: debian-cloud.sh RELEASE OUT.qcow2}
out=$(realpath -m "${2:?usage: debian-cloud.sh RELEASE OUT.qcow2}")
case $release in
  12) suite=bookworm ;;
  13) suite=trixie ;;
  *) echo "debian-cloud.sh: release $release: expected 12 or 13" >&2; exit 2 ;;
esac
name=debian-$release-cloud
export LC_ALL=C.UTF-8 SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
for t in mmdebstrap mke2fs mkfs.vfat mcopy syslinux sfdisk grub-mkstandalone qemu-img; do
  command -v "$t" >/dev/null || { echo "debian-cloud.sh: $t is missing (bash scripts/setup-host installs it)" >&2; exit 1; }
done
work=$(mktemp -d /var/tmp/xdriver-vendor.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs

disk_mib=2048
esp_mib=128
root_uuid=5d7e3c1a-6b2f-4c0e-9a51-0d1e2f3a4b5c
esp_id=12345678
esp_uuid=1234-5678

# debian-cloud-images' package_config, per class (install without
# Recommends, as FAI's install-norec).
cloud="openssh-server ssh-import-id cloud-initramfs-growroot"
generic="cloud-init cloud-guest-utils"
system_boot="sudo libpam-systemd systemd-resolved libnss-myhostname netplan.io polkitd unattended-upgrades apparmor zstd apt-utils init iptables iputils-ping less nano netbase vim-tiny whiptail systemd-timesyncd"
extras="apt-listchanges bash-completion bind9-host man-db manpages socat pciutils reportbug traceroute vim psmisc tcpdump ca-certificates curl ethtool uuid-runtime screen xz-utils"
amd64="${KERNEL_PACKAGE:-linux-image-cloud-amd64} grub-cloud-amd64 initramfs-tools"
case $release in
  # Debian 12 leaves libnss-resolve out again (debian-cloud, 2024-03).
  12) per_release="" ;;
  13) per_release="libnss-resolve e2fsprogs linux-sysctl-defaults dosfstools" ;;
esac
packages=" $cloud $generic $system_boot $extras $amd64 $per_release ${EXTRA_PACKAGES:+${EXTRA_PACKAGES//,/ }} "
for p in ${WITHOUT:+${WITHOUT//,/ }}; do packages=${packages/ $p / }; done
include=$(echo $packages | tr ' ' ',')
# Debian 12's image links /etc/resolv.conf to resolved's full file; Debian
# 13's keeps the systemd-resolved package's own link to its stub.
resolv_hook=true
[ "$release" = 12 ] && resolv_hook='ln -sf /run/systemd/resolve/resolv.conf "$1/etc/resolv.conf"'

echo "$name: mmdebstrap ($suite)" >&2
mmdebstrap --variant=minbase --mode=root --format=directory --quiet --include="$include" \
  --aptopt='APT::Install-Recommends "false"' \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='chroot "$1" systemctl enable systemd-networkd.service systemd-resolved.service' \
  --customize-hook="$resolv_hook" \
  --customize-hook="echo 'UUID=$root_uuid / ext4 rw,discard,errors=remount-ro,x-systemd.growfs 0 1' > \"\$1/etc/fstab\"" \
  --customize-hook=': > "$1/etc/hostname"; : > "$1/etc/machine-id"; rm -f "$1/etc/ssh/ssh_host_"* "$1/var/lib/dbus/machine-id"' \
  --customize-hook='printf "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n" > "$1/etc/hosts"' \
  --customize-hook='printf "LANG=C.UTF-8\n" > "$1/etc/default/locale"' \
  --customize-hook='printf "blacklist pcspkr\nblacklist floppy\n" > "$1/etc/modprobe.d/blacklist.conf"' \
  --customize-hook='printf "ID=genericcloud\nVERSION=\"xdriver-vendor-shaped\"\n" > "$1/etc/cloud-release"' \
  --customize-hook='mkdir -p "$1/etc/cloud/cloud.cfg.d"; cat > "$1/etc/cloud/cloud.cfg.d/01_debian_cloud.cfg" <<EOF
apt:
  generate_mirrorlists: true
system_info:
  default_user:
    name: debian
    sudo: ALL=(ALL) NOPASSWD:ALL
    shell: /bin/bash
    lock_passwd: True
    gecos: Debian
    groups: [adm, audio, cdrom, dialout, dip, floppy, plugdev, sudo, video]
EOF' \
  --customize-hook="printf '# See /etc/apt/sources.list.d/debian.sources\n' > \"\$1/etc/apt/sources.list\"; rm -f \"\$1\"/etc/apt/sources.list.d/*.list; mkdir -p \"\$1/etc/apt/mirrors\"; echo https://deb.debian.org/debian > \"\$1/etc/apt/mirrors/debian.list\"; echo https://deb.debian.org/debian-security > \"\$1/etc/apt/mirrors/debian-security.list\"; printf 'Types: deb deb-src\nURIs: mirror+file:///etc/apt/mirrors/debian.list\nSuites: $suite $suite-updates $suite-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb deb-src\nURIs: mirror+file:///etc/apt/mirrors/debian-security.list\nSuites: $suite-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > \"\$1/etc/apt/sources.list.d/debian.sources\"" \
  "$suite" "$root" \
  "deb http://deb.debian.org/debian $suite main" \
  "deb http://deb.debian.org/debian $suite-updates main" \
  "deb http://deb.debian.org/debian-security $suite-security main"

kernel=$(ls "$root"/boot/vmlinuz-* | head -1)
initrd=$(ls "$root"/boot/initrd.img-* | head -1)
[ -f "$kernel" ] && [ -f "$initrd" ] || { echo "debian-cloud.sh: no kernel or initramfs in /boot" >&2; exit 1; }
cmdline="root=UUID=$root_uuid ro console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0"

echo "$name: boot loaders and the EFI system partition" >&2
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

echo "$name: root file system" >&2
root_mib=$((disk_mib - esp_mib - 1))
mke2fs -q -t ext4 -L root -U "$root_uuid" -E root_owner=0:0 -d "$root" "$work/root.img" "${root_mib}M"

echo "$name: disk" >&2
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
echo "$name: $out ($(du -h "$out" | cut -f1))" >&2
