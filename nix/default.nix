# xdriver's Nix front end. xdriver evaluates Nix specs with
# `-I xdriver=<this directory>` (and `-I nix-processmgmt=<this directory>`),
# so a spec reaches it as `import <xdriver> {}` (see docs/nix.md), and
# nix-processmgmt's own paths under nixproc/ exist here with its calling
# conventions. Nothing here needs nixpkgs: with <nixpkgs> on NIX_PATH,
# `pkgs` is nixpkgs; without it, a small `pkgs` with `lib` and `system`.
{ system ? builtins.currentSystem, pkgs ? import ./pkgs.nix { inherit system; } }:
let
  lib = import ./lib.nix;
in
{
  inherit lib pkgs;
  inherit (lib) createManagedProcess;
  testService = import ./test-service.nix { inherit lib pkgs system; };
}
