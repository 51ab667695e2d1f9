//! Images xdriver did not build: Debian 12 and 13 cloud images made the
//! way Debian builds its genericcloud images (images/vendor/debian-cloud.sh:
//! Debian's package set for them, its own kernel and boot loaders,
//! cloud-init, netplan and systemd-networkd, nothing of xdriver's or of the
//! tests'), imported by `bash scripts/cloud-image` as `debian-N-cloud`
//! (SeaBIOS) and `debian-N-cloud-uefi` (OVMF). Each is prepared once with
//! xdriver's NoCloud seed (and once more per `[guest]` table, whose
//! packages the webapps example needs there: nginx, s6, supervisor); cells
//! boot overlays of the prepared disk. Debian 13 runs under both
//! firmwares, Debian 12 under SeaBIOS.

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

/// Runs the webapps example on `os`; the work dir (results, guest logs)
/// goes with the run, so a failing assertion keeps it and prints the
/// failed cells' guest logs.
fn webapps(os: &str, extra: &[&str]) -> (Run, xdriver_tests::Work) {
    let work = xdriver_tests::workdir();
    let spec = example("webapps");
    let mut args = vec!["test", spec.to_str().expect("utf-8"), "--accel", "tcg", "--os", os, "--no-progress", "--retries", "1"];
    args.extend_from_slice(extra);
    let run = xdriver(&args, work.path());
    (run, work)
}

fn assert_all_pass(run: &Run, os: &str, profiles: &[&str], label: &str) {
    // The progress lines first, the results (with each failure's reason)
    // last, where a shortened CI log still shows them.
    assert_eq!(run.code, 0, "{label}:\n{}\n{}", run.stderr, run.stdout);
    for m in ["systemd", "s6", "supervisord"] {
        for p in profiles {
            assert!(run.stdout.contains(&format!("PASS  {os}/{m}/{p}")), "{label}: {m}/{p}\n{}", run.stdout);
        }
    }
    let cells = 3 * profiles.len();
    assert!(run.stdout.contains(&format!("{cells} cells: {cells} passed")), "{label}:\n{}", run.stdout);
}

#[test]
fn cloud_init_consumed_the_seed_once_and_the_prepared_debian_13_disk_boots_by_bios() {
    let work = xdriver_tests::workdir();
    // One boot over SSH (the cell's own key, installed over the backdoor;
    // the host key the preparation recorded), after the preparation if no
    // other test has prepared the image yet. The network is Debian's:
    // netplan rendered by cloud-init, run by systemd-networkd.
    let cmd = "cat /var/lib/cloud/data/instance-id; cat /var/lib/cloud/instance/datasource; echo; \
               test -e /etc/cloud/cloud-init.disabled && echo cloud-init-disabled; \
               readlink /proc/$(pgrep -o -f /usr/lib/xdriver/backdoor)/exe; \
               grep -c 'running .init-local.' /var/log/cloud-init.log; id -u debian || echo no-default-user; cat /proc/cmdline; \
               . /etc/os-release; echo \"release=$VERSION_ID\"; systemctl is-active systemd-networkd; ls /etc/netplan; \
               sh -c 'sleep 300 & echo started'";
    let run = xdriver(&["run", "--image", "debian-13-cloud", "--accel", "tcg", "--", cmd], work.path());
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("release=13\nactive\n50-cloud-init.yaml\n"), "{}", run.stdout);
    assert!(run.stdout.ends_with("started\n"), "{}", run.stdout);
}

#[test]
fn the_webapps_example_passes_on_the_debian_12_cloud_image_booted_by_bios() {
    // Every manager the image can carry, both profiles; nginx, s6 and
    // supervisor come from the spec's [guest] table.
    let (run, _work) = webapps("debian-12-cloud", &["--manager", "systemd,s6,supervisord"]);
    assert_all_pass(&run, "debian-12-cloud", &["privileged", "unprivileged"], "Debian 12, BIOS");
}

#[test]
fn the_webapps_example_passes_on_the_debian_13_cloud_image_booted_by_uefi() {
    // Every manager, one profile, to keep CI short (Debian 12 runs both).
    let (run, _work) = webapps("debian-13-cloud", &["--manager", "systemd,s6,supervisord", "--profile", "unprivileged", "--image", "debian-13-cloud=debian-13-cloud-uefi"]);
    assert_all_pass(&run, "debian-13-cloud", &["unprivileged"], "Debian 13, UEFI");
    let check = xdriver_tests::workdir();
    let efi = xdriver(
        &["run", "--image", "debian-13-cloud-uefi", "--accel", "tcg", "--channel", "backdoor", "--", "test -d /sys/firmware/efi && echo booted-by-uefi"],
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
