# nix-processmgmt's nixproc/test-driver/universal.nix, as xdriver provides
# it (a look-alike): the same arguments, and its result is xdriver's
# testService, whose cells xdriver runs instead of the NixOS test driver.
# `nixpkgs` is used only if given and evaluable.
{ nixpkgs ? null, system ? builtins.currentSystem }:
let
  pkgs = if nixpkgs == null then import ../../pkgs.nix { inherit system; } else import nixpkgs { inherit system; };
in
(import ../../default.nix { inherit system pkgs; }).testService
