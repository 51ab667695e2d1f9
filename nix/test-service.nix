# testService, after nix-processmgmt's: one processes model tested under
# several process managers, profiles and guest OSes. The result has one
# attribute per cell, `<profile>.<processManager>.<os>`; each cell is plain
# data (`_type = "xdriver-cell"`) that xdriver runs, e.g.
#   xdriver test default.nix -A nginx-reverse-proxy-hostbased.privileged.sysvinit
{ lib }:

{ name
, description ? ""
  # The processes model: a function of the cell's parameters returning
  # { <instance> = { <attributes…>; pkg = createManagedProcess {…}; }; }
, exprFile
  # Parameters for the model and every step function besides the cell's own.
, extraParams ? { }
  # Machine API steps (attribute sets, keys as in a TOML spec's [tests]).
  # readiness and tests: { instanceName, instance, … }: [ steps ] per instance;
  # initialTests and postTests: { processes, … }: [ steps ] once.
, readiness ? ({ ... }: [ ])
, tests ? ({ ... }: [ ])
, initialTests ? ({ ... }: [ ])
, postTests ? ({ ... }: [ ])
, processManagers ? (builtins.fromJSON (builtins.readFile ./registry.json)).defaultProcessManagers
, profiles ? [ "privileged" "unprivileged" ]
, oses ? [ "debian-12" ]
  # Store paths whose bin/ is put on the guest's PATH (/usr/local/bin).
, systemPackages ? [ ]
  # For NixOS guests: extra NixOS configuration (unverified here: no NixOS
  # image can be obtained on the machines xdriver is tested on).
, nixosConfig ? null
  # Host directories shared into the guest: [ { host; guest; writable ? false; } ].
, shares ? [ ]
  # Seconds: { step; command; boot; }.
, timeouts ? { }
}:

let
  inherit (builtins) attrNames concatMap fromJSON getContext isAttrs isList listToAttrs mapAttrs readFile removeAttrs toJSON;

  profileParams = fromJSON (readFile ./profiles.json);

  # An instance as tests see it: its attributes without `pkg`, and other
  # instances it refers to the same way (one level, as in a TOML spec).
  isInstance = v: isAttrs v && v ? pkg;
  plain = n: inst: removeAttrs inst [ "pkg" ] // { instanceName = inst.pkg.instanceName or n; };
  refs = v:
    if isInstance v then plain "" v
    else if isList v then map (x: if isInstance x then plain "" x else x) v
    else v;
  attrsOf = n: inst: mapAttrs (_: refs) (plain n inst);

  mkCell = os: processManager: profile:
    let
      params = profileParams.${profile} // { inherit processManager os profile; } // extraParams;
      model = import exprFile (params // { inherit (lib) createManagedProcess; });
      instances = mapAttrs
        (n: inst:
          if !(isInstance inst) then throw "${name}: instance `${n}` of ${toString exprFile} has no `pkg` (a createManagedProcess result)"
          else if (inst.pkg._type or null) != "xdriver-process" then throw "${name}: the `pkg` of instance `${n}` is not a createManagedProcess result"
          else attrsOf n inst // { process = inst.pkg.process; })
        model;
      forInstance = f: mapAttrs (n: inst: f (params // { instanceName = n; instance = removeAttrs instances.${n} [ "process" ]; })) model;
      processes = mapAttrs (n: i: removeAttrs i [ "process" ]) instances;
      cell = lib.compact {
        _type = "xdriver-cell";
        inherit name description os profile shares timeouts systemPackages;
        manager = processManager;
        params = extraParams;
        instances = instances;
        steps = {
          initial_tests = initialTests (params // { inherit processes; });
          readiness = forInstance readiness;
          tests = forInstance tests;
          post_tests = postTests (params // { inherit processes; });
        };
        nixos_config = nixosConfig;
      };
    in
    # What the host must build or add before the guest can use the cell:
    # every derivation and store path the cell's strings came from.
    cell // { realise = attrNames (getContext (toJSON cell)); };
in
lib.genAttrs profiles (profile:
  lib.genAttrs processManagers (processManager:
    lib.genAttrs oses (os: mkCell os processManager profile)))
