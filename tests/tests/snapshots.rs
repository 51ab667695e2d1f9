//! RAM snapshots, for real under TCG: the first VM of a shape saves one,
//! later VMs restore it (each with its own clock, RNG, SSH key, shares and
//! disk), two VMs starting at once save one snapshot (the second waits for
//! it and restores it),
//! `--cold` boots, and a corrupt snapshot is dropped for a cold boot.
//!
//! Each test uses a memory size no other test uses, so its snapshots are
//! its own (the key covers the VM's memory).

use std::path::PathBuf;

use xdriver_tests::run_xdriver as xdriver;
use xdriver_tests::Run;

/// The directory of the current debian-12-systemd image (built if
/// missing).
fn systemd_image_dir() -> PathBuf {
    xdriver_tests::image(xdriver_guests::Init::SYSTEMD).dir
}

/// This test's snapshots (those of VMs with `mem` MiB) under `image`.
fn snapshots_with_mem(image: &std::path::Path, mem: u32) -> Vec<PathBuf> {
    let want = format!("\nmem-mib {mem}\n");
    std::fs::read_dir(image.join("snapshots"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|d| d.is_dir())
        .filter(|d| std::fs::read_to_string(d.join("snapshot.json")).is_ok_and(|m| {
            serde_json::from_str::<serde_json::Value>(&m).is_ok_and(|v| v["shape"].as_str().is_some_and(|s| s.contains(&want)))
        }))
        .collect()
}

/// The systemd image's directory with no snapshot of VMs with `mem` MiB
/// left from an earlier run, and a share holding hello.txt.
fn fresh_shape(mem: u32) -> (PathBuf, xdriver_tests::Work) {
    let image = systemd_image_dir();
    for d in snapshots_with_mem(&image, mem) {
        std::fs::remove_dir_all(&d).expect("remove an earlier run's snapshot");
    }
    let share = xdriver_tests::workdir();
    std::fs::write(share.path().join("hello.txt"), "hello over 9p\n").expect("write");
    (image, share)
}

fn run(mem: &str, extra: &[&str], cmd: &str, share: &std::path::Path) -> Run {
    let work = xdriver_tests::workdir();
    let share_arg = format!("{}:/mnt/host", share.display());
    let mut args = vec!["run", "--image", "debian-12-systemd", "--accel", "tcg", "--mem-mib", mem, "--no-store", "--share", &share_arg];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", cmd]);
    xdriver(&args, work.path())
}

/// One guest line per value: a marker file from an earlier VM, the share,
/// a random UUID, the guest's clock, the kernel's word on a VM fork.
const PROBE: &str = "test -e /root/mark && echo mark-seen || echo no-mark; echo state > /root/mark; cat /mnt/host/hello.txt; \
                     cat /proc/sys/kernel/random/uuid; date +%s; dmesg | grep -c 'crng reseeded due to virtual machine fork' || true";

struct Probe {
    mark: String,
    share: String,
    uuid: String,
    clock: i64,
    forks: String,
}

fn probe(r: &Run) -> Probe {
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.stdout);
    let l: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(l.len(), 5, "{}", r.stdout);
    Probe { mark: l[0].into(), share: l[1].into(), uuid: l[2].into(), clock: l[3].parse().expect("epoch"), forks: l[4].into() }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

#[test]
fn the_first_vm_saves_a_snapshot_and_later_vms_restore_it_each_with_its_own_clock_rng_key_share_and_disk() {
    let (image, share) = fresh_shape(896);

    // The first VM of the shape boots cold, saves, and restores (over SSH:
    // the run's own key went in after the restore).
    let first = run("896", &[], PROBE, share.path());
    assert!(first.stderr.contains("it saved first (cold boot"), "{}", first.stderr);
    let p1 = probe(&first);
    let snaps = snapshots_with_mem(&image, 896);
    assert_eq!(snaps.len(), 1, "one snapshot of this shape: {snaps:?}");
    let snap = &snaps[0];
    for f in ["ram", "state", "disk.qcow2", "serial.log"] {
        assert!(snap.join(f).is_file(), "{f} in {}", snap.display());
    }
    // The RAM file is the guest's memory: sparse, far below the 896 MiB
    // it spans; the stream holds device state and the small RAM blocks.
    use std::os::unix::fs::MetadataExt;
    let ram = std::fs::metadata(snap.join("ram")).expect("ram");
    assert_eq!(ram.len(), 896 << 20);
    assert!(ram.blocks() * 512 < ram.len(), "RAM file not sparse: {} bytes allocated", ram.blocks() * 512);
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(snap.join("snapshot.json")).expect("meta")).expect("json");
    assert!(meta["boot_s"].as_f64().is_some_and(|b| b > 0.0), "{meta}");

    // A second VM restores it.
    let second = run("896", &[], PROBE, share.path());
    assert!(second.stderr.contains(&format!("restored from the RAM snapshot {}", snap.display())), "{}", second.stderr);
    assert!(!second.stderr.contains("saved first"), "{}", second.stderr);
    let p2 = probe(&second);
    for p in [&p1, &p2] {
        // Its own disk: the file the VM before it wrote is not there.
        assert_eq!(p.mark, "no-mark");
        // Shares are mounted after the restore.
        assert_eq!(p.share, "hello over 9p");
        // The guest clock is the host's, not the moment of the save.
        assert!((p.clock - now()).abs() < 30, "guest clock {} vs host {}", p.clock, now());
        // Linux saw the VM generation ID change and reseeded its RNG.
        assert_eq!(p.forks, "1");
    }
    // Two restores of one RAM state draw different random numbers.
    assert_ne!(p1.uuid, p2.uuid);

    // --cold boots (and says so); the snapshot stays.
    let cold = run("896", &["--cold"], PROBE, share.path());
    assert!(cold.stderr.contains("cold boot (snapshots off (--cold))"), "{}", cold.stderr);
    let p3 = probe(&cold);
    assert_eq!(p3.forks, "0", "a cold boot is no VM fork");
    assert_eq!(snapshots_with_mem(&image, 896), vec![snap.clone()]);

    // A corrupt snapshot that only QEMU can find out (one saved before
    // xdriver took checksums: its state's checksum would see this one,
    // tests/tests/faults.rs): a warning, a cold boot that passes, and the
    // snapshot dropped (the next VM of the shape saves a new one).
    assert!(meta["sums"]["state"].is_string(), "a new snapshot has checksums: {meta}");
    let mut old = meta.clone();
    old.as_object_mut().expect("object").remove("sums");
    std::fs::write(snap.join("snapshot.json"), old.to_string()).expect("meta");
    std::fs::write(snap.join("state"), b"not a migration stream").expect("corrupt");
    let broken = run("896", &[], PROBE, share.path());
    assert!(broken.stderr.contains("warning: restoring the RAM snapshot"), "{}", broken.stderr);
    assert!(broken.stderr.contains("could not be restored and was dropped"), "{}", broken.stderr);
    probe(&broken);
    assert!(!snap.exists(), "the corrupt snapshot was kept");
}

#[test]
fn two_vms_starting_at_once_save_one_snapshot_and_the_other_waits_and_restores_it() {
    let (image, share) = fresh_shape(832);
    let a = std::thread::spawn({
        let dir = share.path().to_path_buf();
        move || run("832", &["--channel", "backdoor"], PROBE, &dir)
    });
    let b = run("832", &["--channel", "backdoor"], PROBE, share.path());
    let a = a.join().expect("thread");
    probe(&a);
    probe(&b);
    let saved = [&a, &b].iter().filter(|r| r.stderr.contains("it saved first")).count();
    let waited = [&a, &b].iter().filter(|r| r.stderr.contains("waiting for another VM to save it")).count();
    assert_eq!((saved, waited), (1, 1), "\n{}\n{}", a.stderr, b.stderr);
    assert_eq!(snapshots_with_mem(&image, 832).len(), 1);
}
