//! Helpers shared by xdriver's integration tests and benchmarks: images
//! from the store (built on first use, once, under the store's lock) and
//! VMs booted from them under TCG.

use std::path::PathBuf;
use std::time::Duration;

use xdriver::vm::qemu::{Accel, Share};
use xdriver::vm::{Vm, VmConfig};
use xdriver_guests::Init;
use xdriver_images::{Entry, ImageName, ImageCache};

/// The image cache tests use: `$XDRIVER_CACHE_DIR` or the user's default.
pub fn image_cache() -> ImageCache {
    ImageCache::open_default().expect("a cache directory")
}

/// The debian-12 image for `init`, built if missing.
pub fn image(init: Init) -> Entry {
    recipe_image("debian-12", init)
}

/// The `recipe` image for `init` (e.g. debian-12-nix), built if missing.
pub fn recipe_image(recipe: &str, init: Init) -> Entry {
    let name: ImageName = format!("{recipe}-{init}").parse().expect("valid image name");
    image_cache().ensure(&name, false).unwrap_or_else(|e| panic!("building {name}: {}", xdriver::cli::chain_error(&e)))
}

/// A VM configuration for tests: TCG, 2 vCPUs, 1 GiB.
pub fn config(init: Init, label: &str) -> VmConfig {
    let mut cfg = VmConfig::new(&format!("t-{label}-{init}"), image(init));
    cfg.accel = Accel::Tcg;
    cfg.boot_timeout = Duration::from_secs(150);
    cfg
}

/// Boots a VM of `init` with `shares`, panicking with the error's text
/// (serial tail included) if it does not come up.
pub async fn boot(init: Init, label: &str, shares: Vec<Share>) -> Vm {
    let mut cfg = config(init, label);
    cfg.shares = shares;
    start(cfg).await
}

/// Boots a VM of `cfg`, panicking with the error's text (serial tail
/// included) if it does not come up.
pub async fn start(cfg: VmConfig) -> Vm {
    let init = cfg.image.manifest.init;
    Vm::start(cfg).await.unwrap_or_else(|e| panic!("{init} VM did not start: {}", xdriver::cli::chain_error(&e)))
}

/// An example spec directory under tests/examples/.
pub fn example(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name)
}

/// A test's working directory: removed when the test passes, kept when it
/// panics (its path and the guest logs of every failed cell are printed),
/// so a CI failure leaves what is needed to understand it.
pub struct Work(Option<tempfile::TempDir>);

/// A fresh working directory for one test.
pub fn workdir() -> Work {
    Work(Some(tempfile::Builder::new().prefix("xdriver-test-").tempdir().expect("tempdir")))
}

impl Work {
    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        self.0.as_ref().expect("work dir").path()
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Some(dir) = self.0.take() else { return };
        let path = dir.keep();
        eprintln!("xdriver-tests: the failed test's work dir is kept: {}", path.display());
        print_failed_cells_logs(&path);
    }
}

/// Every file under `dir`, at any depth (none if it cannot be read).
pub fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files
}

/// Prints the tail of every guest log of every cell whose result is not a
/// pass or a skip, under `dir`'s results directories.
fn print_failed_cells_logs(dir: &std::path::Path) {
    let results = files_under(dir).into_iter().filter(|p| p.file_name().is_some_and(|n| n == "result.json"));
    for r in results {
        let Ok(text) = std::fs::read_to_string(&r) else { continue };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        let status = v["outcome"]["status"].as_str().unwrap_or("");
        if matches!(status, "pass" | "skip") {
            continue;
        }
        let mut logs = files_under(&r.parent().expect("cell dir").join("guest-logs"));
        logs.sort();
        for l in logs.iter().take(24) {
            let text = String::from_utf8_lossy(&std::fs::read(l).unwrap_or_default()).into_owned();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            eprintln!("--- {} (last {} lines)\n{}", l.display(), tail.len(), tail.join("\n"));
        }
    }
}

/// What a run of the `xdriver` binary gave.
pub struct Run {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `xdriver ARGS…` in `dir`, with the example webapp's directory in
/// `XDRIVER_WEBAPP_DIR`, and echoes what it printed into the test's output.
pub fn run_xdriver(args: &[&str], dir: &std::path::Path) -> Run {
    let out = xdriver_command(args, dir).output().expect("xdriver runs");
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    // Progress (stderr) first, results (stdout) last.
    eprintln!("$ xdriver {}\n{}\n{}", args.join(" "), r.stderr, r.stdout);
    r
}

/// `xdriver ARGS…` to run in `dir`, with the example webapp's directory in
/// `XDRIVER_WEBAPP_DIR` (for tests that drive its stdio themselves).
pub fn xdriver_command(args: &[&str], dir: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new(xdriver_bin());
    c.args(args).env("XDRIVER_WEBAPP_DIR", webapp_dir()).current_dir(dir);
    c
}

/// The directory holding the built xdriver-webapp (next to `xdriver`).
pub fn webapp_dir() -> PathBuf {
    xdriver_bin().parent().expect("bin dir").to_path_buf()
}

/// The built `xdriver` binary.
pub fn xdriver_bin() -> PathBuf {
    let mut p = std::env::current_exe().expect("test binary path");
    p.pop();
    if p.ends_with("deps") {
        p.pop();
    }
    p.join("xdriver")
}

/// Lower-case hex SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// A test's own parent of run directories (`XDRIVER_RUN_DIR`; nextest
/// runs each test in a process of its own), to check that a run leaves
/// nothing behind: no process names it (QEMU, virtiofsd and vde_switch
/// are all started with files or sockets in their run directory) and no
/// run directory is left in it.
pub struct Runs(PathBuf);

impl Runs {
    /// `dir`, made and set as `XDRIVER_RUN_DIR` for this process and the
    /// xdriver commands it starts.
    pub fn under(dir: &std::path::Path) -> Runs {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::env::set_var("XDRIVER_RUN_DIR", dir);
        Runs(dir.to_path_buf())
    }

    /// Panics if a process or a run directory of the run is left.
    pub fn assert_nothing_left(&self) {
        let left = pids_mentioning(self.0.to_str().expect("utf-8"));
        assert!(left.is_empty(), "processes of the run left: {left:?}");
        let dirs: Vec<_> = std::fs::read_dir(&self.0).expect("the run directories' parent").flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
        assert!(dirs.is_empty(), "run directories left: {dirs:?}");
    }
}

/// Pids of processes whose command line mentions `needle`.
pub fn pids_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) && alive(pid) {
                out.push(pid);
            }
        }
    }
    out
}
