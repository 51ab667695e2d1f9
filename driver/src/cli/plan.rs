//! `xdriver plan`: what each selected cell would do, without a guest.

use std::collections::BTreeMap;

use serde_json::Value;

use super::args::{CellArgs, PlanArgs};
use super::error::CliError;
use crate::exit;
use crate::runner::{self, Prepared};
use crate::spec::{nix, Cell, Selection, Spec};

/// Parses `--set KEY=VALUE` words.
pub(super) fn overrides(set: &[String]) -> Result<BTreeMap<String, Value>, CliError> {
    let mut m = BTreeMap::new();
    for s in set {
        let Some((k, v)) = s.split_once('=') else {
            return Err(CliError::usage(format!("--set `{s}`: expected KEY=VALUE")));
        };
        let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        m.insert(k.trim().to_string(), v);
    }
    Ok(m)
}

/// The spec, its selected cells and each runnable cell prepared; spec
/// errors become usage errors (exit 2).
/// The selected cells, each with its preparation (None: skipped).
pub(super) type Cells = Vec<(Cell, Option<Prepared>)>;

pub(super) fn load(args: &CellArgs) -> Result<(Spec, Cells), CliError> {
    let (spec, cells, _) = load_with_realise(args)?;
    Ok((spec, cells))
}

/// As [`load`], plus what the host must realise first (Nix specs).
pub(super) fn load_with_realise(args: &CellArgs) -> Result<(Spec, Cells, Vec<String>), CliError> {
    let (spec, mut cells, realise) = load_cells(args)?;
    for (os, image) in image_overrides(&args.images)? {
        for (c, _) in cells.iter_mut().filter(|(c, _)| c.os == os) {
            if c.image.is_ok() {
                c.image = Ok(image.clone());
            }
        }
    }
    Ok((spec, cells, realise))
}

/// `--image OS=IMAGE` pairs; only imported OSes take another image.
fn image_overrides(words: &[String]) -> Result<Vec<(xdriver_guests::Os, String)>, CliError> {
    words
        .iter()
        .map(|w| {
            let (os, image) = w.split_once('=').ok_or_else(|| CliError::usage(format!("--image {w}: expected OS=IMAGE")))?;
            let os: xdriver_guests::Os = os.parse().map_err(|e: xdriver_guests::UnknownOs| CliError::usage(format!("--image {w}: {e}")))?;
            if !matches!(os.images(), xdriver_guests::Images::Imported { .. }) || image.is_empty() {
                return Err(CliError::usage(format!(
                    "--image {w}: only an imported OS's cells can boot another image ({os} images are built per init system)"
                )));
            }
            Ok((os, image.to_string()))
        })
        .collect()
}

fn load_cells(args: &CellArgs) -> Result<(Spec, Cells, Vec<String>), CliError> {
    let usage = |e: crate::spec::SpecError| CliError { code: exit::USAGE, message: e.to_string() };
    if args.nix || nix::is_nix_spec(&args.spec) {
        return load_nix(args);
    }
    if args.attr.is_some() || !args.nix_args.is_empty() || !args.nix_argstrs.is_empty() {
        return Err(CliError::usage("-A/--attr, --arg and --argstr are for Nix specs (a .nix file, or --nix)"));
    }
    let spec = Spec::load(&args.spec).map_err(usage)?;
    let sel = Selection { os: args.os.clone(), managers: args.managers.clone(), profiles: args.profiles.clone() };
    let cells = spec.cells(&sel).map_err(usage)?;
    let ov = overrides(&args.set)?;
    let mut out = Vec::new();
    for c in cells {
        let prepared = match &c.image {
            Ok(_) => Some(runner::prepare(&spec, &c, &ov).map_err(usage)?),
            Err(_) => None,
        };
        out.push((c, prepared));
    }
    Ok((spec, out, Vec::new()))
}

fn pairs(words: &[String]) -> Vec<(String, String)> {
    words.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0].clone(), c[1].clone())).collect()
}

/// A Nix spec: evaluate, pick the selected cells, prepare each from its
/// own (template-free) spec.
fn load_nix(args: &CellArgs) -> Result<(Spec, Cells, Vec<String>), CliError> {
    let usage = |e: crate::spec::SpecError| CliError { code: exit::USAGE, message: e.to_string() };
    if !args.set.is_empty() {
        return Err(CliError::usage("--set is for TOML specs; pass values to a Nix spec with --arg NAME EXPR or --argstr NAME VALUE"));
    }
    let how = nix::NixArgs { attr: args.attr.clone(), args: pairs(&args.nix_args), argstrs: pairs(&args.nix_argstrs) };
    let all = nix::evaluate(&args.spec, &how).map_err(usage)?;
    let names: std::collections::BTreeSet<&str> = all.iter().map(|c| c.spec.file.name.as_str()).collect();
    if names.len() > 1 {
        return Err(CliError::usage(format!(
            "{}: the value holds cells of several tests ({}); pick one with -A",
            args.spec.display(),
            names.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    let keep = |c: &nix::NixSpecCell| {
        (args.os.is_empty() || args.os.contains(&c.os))
            && (args.managers.is_empty() || args.managers.contains(&c.manager))
            && (args.profiles.is_empty() || args.profiles.contains(&c.profile))
    };
    let mut out = Vec::new();
    let mut realise = Vec::new();
    let mut first: Option<Spec> = None;
    for nc in all {
        if !keep(&nc) {
            continue;
        }
        let cell = Cell { os: nc.os, manager: nc.manager, profile: nc.profile, image: crate::spec::image_for(nc.os, nc.manager, nc.profile) };
        let prepared = match &cell.image {
            Ok(_) => Some(runner::prepare(&nc.spec, &cell, &BTreeMap::new()).map_err(usage)?),
            Err(_) => None,
        };
        for r in nc.realise {
            if !realise.contains(&r) {
                realise.push(r);
            }
        }
        first.get_or_insert(nc.spec);
        out.push((cell, prepared));
    }
    let Some(spec) = first else {
        return Err(CliError::usage(format!("{}: no cell matches --os/--manager/--profile", args.spec.display())));
    };
    // Matrix order, as for TOML specs.
    out.sort_by_key(|(c, _)| (c.os, c.manager, c.profile));
    Ok((spec, out, realise))
}

pub(super) fn main(args: PlanArgs) -> Result<i32, CliError> {
    let (_spec, cells) = load(&args.cells)?;
    if args.json {
        let v: Vec<Value> = cells
            .iter()
            .map(|(c, p)| match p {
                Some(p) if p.multi => serde_json::json!({
                    "cell": c,
                    "processes": p.resolved.system.processes,
                    "nodes": p.nodes.iter().map(|n| serde_json::json!({ "node": n.node, "deploy": n.deploy })).collect::<Vec<_>>(),
                    "steps": p.steps,
                }),
                Some(p) => serde_json::json!({
                    "cell": c,
                    "processes": p.resolved.system.processes,
                    "deploy": p.deploy,
                    "steps": p.steps,
                }),
                None => serde_json::json!({ "cell": c }),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| CliError::usage(e.to_string()))?);
        return Ok(exit::SUCCESS);
    }
    for (c, p) in &cells {
        print!("{}", render_text(c, p.as_ref()));
    }
    Ok(exit::SUCCESS)
}

/// The text form of a cell's plan.
pub fn render_text(c: &Cell, p: Option<&Prepared>) -> String {
    let mut s = String::new();
    let Some(p) = p else {
        s.push_str(&format!("=== cell {}: skipped: {}\n\n", c.id(), c.image.as_ref().err().map(String::as_str).unwrap_or("")));
        return s;
    };
    s.push_str(&format!("=== cell {} (image {})\n", c.id(), c.image.as_ref().map(String::as_str).unwrap_or("")));
    // (A cell of several machines says it per node, below.)
    if let (false, Some(a), Ok(Ok(base))) = (p.multi, &p.additions, c.image.as_ref().map(|i| i.parse::<xdriver_images::ImageName>())) {
        s.push_str(&format!("guest: derived image {} = {base} plus {}\n", a.image_name(&base), super::image::derived_summary(a)));
    }
    if (p.mem_mib, p.cpus) != (super::args::DEFAULT_MEM_MIB, super::args::DEFAULT_CPUS) {
        s.push_str(&format!("guest: {} MiB RAM, {} vCPUs (unless --mem-mib/--cpus)\n", p.mem_mib, p.cpus));
    }
    let order: Vec<&str> = p.resolved.system.processes.iter().map(|x| x.name.as_str()).collect();
    s.push_str(&format!("instances (dependency order): {}\n", order.join(" ")));
    for pr in &p.resolved.system.processes {
        s.push_str(&format!(
            "  {}: {:?} mode, pidfile {}, user {}, depends on [{}]\n",
            pr.name,
            p.backend.mode(pr),
            pr.pid_file,
            p.backend.user_of(pr).unwrap_or("-"),
            pr.dependencies.join(", ")
        ));
    }
    if p.multi {
        s.push_str("nodes:\n");
        let all: Vec<crate::spec::Node> = p.nodes.iter().map(|n| n.node.clone()).collect();
        for n in &p.nodes {
            let nd = &n.node;
            let addrs: Vec<String> = nd.vlans.iter().map(|v| format!("vlan {v} {}", crate::vm::vlan::Nic { vlan: *v, node: nd.index }.addr())).collect();
            let insts: Vec<&str> = p.resolved.system.processes.iter().map(|x| x.name.as_str()).filter(|i| crate::spec::node_of(&all, i).name == nd.name).collect();
            let image = match (&n.additions, nd.image.as_ref().map(|i| i.parse::<xdriver_images::ImageName>())) {
                (Some(a), Ok(Ok(base))) => format!("{} = {base} plus {}", a.image_name(&base), super::image::derived_summary(a)),
                _ => nd.image.clone().unwrap_or_else(|e| e),
            };
            s.push_str(&format!(
                "  {} (node {}): {}/{}/{}, image {}, {}; instances: {}\n",
                nd.name,
                nd.index,
                nd.os,
                nd.manager,
                nd.profile,
                image,
                addrs.join(", "),
                if insts.is_empty() { "none".to_string() } else { insts.join(" ") }
            ));
        }
        for n in &p.nodes {
            if let Some(d) = &n.deploy {
                render_deploy(&mut s, d, &format!(" of {}", n.node.name));
            }
        }
    } else {
        render_deploy(&mut s, &p.deploy, "");
    }
    s.push_str("\n--- steps\n");
    for st in &p.steps {
        if let crate::spec::Action::Python(py) = &st.action {
            // Each call's own timeout applies (default: this one for waits).
            s.push_str(&format!("[{}] {} (Python for the NixOS test driver's `machine`; waits default to {} s):\n", st.group, st.name, st.timeout.as_secs()));
            for seg in &py.segments {
                let origin = if seg.origin.is_empty() { String::new() } else { format!(", from {}", seg.origin) };
                s.push_str(&format!("  # {}{origin}\n", seg.group));
                for line in py.text.lines().skip(seg.start - 1).take(seg.lines) {
                    s.push_str(&format!("  {line}\n"));
                }
            }
            continue;
        }
        let on = st.node.as_ref().map(|n| format!(" on {n}")).unwrap_or_default();
        s.push_str(&format!("[{}] {} (timeout {} s){on}\n", st.group, st.name, st.timeout.as_secs()));
    }
    s.push('\n');
    s
}

/// A deployment's commands and files (`which`: "" or " of NODE").
fn render_deploy(s: &mut String, d: &crate::runner::DeployPlan, which: &str) {
    s.push_str(&format!("\n--- deploy{which}: prepare\n"));
    for c in &d.prepare {
        s.push_str(&format!("$ {}\n", c.command));
    }
    for f in &d.files {
        match (&f.contents, &f.link) {
            (_, Some(t)) => s.push_str(&format!("\n--- file {} -> {t}\n", f.path)),
            (Some(text), None) => {
                s.push_str(&format!("\n--- file {} ({:04o})\n{text}", f.path, f.mode));
                if !text.ends_with('\n') {
                    s.push('\n');
                }
            }
            (None, None) => {}
        }
    }
    s.push_str(&format!("\n--- deploy{which}: run\n"));
    for c in &d.run {
        s.push_str(&format!("[{}] $ {}\n", c.phase, c.command));
    }
}
