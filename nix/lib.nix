# The constructor library. createManagedProcess takes nix-processmgmt's
# parameters, with its defaults and derivations (nixproc/create-managed-
# process/agnostic/create-managed-process.nix), plus xdriver's own
# (`foreground`/`daemon` as argv lists, `configFiles`, `notify`), and gives
# the process description of a TOML spec's `process` table (docs/spec.md),
# so a processes model means the same in either form. It is a look-alike:
# the result is data that xdriver deploys, not a derivation of generated
# init scripts. Plus the small `lib` that test files use without nixpkgs.
let
  inherit (builtins) attrNames concatMap concatStringsSep elem filter head isAttrs isBool isFunction isInt isList isString length listToAttrs mapAttrs removeAttrs toJSON unsafeGetAttrPos;

  # Where an attribute was written, for error messages.
  at = name: set:
    let p = unsafeGetAttrPos name set;
    in if p == null then "" else " (at ${p.file}:${toString p.line}:${toString p.column})";

  check = what: known: set:
    let bad = filter (n: !(elem n known)) (attrNames set);
    in if bad == [ ] then set
       else throw "${what}: unknown attribute `${head bad}`${at (head bad) set}; known: ${concatStringsSep ", " known}";

  # A value as a cell (JSON) can carry it. nix-processmgmt lets
  # extraParams (and nixosConfig) hold any Nix value: what toJSON takes
  # stays; a derivation or path becomes its store path; a function, and an
  # attribute set too big or too deep to walk (nixpkgs' `pkgs`), becomes a
  # note of what it was. Nothing reads these back as code: for a Nix spec
  # the strings are final, and `params` only shows in plans and reports.
  jsonableAt = depth: v:
    if isFunction v then "<function>"
    else if builtins.isPath v then toString v
    else if isAttrs v then
      (if v ? outPath then "${v}"
       else if depth >= 4 || length (attrNames v) > 64 then "<attribute set of ${toString (length (attrNames v))}>"
       else mapAttrs (_: jsonableAt (depth + 1)) v)
    else if isList v then
      (if depth >= 4 || length v > 256 then "<list of ${toString (length v)}>" else map (jsonableAt (depth + 1)) v)
    else v;

  # Drops attributes whose value is null (TOML has no null).
  compact = set: listToAttrs (concatMap (n: if set.${n} == null then [ ] else [ { name = n; value = set.${n}; } ]) (attrNames set));

  argv = what: v:
    if v == null then null
    else if isList v then map toString v
    else if isString v then [ v ]
    else throw "${what}: expected a list of strings or one string";

  # A command: xdriver's argv-list form, or nix-processmgmt's executable
  # plus its argument list.
  command = what: exe: args:
    if exe == null then null
    else if isList exe then argv what exe
    else [ (toString exe) ] ++ map toString args;

  # nix-processmgmt's credentials: { groups = { NAME = { gid?; }; };
  # users = { NAME = { uid?; group?; description?; homeDir?;
  # createHomeDir?; shell?; }; }; } -- or xdriver's lists.
  groupsOf = gs:
    if isList gs then map (g: if isString g then g else compact (check "credentials.groups entry" [ "name" "gid" ] g // { gid = g.gid or null; })) gs
    else map (n: let g = check "credentials.groups.${n}" [ "gid" ] gs.${n}; in compact { name = n; gid = g.gid or null; }) (attrNames gs);

  userOf = name: u:
    let c = check "credentials.users.${name}" [ "uid" "group" "description" "homeDir" "createHomeDir" "shell" "password" ] u;
    in if c ? password then throw "credentials.users.${name}: `password` is not supported (test users log in with keys)${at "password" c}"
       else compact {
         inherit name;
         uid = c.uid or null;
         group = c.group or null;
         description = c.description or "";
         home = c.homeDir or null;
         create_home = c.createHomeDir or false;
         shell = c.shell or null;
       };

  usersOf = us:
    if isList us then map (u: compact (removeAttrs (check "credentials.users entry" [ "name" "group" "description" "home" "createHome" "uid" "shell" ] u) [ "createHome" ]
      // { create_home = u.createHome or false; uid = u.uid or null; shell = u.shell or null; })) us
    else map (n: userOf n us.${n}) (attrNames us);

  # The managers nix-processmgmt knows and xdriver has not: their
  # overrides are accepted and have nothing to apply to here.
  foreignManagers = [ "docker" "launchd" "cygrunsrv" "disnix" ];
  # nix-processmgmt's name for xdriver's s6 backend.
  managerName = m: if m == "s6-rc" then "s6" else m;

  # A manager-specific value as text: lists space-separated (sysvinit's
  # runlevels), booleans as true/false.
  text = v: if isList v then concatStringsSep " " (map toString v) else if isBool v then (if v then "true" else "false") else toString v;

  overrideKeys = [ "foreground" "daemon" "pidFile" "environment" "directory" "umask" "nice" "user" "notify" "extra" ];

  # overrides.<manager>: the keys xdriver's process has, and every other
  # key handed to the manager's backend as `extra` (systemd's sections as
  # Section.Key; the others as they are). The backend refuses a key it has
  # no use for, naming it.
  override = manager: o:
    if isFunction o then throw "overrides.${manager}: a function override changes nix-processmgmt's generated arguments, which xdriver does not generate in Nix; give an attribute set"
    else
    let
      others = removeAttrs o overrideKeys;
      flat = concatMap
        (k: if isAttrs others.${k} then map (k2: { name = "${k}.${k2}"; value = text others.${k}.${k2}; }) (attrNames others.${k})
            else [ { name = k; value = text others.${k}; } ])
        (attrNames others);
    in
    compact {
      foreground = argv "overrides.${manager}.foreground" (o.foreground or null);
      daemon = argv "overrides.${manager}.daemon" (o.daemon or null);
      pid_file = o.pidFile or null;
      environment = mapAttrs (_: toString) (o.environment or { });
      directory = o.directory or null;
      umask = o.umask or null;
      nice = o.nice or null;
      user = o.user or null;
      notify = o.notify or null;
      extra = mapAttrs (_: toString) (o.extra or { }) // listToAttrs flat;
    };

  # nix-processmgmt's parameters, then xdriver's.
  processKeys = [
    "name" "description" "initialize" "process" "args" "daemon" "daemonExtraArgs" "daemonArgs" "instanceName" "pidFile"
    "foregroundProcess" "foregroundProcessExtraArgs" "foregroundProcessArgs" "path" "environment" "directory" "umask" "nice"
    "user" "dependencies" "credentials" "overrides" "postInstall"
    "foreground" "configFiles" "notify"
  ];

  # An instance's name, from an instance (with `pkg`), a process, or a name.
  nameOf = d:
    if isString d then d
    else if isAttrs d && d ? instanceName then d.instanceName
    else if isAttrs d && d ? pkg then nameOf d.pkg
    else throw "dependencies: expected instance names, instances or createManagedProcess results";

  # The PATH of a process with `path`: each package's bin/, then the usual.
  pathOf = ps: concatStringsSep ":" (map (p: "${p}/bin") ps ++ [ "/usr/local/sbin" "/usr/local/bin" "/usr/sbin" "/usr/bin" "/sbin" "/bin" ]);

  # What test files use of nixpkgs' lib (a look-alike subset, for when no
  # <nixpkgs> is on NIX_PATH).
  smallLib = rec {
    inherit (builtins) attrNames attrValues concatStringsSep elem filter foldl' head tail length isAttrs isList isString isFunction replaceStrings toJSON fromJSON mapAttrs listToAttrs hasAttr getAttr;
    id = x: x;
    optional = c: x: if c then [ x ] else [ ];
    optionals = c: xs: if c then xs else [ ];
    optionalString = c: s: if c then s else "";
    optionalAttrs = c: s: if c then s else { };
    concatStrings = concatStringsSep "";
    concatMapStrings = f: xs: concatStrings (map f xs);
    concatMapStringsSep = sep: f: xs: concatStringsSep sep (map f xs);
    concatMap = builtins.concatMap;
    concatLists = builtins.concatLists;
    flatten = x: if isList x then builtins.concatMap flatten x else [ x ];
    genAttrs = names: f: listToAttrs (map (n: { name = n; value = f n; }) names);
    mapAttrsToList = f: s: map (n: f n s.${n}) (attrNames s);
    filterAttrs = p: s: listToAttrs (builtins.concatMap (n: if p n s.${n} then [ { name = n; value = s.${n}; } ] else [ ]) (attrNames s));
    nameValuePair = name: value: { inherit name value; };
    range = a: b: if a > b then [ ] else builtins.genList (i: a + i) (b - a + 1);
    intersectLists = a: b: filter (x: elem x a) b;
    subtractLists = a: b: filter (x: !(elem x a)) b;
    unique = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];
    last = xs: builtins.elemAt xs (length xs - 1);
    escapeShellArg = s: "'${replaceStrings [ "'" ] [ "'\\''" ] (toString s)}'";
    escapeShellArgs = xs: concatStringsSep " " (map escapeShellArg xs);
    recursiveUpdate = a: b: a // mapAttrs (n: v: if isAttrs v && isAttrs (a.${n} or null) then recursiveUpdate a.${n} v else v) b;
    isDerivation = x: isAttrs x && (x.type or null) == "derivation";
    toUpper = replaceStrings (builtins.genList (i: builtins.substring i 1 "abcdefghijklmnopqrstuvwxyz") 26) (builtins.genList (i: builtins.substring i 1 "ABCDEFGHIJKLMNOPQRSTUVWXYZ") 26);
    toLower = replaceStrings (builtins.genList (i: builtins.substring i 1 "ABCDEFGHIJKLMNOPQRSTUVWXYZ") 26) (builtins.genList (i: builtins.substring i 1 "abcdefghijklmnopqrstuvwxyz") 26);
    hasPrefix = p: s: builtins.substring 0 (builtins.stringLength p) s == p;
    hasSuffix = x: s: let l = builtins.stringLength s; lx = builtins.stringLength x; in l >= lx && builtins.substring (l - lx) lx s == x;
    mkDefault = x: x;
    mkForce = x: x;
    trivial = { inherit id; };
    strings = { inherit optionalString concatStrings concatMapStrings concatMapStringsSep escapeShellArg escapeShellArgs hasPrefix hasSuffix toUpper toLower; };
    lists = { inherit optional optionals flatten range intersectLists subtractLists unique last; };
    attrsets = { inherit genAttrs mapAttrsToList filterAttrs nameValuePair recursiveUpdate optionalAttrs; };
  };
in
rec {
  inherit compact check nameOf smallLib;
  jsonable = jsonableAt 0;

  # Whether <nixpkgs> is on NIX_PATH (then `pkgs` is nixpkgs).
  hasNixpkgs = builtins.any (e: e.prefix == "nixpkgs") builtins.nixPath;

  # From xdriver's OS and manager registries (nix/registry.json, checked
  # against them by xdriver's tests).
  registry = builtins.fromJSON (builtins.readFile ./registry.json);
  inherit (registry) processManagers oses;

  # nix-processmgmt's createManagedProcess, in the shape xdriver runs.
  createManagedProcess = args:
    let
      a = check "createManagedProcess" processKeys args;
      instanceName = a.instanceName or a.name or (throw "createManagedProcess: No process name was specified or can be inferred! (give `instanceName` or `name`)");
      name = a.name or instanceName;
      process = a.process or null;
      pargs = a.args or [ ];
      # nix-processmgmt: daemon ? process, daemonArgs ? args ++ daemonExtraArgs,
      # foregroundProcess ? process, foregroundProcessArgs ? args ++ foregroundProcessExtraArgs.
      daemonExe = a.daemon or process;
      daemonArgs = a.daemonArgs or (pargs ++ (a.daemonExtraArgs or [ ]));
      fgExe = a.foregroundProcess or process;
      fgArgs = a.foregroundProcessArgs or (pargs ++ (a.foregroundProcessExtraArgs or [ ]));
      foreground =
        if a ? foreground then argv "foreground" a.foreground
        else command "foregroundProcess" fgExe fgArgs;
      creds = check "credentials" [ "groups" "users" ] (a.credentials or { });
      path = a.path or [ ];
      environment = mapAttrs (_: toString) (a.environment or { }) // (if path == [ ] then { } else { PATH = pathOf path; });
      unknownManagers = filter (m: !(elem (managerName m) registry.processManagers) && !(elem m foreignManagers)) (attrNames (a.overrides or { }));
    in
    if (a.postInstall or "") != "" then
      throw "createManagedProcess `${instanceName}`: postInstall changes the generated configuration derivation's $out, which xdriver does not build (it deploys the description itself)${at "postInstall" a}"
    else if unknownManagers != [ ] then
      throw "createManagedProcess `${instanceName}`: overrides for unknown process manager `${head unknownManagers}`${at "overrides" a}; xdriver has ${concatStringsSep ", " registry.processManagers} (and accepts, without effect, nix-processmgmt's ${concatStringsSep ", " foreignManagers})"
    else
    {
      _type = "xdriver-process";
      inherit instanceName name;
      process = compact {
        description = a.description or name;
        inherit foreground;
        daemon = command "daemon" daemonExe daemonArgs;
        pid_file = a.pidFile or null;
        inherit environment;
        directory = a.directory or null;
        umask = a.umask or null;
        nice = a.nice or null;
        user = a.user or null;
        dependencies = map nameOf (a.dependencies or [ ]);
        initialize = let i = a.initialize or ""; in if i == "" then null else i;
        credentials = {
          groups = groupsOf (creds.groups or [ ]);
          users = usersOf (creds.users or [ ]);
        };
        config_files = map
          (f:
            let c = check "configFiles entry" [ "path" "mode" "text" ] f;
            in compact { path = c.path; mode = c.mode or null; template = c.text; })
          (a.configFiles or [ ]);
        notify = a.notify or false;
        overrides = listToAttrs (concatMap
          (m: if elem m foreignManagers then [ ] else [ { name = managerName m; value = override m a.overrides.${m}; } ])
          (attrNames (a.overrides or { })));
      };
    };

  genAttrs = smallLib.genAttrs;
}
