# OpenSSH's sshd as a managed process, in the style of
# nix-processmgmt-services' sshd constructor: each instance has its own
# configuration, pid file and host keys (made on first start by
# `initialize`). sshd is nixpkgs' when pkgs is nixpkgs, else the guest's
# own (Debian's /usr/sbin/sshd). The configuration is an xdriver
# `configFiles` entry (nix-processmgmt writes it with writeTextFile, which
# needs nixpkgs).
{ createManagedProcess, libDir, runtimeDir, tmpDir, forceDisableUserChange, pkgs }:

# The instance is named sshd by default: Debian's sshd, like nixpkgs',
# expects its privilege separation user to be called sshd.
{ instanceSuffix ? "", instanceName ? "sshd${instanceSuffix}", port ? 22, extraSSHDConfig ? "" }:

let
  openssh = if pkgs ? openssh then pkgs.openssh else null;
  sshd = if openssh != null then "${openssh}/bin/sshd" else "/usr/sbin/sshd";
  sftpServer = if openssh != null then "${openssh}/libexec/sftp-server" else "/usr/lib/openssh/sftp-server";
  keys = "${libDir}/${instanceName}";
  pidDir = if forceDisableUserChange then tmpDir else runtimeDir;
in
createManagedProcess {
  inherit instanceName;
  description = "OpenSSH server ${instanceName}";
  process = sshd;
  args = [ "-p" port "-f" "${keys}/sshd_config" ];
  foregroundProcessExtraArgs = [ "-D" ];
  pidFile = "${pidDir}/${instanceName}.pid";
  path = if openssh != null then [ openssh ] else [ ];
  # /var/empty is sshd's chroot for privilege separation (root only).
  initialize = ''
    mkdir -p ${keys}${if forceDisableUserChange then "" else " /var/empty"}
    for t in rsa ecdsa ed25519; do
      test -f ${keys}/ssh_host_''${t}_key || ssh-keygen -q -t $t -f ${keys}/ssh_host_''${t}_key -N ""
    done
  '';
  credentials = {
    groups = {
      "${instanceName}" = { };
    };
    users = {
      "${instanceName}" = {
        group = instanceName;
        homeDir = "/var/empty";
        description = "SSH privilege separation user";
      };
    };
  };
  overrides = {
    sysvinit.runlevels = [ 3 4 5 ];
  };
  configFiles = [ {
    path = "${keys}/sshd_config";
    text = ''
      HostKey ${keys}/ssh_host_rsa_key
      HostKey ${keys}/ssh_host_ecdsa_key
      HostKey ${keys}/ssh_host_ed25519_key
      PidFile ${pidDir}/${instanceName}.pid
      Subsystem sftp ${sftpServer}
      ${extraSSHDConfig}
    '';
  } ];
}
