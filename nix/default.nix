# xdriver's Nix front end. xdriver evaluates Nix specs with
# `-I xdriver=<this directory>`, so a spec reaches it as `import <xdriver> {}`
# (see docs/nix.md). Nothing here needs nixpkgs.
{ }:
let
  lib = import ./lib.nix;
in
{
  inherit lib;
  inherit (lib) createManagedProcess;
  testService = import ./test-service.nix { inherit lib; };
}
