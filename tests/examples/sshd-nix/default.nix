# A test in the style of nix-processmgmt-services' sshd test: two sshd
# instances; initialTests make a key pair in the working directory and
# authorize it for root (privileged) or for `unprivileged`; each instance
# must then let that user in over SSH and run ls.
#   xdriver test tests/examples/sshd-nix -A privileged.sysvinit
# Differences from nix-processmgmt-services' text: systemPackages names
# pkgs.openssh only when pkgs is nixpkgs (otherwise the guest's OpenSSH
# is used) and the constructors come from ../services-agnostic. The
# remote command is found with `type -p`, as there: the profile's user has
# bash as its login shell, as a NixOS user does.
{ pkgs, testService, processManagers, profiles, nix-processmgmt }:

let
  inherit (pkgs.lib) optionalString;
in
testService {
  name = "sshd";
  exprFile = ./processes.nix;
  extraParams = { inherit nix-processmgmt; };
  systemPackages = if pkgs ? openssh then [ pkgs.openssh ] else [ ];

  initialTests = { forceDisableUserChange, ... }:
    let
      home = if forceDisableUserChange then "/home/unprivileged" else "/root";
    in
    ''
      machine.succeed('ssh-keygen -q -t ecdsa -f key -N ""')
      machine.succeed("mkdir -m 700 ${home}/.ssh")
      machine.succeed("cp key.pub ${home}/.ssh/authorized_keys && chmod 600 ${home}/.ssh/authorized_keys")
    '' + optionalString forceDisableUserChange ''
      machine.succeed("chown unprivileged:users key && chown -R unprivileged:users ${home}/.ssh")
    '';

  readiness = { instance, ... }:
    ''
      machine.wait_for_open_port(${toString instance.port})
    '';

  # The privileged first instance must answer on sshd's default port
  # (no -p); the others on theirs, as the profile's user.
  tests = { instanceName, instance, forceDisableUserChange, ... }:
    let
      ssh = "ssh -i key -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no";
      portArg = optionalString (!(instanceName == "sshd" && !forceDisableUserChange)) "-p ${toString instance.port} ";
      cmd = "${ssh} ${portArg}localhost $(type -p ls) /";
    in
    if forceDisableUserChange then ''
      out = machine.succeed("su unprivileged -c '${cmd}'")
      assert "proc" in out.split(), out
    '' else ''
      out = machine.succeed("${cmd}")
      assert "proc" in out.split(), out
    '';

  inherit processManagers profiles;
}
