# xdriver's entry point for a Nix spec (xdriver evaluates
# `import <xdriver/eval.nix> FILE` with the command line's --arg/--argstr):
# calls the file's function as nix-instantiate would, and supplies what a
# nix-processmgmt-style test file takes without a default (pkgs,
# testService, processManagers, profiles, nix-processmgmt,
# createManagedProcess, system), so the seed's and
# nix-processmgmt-services' test files evaluate unchanged.
file: { ... }@given:
let
  inherit (builtins) attrNames filter functionArgs intersectAttrs isFunction listToAttrs removeAttrs;
  f = import file;
  xd = import ./default.nix { };
  pool = {
    inherit (xd) pkgs testService createManagedProcess;
    processManagers = xd.lib.registry.defaultProcessManagers;
    profiles = [ "privileged" "unprivileged" ];
    # nix-processmgmt's own paths (nixproc/…) are here, with its calling
    # conventions.
    nix-processmgmt = toString ./.;
    xdriver = xd;
    system = builtins.currentSystem;
  };
  userArgs = removeAttrs given [ "xdriverAutoCall" ];
  fargs = functionArgs f;
  # Without <nixpkgs> on NIX_PATH, a `pkgs ? import <nixpkgs> {…}` default
  # cannot evaluate: xdriver's small pkgs is passed instead.
  wanted = n: pool ? ${n} && (!fargs.${n} || (n == "pkgs" && !xd.lib.hasNixpkgs));
  needed = listToAttrs (map (n: { name = n; value = pool.${n}; }) (filter wanted (attrNames fargs)));
in
if !(isFunction f) then f
else if fargs == { } then f userArgs
else f (needed // intersectAttrs fargs userArgs)
