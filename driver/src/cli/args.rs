//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::vm::accel::AccelChoice;
use crate::vm::Channel;

/// xdriver: boot QEMU guests of several OSes and init systems and run
/// things in them, under TCG or proven KVM.
#[derive(Debug, Parser)]
#[command(name = "xdriver", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const EXIT_CODES: &str = "Exit codes: 0 success; `run` passes on the command's own status; \
2 usage error; 100 tests failed; 125 infrastructure failure (image build, QEMU, guest boot, channel); \
130 interrupted. Logs: XDRIVER_LOG=debug. Cache: XDRIVER_CACHE_DIR (default ~/.cache/xdriver).";

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build, import, export, list and remove guest images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Boot a fresh VM, run a command (or a shell) as root, shut down.
    Run(RunArgs),
    /// Check the host: tools, KVM (by a boot probe), cache.
    Doctor(DoctorArgs),
    /// Run a spec's cells, several at once: boot, deploy, readiness, tests;
    /// a line per cell, the matrix as a table, reports on request.
    Test(TestArgs),
    /// Show what a cell would do (rendered configs, deploy commands,
    /// steps) without booting anything.
    Plan(PlanArgs),
    /// List the cells a spec would run (with skip reasons), for people,
    /// tools (--json) or a GitHub Actions matrix (--github-matrix).
    List(ListArgs),
    /// Work with run reports.
    #[command(subcommand)]
    Report(ReportCommand),
}

/// Which cells of a spec (each flag takes several values, repeated or
/// comma-separated; default: the spec's `[matrix]`).
#[derive(Debug, Args, Clone)]
pub struct CellArgs {
    /// The spec: a TOML file or a directory holding xdriver.toml; or a Nix
    /// file (`.nix`, or a directory holding default.nix) built with
    /// xdriver's testService (docs/nix.md).
    pub spec: PathBuf,
    /// Read the spec as Nix whatever its name.
    #[arg(long)]
    pub nix: bool,
    /// Nix specs: the attribute to evaluate, e.g.
    /// nginx-reverse-proxy-hostbased.privileged.sysvinit (default: all).
    #[arg(long = "attr", short = 'A', value_name = "ATTR")]
    pub attr: Option<String>,
    /// Nix specs: pass NAME = EXPR to the file's function (nix-instantiate --arg).
    #[arg(long = "arg", num_args = 2, value_names = ["NAME", "EXPR"], action = clap::ArgAction::Append)]
    pub nix_args: Vec<String>,
    /// Nix specs: pass NAME = "VALUE" to the file's function (nix-instantiate --argstr).
    #[arg(long = "argstr", num_args = 2, value_names = ["NAME", "VALUE"], action = clap::ArgAction::Append)]
    pub nix_argstrs: Vec<String>,
    #[arg(long = "os", value_delimiter = ',', help = os_help())]
    pub os: Vec<xdriver_guests::Os>,
    #[arg(long = "manager", value_delimiter = ',', help = manager_help())]
    pub managers: Vec<xdriver_guests::Manager>,
    /// Profiles: privileged, unprivileged.
    #[arg(long = "profile", value_delimiter = ',')]
    pub profiles: Vec<xdriver_guests::ProfileKind>,
    /// Override a spec parameter: KEY=VALUE (VALUE is read as JSON when it
    /// parses, else as a string). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Boot the imported image IMAGE for an imported OS's cells instead of
    /// the image named like the OS, e.g. debian-12-cloud=debian-12-cloud-uefi.
    /// Repeatable.
    #[arg(long = "image", value_name = "OS=IMAGE")]
    pub images: Vec<String>,
}

/// `xdriver test`
#[derive(Debug, Args)]
pub struct TestArgs {
    /// The spec and cells.
    #[command(flatten)]
    pub cells: CellArgs,
    /// Where each cell's artifacts go (<dir>/<spec name>/<os>-<manager>-<profile>/).
    #[arg(long, default_value = "xdriver-results")]
    pub results_dir: PathBuf,
    /// Cells run at once (default: the VMs the host's CPUs and free memory
    /// allow, divided by the VMs of the spec's largest cell; see `xdriver
    /// list`).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// Start no new cell after the first failure (running cells finish).
    #[arg(long)]
    pub fail_fast: bool,
    /// Run no test: only make what the selected cells need before they
    /// can start (images built, derived or prepared, and each image's RAM
    /// snapshot saved), once per image, so that a CI job can do it once
    /// and cache the image directory for the matrix jobs.
    #[arg(long, conflicts_with_all = ["interactive", "keep"])]
    pub prepare_only: bool,
    /// Boot a cell's VM again this many times if it fails to come up
    /// (infrastructure only; a failing test is never retried).
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// Deadline for the whole run, e.g. 40m or 900 (seconds); cells still
    /// running fail with what they were waiting for.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Write report.json, junit.xml and report.html here.
    #[arg(long)]
    pub report_dir: Option<PathBuf>,
    /// Run only shard I of N (a deterministic partition of the cells).
    #[arg(long, value_parser = parse_shard, value_name = "I/N")]
    pub shard: Option<Shard>,
    /// Plain log lines instead of progress bars even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// Bring the one selected cell's VMs up, deploy, and open a Python
    /// prompt with `machine` (and every node of a cell of several) ready instead of running the tests
    /// (`test_script()` runs a Python test script); Ctrl-D stops the VM.
    #[arg(long, conflicts_with_all = ["shard", "keep", "jobs"])]
    pub interactive: bool,
    /// Leave a failed cell's VM running and print how to reach it (SSH;
    /// a Python prompt with `machine` when stdin is a terminal) until
    /// Ctrl-C or Ctrl-D; other cells go on meanwhile.
    #[arg(long)]
    pub keep: bool,
    /// Accelerator and VM size.
    #[command(flatten)]
    pub vm: VmArgs,
}

/// `--shard I/N`: shard I (1-based) of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 1..=n.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Parses `I/N` with 1 <= I <= N.
pub fn parse_shard(s: &str) -> Result<Shard, String> {
    let (i, n) = s.split_once('/').ok_or_else(|| format!("`{s}`: expected I/N, e.g. 1/4"))?;
    let index: usize = i.trim().parse().map_err(|_| format!("`{s}`: shard index `{i}` is not a number"))?;
    let count: usize = n.trim().parse().map_err(|_| format!("`{s}`: shard count `{n}` is not a number"))?;
    if count == 0 || index == 0 || index > count {
        return Err(format!("`{s}`: need 1 <= I <= N"));
    }
    Ok(Shard { index, count })
}

/// Parses `90`, `90s`, `15m`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    if let Ok(secs) = s.trim().parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 900, 15m, 1h30m)"))
}

/// `xdriver list`
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The spec and cells.
    #[command(flatten)]
    pub cells: CellArgs,
    /// Only the cells of shard I of N.
    #[arg(long, value_parser = parse_shard, value_name = "I/N")]
    pub shard: Option<Shard>,
    /// JSON for tools.
    #[arg(long, conflicts_with = "github_matrix")]
    pub json: bool,
    /// A GitHub Actions matrix (`{"include": [...]}`) of the runnable cells.
    #[arg(long)]
    pub github_matrix: bool,
}

/// `xdriver report …`
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Merge shards' report.json files into one report (json, junit, html).
    Merge {
        /// The report.json files (or directories holding one).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Where the merged report goes.
        #[arg(long)]
        report_dir: PathBuf,
    },
    /// Write the OS × manager × profile support matrix (Markdown) from
    /// report.json files: what passed, failed or was skipped (and why) in
    /// each cell, and the registered OSes none of them ran that are
    /// unverified, with the reason.
    SupportMatrix {
        /// The report.json files (or directories holding one).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// `xdriver plan`
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The spec and cells.
    #[command(flatten)]
    pub cells: CellArgs,
    /// As JSON (one object per cell).
    #[arg(long)]
    pub json: bool,
}

/// `xdriver image …`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build a recipe's init variants (cached; a no-op when already built).
    Build {
        /// Recipe, e.g. debian-12 (or a full image name, e.g. debian-12-runit).
        recipe: String,
        /// Init variants to build (repeat or comma-separate; default: all).
        #[arg(long = "init", value_delimiter = ',')]
        inits: Vec<xdriver_guests::Init>,
        /// Print the manifest(s) as JSON when done.
        #[arg(long)]
        json: bool,
    },
    /// List the images in the cache (built and imported).
    List {
        /// As JSON (the manifests, with dir and current).
        #[arg(long)]
        json: bool,
    },
    /// Remove every entry of an image.
    Rm {
        /// Image name, e.g. debian-12-systemd.
        name: String,
    },
    /// Remove stale entries, interrupted builds and imports, unused kernels and stale prepared disks.
    Gc,
    /// Import a vendor's disk image (qcow2 or raw; plain, .xz, .zst or
    /// .gz) as NAME for an OS, or an image `xdriver image export` wrote
    /// (one tar argument). A no-op when the same thing is already there.
    Import {
        /// Image name (the OS's name makes it the image of that OS's
        /// cells, e.g. freebsd), or the exported tar.
        name: String,
        /// The disk image file.
        file: Option<std::path::PathBuf>,
        /// The guest OS of the image.
        #[arg(long, help = imported_os_help())]
        os: Option<xdriver_guests::Os>,
        /// The firmware its boot loader needs (default: the OS's).
        #[arg(long)]
        firmware: Option<xdriver_guests::Firmware>,
        /// The file's expected SHA-256 (hex); a mismatch refuses it.
        #[arg(long)]
        sha256: Option<String>,
        /// Print the manifest as JSON when done.
        #[arg(long)]
        json: bool,
    },
    /// Write an image (built or imported) to a tar that `xdriver image
    /// import FILE.tar` reads on another machine (e.g. a CI cache).
    Export {
        /// Image name.
        name: String,
        /// The tar file to write.
        #[arg(short = 'o', long = "output")]
        output: std::path::PathBuf,
    },
}

/// `--os` help, from the OS registry.
fn os_help() -> String {
    let names: Vec<String> = xdriver_guests::Os::all()
        .map(|o| if o.unverified().is_some() { format!("{} (unverified)", o.name()) } else { o.name().to_string() })
        .collect();
    format!("Guest OSes: {}", names.join(", "))
}

/// `--manager` help, from the manager registry.
fn manager_help() -> String {
    format!("Process managers: {}", xdriver_guests::Manager::names().join(", "))
}

/// `image import --os` help, from the OS registry.
fn imported_os_help() -> String {
    let names: Vec<&str> =
        xdriver_guests::Os::all().filter(|o| matches!(o.images(), xdriver_guests::Images::Imported { .. })).map(|o| o.name()).collect();
    format!("The image's OS: {}", names.join(", "))
}

/// `xdriver run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Image to boot: a built one, e.g. debian-12-systemd (built first if missing), an imported one (prepared first if needed), or a derived one, `<base>+<tag>`, that `xdriver test` built from a spec's [guest] table.
    #[arg(long, default_value = "debian-12-systemd")]
    pub image: String,
    /// Channel that runs the command.
    #[arg(long, value_enum, default_value = "ssh")]
    pub channel: Channel,
    /// Share a host directory into the guest over 9p: HOST:GUEST[:ro|:rw]
    /// (read-only by default). Repeatable.
    #[arg(long = "share", value_name = "HOST:GUEST")]
    pub shares: Vec<String>,
    /// Leave the VM running and print how to reach it.
    #[arg(long)]
    pub keep: bool,
    /// Accelerator and VM size.
    #[command(flatten)]
    pub vm: VmArgs,
    /// Seconds the guest may take to come up.
    #[arg(long, default_value_t = 180)]
    pub boot_timeout: u64,
    /// Seconds the command may run (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
    /// Extra kernel command-line words.
    #[arg(long = "append", value_name = "WORD")]
    pub append: Vec<String>,
    /// Keep the run directory (serial log, QEMU log, overlay) even on success.
    #[arg(long)]
    pub keep_logs: bool,
    /// Command to run (through root's shell). Without it: an interactive shell.
    #[arg(last = true)]
    pub command: Vec<String>,
}

pub use crate::vm::{DEFAULT_CPUS, DEFAULT_MEM_MIB};

/// Accelerator and size of each VM.
#[derive(Debug, Args, Clone)]
pub struct VmArgs {
    /// Accelerator: auto proves KVM with a boot probe, else uses TCG.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelChoice,
    /// vCPUs per VM [default: the spec's [guest] cpus, else 2]
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Guest RAM in MiB per VM [default: the spec's [guest] memory_mib, else 1024]
    #[arg(long)]
    pub mem_mib: Option<u32>,
    /// Host store shared read-only into every guest at the same path, with
    /// a writable tmpfs overlay on top [default: /nix/store when it exists]
    #[arg(long, value_name = "DIR", conflicts_with = "no_store")]
    pub store: Option<PathBuf>,
    /// Share no store, not even /nix/store.
    #[arg(long)]
    pub no_store: bool,
    /// How the store reaches the guest: auto picks virtiofs when a virtiofsd
    /// is installed and the guest has virtio-fs, else 9p.
    #[arg(long, value_enum, default_value = "auto")]
    pub share_fs: crate::vm::nix_store::ShareFsChoice,
    /// Boot every VM cold instead of restoring the RAM snapshot of its
    /// image (the first boot of an image saves one; see docs/cli.md).
    #[arg(long)]
    pub cold: bool,
}

/// `xdriver doctor`
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Skip the KVM boot probe.
    #[arg(long)]
    pub no_probe: bool,
    /// Where to look for the cache (default: the usual store).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}
