# A NixOS module that makes a NixOS image ready for xdriver, as the NoCloud
# preparation does for cloud images: xdriver's POSIX backdoor as a systemd
# service on the virtio-serial port org.xdriver.backdoor, the serial
# console, the virtio drivers, and sshd with key-only root login (each
# xdriver VM puts its own key in over the backdoor).
#
# Unverified: no NixOS image or nixpkgs can be obtained on the machines
# xdriver is developed on. Route (docs/support-matrix.md):
#   1. add `imports = [ /path/to/xdriver/nix/nixos-module.nix ];` to the
#      image's configuration and build a qcow2 of it (e.g. nixos-generators'
#      `qcow` format, or `make-disk-image.nix`);
#   2. xdriver image import nixos nixos.qcow2 --os nixos
#   3. xdriver test SPEC --os nixos
# The first use boots it once (the seed finds no cloud-init and is
# ignored; the backdoor is already there), records its SSH host key and
# caches the disk; every cell boots an overlay of it.
{ config, lib, pkgs, ... }:
{
  options.xdriver.enable = lib.mkOption {
    type = lib.types.bool;
    default = true;
    description = "Make this system drivable by xdriver (backdoor, serial console, SSH).";
  };

  config = lib.mkIf config.xdriver.enable {
    boot.kernelParams = [ "console=ttyS0,115200" ];
    boot.initrd.availableKernelModules = [ "virtio_pci" "virtio_blk" "virtio_net" "virtio_console" "virtio_rng" ];
    # Shares (9p or virtio-fs) and the store's overlay, mounted by xdriver.
    boot.kernelModules = [ "9p" "9pnet_virtio" "virtiofs" "overlay" ];

    systemd.services.xdriver-backdoor = {
      description = "xdriver backdoor root shell (virtio-serial port org.xdriver.backdoor)";
      wantedBy = [ "sysinit.target" ];
      before = [ "shutdown.target" ];
      conflicts = [ "shutdown.target" ];
      unitConfig.DefaultDependencies = false;
      # The script extends PATH with the system profile itself; these are
      # what it needs before that exists.
      path = [ pkgs.coreutils pkgs.procps pkgs.gnugrep ];
      serviceConfig = {
        # The same POSIX script xdriver installs everywhere, with NixOS's
        # parts (nix/backdoor-nixos.sh, generated from xdriver's NixOS
        # profile), run by dash as on Debian.
        ExecStart = "${pkgs.dash}/bin/dash ${./backdoor-nixos.sh}";
        Restart = "always";
        RestartSec = 0;
        KillMode = "process";
      };
    };

    services.openssh = {
      enable = true;
      # xdriver's own sshd is off 22 (xdriver_guests::SSH_PORT): the
      # guest's ports belong to the test.
      ports = [ 10022 ];
      # The run's key goes to /etc/xdriver/authorized_keys (over the
      # backdoor); root's ~/.ssh is the test's.
      authorizedKeysFiles = [ "/etc/xdriver/authorized_keys" ];
      settings = {
        PermitRootLogin = "prohibit-password";
        PasswordAuthentication = false;
        KbdInteractiveAuthentication = false;
      };
    };
  };
}
