# `pkgs` for test files: nixpkgs when <nixpkgs> is on NIX_PATH, else a small
# stand-in with `lib` (what test files use of nixpkgs' lib), `system` and
# `stdenv.system`. Without nixpkgs there are no packages to build: a test
# names programs the guest has (Debian's, or store paths the host built);
# `pkgs.<package>` is then Nix's "attribute missing" error.
{ system ? builtins.currentSystem }:
let
  xdLib = import ./lib.nix;
  small = {
    lib = xdLib.smallLib;
    inherit system;
    stdenv = { inherit system; isLinux = builtins.match ".*-linux" system != null; isDarwin = false; };
  };
in
if xdLib.hasNixpkgs then import <nixpkgs> { inherit system; }
else small
