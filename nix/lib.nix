# The constructor library: createManagedProcess takes the same process
# description as a TOML spec's `process` table (docs/spec.md), in Nix's
# camelCase, and checks it, so a processes model means the same in either
# form. Plus the few list/attrset helpers the front end needs.
let
  inherit (builtins) attrNames concatMap elem filter head isAttrs isList isString length listToAttrs mapAttrs removeAttrs toJSON unsafeGetAttrPos;

  # Where an attribute was written, for error messages.
  at = name: set:
    let p = unsafeGetAttrPos name set;
    in if p == null then "" else " (at ${p.file}:${toString p.line}:${toString p.column})";

  check = what: known: set:
    let bad = filter (n: !(elem n known)) (attrNames set);
    in if bad == [ ] then set
       else throw "${what}: unknown attribute `${head bad}`${at (head bad) set}; known: ${builtins.concatStringsSep ", " known}";

  # Drops attributes whose value is null (TOML has no null).
  compact = set: listToAttrs (concatMap (n: if set.${n} == null then [ ] else [ { name = n; value = set.${n}; } ]) (attrNames set));

  argv = what: v:
    if v == null then null
    else if isList v then map toString v
    else if isString v then [ v ]
    else throw "${what}: expected a list of strings or one string";

  user = u: compact (removeAttrs (check "credentials.users entry" [ "name" "group" "description" "home" "createHome" ] u) [ "createHome" ]
    // { create_home = u.createHome or false; });

  override = manager: o: compact {
    foreground = argv "overrides.${manager}.foreground" (o.foreground or null);
    daemon = argv "overrides.${manager}.daemon" (o.daemon or null);
    pid_file = o.pidFile or null;
    environment = mapAttrs (_: toString) (o.environment or { });
    directory = o.directory or null;
    umask = o.umask or null;
    nice = o.nice or null;
    user = o.user or null;
    notify = o.notify or null;
    extra = mapAttrs (_: toString) (o.extra or { });
  };

  processKeys = [
    "instanceName" "description" "foreground" "daemon" "pidFile" "environment" "directory" "umask" "nice" "user"
    "dependencies" "initialize" "credentials" "configFiles" "notify" "overrides"
  ];

  # An instance's name, from an instance (with `pkg`), a process, or a name.
  nameOf = d:
    if isString d then d
    else if isAttrs d && d ? instanceName then d.instanceName
    else if isAttrs d && d ? pkg then nameOf d.pkg
    else throw "dependencies: expected instance names or instances";
in
rec {
  inherit compact check nameOf;

  # From xdriver's OS and manager registries (nix/registry.json, checked
  # against them by xdriver's tests).
  registry = builtins.fromJSON (builtins.readFile ./registry.json);
  inherit (registry) processManagers oses;

  # nix-processmgmt's createManagedProcess, in the shape xdriver runs.
  createManagedProcess = args:
    let
      a = check "createManagedProcess" processKeys args;
      creds = check "credentials" [ "groups" "users" ] (a.credentials or { });
    in
    {
      _type = "xdriver-process";
      instanceName = a.instanceName or (throw "createManagedProcess: `instanceName` is required");
      process = compact {
        description = a.description or null;
        foreground = argv "foreground" (a.foreground or null);
        daemon = argv "daemon" (a.daemon or null);
        pid_file = a.pidFile or null;
        environment = mapAttrs (_: toString) (a.environment or { });
        directory = a.directory or null;
        umask = a.umask or null;
        nice = a.nice or null;
        user = a.user or null;
        dependencies = map nameOf (a.dependencies or [ ]);
        initialize = a.initialize or null;
        credentials = {
          groups = creds.groups or [ ];
          users = map user (creds.users or [ ]);
        };
        config_files = map
          (f:
            let c = check "configFiles entry" [ "path" "mode" "text" ] f;
            in compact { path = c.path; mode = c.mode or null; template = c.text; })
          (a.configFiles or [ ]);
        notify = a.notify or false;
        overrides = mapAttrs override (a.overrides or { });
      };
    };

  genAttrs = names: f: listToAttrs (map (n: { name = n; value = f n; }) names);
}
