//! Choosing the accelerator. `/dev/kvm` existing proves nothing (on some
//! hosts KVM guests hang or abort), so `auto` and `kvm` run a real boot
//! probe first: a 103-byte multiboot kernel that writes a marker to the
//! debug console port. KVM is used only if the marker arrives in time.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::vm::qemu::Accel;

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM if a boot probe proves it works, else TCG.
    Auto,
    /// KVM; fail if the probe does not pass.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// The accelerator chosen, and why.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The accelerator.
    pub accel: Accel,
    /// A sentence saying why.
    pub reason: String,
}

/// `--accel kvm` could not be honoured.
#[derive(Debug, thiserror::Error)]
#[error("--accel kvm: KVM does not work on this host: {0}")]
pub struct KvmUnusable(pub String);

const MARKER: &[u8] = b"XDRIVER-KVM-PROBE-OK";

/// The probe kernel: a multiboot header with the a.out kludge (load at
/// 1 MiB, entry right after the header) and code that writes [`MARKER`] to
/// port 0x402, then halts.
pub fn probe_kernel() -> Vec<u8> {
    const MAGIC: u32 = 0x1BAD_B002;
    const FLAGS: u32 = 0x0001_0000;
    const BASE: u32 = 0x0010_0000;
    let mut k = Vec::new();
    for v in [MAGIC, FLAGS, MAGIC.wrapping_add(FLAGS).wrapping_neg(), BASE, BASE, 0, 0, BASE + 32] {
        k.extend_from_slice(&v.to_le_bytes());
    }
    k.extend_from_slice(&[0x66, 0xba, 0x02, 0x04]); // mov dx, 0x402
    for b in MARKER.iter().chain(b"\n") {
        k.extend_from_slice(&[0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
    k.extend_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]); // cli; hlt; jmp $-1
    k
}

/// Boots the probe kernel with `accel`; Ok(elapsed) if the marker arrived
/// within `deadline`, Err(what happened) otherwise. QEMU is killed either way.
pub async fn probe(qemu: &str, accel: Accel, deadline: Duration) -> Result<Duration, String> {
    let dir = crate::vm::rundir::RunDir::create("accel-probe").map_err(|e| e.to_string())?;
    let kernel = dir.join("probe.bin");
    let out = dir.join("debugcon.log");
    std::fs::write(&kernel, probe_kernel()).map_err(|e| e.to_string())?;
    let cpu = match accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    };
    let started = Instant::now();
    let mut child = tokio::process::Command::new(qemu)
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-machine", "pc", "-m", "32", "-no-reboot"])
        .args(["-accel", accel.name(), "-cpu", cpu, "-kernel"])
        .arg(&kernel)
        .arg("-chardev")
        .arg(format!("file,id=dbg,path={}", out.display()))
        .args(["-device", "isa-debugcon,iobase=0x402,chardev=dbg"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {qemu}: {e}"))?;
    let found = |p: &Path| std::fs::read(p).map(|d| d.windows(MARKER.len()).any(|w| w == MARKER)).unwrap_or(false);
    let mut delay = Duration::from_millis(10);
    let result = loop {
        if found(&out) {
            break Ok(started.elapsed());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = e.read_to_string(&mut err).await;
            }
            let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
            break Err(format!("the probe VM exited ({status}) before booting: {last}"));
        }
        if started.elapsed() > deadline {
            break Err(format!("the probe VM did not boot within {deadline:?} (the guest hangs)"));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    result
}

fn kvm_device_problem() -> Option<String> {
    let dev = Path::new("/dev/kvm");
    if !dev.exists() {
        return Some("/dev/kvm does not exist".into());
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        return Some(format!("/dev/kvm cannot be opened: {e}"));
    }
    None
}

/// Where the verdict for this host boot and QEMU binary is cached.
fn cache_file(cache_dir: &Path, qemu: &str) -> Option<PathBuf> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let bin = which(qemu)?;
    let mtime = std::fs::metadata(&bin).ok()?.modified().ok()?;
    let secs = mtime.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(cache_dir.join(format!("kvm-probe-{}-{secs}", boot_id.trim())))
}

/// Finds a program on PATH.
pub fn which(prog: &str) -> Option<PathBuf> {
    if prog.contains('/') {
        return Some(PathBuf::from(prog));
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(prog)).find(|p| p.is_file())
}

/// How long a working KVM may take to run the probe (SeaBIOS + 1 write;
/// about 0.1 s with working KVM, 0.5 s under TCG).
pub const PROBE_DEADLINE: Duration = Duration::from_secs(3);

/// Decides the accelerator for `choice`. The probe verdict is cached per
/// host boot and QEMU binary under `cache_dir`.
pub async fn decide(choice: AccelChoice, qemu: &str, cache_dir: &Path) -> Result<Decision, KvmUnusable> {
    if choice == AccelChoice::Tcg {
        return Ok(Decision { accel: Accel::Tcg, reason: "--accel tcg".into() });
    }
    let verdict = match kvm_device_problem() {
        Some(p) => Err(p),
        None => {
            let cache = cache_file(cache_dir, qemu);
            match cache.as_ref().and_then(|c| std::fs::read_to_string(c).ok()) {
                Some(v) if v.starts_with("ok") => Ok(format!("{} (cached probe)", v.trim())),
                Some(v) => Err(format!("{} (cached probe)", v.trim_start_matches("fail ").trim())),
                None => {
                    let r = probe(qemu, Accel::Kvm, PROBE_DEADLINE).await;
                    let line = match &r {
                        Ok(t) => format!("ok: the KVM boot probe passed in {:.2} s", t.as_secs_f64()),
                        Err(e) => format!("fail {e}"),
                    };
                    if let Some(c) = &cache {
                        let _ = std::fs::create_dir_all(cache_dir);
                        let _ = std::fs::write(c, &line);
                    }
                    r.map(|_| line).map_err(|e| e.to_string())
                }
            }
        }
    };
    match (choice, verdict) {
        (_, Ok(why)) => Ok(Decision { accel: Accel::Kvm, reason: why.trim_start_matches("ok: ").to_string() }),
        (AccelChoice::Kvm, Err(why)) => Err(KvmUnusable(why)),
        (_, Err(why)) => Ok(Decision { accel: Accel::Tcg, reason: format!("KVM unusable ({why}); using TCG") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_kernel_has_a_valid_multiboot_header() {
        let k = probe_kernel();
        let word = |i: usize| u32::from_le_bytes(k[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        assert_eq!(word(0), 0x1BAD_B002);
        assert_eq!(word(0).wrapping_add(word(1)).wrapping_add(word(2)), 0);
        assert_eq!(word(7), 0x0010_0000 + 32, "entry follows the 32-byte header");
        assert!(k.len() < 8192, "header must sit in the first 8 KiB");
    }
}
