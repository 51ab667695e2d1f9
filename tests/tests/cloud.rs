//! An image xdriver did not build: a Debian 12 cloud image made the way
//! Debian ships one (images/vendor/debian-12-cloud.sh: its own kernel and
//! boot loaders, cloud-init, nothing of xdriver's), imported by
//! `bash scripts/cloud-image` as `debian-12-cloud` (SeaBIOS) and
//! `debian-12-cloud-uefi` (OVMF). Each is prepared once with xdriver's
//! NoCloud seed; cells boot overlays of the prepared disk.

use std::path::PathBuf;

use xdriver_tests::run_xdriver as xdriver;
use xdriver_tests::{example, Run};

fn image_dir(name: &str) -> PathBuf {
    let work = xdriver_tests::workdir();
    let list = xdriver(&["image", "list", "--json"], work.path());
    let v: serde_json::Value = serde_json::from_str(&list.stdout).expect("json");
    let e = v
        .as_array()
        .and_then(|a| a.iter().find(|e| e["manifest"]["name"] == name))
        .unwrap_or_else(|| panic!("no image {name}: run `bash scripts/cloud-image` first (scripts/test does)"));
    PathBuf::from(e["dir"].as_str().expect("dir"))
}

/// Runs the webapps example; the work dir (results, guest logs) goes with
/// the run, so a failing assertion keeps it and prints the failed cells'
/// guest logs.
fn webapps(extra: &[&str]) -> (Run, xdriver_tests::Work) {
    let work = xdriver_tests::workdir();
    let spec = example("webapps");
    let mut args = vec!["test", spec.to_str().expect("utf-8"), "--accel", "tcg", "--os", "debian-12-cloud", "--no-progress", "--retries", "1"];
    args.extend_from_slice(extra);
    let run = xdriver(&args, work.path());
    (run, work)
}

fn assert_all_pass(run: &Run, cells: usize, label: &str) {
    // The progress lines first, the results (with each failure's reason)
    // last, where a shortened CI log still shows them.
    assert_eq!(run.code, 0, "{label}:\n{}\n{}", run.stderr, run.stdout);
    for m in ["systemd", "s6", "supervisord"] {
        for p in ["privileged", "unprivileged"] {
            assert!(run.stdout.contains(&format!("PASS  debian-12-cloud/{m}/{p}")), "{label}: {m}/{p}\n{}", run.stdout);
        }
    }
    assert!(run.stdout.contains(&format!("{cells} cells: {cells} passed")), "{label}:\n{}", run.stdout);
}

#[test]
fn cloud_init_consumed_the_seed_once_and_the_prepared_disk_boots_by_bios() {
    let work = xdriver_tests::workdir();
    // One boot over SSH (the cell's own key, installed over the backdoor;
    // the host key the preparation recorded), after the preparation if no
    // other test has prepared the image yet.
    let cmd = "cat /var/lib/cloud/data/instance-id; cat /var/lib/cloud/instance/datasource; echo; \
               test -e /etc/cloud/cloud-init.disabled && echo cloud-init-disabled; \
               readlink /proc/$(pgrep -o -f /usr/lib/xdriver/backdoor)/exe; \
               grep -c 'running .init-local.' /var/log/cloud-init.log; id -u debian || echo no-default-user; cat /proc/cmdline; \
               sh -c 'sleep 300 & echo started'";
    let run = xdriver(&["run", "--image", "debian-12-cloud", "--accel", "tcg", "--", cmd], work.path());
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let dir = image_dir("debian-12-cloud");
    // The preparation this xdriver made or used: the newest (a developer's
    // cache may still hold an older one until `image gc`).
    let mut prepared: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&dir)
        .expect("image dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("prepared-") && n.to_string_lossy().ends_with(".json")))
        .map(|p| (std::fs::metadata(&p).and_then(|m| m.modified()).expect("mtime"), p))
        .collect();
    prepared.sort();
    // (Preparations that applied a spec's [guest] additions are others'.)
    let own = |p: &PathBuf| std::fs::read_to_string(p).ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()).is_some_and(|m| m.get("additions").is_none());
    let prepared: Vec<PathBuf> = prepared.into_iter().rev().map(|(_, p)| p).filter(own).collect();
    assert!(!prepared.is_empty(), "no prepared disk in {}", dir.display());
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&prepared[0]).expect("read")).expect("json");
    let key = meta["key"].as_str().expect("key");
    assert!(meta["host_key"].as_str().is_some_and(|k| k.starts_with("ssh-ed25519 ")), "{meta}");
    // The first boot's serial log is kept beside the prepared disk.
    assert!(prepared[0].with_extension("serial.log").is_file());
    let out: Vec<&str> = run.stdout.lines().collect();
    // cloud-init read xdriver's seed (its instance-id) from the vfat
    // NoCloud volume, once (a single init-local stage in its log), and is
    // off for good.
    assert_eq!(out[0], format!("xdriver-{key}"), "{}", run.stdout);
    assert!(out[1].contains("DataSourceNoCloud") && out[1].contains("seed=/dev/vdb"), "{}", run.stdout);
    assert!(run.stdout.contains("cloud-init-disabled"), "{}", run.stdout);
    // The backdoor (its oldest process) runs under dash, the image's
    // /bin/sh.
    assert!(run.stdout.contains("\n/usr/bin/dash\n"), "{}", run.stdout);
    assert!(run.stdout.contains("\n1\nno-default-user\n"), "cloud-init ran more than once, or made its default user:\n{}", run.stdout);
    // The image's own boot loader started its own kernel.
    assert!(run.stdout.contains("root=UUID=") && !run.stdout.contains("xdriver.ssh_key"), "{}", run.stdout);
    // A background child holding stdout does not hold the command.
    assert!(run.stdout.ends_with("started\n"), "{}", run.stdout);
}

#[test]
fn the_webapps_example_passes_on_the_cloud_image_booted_by_bios() {
    let (run, _work) = webapps(&["--manager", "systemd,s6,supervisord"]);
    assert_all_pass(&run, 6, "BIOS");
}

#[test]
fn the_webapps_example_passes_on_the_cloud_image_booted_by_uefi() {
    // Every manager, one profile (the boot path is what differs; BIOS runs
    // both profiles), to keep CI short.
    let (run, _work) = webapps(&["--manager", "systemd,s6,supervisord", "--profile", "unprivileged", "--image", "debian-12-cloud=debian-12-cloud-uefi"]);
    assert_eq!(run.code, 0, "UEFI:\n{}\n{}", run.stderr, run.stdout);
    for m in ["systemd", "s6", "supervisord"] {
        assert!(run.stdout.contains(&format!("PASS  debian-12-cloud/{m}/unprivileged")), "UEFI {m}:\n{}", run.stdout);
    }
    assert!(run.stdout.contains("3 cells: 3 passed"), "{}", run.stdout);
    let check = xdriver_tests::workdir();
    let efi = xdriver(
        &["run", "--image", "debian-12-cloud-uefi", "--accel", "tcg", "--channel", "backdoor", "--", "test -d /sys/firmware/efi && echo booted-by-uefi"],
        check.path(),
    );
    assert_eq!((efi.code, efi.stdout.as_str()), (0, "booted-by-uefi\n"), "{}", efi.stderr);
}

/// A spec's `[guest]` packages on an imported image: the daemons example
/// (Debian's redis, PostgreSQL, memcached, xinetd and cron) on the cloud
/// image under systemd. The packages are fetched by the host's apt against
/// the guest's own sources and database, installed during a preparation
/// of their own (cached beside the image's own one), and their services
/// stay off at boot.
#[test]
fn the_daemons_example_gets_its_packages_into_the_imported_cloud_image() {
    let work = xdriver_tests::workdir();
    let spec = example("daemons");
    let args = ["test", spec.to_str().expect("utf-8"), "--accel", "tcg", "--os", "debian-12-cloud", "--manager", "systemd", "--profile", "privileged", "--no-progress", "--retries", "1"];
    let run = xdriver(&args, work.path());
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, run.stdout);
    assert!(run.stdout.contains("PASS  debian-12-cloud/systemd/privileged"), "{}", run.stdout);
    // The preparation that applied them says what it added and disabled.
    let dir = image_dir("debian-12-cloud");
    let metas: Vec<serde_json::Value> = std::fs::read_dir(&dir)
        .expect("image dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("prepared-") && n.to_string_lossy().ends_with(".json")))
        .filter_map(|p| serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok())
        .filter(|m: &serde_json::Value| m["additions"]["packages"][0] == "redis-server")
        .collect();
    assert_eq!(metas.len(), 1, "one preparation for the daemons' [guest] table in {}", dir.display());
    let applied = &metas[0]["applied"];
    let added: Vec<&str> = applied["added_packages"].as_array().expect("list").iter().filter_map(|v| v.as_str()).collect();
    assert!(added.iter().any(|p| p.starts_with("redis-server=")) && added.iter().any(|p| p.starts_with("postgresql-15=")), "{added:?}");
    let disabled: Vec<&str> = applied["disabled_services"].as_array().expect("list").iter().filter_map(|v| v.as_str()).collect();
    for s in ["redis-server.service", "postgresql.service", "memcached.service", "cron.service"] {
        assert!(disabled.contains(&s), "{s} not disabled: {disabled:?}");
    }
}

/// A VM of the cloud image restored from its RAM snapshot gets its store
/// over virtio-fs hot-plugged (QEMU 7.2 cannot migrate vhost-user-fs, and
/// Debian's cloud kernel has no 9p), and a command's output streamed after
/// its first second arrives whole (a restored guest once kept the saving
/// session's command markers, which cut such output short).
#[test]
fn a_restored_cloud_vm_takes_its_store_hot_plugged_and_streams_all_its_output() {
    use std::os::unix::fs::PermissionsExt;
    let work = xdriver_tests::workdir();
    // virtiofsd serves the store as nobody.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let store = work.path().join("store");
    std::fs::create_dir(&store).expect("mkdir");
    std::fs::write(store.join("marker"), "hot-plugged\n").expect("write");
    let store = store.to_str().expect("utf-8");
    let cmd = format!("sleep 1; cat {store}/marker; mount | grep -c ' type virtiofs'; echo done");
    // The first run saves the snapshot (unless another test has) and
    // restores it; the second restores it.
    for run_no in 1..=2 {
        let run = xdriver(&["run", "--image", "debian-12-cloud", "--accel", "tcg", "--channel", "backdoor", "--store", store, "--", &cmd], work.path());
        assert_eq!((run.code, run.stdout.as_str()), (0, "hot-plugged\n1\ndone\n"), "run {run_no}: {}", run.stderr);
        assert!(run.stderr.contains("restored from the RAM snapshot"), "run {run_no}: {}", run.stderr);
    }
    // A built image (its kernel booted directly) takes a store over
    // virtio-fs hot-plugged the same way when asked for virtio-fs.
    let run = xdriver(&["run", "--image", "debian-12-systemd", "--accel", "tcg", "--channel", "backdoor", "--share-fs", "virtiofs", "--store", store, "--", &cmd], work.path());
    assert_eq!((run.code, run.stdout.as_str()), (0, "hot-plugged\n1\ndone\n"), "built image: {}", run.stderr);
    assert!(run.stderr.contains("restored from the RAM snapshot"), "built image: {}", run.stderr);
}
