//! `xdriver doctor`: what is installed, what is missing and how to fix it.

use super::args::DoctorArgs;
use super::error::CliError;
use crate::vm::accel::{self, which};
use crate::exit;
use crate::vm::qemu::Accel;

const TOOLS: &[(&str, &str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86", "runs the VMs"),
    ("qemu-img", "qemu-utils", "creates disks and overlays"),
    ("mmdebstrap", "mmdebstrap", "builds Debian images"),
    ("mke2fs", "e2fsprogs", "turns a rootfs into a disk without loop devices"),
    ("apt-get", "apt", "fetches the guest kernel and busybox"),
    ("dpkg-deb", "dpkg", "unpacks the guest kernel"),
    ("xz", "xz-utils", "extracts the PVH kernel"),
];

pub(super) async fn main(args: DoctorArgs) -> Result<i32, CliError> {
    let mut problems = 0;
    println!("tools:");
    for (tool, package, why) in TOOLS {
        match which(tool) {
            Some(p) => println!("  ok      {tool:<20} {}", p.display()),
            None => {
                problems += 1;
                println!("  MISSING {tool:<20} {why}; fix: apt-get install {package}");
            }
        }
    }
    // Optional: what the shared store and Nix specs need.
    println!("optional:");
    match crate::vm::nix_store::find_virtiofsd() {
        Some(p) => println!("  ok      {:<20} {} (the store over virtiofs)", "virtiofsd", p.display()),
        None => println!("  note    {:<20} not found: the store goes over 9p; for virtiofs: cargo install virtiofsd (needs libseccomp-dev libcap-ng-dev)", "virtiofsd"),
    }
    match which("nix-instantiate") {
        Some(p) => println!("  ok      {:<20} {} (Nix specs)", "nix-instantiate", p.display()),
        None => println!("  note    {:<20} not found: Nix specs need it; fix: apt-get install nix-bin", "nix-instantiate"),
    }
    match crate::vm::nix_store::default_store() {
        Some(p) => println!("  ok      {:<20} {} is shared into guests by default", "store", p.display()),
        None => println!("  note    {:<20} no /nix/store: guests get no store unless --store DIR", "store"),
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    println!("privileges:");
    if root {
        println!("  ok      running as root (image builds need it)");
    } else {
        println!("  note    not root: `xdriver image build` needs root; running built images does not");
    }
    let store = xdriver_images::ImageCache::open_default().map_err(|e| CliError::infra(&e))?;
    let cache = args.cache_dir.unwrap_or_else(|| store.root().to_path_buf());
    println!("cache:");
    println!("  dir     {}", cache.display());
    match store.list() {
        Ok(list) => println!("  images  {} built ({} current)", list.len(), list.iter().filter(|e| e.current).count()),
        Err(e) => println!("  images  unreadable: {e}"),
    }
    println!("  run dir {}", crate::vm::rundir::RunDir::base().display());
    println!("acceleration:");
    if !std::path::Path::new("/dev/kvm").exists() {
        println!("  tcg     /dev/kvm does not exist; VMs run under TCG (slower, fully supported)");
    } else if args.no_probe || which("qemu-system-x86_64").is_none() {
        println!("  ?       /dev/kvm exists; probe skipped");
    } else {
        match accel::probe("qemu-system-x86_64", Accel::Kvm, accel::PROBE_DEADLINE).await {
            Ok(t) => println!("  kvm     the KVM boot probe passed in {:.2} s", t.as_secs_f64()),
            Err(e) => println!("  tcg     /dev/kvm exists but KVM does not work: {e}; `--accel auto` uses TCG (fix: enable (nested) virtualisation for this host)"),
        }
        match accel::probe("qemu-system-x86_64", Accel::Tcg, accel::PROBE_DEADLINE).await {
            Ok(t) => println!("  ok      the TCG boot probe passed in {:.2} s", t.as_secs_f64()),
            Err(e) => {
                problems += 1;
                println!("  BROKEN  even TCG cannot boot: {e}");
            }
        }
    }
    if problems == 0 {
        println!("no problems found");
        Ok(exit::SUCCESS)
    } else {
        println!("{problems} problem(s) found");
        Ok(exit::INFRA)
    }
}
