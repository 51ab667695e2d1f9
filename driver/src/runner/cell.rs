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
use super::event::{Event, Reporter};
use super::progress::Phase;
use super::python;
use super::machine::{describe, Machine, StepError};
use super::transcript::Transcript;
use crate::error_chain::chain_error;
use crate::vm::qemu::{Accel, Share};
use crate::spec::{Cell, CellCtx, Node, Resolved, Spec, SpecError, Step};
use crate::vm::{DiskUse, Vm, VmConfig};
use crate::vm::vlan::{Nic, VlanPort};

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
    /// When it started (seconds since the Unix epoch): the run's timeline
    /// lines its cells up by it.
    pub started_at: f64,
    /// Where its time went: each phase, and each node's boot (or restore)
    /// in a cell of several, from the cell's start.
    pub timeline: Vec<Span>,
    /// An infrastructure error's class and evidence (None otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<super::fault::Fault>,
    /// What the reports show beside the above, carried from the runner to
    /// them (in the [`super::event::Event::Finished`] event) rather than
    /// read back from the files the runner wrote; not in result.json (the
    /// files are in `dir`).
    #[serde(skip)]
    pub shown: Shown,
}

/// What a cell's report shows of its artifacts (see [`CellResult::shown`]).
#[derive(Debug, Clone, Default)]
pub struct Shown {
    /// The rendered files deployed into the guest(s).
    pub configs: Vec<ConfigFile>,
    /// Every command that exited non-zero or broke, in order, every node's
    /// (a cell of several: contexts prefixed `NODE: `).
    pub failed_commands: Vec<super::transcript::Record>,
    /// The first node's console, its last [`REPORT_SERIAL_LINES`] lines.
    pub console_tail: Option<String>,
    /// The screen at the failure, PNG.
    pub screenshot_png: Option<Vec<u8>>,
    /// A cell of several machines: each node.
    pub nodes: Vec<NodeReport>,
}

/// A rendered file, as reports show it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ConfigFile {
    /// Guest path (a cell of several: `/NODE/path`).
    pub path: String,
    /// Contents (capped in reports).
    pub contents: String,
}

/// One machine of a cell of several, as reports show it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct NodeReport {
    /// Its name.
    pub name: String,
    /// `os/manager/profile`.
    pub id: String,
    /// The image it booted.
    pub image: Option<String>,
    /// Its artifacts directory (`nodes/NAME/` in the cell's).
    pub artifacts_dir: String,
    /// Its serial log's last lines.
    pub serial_tail: Option<String>,
    /// Its screen when the cell failed, PNG as base64.
    pub screenshot_png: Option<String>,
}

/// A stretch of a cell's time.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Span {
    /// The phase (`image`, `boot`, `deploy`, `readiness`, `tests`,
    /// `shutdown`), or `boot` of a node.
    pub what: String,
    /// The node, for a node's own span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Seconds from the cell's start.
    pub start_s: f64,
    /// Seconds from the cell's start.
    pub end_s: f64,
}

/// Passes phases on to the run's display and keeps them for the cell's
/// timeline.
struct PhaseLog<'a> {
    inner: &'a dyn Reporter,
    t0: Instant,
    marks: std::sync::Mutex<Vec<(Phase, f64)>>,
}

impl Reporter for PhaseLog<'_> {
    fn event(&self, e: &Event<'_>) {
        if let Event::Phase { phase, .. } = e {
            self.marks.lock().expect("lock").push((*phase, self.t0.elapsed().as_secs_f64()));
        }
        self.inner.event(e);
    }
}

impl PhaseLog<'_> {
    /// The phases as spans, the last one ending at `end_s`.
    fn spans(&self, end_s: f64) -> Vec<Span> {
        let marks = self.marks.lock().expect("lock");
        marks
            .iter()
            .enumerate()
            .map(|(i, (p, start))| Span { what: p.name().into(), node: None, start_s: *start, end_s: marks.get(i + 1).map_or(end_s, |m| m.1) })
            .collect()
    }
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
            fault: None,
            shown: Shown::default(),
            start: None,
            started_at: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
            timeline: Vec::new(),
        }
    }

    /// Records a step and reports it (an [`Event::Step`]).
    pub(crate) fn record(&mut self, to: &dyn Reporter, group: &str, step: &str, status: StepStatus, duration: Duration, message: Option<String>) {
        let d = duration.as_secs_f64();
        if self.groups.last().is_none_or(|g| g.name != group) {
            self.groups.push(GroupResult { name: group.into(), status: StepStatus::NotRun, duration_s: 0.0, steps: Vec::new() });
        }
        let g = self.groups.last_mut().expect("just pushed");
        g.duration_s += d;
        g.status = g.status.max(status);
        g.steps.push(StepResult { name: step.into(), status, duration_s: d, message });
        to.event(&Event::Step { cell: &self.cell, group, step: g.steps.last().expect("just pushed") });
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
    /// The cell's machines, in the spec's order; the first is the one the
    /// fields above describe. One, `machine`, for a spec without `[nodes]`.
    pub nodes: Vec<NodePrepared>,
    /// Whether the spec has `[nodes]` (then every node is named in the
    /// results and has NICs on its vlans).
    pub multi: bool,
}

/// One machine of a cell, as far as it is known without a guest.
#[derive(Debug, Clone)]
pub struct NodePrepared {
    /// The node.
    pub node: Node,
    /// Its manager backend.
    pub backend: Backend,
    /// Its deployment (None: it runs no instance).
    pub deploy: Option<DeployPlan>,
    /// What the spec's `[guest]` adds to its image.
    pub additions: Option<xdriver_images::GuestAdditions>,
    /// Guest RAM (MiB).
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
    let mut steps = spec.steps(&resolved)?;
    let additions = spec.file.guest.additions(cell.os).map_err(|e| spec.loc.whole(format!("{}: {e}", cell.id())))?;
    let plan = spec.nodes(cell);
    let multi = !spec.file.nodes.is_empty();
    let (mem_mib, cpus) = (spec.file.guest.memory(), spec.file.guest.vcpus());
    if !multi {
        let node = NodePrepared { node: plan[0].clone(), backend: backend.clone(), deploy: Some(deploy.clone()), additions: additions.clone(), mem_mib, cpus };
        return Ok(Prepared { backend, resolved, deploy, steps, additions, mem_mib, cpus, nodes: vec![node], multi });
    }
    // Each node deploys its own instances, resolved with its own OS,
    // manager and profile; a dependency on another node's instance is that
    // node's to start (the deploys do not wait on each other).
    let mut nodes = Vec::new();
    for n in &plan {
        let nctx = CellCtx { os: n.os, manager: n.manager, profile: profile(n.profile), overrides: overrides.clone() };
        let r = if (n.os, n.manager, n.profile) == (cell.os, cell.manager, cell.profile) { resolved.clone() } else { spec.resolve(&nctx)? };
        let mut sys = r.system.clone();
        sys.processes.retain(|pr| crate::spec::node_of(&plan, &pr.name).name == n.name);
        let names: std::collections::BTreeSet<String> = sys.processes.iter().map(|pr| pr.name.clone()).collect();
        for pr in &mut sys.processes {
            pr.dependencies.retain(|d| names.contains(d));
        }
        let nbackend = Backend::new(n.manager, n.os, nctx.profile.clone());
        let ndeploy = if sys.processes.is_empty() {
            None
        } else {
            Some(deploy::plan(&nbackend, &sys).map_err(|e| spec.loc.whole(format!("{}: node {}: {e}", cell.id(), n.name)))?)
        };
        // The node's own [guest] if it has one, else the spec's; RAM and
        // vCPUs: the node's own keys, then its [guest]'s, then the spec's.
        let g = spec.guest_of(&n.name);
        let nadd = g.additions(n.os).map_err(|e| spec.loc.whole(format!("{}: node {}: {e}", cell.id(), n.name)))?;
        let nmem = n.memory_mib.or(g.memory_mib.as_ref().map(|m| *m.get_ref())).unwrap_or(mem_mib);
        let ncpus = n.cpus.or(g.cpus.as_ref().map(|c| *c.get_ref())).unwrap_or(cpus);
        nodes.push(NodePrepared { node: n.clone(), backend: nbackend, deploy: ndeploy, additions: nadd, mem_mib: nmem, cpus: ncpus });
    }
    // An instance's readiness and tests run on its node.
    for s in &mut steps {
        if s.node.is_none() {
            if let Some(inst) = s.group.strip_prefix("readiness/").or_else(|| s.group.strip_prefix("tests/")) {
                s.node = Some(crate::spec::node_of(&plan, inst).name.clone());
            }
        }
    }
    let first = &nodes[0];
    let empty = DeployPlan { prepare: Vec::new(), files: Vec::new(), run: Vec::new() };
    Ok(Prepared {
        backend: first.backend.clone(),
        resolved,
        deploy: first.deploy.clone().unwrap_or(empty),
        steps,
        additions: first.additions.clone(),
        mem_mib: first.mem_mib,
        cpus: first.cpus,
        nodes,
        multi,
    })
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

/// The rendered files of `p`'s deployment(s), as reports show them
/// (`/NODE/path` in a cell of several; symlinks as `symlink -> TARGET`).
pub fn configs_of(p: &Prepared) -> Vec<ConfigFile> {
    let mut out: Vec<ConfigFile> = p
        .nodes
        .iter()
        .filter_map(|n| n.deploy.as_ref().map(|d| (n, d)))
        .flat_map(|(n, d)| d.files.iter().map(move |f| (n, f)))
        .filter_map(|(n, f)| {
            let contents = match (&f.contents, &f.link) {
                (_, Some(t)) => format!("symlink -> {t}\n"),
                (Some(c), None) => c.clone(),
                (None, None) => return None,
            };
            let path = if p.multi { format!("/{}{}", n.node.name, f.path) } else { f.path.clone() };
            Some(ConfigFile { path, contents })
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Writes the rendered files ([`configs_of`]) under `<dir>/configs/<path>`
/// (a cell of several nodes: `configs/<node>/<guest path>`) and the plan as
/// `plan.json`; returns the files, for the reports.
pub fn write_configs(dir: &Path, p: &Prepared) -> std::io::Result<Vec<ConfigFile>> {
    let configs = configs_of(p);
    for c in &configs {
        let dest = dir.join("configs").join(c.path.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&dest, &c.contents)?;
    }
    let mut plan = serde_json::json!({ "deploy": p.deploy, "steps": p.steps, "processes": p.resolved.system.processes });
    if p.multi {
        plan["nodes"] = p.nodes.iter().map(|n| serde_json::json!({ "node": n.node, "deploy": n.deploy })).collect();
    }
    std::fs::write(dir.join("plan.json"), serde_json::to_string_pretty(&plan).map_err(std::io::Error::other)?)?;
    Ok(configs)
}

/// Runs one cell, reporting its phases to `progress`.
pub async fn run(spec: &Spec, cell: &Cell, prepared: Option<Prepared>, shares: &[Share], opts: &RunOptions, progress: &dyn Reporter) -> CellResult {
    let started = Instant::now();
    let progress = &PhaseLog { inner: progress, t0: started, marks: std::sync::Mutex::new(Vec::new()) };
    progress.event(&Event::Started { cell });
    let dir = opts.cell_dir(spec, cell);
    let mut result = CellResult::new(cell, dir.clone(), Outcome::Pass);
    result.steps_total = prepared.as_ref().map(|p| p.steps.len()).unwrap_or(0);
    // The cell runs when every node's image can run here (a cell of one:
    // the cell's own image).
    let prepared = match prepared {
        Some(p) => p,
        None => {
            result.outcome = Outcome::Skip { reason: cell.image.as_ref().err().cloned().unwrap_or_else(|| "not prepared".into()) };
            return finish(result, started);
        }
    };
    if let Some(n) = prepared.nodes.iter().find(|n| n.node.image.is_err()) {
        let reason = n.node.image.as_ref().err().cloned().unwrap_or_default();
        result.outcome = Outcome::Skip { reason: if prepared.multi { format!("node {}: {reason}", n.node.name) } else { reason } };
        return finish(result, started);
    }
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
        match std::fs::create_dir_all(&dir).and_then(|_| write_configs(&dir, &prepared)) {
            Ok(configs) => result.shown.configs = configs,
            Err(e) => {
                result.outcome = Outcome::Error { reason: format!("results directory {}: {e}", dir.display()) };
                return finish(result, started);
            }
        }
        let (outcome, boot_failed) = boot_and_test(cell, &prepared, shares, opts, &dir, &mut result, progress).await;
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
        progress.event(&Event::Retried { cell, attempt: n + 1, of: opts.retries + 1, reason: &reason });
        result.attempts.push(Attempt { reason, duration_s: attempt_started.elapsed().as_secs_f64(), artifacts: sub });
        result.groups.clear();
        result.steps_passed = 0;
        result.screenshot = None;
        result.serial_tail = None;
        result.shown = Shown::default();
    }
    let nodes = std::mem::take(&mut result.timeline);
    result.timeline = progress.spans(started.elapsed().as_secs_f64());
    result.timeline.extend(nodes);
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
    if let Outcome::Error { reason } = &r.outcome {
        r.fault = Some(super::fault::classify(reason, &super::fault::consoles_of(&r.dir)));
    }
    if r.dir.is_dir() {
        if let Ok(json) = serde_json::to_string_pretty(&r) {
            let _ = std::fs::write(r.dir.join("result.json"), json);
        }
    }
    r
}

/// The image a node boots and the disk it boots from: a built OS's image
/// is built if missing; an imported OS's must have been imported (or the
/// cell fails saying how), and is prepared on first use.
async fn find_image(n: &NodePrepared, opts: &RunOptions) -> Result<(xdriver_images::Entry, DiskUse), String> {
    let os = n.node.os;
    let image = n.node.image.as_deref().map_err(Clone::clone)?;
    let cache = xdriver_images::ImageCache::open_default().map_err(|e| format!("image {image}: {}", chain_error(&e)))?;
    match os.images() {
        Images::Built { .. } => {
            let name: ImageName = image.parse().map_err(|e| format!("image {image}: {e}"))?;
            // The spec's [guest] additions make a derived image, built once.
            let add = n.additions.clone();
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
            let p = crate::vm::prepare::ensure(&cache, &entry, n.additions.as_ref(), opts.accel, opts.mem_mib.unwrap_or(n.mem_mib)).await.map_err(|e| chain_error(&e))?;
            Ok((entry, DiskUse::Prepared { disk: p.disk, host_key: p.host_key }))
        }
    }
}

/// The VM name of a node: `cell-<cell>` (`-<node>` when the spec has
/// nodes).
fn vm_name(cell: &Cell, n: &NodePrepared, multi: bool) -> String {
    if multi {
        // The node first, so a run directory's name shows it (names
        // keep 15 characters and a hash of the rest: RunDir::create).
        format!("cell-{}-{}", n.node.name, cell.dir_name())
    } else {
        format!("cell-{}", cell.dir_name())
    }
}

/// The VM a node boots: its image and disk, the run's accelerator, the
/// spec's (or the flags') vCPUs and memory, shares, store and snapshots.
fn vm_config(name: String, n: &NodePrepared, multi: bool, entry: xdriver_images::Entry, disk: DiskUse, shares: &[Share], opts: &RunOptions) -> Result<VmConfig, String> {
    let mut cfg = VmConfig::new(&name, entry);
    cfg.disk = disk;
    cfg.accel = opts.accel;
    cfg.cpus = opts.cpus.unwrap_or(n.cpus);
    cfg.mem_mib = opts.mem_mib.unwrap_or(n.mem_mib);
    cfg.shares = shares.to_vec();
    cfg.snapshots = opts.snapshots;
    // Several nodes: each VM's SSH handshake waits until every node is up
    // and on its vlans (`begin_ssh` below).
    cfg.ssh_later = multi;
    if let Some(plan) = &opts.store {
        let (share, why) = plan.share_for(n.node.os).map_err(|e| format!("store: {e}"))?;
        tracing::info!(vm = %name, store = %share.host.display(), fs = share.fs.name(), %why, "shared store");
        cfg.store = Some(share);
    }
    Ok(cfg)
}

/// Everything a cell needs before its VMs can start, done ahead of the
/// run (`xdriver test --prepare-only`): each node's image built (or the
/// derived image, or the imported image's preparation), and, with
/// snapshots on, the RAM snapshot its later cells restore, saved by one VM
/// booted the way the cell would boot it and then ended. Returns how the
/// VMs started.
pub async fn warm(cell: &Cell, prepared: &Prepared, shares: &[Share], opts: &RunOptions) -> Result<String, String> {
    let mut how = Vec::new();
    for n in &prepared.nodes {
        let (entry, disk) = find_image(n, opts).await?;
        let cfg = vm_config(format!("warm-{}", cell.dir_name()), n, false, entry, disk, shares, opts)?;
        let vm = Vm::start(cfg).await.map_err(|e| format!("boot: {}", chain_error(&e)))?;
        how.push(if prepared.multi { format!("{}: {}", n.node.name, vm.how_started()) } else { vm.how_started().to_string() });
        let _ = vm.quit().await;
    }
    Ok(how.join("; "))
}

/// Boots, deploys and runs the steps. The flag says whether a VM failed
/// to come up (the only failure `--retries` retries).
async fn boot_and_test(cell: &Cell, p: &Prepared, shares: &[Share], opts: &RunOptions, dir: &Path, result: &mut CellResult, progress: &dyn Reporter) -> (Outcome, bool) {
    progress.event(&Event::Phase { cell, phase: Phase::Image });
    // The vlans' switches first: each node's VM is started on them.
    let (net, switches, hosts) = match start_vlans(cell, p) {
        Ok(v) => v,
        Err(reason) => return (Outcome::Error { reason }, false),
    };
    let mut cfgs = Vec::new();
    for n in &p.nodes {
        let (entry, disk) = match find_image(n, opts).await {
            Ok(e) => e,
            Err(reason) => return (Outcome::Error { reason: node_says(p, n, reason) }, false),
        };
        match vm_config(vm_name(cell, n, p.multi), n, p.multi, entry, disk, shares, opts) {
            Ok(mut cfg) => {
                cfg.vlans = n
                    .node
                    .vlans
                    .iter()
                    .filter_map(|v| switches.iter().find(|s| s.vlan() == *v))
                    .map(|s| VlanPort { nic: Nic { vlan: s.vlan(), node: n.node.index }, sock: s.sock().to_path_buf() })
                    .collect();
                if !cfg.vlans.is_empty() {
                    cfg.hosts = hosts.clone();
                }
                cfgs.push(cfg)
            }
            Err(reason) => return (Outcome::Error { reason: node_says(p, n, reason) }, false),
        }
    }
    progress.event(&Event::Phase { cell, phase: Phase::Boot });
    let (boot_timeout, cut) = opts.clamp(Duration::from_secs(180));
    let before: Vec<Vec<PathBuf>> = cfgs.iter().map(|c| crate::vm::rundir::RunDir::existing(&c.name)).collect();
    let labels: Vec<String> = cfgs.iter().map(|c| c.name.clone()).collect();
    let boot_started = Instant::now();
    // Seconds since the cell started, for its timeline.
    let since_start = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0) - result.started_at;
    // Every node boots (or restores) on its vlans, side by side.
    let starts = cfgs.into_iter().map(|mut cfg| {
        cfg.boot_timeout = boot_timeout.max(Duration::from_secs(1));
        async move {
            let t = std::time::SystemTime::now();
            let vm = Vm::start(cfg).await.map_err(|e| format!("boot: {}", chain_error(&e)))?;
            Ok::<_, String>((vm, [t, std::time::SystemTime::now()]))
        }
    });
    let mut up = Vec::new();
    let mut failed = None;
    for (i, r) in futures::future::join_all(starts).await.into_iter().enumerate() {
        match r {
            Ok((vm, [t, booted])) => {
                if p.multi {
                    let node = Some(p.nodes[i].node.name.clone());
                    result.timeline.push(Span { what: "boot".into(), node, start_s: since_start(t), end_s: since_start(booted) });
                }
                up.push(Some(vm));
            }
            Err(e) => {
                failed = failed.or(Some((i, e)));
                up.push(None);
            }
        }
    }
    if let Some((i, why)) = failed {
        // Every node that came up goes, its console kept with the cell's
        // results.
        for (vm, n) in up.into_iter().zip(&p.nodes).filter_map(|(vm, n)| vm.map(|vm| (vm, n))) {
            let ndir = node_dir(dir, p, n);
            if std::fs::create_dir_all(&ndir).is_ok() {
                let _ = std::fs::copy(vm.run_dir().join("serial.log"), ndir.join("serial.log"));
            }
            let _ = vm.quit().await;
        }
        let n = &p.nodes[i];
        let mut reason = node_says(p, n, why);
        if cut {
            reason = format!("{DEADLINE} while booting; {reason}");
        }
        let ndir = node_dir(dir, p, n);
        let _ = std::fs::create_dir_all(&ndir);
        // The failed VM kept its run directory (two, when its kernel
        // panicked and it booted twice): its logs go to the cell's
        // artifacts, the rest (overlay, sockets) goes.
        let mut kept = crate::vm::rundir::RunDir::new_since(&labels[i], &before[i]);
        kept.sort_by_key(|d| std::fs::metadata(d).and_then(|m| m.modified()).ok());
        for (k, d) in kept.iter().rev().enumerate() {
            let prefix = if k == 0 { "" } else { "first-boot-" };
            for f in FAILED_VM_LOGS {
                let _ = std::fs::copy(d.join(f), ndir.join(format!("{prefix}{f}")));
            }
            let _ = std::fs::remove_dir_all(d);
        }
        if let Ok(log) = std::fs::read(ndir.join("serial.log")) {
            result.serial_tail = Some(crate::vm::console::tail_lines(&log, 60));
        }
        let step = if p.multi { n.node.name.clone() } else { "boot".to_string() };
        result.record(progress, "boot", &step, StepStatus::Error, boot_started.elapsed(), Some(reason.clone()));
        return (Outcome::Error { reason }, true);
    }
    let mut vms: Vec<Vm> = up.into_iter().flatten().collect();
    for vm in &vms {
        vm.begin_ssh();
    }
    let up_s = boot_started.elapsed().as_secs_f64();
    for (vm, n) in vms.iter().zip(&p.nodes) {
        progress.event(&Event::NodeUp { cell, node: &n.node.name, how: vm.how_started(), at_s: up_s });
    }
    let starts: Vec<String> = vms.iter().zip(&p.nodes).map(|(vm, n)| if p.multi { format!("{}: {}", n.node.name, vm.how_started()) } else { vm.how_started().to_string() }).collect();
    result.start = Some(starts.join("; "));
    tracing::info!(cell = %cell.id(), start = ?result.start, "VMs up");
    let node_dirs: Vec<PathBuf> = p.nodes.iter().map(|n| node_dir(dir, p, n)).collect();
    for d in &node_dirs {
        let _ = std::fs::create_dir_all(d);
    }
    let mut ms: Vec<Machine> = vms
        .iter_mut()
        .zip(&p.nodes)
        .zip(&node_dirs)
        .map(|((vm, n), d)| Machine {
            vm,
            backend: &n.backend,
            transcript: Transcript::default(),
            artifacts: d,
            name: n.node.name.clone(),
            net: n.node.vlans.iter().filter_map(|v| switches.iter().find(|s| s.vlan() == *v)).map(|s| (s, crate::vm::vlan::Nic { vlan: s.vlan(), node: n.node.index })).collect(),
        })
        .collect();
    let outcome = deploy_and_steps(&mut ms, cell, p, opts, result, progress).await.err().unwrap_or(Outcome::Pass);
    progress.event(&Event::Phase { cell, phase: Phase::Shutdown });
    let failed = !matches!(outcome, Outcome::Pass);
    for m in ms.iter_mut() {
        if failed && m.vm.is_running() {
            // What the guest's screen and serial console showed at the failure.
            let shot = m.artifacts.join("screenshot.png");
            match m.vm.screendump(&shot).await {
                Ok(()) if shot.is_file() && m.artifacts == dir => {
                    result.screenshot = Some("screenshot.png".into());
                    result.shown.screenshot_png = std::fs::read(&shot).ok();
                }
                Ok(()) if shot.is_file() && result.screenshot.is_none() => {
                    result.screenshot = shot.strip_prefix(dir).ok().map(|r| r.display().to_string());
                    result.shown.screenshot_png = std::fs::read(&shot).ok();
                }
                Ok(()) => {}
                Err(e) => tracing::warn!(error = %e, "screendump failed"),
            }
        }
        if failed {
            let tail = m.vm.serial_tail(60);
            let _ = std::fs::write(m.artifacts.join("serial-tail.txt"), &tail);
            if result.serial_tail.is_none() {
                result.serial_tail = Some(if p.multi { format!("[{}]\n{tail}", m.name) } else { tail });
            }
        }
        let node_artifacts = m.artifacts;
        collect_guest_logs(m, node_artifacts, failed).await;
        let _ = m.transcript.save(node_artifacts);
    }
    // Every node's commands, each context prefixed with its node in a
    // cell of several: the cell's own commands.json, and the failed ones
    // for the reports.
    let mut all = Transcript::default();
    for m in &ms {
        all.records.extend(m.transcript.records.iter().cloned().map(|mut r| {
            if p.multi {
                r.context = format!("{}: {}", m.name, r.context);
            }
            r
        }));
    }
    if p.multi {
        let _ = all.save(dir);
    }
    result.shown.failed_commands = all.records.into_iter().filter(|r| r.status != Some(0)).collect();
    if failed && opts.keep && ms.iter().all(|m| m.vm.is_running()) && !matches!(outcome, Outcome::Skip { .. }) {
        hold(&mut ms, cell, p, opts, result).await;
    }
    drop(ms);
    for ((vm, n), d) in vms.into_iter().zip(&p.nodes).zip(&node_dirs) {
        // A failed cell's VMs leave their logs with its artifacts (the
        // console below); their run directories go.
        if failed {
            for f in FAILED_VM_LOGS.iter().filter(|f| **f != "serial.log") {
                let _ = std::fs::copy(vm.run_dir().join(f), d.join(f));
            }
        }
        // The console, read once: the node's serial.log, the first node's
        // also the cell's (reports), and the tails the reports show.
        let console = std::fs::read(vm.run_dir().join("serial.log")).ok();
        if let Some(c) = &console {
            let _ = std::fs::write(d.join("serial.log"), c);
            if p.multi && n.node.index == 1 {
                let _ = std::fs::write(dir.join("serial.log"), c);
            }
        }
        let tail = console.as_deref().map(|b| crate::vm::console::tail_lines(b, REPORT_SERIAL_LINES));
        if n.node.index == 1 {
            result.shown.console_tail = tail.clone();
        }
        if p.multi {
            let shot = d.join("screenshot.png");
            result.shown.nodes.push(NodeReport {
                name: n.node.name.clone(),
                id: format!("{}/{}/{}", n.node.os, n.node.manager, n.node.profile),
                image: n.node.image.as_ref().ok().cloned(),
                artifacts_dir: d.display().to_string(),
                serial_tail: tail,
                screenshot_png: std::fs::read(&shot).ok().map(|b| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b)),
            });
        }
        // A VM started again (`start`) keeps its first run's console too.
        let _ = std::fs::copy(vm.run_dir().join("serial-earlier.log"), d.join("serial-earlier.log"));
        // The overlay is thrown away: QEMU goes without waiting for the
        // guest's own power-off (a test that wants one has a `shutdown` step).
        let _ = vm.quit().await;
    }
    drop(switches);
    drop(net);
    (outcome, false)
}

/// What a failed cell keeps of each VM's run directory, with its
/// artifacts: the console, QEMU's stderr, its command line and the launch
/// plan.
const FAILED_VM_LOGS: [&str; 4] = ["serial.log", "qemu.log", "qemu.cmdline", "launch.plan"];

/// How many of a console's last lines a report shows (the cell's and each
/// node's).
pub const REPORT_SERIAL_LINES: usize = 150;

/// `reason`, naming the node when the cell has several.
fn node_says(p: &Prepared, n: &NodePrepared, reason: String) -> String {
    if p.multi {
        format!("node {}: {reason}", n.node.name)
    } else {
        reason
    }
}

/// Where a node's artifacts go: the cell's directory, or `nodes/<name>/`
/// in it when the spec has nodes.
fn node_dir(dir: &Path, p: &Prepared, n: &NodePrepared) -> PathBuf {
    if p.multi {
        dir.join("nodes").join(&n.node.name)
    } else {
        dir.to_path_buf()
    }
}

/// Starts a switch for every vlan a node names, in a run directory of the
/// cell's, and lists every node's name at its first vlan's addresses (node
/// *i* on vlan *v* is 192.168.*v*.*i*, 2001:db8:*v*::*i*), as the NixOS
/// driver's /etc/hosts has them. Nothing for a cell of one.
#[allow(clippy::type_complexity)]
fn start_vlans(cell: &Cell, p: &Prepared) -> Result<(Option<crate::vm::rundir::RunDir>, Vec<crate::vm::vlan::Switch>, Vec<(std::net::IpAddr, String)>), String> {
    use crate::vm::vlan::{Nic, Switch};
    let vlans: std::collections::BTreeSet<u32> = p.nodes.iter().flat_map(|n| n.node.vlans.iter().copied()).collect();
    if vlans.is_empty() {
        return Ok((None, Vec::new(), Vec::new()));
    }
    let run = crate::vm::rundir::RunDir::create(&format!("net-{}", cell.dir_name())).map_err(|e| format!("vlans: run directory: {e}"))?;
    let mut switches = Vec::new();
    for v in vlans {
        switches.push(Switch::start(v, run.path()).map_err(|e| e.to_string())?);
    }
    let mut hosts = Vec::new();
    for n in &p.nodes {
        if let Some(v) = n.node.vlans.first() {
            let nic = Nic { vlan: *v, node: n.node.index };
            hosts.push((std::net::IpAddr::V4(nic.addr()), n.node.name.clone()));
            hosts.push((std::net::IpAddr::V6(nic.addr6()), n.node.name.clone()));
        }
    }
    Ok((Some(run), switches, hosts))
}

/// Deploys every node that runs instances (in the spec's order), then
/// runs the steps, each on its node, recording every step (and the ones not
/// reached) in `result`.
async fn deploy_and_steps(ms: &mut [Machine<'_>], cell: &Cell, p: &Prepared, opts: &RunOptions, result: &mut CellResult, progress: &dyn Reporter) -> Result<(), Outcome> {
    progress.event(&Event::Phase { cell, phase: Phase::Deploy });
    let mut failure = None;
    for (m, n) in ms.iter_mut().zip(&p.nodes) {
        let Some(plan) = &n.deploy else { continue };
        let tar = deploy::tar(&plan.files).map_err(|e| Outcome::Error { reason: node_says(p, n, format!("packing the deployment: {e}")) })?;
        let mut commands: Vec<(&str, &str, &[u8])> = plan.prepare.iter().map(|c| (c.phase, c.command.as_str(), &[][..])).collect();
        commands.push(("files", "tar -x --no-overwrite-dir -C /", &tar));
        commands.extend(plan.run.iter().map(|c| (c.phase, c.command.as_str(), &[][..])));
        for (phase, cmd, stdin) in commands {
            // Deploy steps are named by phase and what the command does
            // (and by node, in a cell of several).
            let first = cmd.lines().next().unwrap_or_default();
            let what: String = first.chars().take(72).collect();
            let ellipsis = if what.len() < cmd.len() { "…" } else { "" };
            let label = if p.multi { format!("{}: {phase}: {what}{ellipsis}", n.node.name) } else { format!("{phase}: {what}{ellipsis}") };
            if failure.is_some() {
                result.record(progress, "deploy", &label, StepStatus::NotRun, Duration::ZERO, None);
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
                Err(e) => (StepStatus::Error, Some(Outcome::Error { reason: node_says(p, n, chain_error(&e)) })),
            };
            let message = outcome.as_ref().map(outcome_reason);
            result.record(progress, "deploy", &label, status, t.elapsed(), message);
            failure = outcome;
        }
    }
    if opts.interactive && failure.is_none() {
        // The NixOS driver's interactive mode: the nodes at a prompt, the
        // script at hand as test_script().
        let script = cell_script(p);
        python::session(ms, &script, opts, Duration::from_secs(120), result, python::Mode::Prompt, progress).await?;
        return Err(Outcome::Skip { reason: INTERACTIVE.into() });
    }
    let mut phase = Phase::Deploy;
    for s in &p.steps {
        if failure.is_some() {
            result.record(progress, &s.group, &s.name, StepStatus::NotRun, Duration::ZERO, None);
            continue;
        }
        let ph = Phase::of_group(&s.group);
        if ph != phase {
            progress.event(&Event::Phase { cell, phase: ph });
            phase = ph;
        }
        if let crate::spec::Action::Python(script) = &s.action {
            // Its calls are the steps: the script's own step is replaced.
            result.steps_total -= 1;
            if let Err(o) = python::run(ms, script, opts, s.timeout, result, progress).await {
                failure = Some(o);
            }
            continue;
        }
        // A step names its node (checked against the spec's nodes).
        let i = s.node.as_ref().and_then(|n| ms.iter().position(|m| m.name == *n)).unwrap_or(0);
        let name = if p.multi { format!("{}: {}", ms[i].name, s.name) } else { s.name.clone() };
        let m = &mut ms[i];
        let t = Instant::now();
        let (timeout, cut) = opts.clamp(s.timeout);
        match m.step(&s.group, &s.action, timeout).await {
            Ok(()) => {
                result.steps_passed += 1;
                result.record(progress, &s.group, &name, StepStatus::Pass, t.elapsed(), None);
            }
            Err(StepError::Failed(reason)) => {
                let reason = if cut { format!("{DEADLINE} during this step; {reason}") } else { reason };
                result.record(progress, &s.group, &name, StepStatus::Fail, t.elapsed(), Some(reason.clone()));
                failure = Some(Outcome::Fail { group: s.group.clone(), step: name, reason });
            }
            Err(StepError::Infra(e)) => {
                let reason = chain_error(&e);
                result.record(progress, &s.group, &name, StepStatus::Error, t.elapsed(), Some(reason.clone()));
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
async fn hold(ms: &mut [Machine<'_>], cell: &Cell, p: &Prepared, opts: &RunOptions, result: &mut CellResult) {
    use std::io::IsTerminal;
    use std::sync::atomic::Ordering;
    static TERMINAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _terminal = TERMINAL.lock().await;
    crate::terminal::HANDLES_SIGNALS.store(true, Ordering::SeqCst);
    let tty = std::io::stdin().is_terminal();
    let what = if ms.len() == 1 { "its VM is" } else { "its VMs are" };
    let mut text = format!("\nxdriver: {} failed; {what} kept running (--keep). Reach ", cell.id());
    text.push_str(if ms.len() == 1 { "it with:\n" } else { "them with:\n" });
    for m in ms.iter() {
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
        if p.multi {
            text.push_str(&format!("  {} (QEMU pid {}):\n", m.name, m.vm.pid()));
        } else {
            text = text.replace("(--keep). Reach", &format!("(--keep), QEMU pid {}. Reach", m.vm.pid()));
        }
        if key_ok && m.vm.ssh_port != 0 {
            text.push_str(&format!(
                "  ssh -i {} -p {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1\n",
                keyfile.display(),
                m.vm.ssh_port
            ));
        }
        text.push_str(&format!("  serial log: {}/serial.log; results: {}\n", rd.display(), m.artifacts.display()));
    }
    let names: Vec<String> = ms.iter().map(|m| format!("`{}`", m.name)).collect();
    if tty {
        text.push_str(&format!("  Python: the prompt below has {}; Ctrl-D ends it and stops the VM.\n", names.join(", ")));
    } else {
        text.push_str(&format!("  Python: run it from a terminal for a prompt with {}.\nCtrl-C (or SIGTERM to {}) stops it.\n", names.join(", "), std::process::id()));
    }
    let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
    if tty {
        let script = cell_script(p);
        // Calls made at the prompt are recorded, but the cell stays failed.
        let mut scratch = result.clone();
        let _ = python::session(ms, &script, opts, Duration::from_secs(120), &mut scratch, python::Mode::Prompt, &super::event::Quiet).await;
    } else {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut ex = ms[0].vm.qmp.subscribe();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
            _ = async { while let Ok(ev) = ex.recv().await { if ev["event"] == "SHUTDOWN" { break; } } } => {},
        }
    }
    eprintln!("xdriver: {}: letting the kept VM go", cell.id());
    crate::terminal::HANDLES_SIGNALS.store(false, Ordering::SeqCst);
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_node_with_its_own_guest_table_takes_it_whole_and_the_others_the_specs() {
        use xdriver_guests::ProfileKind;
        let text = "name = \"n\"\n[guest]\npackages = [\"redis-server\"]\nmemory_mib = 768\n\
                    [nodes.server]\n[nodes.client]\nos = \"debian-13\"\n[nodes.client.guest]\npackages = [\"wget\"]\ncpus = 1\n\
                    [instances.web]\nprocess.foreground = [\"/bin/web\"]\n";
        let s = crate::spec::Spec::parse(std::path::Path::new("t.toml"), text).unwrap_or_else(|e| panic!("{e}"));
        let cell = crate::spec::Cell { os: xdriver_guests::Os::DEBIAN_12, manager: xdriver_guests::Manager::SYSTEMD, profile: ProfileKind::Privileged, image: Ok("debian-12-systemd".into()) };
        let p = super::prepare(&s, &cell, &Default::default()).expect("prepares");
        let (server, client) = (&p.nodes[0], &p.nodes[1]);
        assert_eq!(server.additions.as_ref().map(|a| a.packages.clone()), Some(vec!["redis-server".to_string()]));
        assert_eq!(client.additions.as_ref().map(|a| a.packages.clone()), Some(vec!["wget".to_string()]));
        assert_eq!((server.mem_mib, server.cpus), (768, crate::vm::DEFAULT_CPUS));
        // The client's own [guest] sets no RAM: the spec's [guest] still does.
        assert_eq!((client.mem_mib, client.cpus), (768, 1));
    }
}
