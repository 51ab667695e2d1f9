# The seed's composition of tests (nix-processmgmt's tests/default.nix, as
# the seed shows it), run by xdriver:
#   xdriver test tests/examples/webapps-nix -A nginx-reverse-proxy-hostbased.privileged.sysvinit
# Differences from the seed's text: testService comes from
# <nix-processmgmt/…> (xdriver puts its look-alike of nix-processmgmt's
# nixproc/ on the search path; the seed's relative path points into
# nix-processmgmt's own repository), and processManagers defaults to the
# six xdriver runs on Debian (the seed's list has disnix and s6-rc).
# Without <nixpkgs> on NIX_PATH, xdriver passes its small `pkgs`.
{ pkgs ? import <nixpkgs> { inherit system; }
, system ? builtins.currentSystem
, processManagers ? [ "systemd" "sysvinit" "openrc" "runit" "s6" "supervisord" ]
, profiles ? [ "privileged" "unprivileged" ]
}:

let
  testService = import <nix-processmgmt/nixproc/test-driver/universal.nix> {
    inherit system;
  };
in
{
  nginx-reverse-proxy-hostbased = import ./nginx-reverse-proxy-hostbased {
    inherit pkgs processManagers profiles testService;
  };
}
