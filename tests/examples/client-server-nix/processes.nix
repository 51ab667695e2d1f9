# One nginx serving a static page on port 8080 (the client-server
# example's model, as a nix-processmgmt processes model).
{ createManagedProcess
, stateDir ? "/var"
, runtimeDir ? "${stateDir}/run"
, forceDisableUserChange ? false
}:

let
  dir = "${stateDir}/web";
  nginx = [ "-p" dir "-c" "${dir}/nginx.conf" "-e" "${dir}/logs/error.log" ];
in
{
  web = rec {
    port = 8080;
    pkg = createManagedProcess {
      instanceName = "web";
      description = "nginx serving one static page on every address";
      process = "/usr/sbin/nginx";
      args = nginx;
      foregroundProcessExtraArgs = [ "-g" "daemon off;" ];
      pidFile = "${runtimeDir}/web.pid";
      initialize = ''
        mkdir -p ${dir}/logs ${dir}/tmp ${dir}/www
        echo 'hello from the server' > ${dir}/www/index.html
      '';
      configFiles = [ {
        path = "${dir}/nginx.conf";
        text = ''
          pid ${runtimeDir}/web.pid;
          error_log ${dir}/logs/error.log;
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
            server {
              listen ${toString port};
              listen [::]:${toString port};
              root ${dir}/www;
            }
          }
        '';
      } ];
    };
  };
}
