# The shared constructors the seed's processes model imports (in
# nix-processmgmt: examples/services-agnostic/constructors/constructors.nix),
# written for xdriver with nix-processmgmt's calling conventions: the
# createManagedProcess of nix-processmgmt's universal file, found through
# `nix-processmgmt` (xdriver puts its look-alike on the search path).
{ nix-processmgmt ? <nix-processmgmt>
, pkgs
, stateDir
, logDir
, runtimeDir
, cacheDir
, libDir
, tmpDir
, forceDisableUserChange
, processManager
, spoolDir ? "${stateDir}/spool"
, ids ? { }
}:

let
  createManagedProcess = import "${nix-processmgmt}/nixproc/create-managed-process/universal/create-managed-process-universal.nix" {
    inherit pkgs runtimeDir stateDir logDir tmpDir forceDisableUserChange processManager ids;
  };
in
{
  nginxReverseProxyHostBased = import ./nginx-reverse-proxy-hostbased.nix {
    inherit createManagedProcess stateDir runtimeDir forceDisableUserChange pkgs;
  };

  sshd = import ./sshd.nix {
    inherit createManagedProcess libDir runtimeDir tmpDir forceDisableUserChange pkgs;
  };
}
