# testService, called the way nix-processmgmt's is: one processes model
# tested under several process managers, profiles and guest OSes. The result
# has one attribute per cell, `<profile>.<processManager>.<os>`; each cell
# is plain data (`_type = "xdriver-cell"`) that xdriver runs, e.g.
#   xdriver test default.nix -A nginx-reverse-proxy-hostbased.privileged.sysvinit
# A look-alike of nix-processmgmt's nixproc/test-driver/agnostic.nix: the
# same parameters and calling conventions, run by xdriver instead of the
# NixOS test driver.
{ lib, pkgs ? null, system ? builtins.currentSystem }:

{ name ? null
, description ? ""
  # The processes model: a function of the cell's parameters returning
  # { <instance> = { <attributes…>; pkg = createManagedProcess {…}; }; }.
  # It gets builtins.intersectAttrs (builtins.functionArgs f) of pkgs,
  # system, processManager, the profile's parameters, createManagedProcess
  # and extraParams, as in nix-processmgmt.
, exprFile
  # Parameters for the model besides the cell's own.
, extraParams ? { }
  # Python for the NixOS test driver's `machine` (as in nix-processmgmt), or
  # lists of Machine API steps (attribute sets, keys as in a TOML spec's
  # [tests]). readiness gets { instanceName, instance } // params, tests
  # also processManager, initialTests and postTests params // { processes }.
, readiness ? null
, tests ? null
, initialTests ? null
, postTests ? null
, processManagers ? (builtins.fromJSON (builtins.readFile ./registry.json)).defaultProcessManagers
, profiles ? [ "privileged" "unprivileged" ]
, oses ? [ "debian-12" ]
  # Store paths whose bin/ is put on the guest's PATH (/usr/local/bin).
, systemPackages ? [ ]
  # For NixOS guests: extra NixOS configuration (unverified here: no NixOS
  # image can be obtained on the machines xdriver is tested on). Its
  # virtualisation.memorySize, diskSize and cores (an attribute set, not a
  # module function) size every cell's VM, as the NixOS test driver's do,
  # unless `guest` says otherwise.
, nixosConfig ? null
  # What the guest gets beyond its image (a TOML spec's [guest]): the OS's
  # own packages by name (Debian's, installed through the host's apt when
  # the image is derived), commands run once in the image, the packages'
  # services that may still start at boot, disk, memory and vCPUs:
  # { packages ? [ ]; prepare ? [ ]; bootServices ? [ ]; diskMib; memoryMib;
  #   cpus; os.<name> = { packages; prepare; bootServices; }; }
, guest ? { }
  # Host directories shared into the guest: [ { host; guest; writable ? false; } ].
, shares ? [ ]
  # Seconds: { step; command; boot; }.
, timeouts ? { }
  # Several machines in each cell (a TOML spec's [nodes.NAME]):
  # { <name> = { os; manager; profile; instances ? [ … ]; vlans ? [ 1 ];
  #   memoryMib; cpus; guest ? { … }; }; } (a node's `guest` replaces the
  #   cell's for that node, as [nodes.NAME.guest] does). What a node does not set it takes from the
  # cell; instances no node names run on the first node, and the first is
  # the first by name (Nix sorts attribute names). Test hooks' Python has
  # every node as a global.
, nodes ? { }
}@args:

let
  # nix-processmgmt's testService took no name before September 2023: the
  # test's directory names it then.
  testName = if name != null then name else baseNameOf (dirOf exprFile);
  inherit (builtins) attrNames concatMap fromJSON functionArgs getContext intersectAttrs isAttrs isFunction isList isString listToAttrs mapAttrs readFile removeAttrs toJSON unsafeGetAttrPos;

  profileParams = fromJSON (readFile ./profiles.json);

  # Where a hook was written, for Python tracebacks.
  origin = n: let p = unsafeGetAttrPos n args; in if p == null then null else "${p.file}:${toString p.line}";
  origins = lib.compact (listToAttrs (map (n: { name = n; value = origin n; }) [ "readiness" "tests" "initialTests" "postTests" "systemPackages" ]));

  # An instance as tests see it: its attributes without `pkg`, and other
  # instances it refers to the same way (one level, as in a TOML spec).
  isInstance = v: isAttrs v && v ? pkg;
  plain = n: inst: removeAttrs inst [ "pkg" ] // { instanceName = inst.pkg.instanceName or n; };
  refs = v:
    if isInstance v then plain "" v
    else if isList v then map (x: if isInstance x then plain "" x else x) v
    else v;
  attrsOf = n: inst: mapAttrs (_: refs) (plain n inst);

  # A hook's result: Python source, a list of steps, or nothing.
  hook = what: v:
    if v == null then [ ]
    else if isString v || isList v then v
    else throw "${testName}: ${what} must give Python (a string) or a list of steps";
  call = what: f: a: if f == null then [ ] else hook what (f a);

  # A `guest` attribute set as the TOML [guest] table (snake_case); `what`
  # names it in errors, `vz` gives sizes it leaves out.
  toGuestTable = what: g: vz:
    let
      known = [ "packages" "prepare" "bootServices" "diskMib" "memoryMib" "cpus" "os" ];
      unknown = builtins.filter (n: !(builtins.elem n known)) (attrNames g);
      names = field: l: map (p: if isString p then p else throw "${testName}: ${what}.${field} takes names (strings) of the OS's own packages; Nix packages go in systemPackages") l;
      perOs = o: lib.compact {
        packages = if o ? packages then names "os.*.packages" o.packages else null;
        prepare = o.prepare or null;
        boot_services = o.bootServices or null;
      };
    in
    if !(isAttrs g) then throw "${testName}: ${what} must be an attribute set"
    else if unknown != [ ] then throw "${testName}: ${what} has no attribute `${builtins.head unknown}` (it takes ${builtins.concatStringsSep ", " known})"
    else lib.compact {
      packages = names "packages" (g.packages or [ ]);
      prepare = g.prepare or [ ];
      boot_services = g.bootServices or [ ];
      disk_mib = g.diskMib or vz.diskSize or null;
      memory_mib = g.memoryMib or vz.memorySize or null;
      cpus = g.cpus or vz.cores or null;
      os = if g ? os then mapAttrs (_: perOs) g.os else null;
    };

  # `guest` as the TOML [guest] table, sizes from nixosConfig.
  guestTable = toGuestTable "guest" guest (if isAttrs nixosConfig then nixosConfig.virtualisation or { } else { });

  # `nodes` as the TOML [nodes] tables (snake_case).
  nodesTable = mapAttrs
    (n: v:
      let
        known = [ "os" "manager" "profile" "instances" "vlans" "memoryMib" "cpus" "guest" ];
        unknown = builtins.filter (k: !(builtins.elem k known)) (attrNames v);
      in
      if !(isAttrs v) then throw "${testName}: nodes.${n} must be an attribute set"
      else if unknown != [ ] then throw "${testName}: nodes.${n} has no attribute `${builtins.head unknown}` (it takes ${builtins.concatStringsSep ", " known})"
      else lib.compact {
        os = v.os or null;
        manager = v.manager or null;
        profile = v.profile or null;
        instances = v.instances or null;
        vlans = v.vlans or null;
        memory_mib = v.memoryMib or null;
        cpus = v.cpus or null;
        # The node's own [guest] (it replaces the cell's for this node).
        guest = if v ? guest then toGuestTable "nodes.${n}.guest" v.guest { } else null;
      })
    nodes;

  mkCell = os: processManager: profile:
    let
      params = profileParams.${profile} // { inherit processManager os profile; } // extraParams;
      modelFun = import exprFile;
      pool = { inherit pkgs system processManager; inherit (lib) createManagedProcess; } // profileParams.${profile} // extraParams;
      model = if isFunction modelFun then modelFun (intersectAttrs (functionArgs modelFun) pool) else modelFun;
      instances = mapAttrs
        (n: inst:
          if !(isInstance inst) then throw "${testName}: instance `${n}` of ${toString exprFile} has no `pkg` (a createManagedProcess result)"
          else if (inst.pkg._type or null) != "xdriver-process" then throw "${testName}: the `pkg` of instance `${n}` is not a createManagedProcess result (of xdriver's library: point `nix-processmgmt` at <xdriver>)"
          else attrsOf n inst // { process = inst.pkg.process; })
        model;
      forInstance = what: f: extra: mapAttrs (n: inst: call "${what} (instance ${n})" f ({ instanceName = n; instance = model.${n}; } // extra // params)) model;
      processes = model;
      cell = lib.compact {
        _type = "xdriver-cell";
        name = testName;
        inherit description os profile shares timeouts systemPackages;
        manager = processManager;
        params = lib.jsonable extraParams;
        instances = instances;
        steps = {
          initial_tests = call "initialTests" initialTests (params // { inherit processes; });
          readiness = forInstance "readiness" readiness { };
          tests = forInstance "tests" tests { inherit processManager; };
          post_tests = call "postTests" postTests (params // { inherit processes; });
          inherit origins;
        };
        # A module function is kept as a note: used where a NixOS guest
        # exists (not here yet), reported as ignored elsewhere.
        nixos_config = lib.jsonable nixosConfig;
        guest = guestTable;
        nodes = nodesTable;
      };
    in
    # What the host must build or add before the guest can use the cell:
    # every derivation and store path the cell's strings came from.
    cell // { realise = attrNames (getContext (toJSON cell)); };
in
lib.genAttrs profiles (profile:
  lib.genAttrs processManagers (processManager:
    lib.genAttrs oses (os: mkCell os processManager profile)))
