# nix-processmgmt's nixproc/create-managed-process/agnostic/create-managed-process.nix,
# as xdriver provides it (a look-alike): the generators are xdriver's
# backends (in Rust), so `generators` and `stdenv` are taken and unused.
{ processManager ? null, generators ? { }, stdenv ? null }:
(import ../../../lib.nix).createManagedProcess
