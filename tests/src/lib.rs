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
    let out = std::process::Command::new(xdriver_bin())
        .args(args)
        .env("XDRIVER_WEBAPP_DIR", webapp_dir())
        .current_dir(dir)
        .output()
        .expect("xdriver runs");
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!("$ xdriver {}\n{}\n{}", args.join(" "), r.stdout, r.stderr);
    r
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
