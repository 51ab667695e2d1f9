//! Faults injected for real into real guests, each with the outcome it
//! must have (docs/architecture.md, "Faults", states the bounds):
//! - the guest kernel panicking in a step: the cell is an infrastructure
//!   error of class guest-panic within seconds, the panic's console lines
//!   in its reason and result.json, its logs kept, no QEMU left;
//! - the guest's OOM killer in a command: the hog dies, both channels
//!   live and the next command runs;
//! - the guest's network gone under an SSH command: an error within the
//!   keepalive bound, never a hang; the backdoor unaffected;
//! - a corrupt image disk: an error with qemu-img's words within seconds.

use std::time::{Duration, Instant};

use xdriver::vm::{Channel, Vm};
use xdriver_guests::Init;
use xdriver_tests::xdriver_command;

#[test]
fn a_kernel_panic_in_a_step_is_a_guest_panic_with_its_console_lines_and_nothing_left_running() {
    let work = xdriver_tests::workdir();
    std::fs::write(
        work.path().join("xdriver.toml"),
        "name = \"panic\"\n[instances.idle]\nprocess.foreground = [\"/bin/sleep\", \"600\"]\n\
         [tests]\ntests = [\n  { name = \"before\", succeed = \"true\" },\n  { name = \"the kernel panics\", succeed = \"echo c > /proc/sysrq-trigger\" },\n  { name = \"never\", succeed = \"true\" },\n]\n",
    )
    .expect("write");
    let runs = xdriver_tests::Runs::under(&work.path().join("runs"));
    let t0 = Instant::now();
    let out = xdriver_command(
        &["test", "xdriver.toml", "--os", "debian-12", "--manager", "sysvinit", "--profile", "privileged", "--accel", "tcg", "--retries", "0", "--no-progress", "--results-dir", "results"],
        work.path(),
    )
    .output()
    .expect("xdriver runs");
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(125), "{stdout}");
    assert!(stdout.contains("ERROR debian-12/sysvinit/privileged") && stdout.contains("infrastructure (guest-panic, serial.log:"), "{stdout}");
    assert!(stdout.contains("the guest kernel panicked") && stdout.contains("Kernel panic - not syncing: sysrq triggered crash"), "{stdout}");
    let cell = work.path().join("results/panic/debian-12-sysvinit-privileged");
    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(cell.join("result.json")).expect("result.json")).expect("json");
    assert_eq!(result["fault"]["class"], "guest-panic", "{result}");
    let evidence = result["fault"]["evidence"].as_array().expect("evidence").iter().map(|l| l.as_str().unwrap_or("").to_string()).collect::<Vec<_>>();
    assert!(evidence[0].contains("sysrq: Trigger a crash") && evidence.iter().any(|l| l.contains("Kernel panic - not syncing")), "{evidence:?}");
    // The lines it points at are the console's, kept with the cell.
    let log = result["fault"]["log"].as_str().expect("log");
    let (file, span) = log.split_once(':').expect("file:lines");
    let first: usize = span.split('-').next().expect("first").parse().expect("number");
    let serial = std::fs::read_to_string(cell.join(file)).expect("the console is kept");
    assert!(serial.lines().nth(first - 1).expect("that line").contains("sysrq: Trigger a crash"), "{log}");
    // The step that panicked failed within seconds of the panic; the one
    // before passed and the one after did not run.
    let steps: Vec<(String, String, f64)> = result["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["steps"].as_array().cloned().unwrap_or_default())
        .map(|s| (s["name"].as_str().unwrap_or("").to_string(), s["status"].as_str().unwrap_or("").to_string(), s["duration_s"].as_f64().unwrap_or(0.0)))
        .collect();
    let find = |n: &str| steps.iter().find(|s| s.0 == n).cloned().unwrap_or_else(|| panic!("{n}: {steps:?}"));
    assert_eq!(find("before").1, "pass");
    let (_, status, secs) = find("the kernel panics");
    assert_eq!(status, "error");
    assert!(secs < 15.0, "the panic took {secs} s to be seen");
    assert_eq!(find("never").1, "not_run");
    eprintln!("panic cell: {:.1} s in all, the panicking step {secs:.1} s", took.as_secs_f64());
    // Nothing of the run is left (its logs are with the cell's results).
    runs.assert_nothing_left();
}

/// A small tmpfs of the test's own, unmounted when dropped (the suite
/// runs as root).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, mib: u32) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mkdir");
        let status = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"]).arg(dir).status().expect("mount");
        assert!(status.success(), "mounting a tmpfs (the suite runs as root)");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn sh(vm: &Vm, ch: Channel, cmd: &str, secs: u64) -> Result<(i32, String), String> {
    vm.exec(ch, cmd, &[], Duration::from_secs(secs), None).await.map(|o| (o.status, format!("{}{}", o.stdout_str(), o.stderr_str()))).map_err(|e| xdriver::cli::chain_error(&e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oom_killer_takes_the_hog_not_the_channels_and_a_cut_network_ends_an_ssh_command_within_the_keepalive_bound() {
    let work = xdriver_tests::workdir();
    let runs = xdriver_tests::Runs::under(&work.path().join("runs"));
    let mut cfg = xdriver_tests::config(Init::SYSTEMD, "faults");
    cfg.mem_mib = 512;
    let vm = xdriver_tests::start(cfg).await;
    // A memory hog over SSH: tail keeps all of its input that has no newline.
    let (code, out) = sh(&vm, Channel::Ssh, "head -c 2000M /dev/zero | tail >/dev/null", 300).await.expect("the SSH command ends");
    assert_ne!(code, 0, "the hog was not killed: {out}");
    let (code, dmesg) = sh(&vm, Channel::Backdoor, "dmesg | grep -E 'Out of memory|oom-kill'", 30).await.expect("the backdoor lives");
    assert_eq!(code, 0, "no OOM kill in the kernel log");
    assert!(dmesg.contains("(tail)"), "the OOM killer took something else: {dmesg}");
    assert_eq!(sh(&vm, Channel::Ssh, "true", 30).await.expect("SSH lives").0, 0);

    // The guest's network gone under a running SSH command.
    let t0 = Instant::now();
    let (ssh, cut) = tokio::join!(sh(&vm, Channel::Ssh, "sleep 300", 400), async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        sh(&vm, Channel::Backdoor, "ip link set eth0 down", 30).await
    });
    let took = t0.elapsed();
    assert_eq!(cut.expect("the backdoor cuts the link").0, 0);
    let err = ssh.expect_err("the SSH command cannot end well without a network");
    let bound = xdriver::vm::ssh::KEEPALIVE_INTERVAL * (xdriver::vm::ssh::KEEPALIVE_MAX as u32 + 2) + Duration::from_secs(2);
    assert!(took < bound, "the lost connection took {took:?} to be given up (bound {bound:?}): {err}");
    eprintln!("SSH given up {:.1} s after the command started: {err}", took.as_secs_f64());
    let (code, _) = sh(&vm, Channel::Backdoor, "true", 30).await.expect("the backdoor is unaffected");
    assert_eq!(code, 0);
    vm.quit().await;
    runs.assert_nothing_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_image_disk_fails_at_once_with_qemu_imgs_words() {
    let work = xdriver_tests::workdir();
    let runs = xdriver_tests::Runs::under(&work.path().join("runs"));
    let good = xdriver_tests::recipe_image("debian-12", Init::SYSVINIT);
    // A copy of the image whose disk is garbage past its first bytes
    // (kernel and initrd linked from the real one).
    let dir = work.path().join("broken-image");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let (kernel, initrd) = good.kernel_initrd().expect("built image");
    for f in [&kernel, &initrd] {
        std::os::unix::fs::symlink(f, dir.join(f.file_name().expect("name"))).expect("link");
    }
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..4].copy_from_slice(b"QFI\xfb");
    for (i, b) in bytes.iter_mut().enumerate().skip(4) {
        *b = (i * 7 + 13) as u8;
    }
    std::fs::write(dir.join(&good.manifest.disk.file), &bytes).expect("write");
    let entry = xdriver_images::Entry { dir, manifest: good.manifest.clone(), current: true };
    let mut cfg = xdriver::vm::VmConfig::new("t-broken-disk", entry);
    cfg.accel = xdriver::vm::qemu::Accel::Tcg;
    let t0 = Instant::now();
    let err = Vm::start(cfg).await.expect_err("a corrupt disk cannot boot");
    let msg = xdriver::cli::chain_error(&err);
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}: {msg}", t0.elapsed());
    assert!(msg.contains("qemu-img") && (msg.contains("qcow2") || msg.contains("Could not open")), "{msg}");
    // Its start failed before anything was written: no directory is kept.
    runs.assert_nothing_left();
}

/// The RAM snapshot of a shape of this test's own (704 MiB of RAM): saved
/// by the first VM, truncated, then dropped by the second, which boots
/// cold and says why; the third saves a new one and restores it; then
/// bytes overwritten in its RAM file, and in its device state, are seen
/// by their checksums the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_overwritten_ram_snapshot_is_dropped_the_vm_boots_cold_and_the_next_saves_a_new_one() {
    let work = xdriver_tests::workdir();
    let runs = xdriver_tests::Runs::under(&work.path().join("runs"));
    let cfg = || {
        let mut c = xdriver_tests::config(Init::SYSVINIT, "truncated");
        c.mem_mib = 704;
        c.ssh = false;
        c.snapshots = true;
        c
    };
    let vm = xdriver_tests::start(cfg()).await;
    let note = vm.how_started().to_string();
    vm.quit().await;
    let dir = note
        .split("RAM snapshot ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("no snapshot in {note:?}"));
    let ram = dir.join("ram");
    let f = std::fs::OpenOptions::new().write(true).open(&ram).expect("the RAM file");
    f.set_len(64 << 20).expect("truncate");
    drop(f);
    let t0 = Instant::now();
    let vm = xdriver_tests::start(cfg()).await;
    let note = vm.how_started().to_string();
    assert!(note.starts_with("cold boot (the RAM snapshot was unsound and was dropped") && note.contains("truncated"), "{note}");
    assert!(!dir.exists(), "the bad snapshot is gone");
    let (code, _) = sh(&vm, Channel::Backdoor, "true", 30).await.expect("the cold VM answers");
    assert_eq!(code, 0);
    eprintln!("dropped and booted cold in {:.1} s", t0.elapsed().as_secs_f64());
    vm.quit().await;
    let vm = xdriver_tests::start(cfg()).await;
    assert!(vm.how_started().contains("it saved first"), "{}", vm.how_started());
    assert_eq!(std::fs::metadata(dir.join("ram")).expect("a new RAM file").len(), 704 << 20);
    vm.quit().await;
    // Files of the right size with bytes overwritten: 4 MiB of the RAM
    // file 300 MiB in, then one byte of the device state. The checksums
    // taken at the save see each before QEMU reads it.
    for (file, at, len) in [("ram", (300u64 << 20) + 12345, 4usize << 20), ("state", 1000, 1)] {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().read(true).write(true).open(dir.join(file)).expect(file);
        let mut bytes = vec![0u8; len];
        f.read_exact_at(&mut bytes, at).expect("read");
        bytes.iter_mut().for_each(|b| *b ^= 0x5a);
        f.write_all_at(&bytes, at).expect("write");
        drop(f);
        let t0 = Instant::now();
        let vm = xdriver_tests::start(cfg()).await;
        let note = vm.how_started().to_string();
        assert!(note.starts_with("cold boot (the RAM snapshot was unsound and was dropped") && note.contains("changed since it was saved (checksum)"), "{file}: {note}");
        assert!(note.contains(if file == "ram" { "its RAM file (sampled pages)" } else { "its device state" }), "{note}");
        assert!(!dir.exists(), "the bad snapshot is gone");
        eprintln!("{file}: overwritten bytes seen, booted cold in {:.1} s", t0.elapsed().as_secs_f64());
        vm.quit().await;
        if file == "ram" {
            let vm = xdriver_tests::start(cfg()).await;
            assert!(vm.how_started().contains("it saved first"), "{}", vm.how_started());
            vm.quit().await;
        }
    }
    // Snapshots of this shape serve no other test.
    let _ = std::fs::remove_dir_all(&dir);
    runs.assert_nothing_left();
}

/// The run directory on a 64 MiB tmpfs: a guest writing 200 MiB fills
/// it, QEMU pauses the guest (virtio-blk's `werror=enospc`), and the
/// command fails at once saying the host's device is full, where it
/// would have waited out its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_host_device_under_the_run_directory_fails_the_command_saying_so() {
    let work = xdriver_tests::workdir();
    let small = work.path().join("small");
    let _umount = Tmpfs::mount(&small, 64);
    let runs = xdriver_tests::Runs::under(&small);
    let mut cfg = xdriver_tests::config(Init::SYSVINIT, "full");
    cfg.ssh = false;
    cfg.snapshots = true;
    let vm = xdriver_tests::start(cfg).await;
    let t0 = Instant::now();
    let err = sh(&vm, Channel::Backdoor, "dd if=/dev/urandom of=/var/tmp/big bs=1M count=200 conv=fsync 2>&1", 300).await.expect_err("the write cannot finish");
    let took = t0.elapsed();
    assert!(err.contains("no space left on the host device under") && err.contains("paused the guest"), "{err}");
    assert!(took < Duration::from_secs(60), "{took:?}");
    eprintln!("disk full seen {:.1} s after the write began: {err}", took.as_secs_f64());
    let pid = vm.pid();
    vm.quit().await;
    assert!(!xdriver_tests::alive(pid), "QEMU {pid} outlived the VM");
    runs.assert_nothing_left();
}

/// virtiofsd (the store's server) killed under a running VM: the next
/// command fails at once naming it (the guest's accesses to the share
/// would hang), and the VM goes with nothing left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtiofsd_dying_fails_the_next_command_naming_it() {
    let work = xdriver_tests::workdir();
    let runs = xdriver_tests::Runs::under(&work.path().join("runs"));
    std::fs::write(work.path().join("hello"), "from the host\n").expect("write");
    let mut cfg = xdriver_tests::config(Init::SYSVINIT, "vfsd");
    cfg.ssh = false;
    cfg.store = Some(xdriver::vm::nix_store::StoreShare {
        host: work.path().to_path_buf(),
        guest: "/nix/store".into(),
        fs: xdriver::vm::nix_store::ShareFs::Virtiofs,
        virtiofsd: Some(xdriver::vm::nix_store::find_virtiofsd().expect("virtiofsd installed (scripts/setup-host)")),
        os: xdriver_guests::Os::DEBIAN_12,
    });
    let vm = xdriver_tests::start(cfg).await;
    let (code, out) = sh(&vm, Channel::Backdoor, "cat /nix/store/hello", 30).await.expect("the share answers");
    assert_eq!((code, out.trim()), (0, "from the host"));
    let daemon = vm.virtiofsd_pid().expect("virtiofsd") as i32;
    // SAFETY: a plain kill(2) of the virtiofsd this test's VM started.
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    let err = sh(&vm, Channel::Backdoor, "cat /nix/store/hello", 60).await.expect_err("the share's server is gone");
    assert!(err.contains("virtiofsd") && err.contains("exited while"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let pid = vm.pid();
    vm.quit().await;
    assert!(!xdriver_tests::alive(pid), "QEMU {pid} outlived the VM");
    runs.assert_nothing_left();
}

/// A starved host: two busy loops (one per core of the CI host) run beside
/// a webapps cell, which still passes. The deadlines are generous rather
/// than scaled: a restored guest's set-up has 20 s (it takes ~1 s), a boot
/// 180 s (a cold one ~6 s), a step 300 s and a readiness wait 120 s, while
/// under two hogs everything took about twice its time.
#[test]
fn a_cell_passes_beside_two_cpu_hogs() {
    let work = xdriver_tests::workdir();
    let spec = xdriver_tests::example("webapps");
    let runs = xdriver_tests::Runs::under(&work.path().join("runs"));
    let hogs: Vec<std::process::Child> =
        (0..2).map(|_| std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().expect("a busy loop")).collect();
    struct Kill(Vec<std::process::Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let _hogs = Kill(hogs);
    let t0 = Instant::now();
    let out = xdriver_command(
        &["test", spec.to_str().expect("utf-8"), "--os", "debian-12", "--manager", "sysvinit", "--profile", "privileged", "--accel", "tcg", "--retries", "0", "--no-progress", "--results-dir", "results"],
        work.path(),
    )
    .output()
    .expect("xdriver runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("PASS  debian-12/sysvinit/privileged"), "{stdout}");
    eprintln!("the cell beside two busy loops: {:.1} s", t0.elapsed().as_secs_f64());
    runs.assert_nothing_left();
}

/// The image cache on a 96 MiB tmpfs: building an image runs out of
/// space; the error says so (not only which build stage failed), carries
/// the log's last lines, and leaves no image listed.
#[test]
fn a_full_cache_device_is_named_and_leaves_no_image() {
    let work = xdriver_tests::workdir();
    let cache = work.path().join("cache");
    let _umount = Tmpfs::mount(&cache, 96);
    let t0 = Instant::now();
    let out = xdriver_command(&["image", "build", "debian-12-sysvinit"], work.path()).env("XDRIVER_CACHE_DIR", &cache).output().expect("xdriver runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("no space left on the device holding the cache") && stderr.contains("MiB free"), "{stderr}");
    assert!(stderr.contains("E: mmdebstrap failed to run") || stderr.contains("No space left on device"), "the log's own lines: {stderr}");
    let list = xdriver_command(&["image", "list"], work.path()).env("XDRIVER_CACHE_DIR", &cache).output().expect("xdriver runs");
    assert!(!String::from_utf8_lossy(&list.stdout).contains("debian-12-sysvinit"), "{}", String::from_utf8_lossy(&list.stdout));
    eprintln!("full cache seen after {:.1} s", t0.elapsed().as_secs_f64());
    let left = xdriver_tests::pids_mentioning(cache.to_str().expect("utf-8"));
    assert!(left.is_empty(), "processes of the build left: {left:?}");
}
