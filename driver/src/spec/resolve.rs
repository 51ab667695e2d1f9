//! From a spec to the resolved processes model of one cell: constructors
//! called with their instances' parameters, every template rendered with
//! the profile's directories and parameters, overrides for the manager
//! applied, dependencies ordered, conflicts found.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};
use toml::Spanned;
use xdriver_guests::{ConfigFile, Credentials, Group, Manager, Os, Process, Profile, System, User};

use super::error::SpecError;
use super::load::Spec;
use super::schema::{ParamType, ProcessDef};
use super::template::Templates;

/// What one cell is made of.
#[derive(Debug, Clone)]
pub struct CellCtx {
    /// Guest OS.
    pub os: Os,
    /// Manager.
    pub manager: Manager,
    /// Profile.
    pub profile: Profile,
    /// `--set KEY=VALUE` overrides of the spec's params.
    pub overrides: BTreeMap<String, Value>,
}

/// The model of one cell, plus what tests see.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The processes, in dependency order.
    pub system: System,
    /// Each instance's attributes (references resolved), for tests.
    pub instances: BTreeMap<String, Value>,
    /// The parameters every template sees.
    pub params: Map<String, Value>,
}

struct Raw<'a> {
    name: &'a Spanned<String>,
    span: std::ops::Range<usize>,
    def: ProcessDef,
    attrs: Map<String, Value>,
    /// Instances referenced through `instances` parameters (dependencies).
    refs: Vec<String>,
    /// The attributes that are `instances` parameters.
    ref_keys: Vec<String>,
    ctor: Option<String>,
}

/// The parameters every template of a cell sees (nix-processmgmt's
/// `params` plus the spec's `[params]` and `--set` overrides).
pub fn base_params(spec: &Spec, cell: &CellCtx) -> Map<String, Value> {
    let p = &cell.profile;
    let mut m = Map::new();
    m.insert("stateDir".into(), json!(p.state_dir));
    m.insert("runtimeDir".into(), json!(p.runtime_dir));
    m.insert("logDir".into(), json!(p.log_dir));
    m.insert("cacheDir".into(), json!(p.cache_dir));
    m.insert("libDir".into(), json!(p.lib_dir));
    m.insert("tmpDir".into(), json!(p.tmp_dir));
    m.insert("forceDisableUserChange".into(), json!(p.force_disable_user_change));
    m.insert("processManager".into(), json!(cell.manager.name()));
    m.insert("os".into(), json!(cell.os.name()));
    m.insert("profile".into(), json!(p.kind.name()));
    if let Some(u) = &p.user {
        m.insert("callingUser".into(), json!(u.name));
        m.insert("callingGroup".into(), json!(u.group));
    }
    for (k, v) in &spec.file.params {
        m.insert(k.clone(), serde_json::to_value(v).unwrap_or(Value::Null));
    }
    for (k, v) in &cell.overrides {
        m.insert(k.clone(), v.clone());
    }
    m
}

fn with(base: &Map<String, Value>, extra: &[(&str, Value)]) -> Value {
    let mut m = base.clone();
    for (k, v) in extra {
        m.insert((*k).to_string(), v.clone());
    }
    Value::Object(m)
}

impl Spec {
    /// Resolves the processes model for `cell`.
    pub fn resolve(&self, cell: &CellCtx) -> Result<Resolved, SpecError> {
        let t = Templates::new(&self.loc, self.literal);
        let params = base_params(self, cell);
        // An instance whose `if` is false is not in this cell's model (as
        // a nix-processmgmt model leaves one out with lib.optionalAttrs).
        let mut present = Vec::new();
        for (name, table) in &self.file.instances {
            if let Some((_, v)) = table.get_ref().iter().find(|(k, _)| k.as_str() == "if") {
                let Some(expr) = v.get_ref().as_str() else {
                    return Err(self.loc.at(v.span(), "`if` must be an expression (a string), e.g. \"not forceDisableUserChange\""));
                };
                let ctx = with(&params, &[("instanceName", json!(name.get_ref()))]);
                if !t.eval(expr, &ctx, v.span())?.is_true() {
                    continue;
                }
            }
            present.push((name, table));
        }
        let names: BTreeSet<&str> = present.iter().map(|(k, _)| k.get_ref().as_str()).collect();

        // Pass 1: each instance's process definition and own attributes.
        let mut raws: Vec<Raw> = Vec::new();
        for (name, table) in present {
            let span = name.span();
            let mut def: Option<ProcessDef> = None;
            let mut ctor_params = BTreeMap::new();
            let mut ctor = None;
            if let Some((_, v)) = table.get_ref().iter().find(|(k, _)| k.as_str() == "constructor") {
                let Some(cname) = v.get_ref().as_str() else {
                    return Err(self.loc.at(v.span(), "`constructor` must be the name of a constructor"));
                };
                let Some((_, c)) = self.file.constructors.iter().find(|(n, _)| n.get_ref() == cname) else {
                    let known: Vec<&str> = self.file.constructors.keys().map(|n| n.get_ref().as_str()).collect();
                    return Err(self.loc.at(v.span(), format!("unknown constructor `{cname}` (defined: {})", list(&known))));
                };
                ctor = Some(cname.to_string());
                def = Some(c.get_ref().process.clone());
                ctor_params = c.get_ref().params.iter().map(|(k, p)| (k.clone(), p)).collect();
            }
            if let Some((_, v)) = table.get_ref().iter().find(|(k, _)| k.as_str() == "process") {
                if def.is_some() {
                    return Err(self.loc.at(v.span(), format!("instance `{}` has both `constructor` and `process`; use one", name.get_ref())));
                }
                let parsed: ProcessDef = v
                    .get_ref()
                    .clone()
                    .try_into()
                    .map_err(|e: toml::de::Error| self.loc.at(v.span(), format!("in `process`: {}", e.message().trim())))?;
                def = Some(parsed);
            }
            let Some(def) = def else {
                return Err(self.loc.at(span, format!("instance `{}` needs `constructor = \"…\"` or a `process` table", name.get_ref())));
            };
            let ctx = with(&params, &[("instanceName", json!(name.get_ref()))]);
            let mut attrs = Map::new();
            let mut refs = Vec::new();
            let mut ref_keys = Vec::new();
            for (k, v) in table.get_ref() {
                let key = k.as_str();
                if key == "constructor" || key == "process" || key == "if" {
                    continue;
                }
                let ty = ctor_params.get(key).map(|p| p.ty).unwrap_or(ParamType::Any);
                if ty == ParamType::Instances {
                    ref_keys.push(key.to_string());
                }
                let val = self.attr_value(&t, &ctx, v, ty, &names, &mut refs)?;
                attrs.insert(key.to_string(), val);
            }
            for (pname, p) in &ctor_params {
                if attrs.contains_key(pname) {
                    continue;
                }
                match &p.default {
                    Some(d) => {
                        let v = serde_json::to_value(d).unwrap_or(Value::Null);
                        attrs.insert(pname.clone(), v);
                    }
                    None => {
                        return Err(self.loc.at(
                            span.clone(),
                            format!("instance `{}` does not set parameter `{pname}`, which its constructor requires", name.get_ref()),
                        ))
                    }
                }
            }
            attrs.insert("instanceName".into(), json!(name.get_ref()));
            raws.push(Raw { name, span, def, attrs, refs, ref_keys, ctor });
        }

        // Pass 2: references to other instances become their attributes.
        let plain: BTreeMap<String, Map<String, Value>> = raws.iter().map(|r| (r.name.get_ref().clone(), r.attrs.clone())).collect();
        let mut processes = Vec::new();
        let mut instances = BTreeMap::new();
        for raw in &raws {
            let mut attrs = raw.attrs.clone();
            for k in &raw.ref_keys {
                // attr_value checked these are lists of instance names.
                if let Some(list) = raw.attrs.get(k).and_then(Value::as_array) {
                    let resolved = list.iter().filter_map(Value::as_str).map(|s| Value::Object(plain[s].clone())).collect();
                    attrs.insert(k.clone(), Value::Array(resolved));
                }
            }
            let p = self.process(&t, &params, cell, raw, &mut attrs, &names).map_err(|mut e| {
                if let Some(c) = &raw.ctor {
                    e.message.push_str(&format!(" (in the process of instance `{}`, from constructor `{c}`)", raw.name.get_ref()));
                }
                e
            })?;
            instances.insert(p.name.clone(), Value::Object(attrs));
            processes.push(p);
        }
        let processes = self.order(processes, &raws)?;
        let resolved = Resolved { system: System { name: self.file.name.clone(), processes }, instances, params };
        let conflicts = conflicts(&resolved, cell);
        if !conflicts.is_empty() {
            return Err(self.loc.whole(format!(
                "conflicting instances for {} / {} / {}:\n  {}",
                cell.os,
                cell.manager,
                cell.profile.kind,
                conflicts.join("\n  ")
            )));
        }
        Ok(resolved)
    }

    /// Whether `name` is an instance of the spec (so one its `if` left out).
    fn left_out(&self, name: &str) -> bool {
        self.file.instances.keys().any(|k| k.get_ref() == name)
    }

    fn attr_value(
        &self,
        t: &Templates,
        ctx: &Value,
        v: &Spanned<toml::Value>,
        ty: ParamType,
        names: &BTreeSet<&str>,
        refs: &mut Vec<String>,
    ) -> Result<Value, SpecError> {
        let span = v.span();
        let rendered = t.render_value(v.get_ref(), ctx, span.clone())?;
        let bad = |what: &str| self.loc.at(span.clone(), format!("expected {what}, found {}", short(&rendered)));
        Ok(match ty {
            ParamType::Any => rendered,
            ParamType::String => match rendered {
                Value::String(_) => rendered,
                Value::Number(n) => Value::String(n.to_string()),
                _ => return Err(bad("a string")),
            },
            ParamType::Int => match &rendered {
                Value::Number(n) if n.is_i64() => rendered,
                Value::String(s) => s.trim().parse::<i64>().map(|n| json!(n)).map_err(|_| bad("an integer"))?,
                _ => return Err(bad("an integer")),
            },
            ParamType::Bool => match &rendered {
                Value::Bool(_) => rendered,
                Value::String(s) if s.trim() == "true" || s.trim() == "false" => json!(s.trim() == "true"),
                _ => return Err(bad("true or false")),
            },
            ParamType::Instances => {
                let Some(list) = rendered.as_array() else { return Err(bad("a list of instance names")) };
                for x in list {
                    let Some(s) = x.as_str() else { return Err(bad("a list of instance names")) };
                    if !names.contains(s) {
                        return Err(self.loc.at(span.clone(), match self.left_out(s) {
                            true => format!("instance `{s}` is not in this cell: its `if` is false here"),
                            false => format!("no instance is named `{s}` (instances: {})", list_set(names)),
                        }));
                    }
                    refs.push(s.to_string());
                }
                rendered
            }
        })
    }

    fn process(
        &self,
        t: &Templates,
        params: &Map<String, Value>,
        cell: &CellCtx,
        raw: &Raw,
        attrs: &mut Map<String, Value>,
        names: &BTreeSet<&str>,
    ) -> Result<Process, SpecError> {
        let name = raw.name.get_ref().clone();
        let span = raw.span.clone();
        let mut def = raw.def.clone();
        derive_commands(&mut def).map_err(|e| self.loc.at(span.clone(), format!("instance `{name}`: {e}")))?;
        if let Some(o) = def.overrides.get(cell.manager.name()).cloned() {
            def.foreground = o.foreground.or(def.foreground);
            def.daemon = o.daemon.or(def.daemon);
            def.pid_file = o.pid_file.or(def.pid_file);
            def.environment.extend(o.environment);
            def.directory = o.directory.or(def.directory);
            def.umask = o.umask.or(def.umask);
            def.nice = o.nice.or(def.nice);
            def.user = o.user.or(def.user);
            def.notify = o.notify.unwrap_or(def.notify);
        }
        for m in def.overrides.keys() {
            if m.parse::<Manager>().is_err() {
                return Err(self.loc.at(span.clone(), format!("instance `{name}`: overrides for unknown manager `{m}`")));
            }
        }
        let extra: BTreeMap<String, String> = def.overrides.get(cell.manager.name()).map(|o| o.extra.clone()).unwrap_or_default();
        let mut ctx_map = params.clone();
        for (k, v) in attrs.iter() {
            ctx_map.insert(k.clone(), v.clone());
        }
        ctx_map.insert("instance".into(), Value::Object(attrs.clone()));
        let r = |s: &str, ctx: &Map<String, Value>| t.render(s, &Value::Object(ctx.clone()), span.clone());

        let user = match &def.user {
            Some(u) if !cell.profile.force_disable_user_change => Some(r(u, &ctx_map)?),
            _ => None,
        };
        let pid_file = match &def.pid_file {
            Some(p) => r(p, &ctx_map)?,
            // As nix-processmgmt's determinePIDFilesDir: a process that
            // names a user gets its pidfile in tmpDir, even when user
            // changes are disabled.
            None if def.user.is_some() => format!("{}/{name}.pid", cell.profile.tmp_dir),
            None => format!("{}/{name}.pid", cell.profile.runtime_dir),
        };
        let log_file = format!("{}/{name}.log", cell.profile.log_dir);
        for (k, v) in [("pidFile", &pid_file), ("logFile", &log_file)] {
            ctx_map.insert(k.into(), json!(v));
            attrs.insert(k.into(), json!(v));
        }
        if let Some(Value::Object(inst)) = ctx_map.get_mut("instance") {
            inst.insert("pidFile".into(), json!(pid_file));
            inst.insert("logFile".into(), json!(log_file));
        }
        let argv = |v: &Option<Vec<String>>| -> Result<Option<Vec<String>>, SpecError> {
            v.as_ref().map(|a| a.iter().map(|w| r(w, &ctx_map)).collect()).transpose()
        };
        let foreground = argv(&def.foreground)?;
        let daemon = argv(&def.daemon)?;
        if foreground.is_none() && daemon.is_none() {
            return Err(self.loc.at(span, format!("instance `{name}` has neither `foreground` nor `daemon` command")));
        }
        let mut environment = BTreeMap::new();
        for (k, v) in &def.environment {
            environment.insert(k.clone(), r(v, &ctx_map)?);
        }
        let mut dependencies: Vec<String> = Vec::new();
        for d in &def.dependencies {
            let d = r(d, &ctx_map)?;
            if !names.contains(d.as_str()) {
                let why = if self.left_out(&d) { "is not in this cell (its `if` is false here)" } else { "is not an instance" };
                return Err(self.loc.at(span.clone(), format!("instance `{name}` depends on `{d}`, which {why}")));
            }
            dependencies.push(d);
        }
        for d in &raw.refs {
            if !dependencies.contains(d) {
                dependencies.push(d.clone());
            }
        }
        let mut credentials = Credentials::default();
        if !cell.profile.force_disable_user_change {
            for g in &def.credentials.groups {
                let (name, gid) = g.parts();
                credentials.groups.push(Group { name: r(name, &ctx_map)?, gid });
            }
            for u in &def.credentials.users {
                credentials.users.push(User {
                    name: r(&u.name, &ctx_map)?,
                    group: u.group.as_ref().map(|g| r(g, &ctx_map)).transpose()?,
                    description: r(&u.description, &ctx_map)?,
                    home: u.home.as_ref().map(|h| r(h, &ctx_map)).transpose()?,
                    create_home: u.create_home,
                    uid: u.uid,
                    shell: u.shell.as_ref().map(|s| r(s, &ctx_map)).transpose()?,
                });
            }
        }
        let mut config_files = Vec::new();
        for c in &def.config_files {
            let path = r(&c.path, &ctx_map)?;
            let body = match (&c.template, &c.template_file) {
                (Some(t), None) => t.clone(),
                (None, Some(f)) => {
                    let p = self.dir.join(f);
                    std::fs::read_to_string(&p)
                        .map_err(|e| self.loc.at(span.clone(), format!("config file template {}: {e}", p.display())))?
                }
                _ => return Err(self.loc.at(span.clone(), format!("instance `{name}`: config file `{path}` needs exactly one of `template` and `template_file`"))),
            };
            let mode = match &c.mode {
                Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                    .map_err(|_| self.loc.at(span.clone(), format!("mode `{m}` of `{path}` is not octal")))?,
                None => 0o644,
            };
            let contents = t.render_file(&body, &Value::Object(ctx_map.clone()), span.clone(), &path)?;
            config_files.push(ConfigFile { path, mode, contents });
        }
        let mut rendered_extra = BTreeMap::new();
        for (k, v) in extra {
            rendered_extra.insert(k, r(&v, &ctx_map)?);
        }
        Ok(Process {
            description: match &def.description {
                Some(d) => r(d, &ctx_map)?,
                None => name.clone(),
            },
            foreground,
            daemon,
            pid_file,
            environment,
            directory: def.directory.as_ref().map(|d| r(d, &ctx_map)).transpose()?,
            umask: def.umask.as_ref().map(|u| r(u, &ctx_map)).transpose()?,
            nice: def.nice,
            user,
            dependencies,
            initialize: def.initialize.as_ref().map(|i| r(i, &ctx_map)).transpose()?,
            credentials,
            config_files,
            notify: def.notify,
            extra: rendered_extra,
            log_file,
            name,
        })
    }

    /// Orders processes so each comes after its dependencies (ties by name).
    fn order(&self, procs: Vec<Process>, raws: &[Raw]) -> Result<Vec<Process>, SpecError> {
        let mut left: BTreeMap<String, Process> = procs.into_iter().map(|p| (p.name.clone(), p)).collect();
        let mut done: Vec<Process> = Vec::new();
        while !left.is_empty() {
            let ready: Vec<String> = left
                .values()
                .filter(|p| p.dependencies.iter().all(|d| done.iter().any(|q| &q.name == d)))
                .map(|p| p.name.clone())
                .collect();
            if ready.is_empty() {
                let cycle: Vec<&str> = left.keys().map(String::as_str).collect();
                let span = raws.iter().find(|r| left.contains_key(r.name.get_ref())).map(|r| r.span.clone()).unwrap_or(0..0);
                return Err(self.loc.at(span, format!("dependency cycle among instances: {}", cycle.join(", "))));
            }
            for n in ready {
                if let Some(p) = left.remove(&n) {
                    done.push(p);
                }
            }
        }
        Ok(done)
    }
}

/// Pairs of instances that would collide in one guest.
pub fn conflicts(r: &Resolved, cell: &CellCtx) -> Vec<String> {
    let mut out = Vec::new();
    let ps = &r.system.processes;
    for (i, a) in ps.iter().enumerate() {
        for b in &ps[i + 1..] {
            let (an, bn) = (&a.name, &b.name);
            let port = |n: &str| r.instances.get(n).and_then(|v| v.get("port")).and_then(Value::as_i64);
            if let (Some(pa), Some(pb)) = (port(an), port(bn)) {
                if pa == pb {
                    out.push(format!("`{an}` and `{bn}` both use port {pa}"));
                }
            }
            if a.pid_file == b.pid_file {
                out.push(format!("`{an}` and `{bn}` both use pidfile {}", a.pid_file));
            }
            for fa in &a.config_files {
                if b.config_files.iter().any(|fb| fb.path == fa.path) {
                    out.push(format!("`{an}` and `{bn}` both write {}", fa.path));
                }
            }
            if let (Some(da), Some(db)) = (&a.directory, &b.directory) {
                if da == db && da != "/" && !cell.profile.dirs().contains(&da.as_str()) {
                    out.push(format!("`{an}` and `{bn}` both use state directory {da}"));
                }
            }
            for ua in &a.credentials.users {
                if b.credentials.users.iter().any(|ub| ub.name == ua.name) {
                    out.push(format!("`{an}` and `{bn}` both create user `{}`", ua.name));
                }
            }
        }
    }
    out
}

fn list(v: &[&str]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn list_set(v: &BTreeSet<&str>) -> String {
    list(&v.iter().copied().collect::<Vec<_>>())
}

/// A value for a message: its first 60 characters (not bytes, so a
/// multibyte character is never cut).
fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s,
    }
}

/// nix-processmgmt's command fields (`process`, `args`, `daemon_args`,
/// `foreground_process`, …, `path`) turned into the `foreground` and
/// `daemon` argv lists and PATH, with nix-processmgmt's defaults: both
/// forms run `process`, the daemon with `args ++ daemon_extra_args`, the
/// foreground form with `args ++ foreground_process_extra_args`.
fn derive_commands(def: &mut ProcessDef) -> Result<(), String> {
    let named = def.process.is_some() || def.daemon_process.is_some() || def.foreground_process.is_some();
    let lists = [&def.args, &def.daemon_args, &def.daemon_extra_args, &def.foreground_process_args, &def.foreground_process_extra_args];
    if !named && lists.iter().any(|l| l.is_some()) {
        return Err("argument lists (`args`, `daemon_args`, …) need `process`, `daemon_process` or `foreground_process`".into());
    }
    if named {
        let args = def.args.clone().unwrap_or_default();
        let daemon_exe = def.daemon_process.clone().or_else(|| def.process.clone());
        let fg_exe = def.foreground_process.clone().or_else(|| def.process.clone());
        if let Some(exe) = daemon_exe {
            if def.daemon.is_some() {
                return Err("give `daemon` (an argv list) or `process`/`daemon_process`, not both".into());
            }
            let a = def.daemon_args.clone().unwrap_or_else(|| [args.clone(), def.daemon_extra_args.clone().unwrap_or_default()].concat());
            def.daemon = Some([vec![exe], a].concat());
        }
        if let Some(exe) = fg_exe {
            if def.foreground.is_some() {
                return Err("give `foreground` (an argv list) or `process`/`foreground_process`, not both".into());
            }
            let a = def
                .foreground_process_args
                .clone()
                .unwrap_or_else(|| [args, def.foreground_process_extra_args.clone().unwrap_or_default()].concat());
            def.foreground = Some([vec![exe], a].concat());
        }
    }
    if !def.path.is_empty() {
        let mut dirs: Vec<String> = def.path.iter().map(|p| format!("{p}/bin")).collect();
        dirs.extend(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(String::from));
        def.environment.entry("PATH".into()).or_insert_with(|| dirs.join(":"));
    }
    Ok(())
}

#[cfg(test)]
mod short_tests {
    use super::short;

    #[test]
    fn long_values_are_cut_at_a_character_boundary() {
        let v = serde_json::Value::String("é".repeat(100));
        let s = short(&v);
        assert!(s.ends_with('…') && s.chars().count() == 61, "{s}");
        assert_eq!(short(&serde_json::json!(42)), "42");
    }
}
