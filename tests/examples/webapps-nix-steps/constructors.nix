# The seed's constructors (nix-processmgmt's webapp and
# nginxReverseProxyHostBased), written with xdriver's createManagedProcess.
# They mirror the constructors of ../webapps/xdriver.toml, so both forms
# give the same plan.
{ createManagedProcess, stateDir, runtimeDir, tmpDir, forceDisableUserChange, webappBin }:

let
  inherit (builtins) concatStringsSep toString;
in
{
  # The test webapp: foreground, or a daemon with -D that writes PID_FILE.
  webapp = { port, instanceSuffix ? "", instanceName ? "webapp${instanceSuffix}" }:
    let
      # Where xdriver (as nix-processmgmt) puts the pidfile of a process
      # that names a user.
      pidFile = "${tmpDir}/${instanceName}.pid";
    in
    createManagedProcess {
      inherit instanceName pidFile;
      description = "Simple test webapp ${instanceName}";
      foreground = [ webappBin ];
      daemon = [ webappBin "-D" ];
      environment = { PORT = port; PID_FILE = pidFile; };
      user = instanceName;
      credentials = {
        groups = [ instanceName ];
        users = [ { name = instanceName; group = instanceName; description = "Webapp ${instanceName}"; } ];
      };
      notify = true;
    };

  # nginx forwarding each webapp's dnsName to its port.
  nginxReverseProxyHostBased = { webapps, port ? 80, instanceSuffix ? "", instanceName ? "nginx${instanceSuffix}" }: { }:
    let
      dir = "${stateDir}/${instanceName}";
      pidFile = "${runtimeDir}/${instanceName}.pid";
      # One upstream and virtual host per webapp, inside http { }.
      upstream = webapp: concatStringsSep "\n" [
        "  upstream ${webapp.pkg.instanceName} {"
        "    server 127.0.0.1:${toString webapp.port};"
        "  }"
        "  server {"
        "    listen ${toString port};"
        "    server_name ${webapp.dnsName};"
        "    location / {"
        "      proxy_pass http://${webapp.pkg.instanceName};"
        "    }"
        "  }"
        ""
      ];
    in
    createManagedProcess {
      inherit instanceName pidFile;
      description = "nginx reverse proxy ${instanceName}";
      foreground = [ "/usr/sbin/nginx" "-p" dir "-c" "${dir}/nginx.conf" "-e" "${dir}/logs/error.log" "-g" "daemon off;" ];
      daemon = [ "/usr/sbin/nginx" "-p" dir "-c" "${dir}/nginx.conf" "-e" "${dir}/logs/error.log" ];
      initialize = "mkdir -p ${dir}/logs ${dir}/tmp";
      dependencies = webapps;
      credentials = {
        groups = [ instanceName ];
        users = [ { name = instanceName; group = instanceName; description = "Nginx ${instanceName}"; } ];
      };
      configFiles = [ {
        path = "${dir}/nginx.conf";
        text = ''
          pid ${pidFile};
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
    };
}
