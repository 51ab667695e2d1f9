# The client-server example as a nix-processmgmt-style test with nodes:
# nginx on `server` (the cell's manager and profile), a fixed Debian 13
# sysvinit `client`, hooks in Python with the nodes as globals.
#   xdriver test tests/examples/client-server-nix -A privileged.systemd
# Nix sorts attribute names, so `client` is node 1 (192.168.1.1) and
# `server` node 2; the model's instance is placed on `server` by name.
{ pkgs ? null
, testService ? import <nix-processmgmt/nixproc/test-driver/universal.nix> { }
, processManagers ? [ "systemd" "sysvinit" "openrc" "runit" "s6" "supervisord" ]
, profiles ? [ "privileged" "unprivileged" ]
}:

testService {
  name = "client-server-nix";
  exprFile = ./processes.nix;

  nodes = {
    server = { instances = [ "web" ]; };
    # The client's own guest: wget, which the server's image has not.
    client = { os = "debian-13"; manager = "sysvinit"; profile = "privileged"; guest = { packages = [ "wget" ]; }; };
  };

  readiness = { instanceName, instance, ... }: ''
    server.wait_for_unit("${instanceName}")
    server.wait_for_open_port(${toString instance.port})
  '';

  tests = { instance, ... }: ''
    client.wait_until_succeeds("curl -sf --max-time 5 http://server:${toString instance.port}/ | grep -q 'hello from the server'")
    client.succeed("wget -qO- http://server:${toString instance.port}/ | grep -q 'hello from the server'")
    server.fail("command -v wget")
    server.block()
    client.fail("curl -sf --max-time 5 http://server:${toString instance.port}/")
    server.unblock()
    client.wait_until_succeeds("curl -sf --max-time 5 http://server:${toString instance.port}/")
  '';

  inherit processManagers profiles;
}
