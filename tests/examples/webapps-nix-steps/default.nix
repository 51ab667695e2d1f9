# The seed's nginx-reverse-proxy-hostbased test, in Nix with xdriver's step
# lists (../webapps-nix has the seed's own text, with Python tests): the
# same system and tests as ../webapps/xdriver.toml, one attribute per cell:
#   xdriver test tests/examples/webapps-nix-steps -A nginx-reverse-proxy-hostbased.privileged.sysvinit
# With `--arg webappFromStore true` the webapp is a derivation built by the
# host's Nix and the guest runs it from /nix/store through the shared store.
{ processManagers ? [ "systemd" "sysvinit" "openrc" "runit" "s6" "supervisord" ]
, profiles ? [ "privileged" "unprivileged" ]
, oses ? [ "debian-12" ]
, webappFromStore ? false
, xdriver ? import <xdriver> { }
}:

let
  # Where `cargo build` put xdriver-webapp.
  webappDir =
    let d = builtins.getEnv "XDRIVER_WEBAPP_DIR";
    in if d != "" then d else toString ../../../target/release;

  # The webapp as a package: a derivation the host builds (Debian's Nix
  # builds without a sandbox, so /bin/sh can be the builder).
  webapp = derivation {
    name = "xdriver-webapp";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    src = builtins.path { path = /. + "${webappDir}/xdriver-webapp"; name = "xdriver-webapp-bin"; };
    args = [ "-c" "/bin/mkdir -p $out/bin && /bin/cp $src $out/bin/xdriver-webapp" ];
  };

  webappBin = if webappFromStore then "${webapp}/bin/xdriver-webapp" else "/opt/xdriver-webapp/xdriver-webapp";
in
{
  nginx-reverse-proxy-hostbased = xdriver.testService {
    name = "nginx-reverse-proxy-hostbased";
    description = "webapp1-4 behind nginx, webapp5-6 behind nginx2, host-based virtual hosts";
    exprFile = ./processes-advanced.nix;
    extraParams = { inherit webappBin; };
    shares = if webappFromStore then [ ] else [ { host = webappDir; guest = "/opt/xdriver-webapp"; } ];

    readiness = { instance, ... }: [
      { wait_for_open_port = instance.port; }
    ];

    tests = { instanceName, instance, ... }:
      if builtins.elem instanceName [ "nginx" "nginx2" ] then
        map
          (webapp: {
            succeed = "curl --fail -sS -H 'Host: ${webapp.dnsName}' http://localhost:${toString instance.port} | grep ': ${toString webapp.port}'";
          })
          instance.webapps
      else [ ];

    inherit processManagers profiles oses;
  };
}
