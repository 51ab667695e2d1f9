# nix-processmgmt's nixproc/create-managed-process/universal/create-managed-process-universal.nix,
# as xdriver provides it (a look-alike): the same arguments, and its result
# is createManagedProcess. The directories and forceDisableUserChange are
# taken for compatibility; xdriver deploys each cell with its profile's,
# which are the same values nix-processmgmt's profiles give.
{ pkgs ? null, runtimeDir ? null, logDir ? null, tmpDir ? null, stateDir ? null, forceDisableUserChange ? false, processManager ? null, ids ? { } }:
(import ../../../lib.nix).createManagedProcess
