//! Nix specs: a Nix file whose value holds cells made by xdriver's
//! `testService` (nix/), evaluated with `nix-instantiate --eval --strict
//! --json`. Each cell is plain data — the processes model already built by
//! the Nix constructors, the steps already computed per instance — and
//! becomes a [`Spec`] whose strings are final (no templates), so the rest
//! of xdriver (resolving, deploying, the runner) is the same for both
//! forms.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::Value;
use xdriver_guests::{Manager, Os, ProfileKind};

use super::error::SpecError;
use super::load::{InstanceSteps, Spec};

/// xdriver's Nix library, as shipped (written out for `-I xdriver=…`).
pub const LIBRARY: &[(&str, &str)] = &[
    ("default.nix", include_str!("../../../nix/default.nix")),
    ("eval.nix", include_str!("../../../nix/eval.nix")),
    ("pkgs.nix", include_str!("../../../nix/pkgs.nix")),
    (
        "nixproc/create-managed-process/universal/create-managed-process-universal.nix",
        include_str!("../../../nix/nixproc/create-managed-process/universal/create-managed-process-universal.nix"),
    ),
    ("nixproc/create-managed-process/agnostic/create-managed-process.nix", include_str!("../../../nix/nixproc/create-managed-process/agnostic/create-managed-process.nix")),
    ("nixproc/test-driver/universal.nix", include_str!("../../../nix/nixproc/test-driver/universal.nix")),
    ("nixproc/derive-dysnomia-process-type.nix", include_str!("../../../nix/nixproc/derive-dysnomia-process-type.nix")),
    ("lib.nix", include_str!("../../../nix/lib.nix")),
    ("test-service.nix", include_str!("../../../nix/test-service.nix")),
    ("profiles.json", include_str!("../../../nix/profiles.json")),
    ("registry.json", include_str!("../../../nix/registry.json")),
    ("nixos-module.nix", include_str!("../../../nix/nixos-module.nix")),
    ("backdoor-nixos.sh", include_str!("../../../nix/backdoor-nixos.sh")),
];

/// What nix/registry.json must hold: the OS and manager registries' names,
/// and the managers the default OS (debian-12) runs, the default of
/// `testService`'s `processManagers`.
pub fn registry_json() -> Value {
    let default_os = xdriver_guests::Os::DEBIAN_12;
    serde_json::json!({
        "oses": xdriver_guests::Os::names(),
        "processManagers": Manager::names(),
        "defaultProcessManagers": Manager::all().filter(|m| default_os.image_for(*m).is_ok()).map(|m| m.name()).collect::<Vec<_>>(),
    })
}

/// How to evaluate a Nix spec.
#[derive(Debug, Clone, Default)]
pub struct NixArgs {
    /// `-A ATTR`: the attribute path to evaluate (default: the whole file).
    pub attr: Option<String>,
    /// `--arg NAME EXPR` pairs.
    pub args: Vec<(String, String)>,
    /// `--argstr NAME VALUE` pairs.
    pub argstrs: Vec<(String, String)>,
}

/// Whether `path` names a Nix spec: a `.nix` file, or a directory with a
/// `default.nix` and no `xdriver.toml`.
pub fn is_nix_spec(path: &Path) -> bool {
    if path.is_dir() {
        return path.join("default.nix").is_file() && !path.join(super::SPEC_FILE_NAME).is_file();
    }
    path.extension().is_some_and(|e| e == "nix")
}

/// One cell as testService emits it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NixCell {
    #[serde(rename = "_type")]
    _type: String,
    name: String,
    #[serde(default)]
    description: String,
    os: String,
    manager: String,
    profile: String,
    #[serde(default)]
    shares: Vec<Value>,
    #[serde(default)]
    timeouts: serde_json::Map<String, Value>,
    #[serde(default, rename = "systemPackages")]
    system_packages: Vec<String>,
    #[serde(default)]
    params: serde_json::Map<String, Value>,
    instances: serde_json::Map<String, Value>,
    #[serde(default)]
    steps: InstanceSteps,
    #[serde(default)]
    nixos_config: Option<Value>,
    #[serde(default)]
    guest: serde_json::Map<String, Value>,
    #[serde(default)]
    realise: Vec<String>,
    #[serde(default)]
    nodes: serde_json::Map<String, Value>,
}

/// A cell of a Nix spec, ready to prepare and run.
#[derive(Debug)]
pub struct NixSpecCell {
    /// Attribute path of the cell in the evaluated value.
    pub attr: String,
    /// Its OS, manager and profile.
    pub os: Os,
    /// Manager.
    pub manager: Manager,
    /// Profile.
    pub profile: ProfileKind,
    /// The cell as a spec (strings final, steps per instance).
    pub spec: Spec,
    /// Store paths and derivations the host must realise first.
    pub realise: Vec<String>,
}

fn err(file: &Path, message: impl Into<String>) -> SpecError {
    SpecError { file: file.to_path_buf(), at: None, message: message.into(), line_text: String::new() }
}

/// `s` as a Nix string literal.
fn nix_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default().replace("${", "\\${")
}

/// Writes the library to a fresh directory for `-I xdriver=<dir>`.
pub fn write_library() -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix("xdriver-nix-").tempdir()?;
    for (name, text) in LIBRARY {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    Ok(dir)
}

/// Evaluates `file` and returns its cells (in attribute order). Nix's own
/// errors come back with Nix's message and location.
pub fn evaluate(file: &Path, how: &NixArgs) -> Result<Vec<NixSpecCell>, SpecError> {
    let file = if file.is_dir() { file.join("default.nix") } else { file.to_path_buf() };
    let file = std::fs::canonicalize(&file).map_err(|e| err(&file, format!("cannot read the Nix spec: {e}")))?;
    let lib = write_library().map_err(|e| err(&file, format!("writing xdriver's Nix library: {e}")))?;
    let mut cmd = Command::new("nix-instantiate");
    // Read-write mode: paths the spec refers to (e.g. `${./bin}`) are added
    // to the store, and derivations are instantiated, so they can be
    // realised for the guest.
    cmd.args(["--eval", "--strict", "--json", "--read-write-mode"])
        .arg("-I")
        .arg(format!("xdriver={}", lib.path().display()))
        .arg("-I")
        .arg(format!("nix-processmgmt={}", lib.path().display()))
        // eval.nix calls the file's function, supplying what a
        // nix-processmgmt-style test file takes without a default.
        .arg("-E")
        .arg(format!("import <xdriver/eval.nix> (/. + {})", nix_string(&file.display().to_string())))
        // nix-instantiate --eval calls the file's function (with its
        // defaults) only when some --arg is given; a function ignores
        // arguments it does not take.
        .args(["--arg", "xdriverAutoCall", "true"]);
    if let Some(a) = how.attr.as_deref().filter(|a| !a.is_empty()) {
        cmd.args(["-A", a]);
    }
    for (n, v) in &how.args {
        cmd.args(["--arg", n, v]);
    }
    for (n, v) in &how.argstrs {
        cmd.args(["--argstr", n, v]);
    }
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| {
        err(&file, format!("cannot run nix-instantiate ({e}); install Nix (Debian: apt-get install nix-bin)"))
    })?;
    if !out.status.success() {
        let what = match &how.attr {
            Some(a) => format!("evaluating attribute `{a}` with nix-instantiate failed"),
            None => "evaluating it with nix-instantiate failed".to_string(),
        };
        return Err(err(&file, format!("{what}:\n{}", String::from_utf8_lossy(&out.stderr).trim_end())));
    }
    let value: Value = serde_json::from_slice(&out.stdout).map_err(|e| err(&file, format!("nix-instantiate printed no JSON: {e}")))?;
    let mut found = Vec::new();
    collect(&value, how.attr.clone().unwrap_or_default(), &mut found);
    if found.is_empty() {
        return Err(err(
            &file,
            format!(
                "{} holds no xdriver cells (expected what `testService` returns: <profile>.<manager>.<os> = cell)",
                how.attr.as_deref().map(|a| format!("attribute `{a}`")).unwrap_or_else(|| "the file's value".into())
            ),
        ));
    }
    found.into_iter().map(|(attr, v)| cell(&file, attr, v)).collect()
}

fn collect(v: &Value, path: String, out: &mut Vec<(String, Value)>) {
    if let Value::Object(m) = v {
        if m.get("_type").and_then(Value::as_str) == Some("xdriver-cell") {
            out.push((path, v.clone()));
            return;
        }
        for (k, x) in m {
            let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            collect(x, p, out);
        }
    }
}

/// TOML has no null: drop nulls everywhere.
fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.into_iter().filter(|(_, x)| !x.is_null()).map(|(k, x)| (k, strip_nulls(x))).collect()),
        Value::Array(a) => Value::Array(a.into_iter().filter(|x| !x.is_null()).map(strip_nulls).collect()),
        other => other,
    }
}

fn cell(file: &Path, attr: String, v: Value) -> Result<NixSpecCell, SpecError> {
    let here = |m: String| err(file, format!("cell `{attr}`: {m}"));
    let c: NixCell = serde_json::from_value(v).map_err(|e| here(e.to_string()))?;
    let os: Os = c.os.parse().map_err(|e| here(format!("{e}")))?;
    let manager: Manager = c.manager.parse().map_err(|e| here(format!("{e}")))?;
    let profile: ProfileKind = c.profile.parse().map_err(|e| here(format!("{e}")))?;
    if c.nixos_config.is_some() && os != Os::NIXOS {
        eprintln!("xdriver: {attr}: nixosConfig applies to NixOS guests only; ignored on {os}");
    }
    // The cell as a spec document: one cell's matrix, the shares, the
    // parameters, the instances with their processes inline.
    let mut doc = serde_json::Map::new();
    doc.insert("name".into(), Value::String(c.name.clone()));
    doc.insert("description".into(), Value::String(c.description.clone()));
    doc.insert(
        "matrix".into(),
        serde_json::json!({ "os": [c.os], "managers": [c.manager], "profiles": [c.profile] }),
    );
    doc.insert("shares".into(), Value::Array(c.shares));
    doc.insert("params".into(), Value::Object(c.params));
    if !c.timeouts.is_empty() {
        doc.insert("timeouts".into(), Value::Object(c.timeouts));
    }
    doc.insert("instances".into(), Value::Object(c.instances));
    if !c.guest.is_empty() {
        doc.insert("guest".into(), Value::Object(c.guest));
    }
    if !c.nodes.is_empty() {
        doc.insert("nodes".into(), Value::Object(c.nodes));
    }
    let toml_value: toml::Value =
        serde_json::from_value(strip_nulls(Value::Object(doc))).map_err(|e| here(format!("not representable as a spec: {e}")))?;
    let text = toml::to_string(&toml_value).map_err(|e| here(format!("not representable as a spec: {e}")))?;
    // Errors in the generated document point at the Nix file and the cell.
    let label = PathBuf::from(format!("{}#{attr}", file.display()));
    let mut spec = Spec::parse(&label, &text)?;
    spec.dir = file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    spec.literal = true;
    let mut steps = c.steps;
    if !c.system_packages.is_empty() {
        // systemPackages: their bin/ on the guest's PATH, before anything.
        let cmd = c
            .system_packages
            .iter()
            .map(|p| format!("for f in {}/bin/*; do ln -sf \"$f\" /usr/local/bin/; done", xdriver_guests::shell::quote(p)))
            .collect::<Vec<_>>()
            .join("; ");
        let step = super::schema::StepDef { name: Some("systemPackages on PATH".into()), succeed: Some(cmd), ..Default::default() };
        steps.setup.push(step);
    }
    spec.instance_steps = Some(steps);
    Ok(NixSpecCell { attr, os, manager, profile, spec, realise: c.realise })
}

/// Builds or adds what the cells need on the host (`nix-store --realise`).
pub fn realise(paths: &[String]) -> Result<(), String> {
    if paths.is_empty() {
        return Ok(());
    }
    let out = Command::new("nix-store")
        .arg("--realise")
        .args(paths)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run nix-store: {e}"))?;
    if !out.status.success() {
        return Err(format!("nix-store --realise failed:\n{}", String::from_utf8_lossy(&out.stderr).trim_end()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nix_library_lists_come_from_the_registries() {
        let shipped: Value = serde_json::from_str(include_str!("../../../nix/registry.json")).expect("registry.json parses");
        let want = registry_json();
        assert_eq!(shipped, want, "nix/registry.json is out of date; it must be:\n{}", serde_json::to_string_pretty(&want).expect("json"));
    }

    #[test]
    fn the_nixos_modules_backdoor_is_the_nixos_profiles() {
        let want = xdriver_guests::backdoor_script(&*Os::NIXOS);
        if include_str!("../../../nix/backdoor-nixos.sh") != want {
            let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/backdoor-nixos.sh");
            std::fs::write(&out, &want).expect("write");
            panic!("nix/backdoor-nixos.sh is out of date; the current script is in {}", out.display());
        }
    }

    #[test]
    fn the_nixos_module_parses() {
        let out = std::process::Command::new("nix-instantiate")
            .args(["--parse", concat!(env!("CARGO_MANIFEST_DIR"), "/../nix/nixos-module.nix")])
            .output()
            .expect("nix-instantiate runs (Debian's nix-bin)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn the_nix_library_has_the_profiles_the_runner_uses() {
        // nix/profiles.json is what Nix constructors see as stateDir & co.;
        // it must be what the TOML side renders with.
        let json: Value = serde_json::from_str(include_str!("../../../nix/profiles.json")).expect("profiles.json parses");
        for kind in ProfileKind::ALL {
            let p = crate::runner::profile(kind);
            let n = &json[kind.name()];
            for (key, want) in [
                ("stateDir", &p.state_dir),
                ("runtimeDir", &p.runtime_dir),
                ("logDir", &p.log_dir),
                ("cacheDir", &p.cache_dir),
                ("libDir", &p.lib_dir),
                ("tmpDir", &p.tmp_dir),
            ] {
                assert_eq!(n[key].as_str(), Some(want.as_str()), "{kind} {key}");
            }
            assert_eq!(n["forceDisableUserChange"].as_bool(), Some(p.force_disable_user_change), "{kind}");
            assert_eq!(n["callingUser"].as_str(), p.user.as_ref().map(|u| u.name.as_str()), "{kind}");
        }
    }

    #[test]
    fn nix_specs_are_recognised_by_name() {
        let d = tempfile::tempdir().expect("tempdir");
        assert!(is_nix_spec(Path::new("/x/default.nix")));
        assert!(!is_nix_spec(Path::new("/x/xdriver.toml")));
        std::fs::write(d.path().join("default.nix"), "{}").expect("write");
        assert!(is_nix_spec(d.path()));
        std::fs::write(d.path().join("xdriver.toml"), "").expect("write");
        assert!(!is_nix_spec(d.path()), "a directory with xdriver.toml is a TOML spec");
    }
}
