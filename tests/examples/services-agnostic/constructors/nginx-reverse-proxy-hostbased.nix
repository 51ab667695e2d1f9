# nginx forwarding each webapp's dnsName to its port (the seed's
# nginxReverseProxyHostBased). nginx is nixpkgs' when pkgs is nixpkgs, else
# the guest's own (/usr/sbin/nginx on Debian). Its configuration is an
# xdriver `configFiles` entry (nix-processmgmt writes it with
# writeTextFile, which needs nixpkgs).
{ createManagedProcess, stateDir, runtimeDir, forceDisableUserChange, pkgs }:

{ webapps, port ? 80, instanceSuffix ? "", instanceName ? "nginx${instanceSuffix}" }:
interDependencies:

let
  inherit (builtins) concatStringsSep toString;
  nginx = if pkgs ? nginx then "${pkgs.nginx}/bin/nginx" else "/usr/sbin/nginx";
  dir = "${stateDir}/${instanceName}";
  upstream = webapp: ''
      upstream ${webapp.pkg.instanceName} {
        server localhost:${toString webapp.port};
      }
      server {
        listen ${toString port};
        server_name ${webapp.dnsName};
        location / {
          proxy_pass http://${webapp.pkg.instanceName};
        }
      }
  '';
in
createManagedProcess {
  inherit instanceName;
  description = "nginx reverse proxy ${instanceName}";
  process = nginx;
  args = [ "-p" dir "-c" "${dir}/nginx.conf" "-e" "${dir}/logs/error.log" ];
  foregroundProcessExtraArgs = [ "-g" "daemon off;" ];
  pidFile = "${runtimeDir}/${instanceName}.pid";
  initialize = "mkdir -p ${dir}/logs ${dir}/tmp";
  dependencies = map (webapp: webapp.pkg) webapps;
  credentials = {
    groups = {
      "${instanceName}" = { };
    };
    users = {
      "${instanceName}" = {
        group = instanceName;
        description = "Nginx ${instanceName}";
      };
    };
  };
  overrides = {
    sysvinit.runlevels = [ 3 4 5 ];
  };
  configFiles = [ {
    path = "${dir}/nginx.conf";
    text = ''
      pid ${runtimeDir}/${instanceName}.pid;
      error_log ${dir}/logs/error.log;
    '' + (if forceDisableUserChange then "" else ''
      user ${instanceName} ${instanceName};
    '') + ''
      worker_processes 1;
      events {
        worker_connections 64;
      }
      http {
        access_log ${dir}/logs/access.log;
        client_body_temp_path ${dir}/tmp/body;
        proxy_temp_path ${dir}/tmp/proxy;
        fastcgi_temp_path ${dir}/tmp/fastcgi;
        uwsgi_temp_path ${dir}/tmp/uwsgi;
        scgi_temp_path ${dir}/tmp/scgi;
    '' + concatStringsSep "" (map upstream webapps) + ''
      }
    '';
  } ];
}
