//! One cell, start to end: image, boot, deploy, initialTests → readiness →
//! tests → postTests, shutdown; artifacts kept in the cell's results
//! directory (rendered configs, every command, the guest's logs, the serial
//! log, result.json).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use xdriver_guests::{Backend, Profile, ProfileKind};
use xdriver_guests::Images;
use xdriver_images::ImageName;

use super::deploy::{self, DeployPlan};
use super::progress::{Phase, Progress};
use super::python;
use super::machine::{describe, Machine, StepError};
use super::transcript::Transcript;
use crate::error_chain::chain_error;
use crate::vm::qemu::{Accel, Share};
use crate::spec::{Cell, CellCtx, Resolved, Spec, SpecError, Step};
use crate::vm::{DiskUse, Vm, VmConfig};

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

/// How one step (or step group) ended, from least to most severe: a
/// group's status is the most severe of its steps'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not reached (an earlier step ended the cell).
    NotRun,
    /// Passed.
    Pass,
    /// The system under test failed it.
    Fail,
    /// The VM or a channel broke during it.
    Error,
}

/// One step of a cell.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    /// The step's name (for deploy: the deploy phase).
    pub name: String,
    /// How it ended.
    pub status: StepStatus,
    /// Wall time.
    pub duration_s: f64,
    /// Why it failed, with the failing command's output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A group of steps: `deploy`, `initial_tests`, `readiness/<instance>`,
/// `tests/<instance>`, `post_tests`.
#[derive(Debug, Clone, Serialize)]
pub struct GroupResult {
    /// Group name.
    pub name: String,
    /// The worst status of its steps.
    pub status: StepStatus,
    /// Wall time of its steps.
    pub duration_s: f64,
    /// Its steps, in order.
    pub steps: Vec<StepResult>,
}

/// An earlier attempt at a cell that failed for infrastructure reasons
/// (a boot that timed out) and was retried (`--retries`).
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// What went wrong.
    pub reason: String,
    /// Wall time.
    pub duration_s: f64,
    /// Its artifacts, relative to the cell's directory.
    pub artifacts: String,
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
    /// Deploy and step groups, in order (not-run steps included).
    pub groups: Vec<GroupResult>,
    /// Earlier attempts retried after an infrastructure failure.
    pub attempts: Vec<Attempt>,
    /// The guest's screen when the cell failed (PNG, relative to `dir`).
    pub screenshot: Option<String>,
    /// The serial log's tail when the cell failed.
    pub serial_tail: Option<String>,
    /// How its VM came up: a cold boot (and why), or restored from which
    /// RAM snapshot.
    pub start: Option<String>,
}

impl CellResult {
    /// A cell with `outcome` and nothing run yet.
    pub fn new(cell: &Cell, dir: PathBuf, outcome: Outcome) -> CellResult {
        CellResult {
            cell: cell.clone(),
            outcome,
            duration_s: 0.0,
            steps_passed: 0,
            steps_total: 0,
            dir,
            groups: Vec::new(),
            attempts: Vec::new(),
            screenshot: None,
            serial_tail: None,
            start: None,
        }
    }

    pub(crate) fn record(&mut self, group: &str, step: &str, status: StepStatus, duration: Duration, message: Option<String>) {
        let d = duration.as_secs_f64();
        if self.groups.last().is_none_or(|g| g.name != group) {
            self.groups.push(GroupResult { name: group.into(), status: StepStatus::NotRun, duration_s: 0.0, steps: Vec::new() });
        }
        let g = self.groups.last_mut().expect("just pushed");
        g.duration_s += d;
        g.status = g.status.max(status);
        g.steps.push(StepResult { name: step.into(), status, duration_s: d, message });
    }
}

/// Options shared by every cell of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Accelerator.
    pub accel: Accel,
    /// Results root (`<root>/<spec name>/<cell>/`).
    pub results_dir: PathBuf,
    /// Guest RAM (`--mem-mib`; else the spec's, else the default).
    pub mem_mib: Option<u32>,
    /// vCPUs (`--cpus`; else the spec's, else the default).
    pub cpus: Option<u32>,
    /// Times a cell whose VM failed to boot is tried again.
    pub retries: u32,
    /// The whole run's deadline (`--timeout`).
    pub deadline: Option<tokio::time::Instant>,
    /// The shared store, if any.
    pub store: Option<crate::vm::nix_store::StorePlan>,
    /// `--interactive`: a Python prompt after the deploy instead of the tests.
    pub interactive: bool,
    /// `--keep`: a failed cell's VM stays up until its user lets it go.
    pub keep: bool,
    /// Start cells from RAM snapshots (not `--cold`).
    pub snapshots: bool,
}

impl RunOptions {
    /// Where a cell's artifacts go: `<results>/<spec name>/<cell>/`.
    pub fn cell_dir(&self, spec: &Spec, cell: &Cell) -> PathBuf {
        self.results_dir.join(&spec.file.name).join(cell.dir_name())
    }

    /// `want`, cut to what is left before the run's deadline; the flag
    /// says whether it was cut.
    pub fn clamp(&self, want: Duration) -> (Duration, bool) {
        match self.deadline {
            Some(d) => {
                let left = d.saturating_duration_since(tokio::time::Instant::now());
                if left < want {
                    (left, true)
                } else {
                    (want, false)
                }
            }
            None => (want, false),
        }
    }

    /// Whether the run's deadline has passed.
    pub fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
    }

    /// Whether so little of the run's deadline is left that a cell
    /// starting now could only fail at it (a step cut by the deadline ends
    /// a moment before it, and the cell's end takes well under a second).
    pub fn too_late_to_start(&self) -> bool {
        self.deadline.is_some_and(|d| d.saturating_duration_since(tokio::time::Instant::now()) < MIN_CELL_TIME)
    }
}

/// Less of the run's deadline than this left, and no new cell starts.
pub const MIN_CELL_TIME: Duration = Duration::from_secs(10);

/// What a failure during the run's deadline says first.
pub const DEADLINE: &str = "the run's deadline (--timeout) expired";

/// The skip reason of a cell whose tests gave way to a Python prompt.
pub const INTERACTIVE: &str = "interactive session (--interactive): its tests did not run as a test";

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
    /// What the spec's `[guest]` adds to the cell's image (None: the
    /// image as built or imported).
    pub additions: Option<xdriver_images::GuestAdditions>,
    /// Guest RAM (MiB) and vCPUs the VM gets.
    pub mem_mib: u32,
    /// vCPUs.
    pub cpus: u32,
}

/// Resolves, renders and plans a cell (spec errors surface here).
pub fn prepare(spec: &Spec, cell: &Cell, overrides: &std::collections::BTreeMap<String, serde_json::Value>) -> Result<Prepared, SpecError> {
    let ctx = CellCtx { os: cell.os, manager: cell.manager, profile: profile(cell.profile), overrides: overrides.clone() };
    let resolved = spec.resolve(&ctx)?;
    let backend = Backend::new(cell.manager, cell.os, ctx.profile.clone());
    let deploy = deploy::plan(&backend, &resolved.system).map_err(|e| spec.loc.whole(format!("{}: {e}", cell.id())))?;
    let steps = spec.steps(&resolved)?;
    let additions = spec.file.guest.additions(cell.os).map_err(|e| spec.loc.whole(format!("{}: {e}", cell.id())))?;
    Ok(Prepared { backend, resolved, deploy, steps, additions, mem_mib: spec.file.guest.memory(), cpus: spec.file.guest.vcpus() })
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

/// Runs one cell, reporting its phases to `progress`.
pub async fn run(spec: &Spec, cell: &Cell, prepared: Option<Prepared>, shares: &[Share], opts: &RunOptions, progress: &dyn Progress) -> CellResult {
    let started = Instant::now();
    let dir = opts.cell_dir(spec, cell);
    let mut result = CellResult::new(cell, dir.clone(), Outcome::Pass);
    result.steps_total = prepared.as_ref().map(|p| p.steps.len()).unwrap_or(0);
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
    // A cell that runs starts from an empty results directory; one that is
    // skipped (above) keeps what an earlier run left there.
    let _ = std::fs::remove_dir_all(&dir);
    if opts.too_late_to_start() {
        let reason = if opts.expired() {
            format!("{DEADLINE} before the cell started")
        } else {
            format!("{DEADLINE} before the cell started (less than {} s of it were left)", MIN_CELL_TIME.as_secs())
        };
        result.outcome = Outcome::Error { reason };
        return finish(result, started);
    }
    loop {
        let attempt_started = Instant::now();
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| write_configs(&dir, &prepared)) {
            result.outcome = Outcome::Error { reason: format!("results directory {}: {e}", dir.display()) };
            return finish(result, started);
        }
        let (outcome, boot_failed) = boot_and_test(cell, &image, &prepared, shares, opts, &dir, &mut result, progress).await;
        result.outcome = outcome;
        let retry = boot_failed && (result.attempts.len() as u32) < opts.retries && !opts.expired();
        if !retry {
            break;
        }
        // Keep this attempt's artifacts apart and try again; the report
        // lists the attempt, so a retried cell is never a silent pass.
        let n = result.attempts.len() + 1;
        let sub = format!("attempt-{n}");
        let reason = match &result.outcome {
            Outcome::Error { reason } => reason.clone(),
            _ => String::new(),
        };
        move_into(&dir, &sub);
        progress.note(&format!("{}: boot failed, retrying (attempt {} of {})", cell.id(), n + 1, opts.retries + 1));
        result.attempts.push(Attempt { reason, duration_s: attempt_started.elapsed().as_secs_f64(), artifacts: sub });
        result.groups.clear();
        result.steps_passed = 0;
        result.screenshot = None;
        result.serial_tail = None;
    }
    finish(result, started)
}

/// Moves everything in `dir` except earlier attempt directories into
/// `dir/sub`.
fn move_into(dir: &Path, sub: &str) {
    let dest = dir.join(sub);
    if std::fs::create_dir_all(&dest).is_err() {
        return;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with("attempt-") {
            continue;
        }
        let _ = std::fs::rename(e.path(), dest.join(&name));
    }
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

/// The image a cell boots and the disk it boots from: a built OS's image
/// is built if missing; an imported OS's must have been imported (or the
/// cell fails saying how), and is prepared on first use.
async fn find_image(os: xdriver_guests::Os, image: &str, p: &Prepared, opts: &RunOptions) -> Result<(xdriver_images::Entry, DiskUse), String> {
    let cache = xdriver_images::ImageCache::open_default().map_err(|e| format!("image {image}: {}", chain_error(&e)))?;
    match os.images() {
        Images::Built { .. } => {
            let name: ImageName = image.parse().map_err(|e| format!("image {image}: {e}"))?;
            // The spec's [guest] additions make a derived image, built once.
            let add = p.additions.clone();
            let image = add.as_ref().map(|a| a.image_name(&name)).unwrap_or_else(|| image.to_string());
            match tokio::task::spawn_blocking(move || cache.ensure_with(&name, add.as_ref(), false)).await {
                Ok(Ok(e)) => Ok((e, DiskUse::Image)),
                Ok(Err(e)) => Err(format!("image {image}: {}", chain_error(&e))),
                Err(e) => Err(format!("image {image}: {e}")),
            }
        }
        Images::Imported { example_file, docs, .. } => {
            let entry = cache.imported(image).ok_or_else(|| {
                format!(
                    "no image `{image}` in the image cache: {os} images are imported, not built. Import one first:\n  \
                     xdriver image import {image} {example_file} --os {os}\n(see {docs})"
                )
            })?;
            if entry.manifest.os != os.name() {
                return Err(format!("image {image} holds {}, not {os} (see `xdriver image list`)", entry.manifest.os));
            }
            let p = crate::vm::prepare::ensure(&cache, &entry, p.additions.as_ref(), opts.accel, opts.mem_mib.unwrap_or(p.mem_mib)).await.map_err(|e| chain_error(&e))?;
            Ok((entry, DiskUse::Prepared { disk: p.disk, host_key: p.host_key }))
        }
    }
}

/// The VM a cell boots: its image and disk, the run's accelerator, the
/// spec's (or the flags') vCPUs and memory, shares, store and snapshots.
fn vm_config(cell: &Cell, entry: xdriver_images::Entry, disk: DiskUse, p: &Prepared, shares: &[Share], opts: &RunOptions) -> Result<VmConfig, String> {
    let mut cfg = VmConfig::new(&format!("cell-{}", cell.dir_name()), entry);
    cfg.disk = disk;
    cfg.accel = opts.accel;
    cfg.cpus = opts.cpus.unwrap_or(p.cpus);
    cfg.mem_mib = opts.mem_mib.unwrap_or(p.mem_mib);
    cfg.shares = shares.to_vec();
    cfg.snapshots = opts.snapshots;
    if let Some(plan) = &opts.store {
        let (share, why) = plan.share_for(cell.os).map_err(|e| format!("store: {e}"))?;
        tracing::info!(cell = %cell.id(), store = %share.host.display(), fs = share.fs.name(), %why, "shared store");
        cfg.store = Some(share);
    }
    Ok(cfg)
}

/// Everything a cell needs before its VM can start, done ahead of the
/// run (`xdriver test --prepare-only`): the image built (or the derived
/// image, or the imported image's preparation), and, with snapshots on,
/// the RAM snapshot its later cells restore, saved by one VM booted the way
/// the cell would boot it and then ended. Returns how the VM started.
pub async fn warm(cell: &Cell, prepared: &Prepared, shares: &[Share], opts: &RunOptions) -> Result<String, String> {
    let image = cell.image.as_ref().map_err(Clone::clone)?;
    let (entry, disk) = find_image(cell.os, image, prepared, opts).await?;
    let mut cfg = vm_config(cell, entry, disk, prepared, shares, opts)?;
    cfg.name = format!("warm-{}", cell.dir_name());
    let vm = Vm::start(cfg).await.map_err(|e| format!("boot: {}", chain_error(&e)))?;
    let how = vm.how_started().to_string();
    let _ = vm.quit().await;
    Ok(how)
}

/// Boots, deploys and runs the steps. The flag says whether the VM failed
/// to come up (the only failure `--retries` retries).
#[allow(clippy::too_many_arguments)]
async fn boot_and_test(
    cell: &Cell,
    image: &str,
    p: &Prepared,
    shares: &[Share],
    opts: &RunOptions,
    dir: &Path,
    result: &mut CellResult,
    progress: &dyn Progress,
) -> (Outcome, bool) {
    progress.phase(cell, Phase::Image);
    let (entry, disk) = match find_image(cell.os, image, p, opts).await {
        Ok(e) => e,
        Err(reason) => return (Outcome::Error { reason }, false),
    };
    progress.phase(cell, Phase::Boot);
    let mut cfg = match vm_config(cell, entry, disk, p, shares, opts) {
        Ok(cfg) => cfg,
        Err(reason) => return (Outcome::Error { reason }, false),
    };
    let (boot_timeout, cut) = opts.clamp(Duration::from_secs(180));
    cfg.boot_timeout = boot_timeout.max(Duration::from_secs(1));
    let label = format!("cell-{}", cell.dir_name());
    let before = crate::vm::rundir::RunDir::existing(&label);
    let boot_started = Instant::now();
    let mut vm = match Vm::start(cfg).await {
        Ok(vm) => vm,
        Err(e) => {
            // The failed VM's run directory is kept; bring its logs along.
            let mut reason = format!("boot: {}", chain_error(&e));
            if cut {
                reason = format!("{DEADLINE} while booting; {reason}");
            }
            if let Some(kept) = crate::vm::rundir::RunDir::existing(&label).into_iter().find(|d| !before.contains(d)) {
                for f in ["serial.log", "qemu.log", "qemu.cmdline"] {
                    let _ = std::fs::copy(kept.join(f), dir.join(f));
                }
                reason.push_str(&format!("\n(run directory kept: {})", kept.display()));
            }
            if let Ok(log) = std::fs::read(dir.join("serial.log")) {
                result.serial_tail = Some(crate::vm::console::tail_lines(&log, 60));
            }
            result.record("boot", "boot", StepStatus::Error, boot_started.elapsed(), Some(reason.clone()));
            return (Outcome::Error { reason }, true);
        }
    };
    result.start = Some(vm.how_started().to_string());
    tracing::info!(cell = %cell.id(), start = vm.how_started(), "VM up");
    let mut m = Machine { vm: &mut vm, backend: &p.backend, transcript: Transcript::default(), artifacts: dir };
    let outcome = deploy_and_steps(&mut m, cell, p, opts, result, progress).await.err().unwrap_or(Outcome::Pass);
    progress.phase(cell, Phase::Shutdown);
    let failed = !matches!(outcome, Outcome::Pass);
    if failed && m.vm.is_running() {
        // What the guest's screen and serial console showed at the failure.
        let shot = dir.join("screenshot.png");
        match m.vm.screendump(&shot).await {
            Ok(()) if shot.is_file() => result.screenshot = Some("screenshot.png".into()),
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "screendump failed"),
        }
    }
    if failed {
        let tail = m.vm.serial_tail(60);
        let _ = std::fs::write(dir.join("serial-tail.txt"), &tail);
        result.serial_tail = Some(tail);
    }
    collect_guest_logs(&mut m, dir, failed).await;
    let _ = m.transcript.save(dir);
    if failed && opts.keep && m.vm.is_running() && !matches!(outcome, Outcome::Skip { .. }) {
        hold(&mut m, cell, p, opts, result).await;
    }
    drop(m);
    if failed {
        vm.keep_run_dir();
    }
    let _ = std::fs::copy(vm.run_dir().join("serial.log"), dir.join("serial.log"));
    // A VM started again (`start`) keeps its first run's console too.
    let _ = std::fs::copy(vm.run_dir().join("serial-earlier.log"), dir.join("serial-earlier.log"));
    // The overlay is thrown away: QEMU goes without waiting for the
    // guest's own power-off (a test that wants one has a `shutdown` step).
    let _ = vm.quit().await;
    (outcome, false)
}

/// Deploys, then runs the steps, recording every step (and the ones not
/// reached) in `result`.
async fn deploy_and_steps(
    m: &mut Machine<'_>,
    cell: &Cell,
    p: &Prepared,
    opts: &RunOptions,
    result: &mut CellResult,
    progress: &dyn Progress,
) -> Result<(), Outcome> {
    progress.phase(cell, Phase::Deploy);
    let tar = deploy::tar(&p.deploy.files).map_err(|e| Outcome::Error { reason: format!("packing the deployment: {e}") })?;
    let mut commands: Vec<(&str, &str, &[u8])> = p.deploy.prepare.iter().map(|c| (c.phase, c.command.as_str(), &[][..])).collect();
    commands.push(("files", "tar -x --no-overwrite-dir -C /", &tar));
    commands.extend(p.deploy.run.iter().map(|c| (c.phase, c.command.as_str(), &[][..])));
    let mut failure = None;
    for (phase, cmd, stdin) in commands {
        // Deploy steps are named by phase and what the command does.
        let first = cmd.lines().next().unwrap_or_default();
        let what: String = first.chars().take(72).collect();
        let ellipsis = if what.len() < cmd.len() { "…" } else { "" };
        let label = format!("{phase}: {what}{ellipsis}");
        if failure.is_some() {
            result.record("deploy", &label, StepStatus::NotRun, Duration::ZERO, None);
            continue;
        }
        let t = Instant::now();
        let (timeout, cut) = opts.clamp(Duration::from_secs(120));
        let (status, outcome) = match m.run(&format!("deploy/{phase}"), cmd, stdin, timeout).await {
            Ok(out) if out.success() => (StepStatus::Pass, None),
            Ok(out) => {
                let mut reason = describe(cmd, &out);
                if cut {
                    reason = format!("{DEADLINE}; {reason}");
                }
                (StepStatus::Fail, Some(Outcome::Fail { group: "deploy".into(), step: label.clone(), reason }))
            }
            Err(e) => (StepStatus::Error, Some(Outcome::Error { reason: chain_error(&e) })),
        };
        let message = outcome.as_ref().map(outcome_reason);
        result.record("deploy", &label, status, t.elapsed(), message);
        failure = outcome;
    }
    if opts.interactive && failure.is_none() {
        // The NixOS driver's interactive mode: `machine` at a prompt, the
        // script at hand as test_script().
        let script = cell_script(p);
        python::session(m, &script, opts, Duration::from_secs(120), result, python::Mode::Prompt).await?;
        return Err(Outcome::Skip { reason: INTERACTIVE.into() });
    }
    let mut phase = Phase::Deploy;
    for s in &p.steps {
        if failure.is_some() {
            result.record(&s.group, &s.name, StepStatus::NotRun, Duration::ZERO, None);
            continue;
        }
        let ph = Phase::of_group(&s.group);
        if ph != phase {
            progress.phase(cell, ph);
            phase = ph;
        }
        if let crate::spec::Action::Python(script) = &s.action {
            // Its calls are the steps: the script's own step is replaced.
            result.steps_total -= 1;
            if let Err(o) = python::run(m, script, opts, s.timeout, result).await {
                failure = Some(o);
            }
            continue;
        }
        let t = Instant::now();
        let (timeout, cut) = opts.clamp(s.timeout);
        match m.step(&s.group, &s.action, timeout).await {
            Ok(()) => {
                result.steps_passed += 1;
                result.record(&s.group, &s.name, StepStatus::Pass, t.elapsed(), None);
            }
            Err(StepError::Failed(reason)) => {
                let reason = if cut { format!("{DEADLINE} during this step; {reason}") } else { reason };
                result.record(&s.group, &s.name, StepStatus::Fail, t.elapsed(), Some(reason.clone()));
                failure = Some(Outcome::Fail { group: s.group.clone(), step: s.name.clone(), reason });
            }
            Err(StepError::Infra(e)) => {
                let reason = chain_error(&e);
                result.record(&s.group, &s.name, StepStatus::Error, t.elapsed(), Some(reason.clone()));
                failure = Some(Outcome::Error { reason });
            }
        }
    }
    match failure {
        Some(o) => Err(o),
        None => Ok(()),
    }
}

/// The cell's Python test script, if it has one (else an empty one).
fn cell_script(p: &Prepared) -> crate::spec::PyScript {
    p.steps
        .iter()
        .find_map(|s| match &s.action {
            crate::spec::Action::Python(py) => Some(py.clone()),
            _ => None,
        })
        .unwrap_or(crate::spec::PyScript { text: String::new(), segments: Vec::new() })
}

/// `--keep`: holds a failed cell's VM until its user lets it go: prints
/// how to reach it, then a Python prompt with `machine` if stdin is a
/// terminal, else waits for SIGINT/SIGTERM or the guest's own power-off.
/// One cell holds the terminal at a time.
async fn hold(m: &mut Machine<'_>, cell: &Cell, p: &Prepared, opts: &RunOptions, result: &mut CellResult) {
    use std::io::IsTerminal;
    use std::sync::atomic::Ordering;
    static TERMINAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _terminal = TERMINAL.lock().await;
    crate::cli::HANDLES_SIGNALS.store(true, Ordering::SeqCst);
    let rd = m.vm.run_dir().to_path_buf();
    let keyfile = rd.join("id_ed25519");
    let key_ok = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&keyfile)
            .and_then(|mut f| std::io::Write::write_all(&mut f, m.vm.client_key().private_openssh().as_bytes()))
            .is_ok()
    };
    let tty = std::io::stdin().is_terminal();
    let mut text = format!("\nxdriver: {} failed; its VM is kept running (--keep), QEMU pid {}. Reach it with:\n", cell.id(), m.vm.pid());
    if key_ok && m.vm.ssh_port != 0 {
        text.push_str(&format!(
            "  ssh -i {} -p {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1\n",
            keyfile.display(),
            m.vm.ssh_port
        ));
    }
    text.push_str(&format!("  serial log: {}/serial.log; results: {}\n", rd.display(), m.artifacts.display()));
    if tty {
        text.push_str("  Python: the prompt below has `machine`; Ctrl-D ends it and stops the VM.\n");
    } else {
        text.push_str(&format!("  Python: run it from a terminal for a prompt with `machine`.\nCtrl-C (or SIGTERM to {}) stops it.\n", std::process::id()));
    }
    let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
    if tty {
        let script = cell_script(p);
        // Calls made at the prompt are recorded, but the cell stays failed.
        let mut scratch = result.clone();
        let _ = python::session(m, &script, opts, Duration::from_secs(120), &mut scratch, python::Mode::Prompt).await;
    } else {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut ex = m.vm.qmp.subscribe();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
            _ = async { while let Ok(ev) = ex.recv().await { if ev["event"] == "SHUTDOWN" { break; } } } => {},
        }
    }
    eprintln!("xdriver: {}: letting the kept VM go", cell.id());
    crate::cli::HANDLES_SIGNALS.store(false, Ordering::SeqCst);
}

fn outcome_reason(o: &Outcome) -> String {
    match o {
        Outcome::Fail { reason, .. } | Outcome::Error { reason } | Outcome::Skip { reason } => reason.clone(),
        Outcome::Pass => String::new(),
    }
}

/// Copies the profile's log directory out of the guest into `guest-logs/`.
async fn collect_guest_logs(m: &mut Machine<'_>, dir: &Path, failed: bool) {
    if !m.vm.is_running() {
        return;
    }
    let q = xdriver_guests::shell::quote;
    let log_dir = m.backend.profile.log_dir.clone();
    let mut wanted = vec![(format!("tar -c -C {} . 2>/dev/null", q(&log_dir)), dir.join("guest-logs"))];
    // A failed cell also brings the `*.log` files its instances keep in
    // their state directories (nginx's error log in the examples), up to
    // 8 MiB each.
    if failed {
        let state = m.backend.profile.state_dir.clone();
        wanted.push((
            format!("cd {} 2>/dev/null && find . -name '*.log' -type f -size -8M | tar -c -T - 2>/dev/null", q(&state)),
            dir.join("guest-logs").join("state-dir"),
        ));
    }
    for (cmd, dest) in wanted {
        if let Ok(out) = m.vm.exec(crate::vm::Channel::Backdoor, &cmd, &[], Duration::from_secs(30), None).await {
            if std::fs::create_dir_all(&dest).is_ok() {
                let _ = tar::Archive::new(out.stdout.as_slice()).unpack(&dest);
            }
        }
    }
}
