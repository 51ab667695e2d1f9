//! The guest kernel: fetched as a Debian package of the recipe's release
//! (the host's apt pointed at the recipe's mirrors), unpacked, turned into
//! an uncompressed PVH-bootable `vmlinux` (about 2 s faster per boot under
//! TCG than the bzImage), and paired with our initramfs. Shared by every
//! image built from the same kernel package.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::apt::{AptError, PrivateApt};
use crate::manifest::{KernelFormat, KernelInfo};

/// Failures while preparing the kernel and initramfs.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A host tool failed.
    #[error("`{command}` failed: {detail}")]
    Tool {
        /// What ran.
        command: String,
        /// Its stderr, or why it could not start.
        detail: String,
    },
    /// The unpacked package does not look like a kernel package.
    #[error("kernel package {package}: {what}")]
    Package {
        /// The package.
        package: String,
        /// What is missing.
        what: String,
    },
    /// A module the recipe asks for is not in the kernel package.
    #[error("kernel module `{0}` is not in the kernel package (neither built in nor a .ko)")]
    MissingModule(String),
    /// The recipe's apt sources could not give a package.
    #[error(transparent)]
    Apt(Box<AptError>),
    /// File I/O.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl From<AptError> for KernelError {
    fn from(e: AptError) -> KernelError {
        KernelError::Apt(Box::new(e))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io { path: path.into(), source }
}

/// Runs a host command and returns its stdout.
pub(crate) fn run(cmd: &mut Command) -> Result<Vec<u8>, KernelError> {
    let command = format!("{cmd:?}").replace('"', "");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| KernelError::Tool { command: command.clone(), detail: e.to_string() })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(KernelError::Tool { command, detail: format!("{}\n{}", out.status, tail.join("\n")) });
    }
    Ok(out.stdout)
}

/// Downloads `package` (a meta package is resolved first) with `apt` into
/// `dir`, unpacks it into `dir/root` and returns (versioned package,
/// package version). A kernel split over several packages (Debian 14's
/// linux-image-X depends on linux-binary-X, the kernel, linux-modules-X
/// and linux-base-X, the module lists) is unpacked whole.
pub(crate) fn fetch_and_unpack(apt: &PrivateApt, package: &str, dir: &Path) -> Result<(String, String), KernelError> {
    let pkg = apt.resolve_meta(package)?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let parts: Vec<String> = apt.depends(&pkg)?.into_iter().filter(|d| ["linux-binary-", "linux-modules-", "linux-base-"].iter().any(|p| d.starts_with(p))).collect();
    let mut version = String::new();
    for p in std::iter::once(&pkg).chain(&parts) {
        apt.download(p, dir)?;
        let deb = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|f| f.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| KernelError::Package { package: p.clone(), what: "apt-get download left no .deb".into() })?;
        if p == &pkg {
            version = String::from_utf8_lossy(&run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg("Version"))?).trim().to_string();
        }
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir.join("root")))?;
        std::fs::remove_file(&deb).map_err(io(&deb))?;
    }
    Ok((pkg, version))
}

/// A module file's name without its extension (`ext4` of `ext4.ko`,
/// `ext4.ko.xz` or `ext4.ko.zst`: Debian compresses modules from its 6.x
/// kernels on), or None for any other file.
fn module_stem(file_name: &str) -> Option<&str> {
    [".ko", ".ko.xz", ".ko.zst"].iter().find_map(|ext| file_name.strip_suffix(ext))
}

/// A module file's ELF bytes: decompressed where the package compressed it
/// (busybox's insmod in the initramfs loads plain ELF only).
fn read_module(path: &Path) -> Result<Vec<u8>, KernelError> {
    let data = std::fs::read(path).map_err(io(path))?;
    let name = path.to_string_lossy();
    let bad = |what: String| KernelError::Package { package: path.display().to_string(), what };
    if name.ends_with(".xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut &data[..], &mut out).map_err(|e| bad(format!("xz: {e}")))?;
        Ok(out)
    } else if name.ends_with(".zst") {
        use std::io::Read;
        let mut out = Vec::new();
        ruzstd::decoding::StreamingDecoder::new(&data[..])
            .map_err(|e| bad(format!("zstd: {e}")))?
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("zstd: {e}")))?;
        Ok(out)
    } else {
        Ok(data)
    }
}

/// Reads the `depends=` field of a module's .modinfo section.
fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
}

/// Given `name -> (path, depends)` for every module of a kernel and the
/// modules wanted, returns the paths to load, each after its dependencies.
/// Names in `builtin` need no file.
pub fn resolve_module_order(
    modules: &BTreeMap<String, (PathBuf, Vec<String>)>,
    builtin: &HashSet<String>,
    wanted: &[String],
) -> Result<Vec<PathBuf>, KernelError> {
    fn visit(
        name: &str,
        modules: &BTreeMap<String, (PathBuf, Vec<String>)>,
        builtin: &HashSet<String>,
        seen: &mut HashSet<String>,
        out: &mut Vec<PathBuf>,
    ) -> Result<(), KernelError> {
        let name = name.replace('-', "_");
        if !seen.insert(name.clone()) {
            return Ok(());
        }
        match modules.get(&name) {
            Some((path, deps)) => {
                for d in deps {
                    visit(d, modules, builtin, seen, out)?;
                }
                out.push(path.clone());
                Ok(())
            }
            None if builtin.contains(&name) => Ok(()),
            None => Err(KernelError::MissingModule(name)),
        }
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for w in wanted {
        visit(w, modules, builtin, &mut seen, &mut out)?;
    }
    Ok(out)
}

/// Version of how the kernel directory is prepared (bumped when the
/// initramfs's contents change other than through its `/init`); part of
/// the kernel directory's and every image's cache key.
pub const PREP_VERSION: u32 = 2;

/// A module without its appended signature. The kernel checks a signed
/// module's signature at every load (a SHA-256 over the whole module and an
/// RSA verification); under TCG that was most of the initramfs's module
/// loading (ext4 alone 0.96 s of 4.2 s). An unsigned module loads the same
/// and only taints the kernel (flag E), as Debian's kernel does not enforce
/// signatures unless booted with Secure Boot lockdown.
fn strip_signature(ko: &[u8]) -> &[u8] {
    const MAGIC: &[u8] = b"~Module signature appended~\n";
    // struct module_signature: algo, hash, id_type, signer_len, key_id_len,
    // 3 bytes padding, then sig_len as a big-endian u32.
    const INFO: usize = 12;
    let Some(body) = ko.strip_suffix(MAGIC) else { return ko };
    if body.len() < INFO {
        return ko;
    }
    let info = &body[body.len() - INFO..];
    let sig_len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    let signer_and_key = info[3] as usize + info[4] as usize;
    match (body.len() - INFO).checked_sub(sig_len + signer_and_key) {
        Some(end) => &ko[..end],
        None => ko,
    }
}

/// Extracts the uncompressed ELF kernel from an XZ-compressed bzImage, or
/// returns None when the payload is not XZ or the ELF has no PVH note.
fn extract_vmlinux(bzimage: &[u8]) -> Result<Option<Vec<u8>>, KernelError> {
    let magic = b"\xfd7zXZ\x00";
    let Some(at) = bzimage.windows(magic.len()).position(|w| w == magic) else {
        return Ok(None);
    };
    let tmp = std::env::temp_dir().join(format!("xdriver-bz-{}", std::process::id()));
    std::fs::write(&tmp, &bzimage[at..]).map_err(io(&tmp))?;
    let out = run(Command::new("xz").args(["--single-stream", "-dc"]).arg(&tmp));
    let _ = std::fs::remove_file(&tmp);
    let elf = out?;
    // XEN_ELFNOTE_PHYS32_ENTRY lives in a "Xen" note; its presence means
    // QEMU can enter the kernel directly (PVH) without the decompressor.
    let has_pvh = elf.starts_with(b"\x7fELF") && elf.windows(4).any(|w| w == b"Xen\0");
    Ok(has_pvh.then_some(elf))
}

/// Prepares `kernel` and `initrd.img` in `out` from the recipe's kernel
/// settings. `work` is scratch space.
pub(crate) fn prepare(apt: &PrivateApt, recipe: &crate::recipe::KernelRecipe, work: &Path, out: &Path) -> Result<KernelInfo, KernelError> {
    let (kernel_package, busybox_package) = (&recipe.package, &recipe.busybox_package);
    let kdir = work.join("kernel");
    let (pkg, pkg_version) = fetch_and_unpack(apt, kernel_package, &kdir)?;
    let root = kdir.join("root");
    // Packages of merged-/usr releases (Debian 13 on) ship /usr/lib/modules.
    let moddir = ["usr/lib/modules", "lib/modules"].iter().map(|d| root.join(d)).find(|d| d.is_dir()).unwrap_or_else(|| root.join("lib/modules"));
    let release = std::fs::read_dir(&moddir)
        .map_err(io(&moddir))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| KernelError::Package { package: pkg.clone(), what: "no lib/modules/<release>".into() })?;
    // /boot/vmlinuz-R, or (Debian 14's split packages) beside the modules.
    let vmlinuz = [root.join(format!("boot/vmlinuz-{release}")), moddir.join(&release).join("vmlinuz")]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| root.join(format!("boot/vmlinuz-{release}")));
    let bz = std::fs::read(&vmlinuz).map_err(io(&vmlinuz))?;

    let mut modules = BTreeMap::new();
    let kroot = moddir.join(&release);
    let mut stack = vec![kroot.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io(&d))? {
            let e = e.map_err(io(&d))?;
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(stem) = p.file_name().and_then(|n| n.to_str()).and_then(module_stem) {
                let data = read_module(&p)?;
                modules.insert(stem.replace('-', "_"), (p.clone(), module_depends(&data)));
            }
        }
    }
    let builtin_file = kroot.join("modules.builtin");
    let builtin: HashSet<String> = std::fs::read_to_string(&builtin_file)
        .map_err(io(&builtin_file))?
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(|n| module_stem(n).unwrap_or(n).replace('-', "_"))
        .collect();
    let boot = resolve_module_order(&modules, &builtin, &recipe.modules)?;
    let all: Vec<String> = recipe.modules.iter().chain(&recipe.background_modules).cloned().collect();
    let order = resolve_module_order(&modules, &builtin, &all)?;
    let (mut files, mut later) = (Vec::new(), Vec::new());
    for p in &order {
        let file = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let name = format!("{}.ko", module_stem(&file).unwrap_or(&file));
        let data = read_module(p)?;
        let to = if boot.contains(p) { &mut files } else { &mut later };
        to.push((name, strip_signature(&data).to_vec()));
    }

    let bbdir = work.join("busybox");
    let (bb_pkg, _) = fetch_and_unpack(apt, busybox_package, &bbdir)?;
    // /usr/bin in merged-/usr packages (Debian 13 on).
    let bb_path = ["root/usr/bin/busybox", "root/bin/busybox"].iter().map(|p| bbdir.join(p)).find(|p| p.is_file()).unwrap_or_else(|| bbdir.join("root/bin/busybox"));
    let busybox = std::fs::read(&bb_path).map_err(|_| KernelError::Package {
        package: bb_pkg.clone(),
        what: "no /bin/busybox or /usr/bin/busybox".into(),
    })?;

    std::fs::create_dir_all(out).map_err(io(out))?;
    let initrd = crate::initramfs::build(&busybox, &files, &later);
    std::fs::write(out.join("initrd.img"), &initrd).map_err(io(out))?;
    let (format, bytes) = match extract_vmlinux(&bz)? {
        Some(elf) => (KernelFormat::PvhElf, elf),
        None => (KernelFormat::BzImage, bz),
    };
    std::fs::write(out.join("kernel"), &bytes).map_err(io(out))?;
    let _ = std::fs::remove_dir_all(&kdir);
    let _ = std::fs::remove_dir_all(&bbdir);
    Ok(KernelInfo {
        package: pkg,
        package_version: pkg_version,
        release,
        format,
        file: "kernel".into(),
        initrd: "initrd.img".into(),
        modules: order
            .iter()
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).and_then(module_stem).map(str::to_string))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_signatures_are_stripped() {
        let mut ko = b"\x7fELF module body".to_vec();
        let body = ko.len();
        let sig = [0xAAu8; 7];
        ko.extend_from_slice(&sig);
        // algo, hash, id_type (PKCS#7), signer_len, key_id_len, pad, sig_len
        ko.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
        ko.extend_from_slice(&(sig.len() as u32).to_be_bytes());
        ko.extend_from_slice(b"~Module signature appended~\n");
        assert_eq!(strip_signature(&ko), &ko[..body]);
        // Unsigned or malformed modules are left as they are.
        assert_eq!(strip_signature(b"plain"), b"plain");
        let short = b"xx~Module signature appended~\n";
        assert_eq!(strip_signature(short), short);
    }

    #[test]
    fn depends_field_is_read_from_modinfo() {
        let ko = b"junk\0license=GPL\0depends=9pnet,fscache,netfs\0intree=Y\0";
        assert_eq!(module_depends(ko), vec!["9pnet", "fscache", "netfs"]);
        assert!(module_depends(b"\0depends=\0").is_empty());
    }

    #[test]
    fn modules_come_after_their_dependencies_once() {
        let mut m = BTreeMap::new();
        let e = |p: &str, d: &[&str]| (PathBuf::from(p), d.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        m.insert("9p".to_string(), e("9p.ko", &["9pnet", "netfs"]));
        m.insert("9pnet".to_string(), e("9pnet.ko", &[]));
        m.insert("9pnet_virtio".to_string(), e("9pnet_virtio.ko", &["9pnet", "virtio"]));
        m.insert("netfs".to_string(), e("netfs.ko", &[]));
        let builtin: HashSet<String> = ["virtio".to_string()].into();
        let order = resolve_module_order(&m, &builtin, &["9pnet_virtio".into(), "9p".into()]).expect("resolves");
        let names: Vec<_> = order.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["9pnet.ko", "9pnet_virtio.ko", "netfs.ko", "9p.ko"]);
        let err = resolve_module_order(&m, &builtin, &["nope".into()]).expect_err("missing");
        assert!(err.to_string().contains("`nope`"));
    }
}
