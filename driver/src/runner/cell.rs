//! One cell, start to end: image, boot, deploy, initialTests → readiness →
//! tests → postTests, shutdown; artifacts kept in the cell's results
//! directory (rendered configs, every command, the guest's logs, the serial
//! log, result.json).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use xdriver_guests::{Backend, Profile, ProfileKind};
use xdriver_images::ImageName;

use super::deploy::{self, DeployPlan};
use super::machine::{describe, Machine, StepError};
use super::transcript::Transcript;
use crate::cli::chain_error;
use crate::qemu::{Accel, Share};
use crate::spec::{Cell, CellCtx, Resolved, Spec, SpecError, Step};
use crate::vm::{Vm, VmConfig};

/// How a cell ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    /// Deployed, and every step passed.
    Pass,
    /// The system under test failed: a deploy command or a step.
    Fail {
        /// The step group (`deploy`, `readiness/nginx`, …).
        group: String,
        /// The step.
        step: String,
        /// What went wrong.
        reason: String,
    },
    /// Not run.
    Skip {
        /// Why.
        reason: String,
    },
    /// xdriver or the VM failed (image, boot, channel).
    Error {
        /// What went wrong.
        reason: String,
    },
}

/// A finished cell.
#[derive(Debug, Clone, Serialize)]
pub struct CellResult {
    /// The cell.
    pub cell: Cell,
    /// How it ended.
    pub outcome: Outcome,
    /// Wall time.
    pub duration_s: f64,
    /// Steps that passed.
    pub steps_passed: usize,
    /// Steps planned.
    pub steps_total: usize,
    /// Its results directory.
    pub dir: PathBuf,
}

/// Options shared by every cell of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Accelerator.
    pub accel: Accel,
    /// Results root (`<root>/<spec name>/<cell>/`).
    pub results_dir: PathBuf,
    /// Guest RAM.
    pub mem_mib: u32,
    /// vCPUs.
    pub cpus: u32,
}

/// The profile a cell deploys with.
pub fn profile(kind: ProfileKind) -> Profile {
    match kind {
        ProfileKind::Privileged => Profile::privileged(),
        ProfileKind::Unprivileged => Profile::unprivileged("unprivileged", 1000),
    }
}

/// Everything that can be worked out about a cell without a guest.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The backend.
    pub backend: Backend,
    /// The resolved model.
    pub resolved: Resolved,
    /// The deployment.
    pub deploy: DeployPlan,
    /// The steps.
    pub steps: Vec<Step>,
}

/// Resolves, renders and plans a cell (spec errors surface here).
pub fn prepare(spec: &Spec, cell: &Cell, overrides: &std::collections::BTreeMap<String, serde_json::Value>) -> Result<Prepared, SpecError> {
    let ctx = CellCtx { os: cell.os, manager: cell.manager, profile: profile(cell.profile), overrides: overrides.clone() };
    let resolved = spec.resolve(&ctx)?;
    let backend = Backend::new(cell.manager, cell.os, ctx.profile.clone());
    let deploy = deploy::plan(&backend, &resolved.system).map_err(|e| spec.loc.whole(format!("{}: {e}", cell.id())))?;
    let steps = spec.steps(&resolved)?;
    Ok(Prepared { backend, resolved, deploy, steps })
}

/// The spec's shares with paths resolved (env expanded, relative to the spec).
pub fn shares(spec: &Spec) -> Result<Vec<Share>, SpecError> {
    let mut out = Vec::new();
    for s in &spec.file.shares {
        let def = s.get_ref();
        let host = crate::spec::expand_env(&def.host).map_err(|e| spec.loc.at(s.span(), e))?;
        let path = spec.dir.join(&host);
        let path = std::fs::canonicalize(&path)
            .map_err(|e| spec.loc.at(s.span(), format!("share host directory {} ({host}): {e}", path.display())))?;
        if !def.guest.starts_with('/') {
            return Err(spec.loc.at(s.span(), format!("share guest path `{}` must be absolute", def.guest)));
        }
        out.push(Share { host: path, guest: def.guest.clone(), writable: def.writable });
    }
    Ok(out)
}

/// Writes the rendered files under `<dir>/configs/<guest path>` and the
/// plan as `plan.json`.
pub fn write_configs(dir: &Path, p: &Prepared) -> std::io::Result<()> {
    for f in &p.deploy.files {
        let dest = dir.join("configs").join(f.path.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match (&f.contents, &f.link) {
            (_, Some(t)) => std::fs::write(&dest, format!("symlink -> {t}\n"))?,
            (Some(c), None) => std::fs::write(&dest, c)?,
            (None, None) => {}
        }
    }
    let plan = serde_json::json!({ "deploy": p.deploy, "steps": p.steps, "processes": p.resolved.system.processes });
    std::fs::write(dir.join("plan.json"), serde_json::to_string_pretty(&plan).map_err(std::io::Error::other)?)
}

/// Runs one cell.
pub async fn run(spec: &Spec, cell: &Cell, prepared: Option<Prepared>, shares: &[Share], opts: &RunOptions) -> CellResult {
    let started = Instant::now();
    let dir = opts.results_dir.join(&spec.file.name).join(cell.dir_name());
    let _ = std::fs::remove_dir_all(&dir);
    let mut result = CellResult {
        cell: cell.clone(),
        outcome: Outcome::Pass,
        duration_s: 0.0,
        steps_passed: 0,
        steps_total: prepared.as_ref().map(|p| p.steps.len()).unwrap_or(0),
        dir: dir.clone(),
    };
    let (image, prepared) = match (&cell.image, prepared) {
        (Err(reason), _) => {
            result.outcome = Outcome::Skip { reason: reason.clone() };
            return finish(result, started);
        }
        (Ok(_), None) => {
            result.outcome = Outcome::Skip { reason: "not prepared".into() };
            return finish(result, started);
        }
        (Ok(i), Some(p)) => (i.clone(), p),
    };
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| write_configs(&dir, &prepared)) {
        result.outcome = Outcome::Error { reason: format!("results directory {}: {e}", dir.display()) };
        return finish(result, started);
    }
    let outcome = boot_and_test(cell, &image, &prepared, shares, opts, &dir, &mut result).await;
    result.outcome = outcome;
    finish(result, started)
}

fn finish(mut r: CellResult, started: Instant) -> CellResult {
    r.duration_s = started.elapsed().as_secs_f64();
    if r.dir.is_dir() {
        if let Ok(json) = serde_json::to_string_pretty(&r) {
            let _ = std::fs::write(r.dir.join("result.json"), json);
        }
    }
    r
}

async fn boot_and_test(
    cell: &Cell,
    image: &str,
    p: &Prepared,
    shares: &[Share],
    opts: &RunOptions,
    dir: &Path,
    result: &mut CellResult,
) -> Outcome {
    let name: ImageName = match image.parse() {
        Ok(n) => n,
        Err(e) => return Outcome::Error { reason: format!("image {image}: {e}") },
    };
    let entry = match tokio::task::spawn_blocking(move || xdriver_images::Store::open_default().and_then(|s| s.ensure(&name, false))).await {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => return Outcome::Error { reason: format!("image {image}: {}", chain_error(&e)) },
        Err(e) => return Outcome::Error { reason: format!("image {image}: {e}") },
    };
    let mut cfg = VmConfig::new(&format!("cell-{}", cell.dir_name()), entry);
    cfg.accel = opts.accel;
    cfg.cpus = opts.cpus;
    cfg.mem_mib = opts.mem_mib;
    cfg.shares = shares.to_vec();
    cfg.boot_timeout = Duration::from_secs(180);
    let label = format!("cell-{}", cell.dir_name());
    let before = run_dirs(&label);
    let mut vm = match Vm::start(cfg).await {
        Ok(vm) => vm,
        Err(e) => {
            // The failed VM's run directory is kept; bring its logs along.
            let mut reason = format!("boot: {}", chain_error(&e));
            if let Some(kept) = run_dirs(&label).into_iter().find(|d| !before.contains(d)) {
                for f in ["serial.log", "qemu.log", "qemu.cmdline"] {
                    let _ = std::fs::copy(kept.join(f), dir.join(f));
                }
                reason.push_str(&format!("\n(run directory kept: {})", kept.display()));
            }
            return Outcome::Error { reason };
        }
    };
    let mut m = Machine { vm: &vm, backend: &p.backend, transcript: Transcript::default(), artifacts: dir };
    let outcome = deploy_and_steps(&mut m, p, &mut result.steps_passed).await.err().unwrap_or(Outcome::Pass);
    collect_guest_logs(&mut m, dir).await;
    let _ = m.transcript.save(dir);
    drop(m);
    let failed = !matches!(outcome, Outcome::Pass);
    if failed {
        vm.keep_run_dir();
    }
    let _ = std::fs::copy(vm.run_dir().join("serial.log"), dir.join("serial.log"));
    let _ = vm.shutdown().await;
    outcome
}

fn run_dirs(label: &str) -> Vec<PathBuf> {
    // RunDir names start with the first 24 characters of the label.
    let prefix: String = label.chars().take(24).collect();
    std::fs::read_dir(crate::rundir::RunDir::base())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// Runs one deploy command as root; a non-zero exit fails the cell's
/// `deploy` group at `step`.
async fn deploy_command(m: &mut Machine<'_>, step: &str, cmd: &str, stdin: &[u8]) -> Result<(), Outcome> {
    match m.run(&format!("deploy/{step}"), cmd, stdin, Duration::from_secs(120)).await {
        Ok(out) if out.success() => Ok(()),
        Ok(out) => Err(Outcome::Fail { group: "deploy".into(), step: step.into(), reason: describe(cmd, &out) }),
        Err(e) => Err(Outcome::Error { reason: chain_error(&e) }),
    }
}

/// Deploys, then runs the steps; counts the steps that passed in `passed`.
async fn deploy_and_steps(m: &mut Machine<'_>, p: &Prepared, passed: &mut usize) -> Result<(), Outcome> {
    for c in &p.deploy.prepare {
        deploy_command(m, c.phase, &c.command, &[]).await?;
    }
    let tar = deploy::tar(&p.deploy.files).map_err(|e| Outcome::Error { reason: format!("packing the deployment: {e}") })?;
    deploy_command(m, "files", "tar -x --no-overwrite-dir -C /", &tar).await?;
    for c in &p.deploy.run {
        deploy_command(m, c.phase, &c.command, &[]).await?;
    }
    for s in &p.steps {
        match m.step(&s.group, &s.action, s.timeout).await {
            Ok(()) => *passed += 1,
            Err(StepError::Failed(reason)) => return Err(Outcome::Fail { group: s.group.clone(), step: s.name.clone(), reason }),
            Err(StepError::Infra(e)) => return Err(Outcome::Error { reason: chain_error(&e) }),
        }
    }
    Ok(())
}

/// Copies the profile's log directory out of the guest into `guest-logs/`.
async fn collect_guest_logs(m: &mut Machine<'_>, dir: &Path) {
    if !m.vm.is_running() {
        return;
    }
    let log_dir = m.backend.profile.log_dir.clone();
    let cmd = format!("tar -c -C {} . 2>/dev/null", xdriver_guests::shell::quote(&log_dir));
    if let Ok(out) = m.vm.exec(crate::vm::Channel::Backdoor, &cmd, &[], Duration::from_secs(30), None).await {
        let dest = dir.join("guest-logs");
        if std::fs::create_dir_all(&dest).is_ok() {
            let _ = tar::Archive::new(out.stdout.as_slice()).unpack(&dest);
        }
    }
}
