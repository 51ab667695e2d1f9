# The webapp constructor the seed's processes model imports (in
# nix-processmgmt: examples/webapps-agnostic/constructors/constructors.nix),
# written for xdriver with nix-processmgmt's calling conventions. The
# webapp is xdriver's test webapp (tests/src/bin/webapp.rs, which behaves
# as nix-processmgmt's: it answers with its port, and with -D daemonizes
# and writes PID_FILE), packaged as a derivation the host's Nix builds from
# the cargo-built binary; the guest runs it from /nix/store through the
# shared store.
{ nix-processmgmt ? <nix-processmgmt>
, pkgs
, stateDir
, logDir
, runtimeDir
, tmpDir
, forceDisableUserChange
, processManager
, webappMode
, ids ? { }
}:

let
  createManagedProcess = import "${nix-processmgmt}/nixproc/create-managed-process/universal/create-managed-process-universal.nix" {
    inherit pkgs runtimeDir stateDir logDir tmpDir forceDisableUserChange processManager ids;
  };

  # Where `cargo build --release` put xdriver-webapp (or XDRIVER_WEBAPP_DIR).
  webappDir =
    let d = builtins.getEnv "XDRIVER_WEBAPP_DIR";
    in if d != "" then d else toString ../../../../target/release;

  # Debian's Nix builds without a sandbox, so /bin/sh can be the builder.
  webapp = derivation {
    name = "xdriver-webapp";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    src = builtins.path { path = /. + "${webappDir}/xdriver-webapp"; name = "xdriver-webapp-bin"; };
    args = [ "-c" "/bin/mkdir -p $out/bin && /bin/cp $src $out/bin/webapp" ];
  };
in
{
  webapp = { port, instanceSuffix ? "", instanceName ? "webapp${instanceSuffix}" }:
    createManagedProcess {
      inherit instanceName;
      description = "Simple test webapp ${instanceName}";
      process = "${webapp}/bin/webapp";
      daemonArgs = [ "-D" ];
      environment = {
        PORT = port;
        PID_FILE = "${tmpDir}/${instanceName}.pid";
      };
      user = instanceName;
      credentials = {
        groups = {
          "${instanceName}" = { };
        };
        users = {
          "${instanceName}" = {
            group = instanceName;
            description = "Webapp";
          };
        };
      };
      overrides = {
        sysvinit.runlevels = [ 3 4 5 ];
      };
    };
}
