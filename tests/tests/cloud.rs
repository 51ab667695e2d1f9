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

/// The webapps example on the Debian 12 image: nginx, s6 and supervisor
/// come from the spec's `[guest.os.debian-12-cloud]` table, fetched by the
/// host's apt against the guest's own sources and database and installed
/// at a preparation of their own (cached beside the image's own one);
/// their services stay off at boot. Each manager once (the profiles
/// alternate; Debian 13 under OVMF runs the unprivileged ones too).
#[test]
fn the_webapps_example_passes_on_the_debian_12_cloud_image_booted_by_bios() {
    let cells = [("systemd", "unprivileged"), ("s6", "privileged"), ("supervisord", "unprivileged")];
    for (m, p) in cells {
        let (run, _work) = webapps("debian-12-cloud", &["--manager", m, "--profile", p]);
        assert_eq!(run.code, 0, "Debian 12, BIOS, {m}/{p}:\n{}\n{}", run.stderr, run.stdout);
        assert!(run.stdout.contains(&format!("PASS  debian-12-cloud/{m}/{p}")), "{m}/{p}\n{}", run.stdout);
    }
    // The preparation that applied the table says what it added and disabled.
    let dir = image_dir("debian-12-cloud");
    let metas: Vec<serde_json::Value> = std::fs::read_dir(&dir)
        .expect("image dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("prepared-") && n.to_string_lossy().ends_with(".json")))
        .filter_map(|p| serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok())
        .filter(|m: &serde_json::Value| m["additions"]["packages"][0] == "nginx")
        .collect();
    assert_eq!(metas.len(), 1, "one preparation for the webapps' [guest] table in {}", dir.display());
    let applied = &metas[0]["applied"];
    let added: Vec<&str> = applied["added_packages"].as_array().expect("list").iter().filter_map(|v| v.as_str()).collect();
    for p in ["nginx=", "s6=", "supervisor="] {
        assert!(added.iter().any(|a| a.starts_with(p)), "{p} not added: {added:?}");
    }
    let disabled: Vec<&str> = applied["disabled_services"].as_array().expect("list").iter().filter_map(|v| v.as_str()).collect();
    for s in ["nginx.service", "supervisor.service"] {
        assert!(disabled.contains(&s), "{s} not disabled: {disabled:?}");
    }
}

#[test]
fn the_webapps_example_passes_on_the_debian_13_cloud_image_booted_by_uefi() {
    // Every manager, one profile, to keep CI short (Debian 12 runs both).
    let (run, _work) = webapps("debian-13-cloud", &["--manager", "systemd,s6,supervisord", "--profile", "unprivileged", "--image", "debian-13-cloud=debian-13-cloud-uefi"]);
    assert_all_pass(&run, "debian-13-cloud", &["unprivileged"], "Debian 13, UEFI");
    // The image the cells booted was prepared under OVMF: its preparation's
    // console shows the firmware's boot manager and the kernel's EFI line.
    let dir = image_dir("debian-13-cloud-uefi");
    let logs: Vec<String> = std::fs::read_dir(&dir)
        .expect("image dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".serial.log")))
        .filter_map(|p| std::fs::read(p).ok().map(|b| String::from_utf8_lossy(&b).into_owned()))
        .collect();
    assert!(!logs.is_empty(), "no preparation console in {}", dir.display());
    assert!(logs.iter().all(|l| l.contains("BdsDxe: starting") && l.contains("efi: EFI v")), "not booted by UEFI: {}", dir.display());
}

/// A VM of the (Debian 13) cloud image restored from its RAM snapshot gets
/// its store over virtio-fs hot-plugged (QEMU 7.2 cannot migrate vhost-user-fs, and
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
        let run = xdriver(&["run", "--image", "debian-13-cloud", "--accel", "tcg", "--channel", "backdoor", "--store", store, "--", &cmd], work.path());
        assert_eq!((run.code, run.stdout.as_str()), (0, "hot-plugged\n1\ndone\n"), "run {run_no}: {}", run.stderr);
        assert!(run.stderr.contains("restored from the RAM snapshot"), "run {run_no}: {}", run.stderr);
    }
    // A built image (its kernel booted directly) takes a store over
    // virtio-fs hot-plugged the same way when asked for virtio-fs.
    let run = xdriver(&["run", "--image", "debian-12-systemd", "--accel", "tcg", "--channel", "backdoor", "--share-fs", "virtiofs", "--store", store, "--", &cmd], work.path());
    assert_eq!((run.code, run.stdout.as_str()), (0, "hot-plugged\n1\ndone\n"), "built image: {}", run.stderr);
    assert!(run.stderr.contains("restored from the RAM snapshot"), "built image: {}", run.stderr);
}

/// The Debian 13 cloud image with cloud-init switched off the way Debian
/// documents it (`/etc/cloud/cloud-init.disabled`, written into a copy of
/// the vendor disk's root partition with debugfs, no mounts): nothing will
/// run xdriver's NoCloud seed, so its preparation must end soon after the
/// login prompt, exit 125, saying why, with the console's last lines (not
/// at the 900 s boot deadline), and leave no QEMU and no prepared disk.
#[test]
fn an_image_with_cloud_init_switched_off_fails_its_preparation_early_and_says_why() {
    let work = xdriver_tests::workdir();
    let raw = work.path().join("nocloud.raw");
    let root = work.path().join("root.img");
    let sh = |script: &str| {
        let out = std::process::Command::new("sh").arg("-ec").arg(script).output().expect("sh runs");
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let disk = image_dir("debian-13-cloud").join("disk.qcow2");
    sh(&format!("qemu-img convert -O raw {} {}", disk.display(), raw.display()));
    // The root partition (Linux, type 83) by sfdisk's own numbers.
    let table: serde_json::Value = serde_json::from_str(&sh(&format!("sfdisk -J {}", raw.display()))).expect("sfdisk json");
    let part = table["partitiontable"]["partitions"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["type"] == "83"))
        .unwrap_or_else(|| panic!("no Linux partition: {table}"));
    let (start, size) = (part["start"].as_u64().expect("start"), part["size"].as_u64().expect("size"));
    sh(&format!(
        "dd if={raw} of={root} bs=512 skip={start} count={size} conv=sparse status=none
         debugfs -w -R 'write /dev/null /etc/cloud/cloud-init.disabled' {root} >/dev/null 2>&1
         debugfs -R 'stat /etc/cloud/cloud-init.disabled' {root} 2>/dev/null | grep -q 'Type: regular'
         dd if={root} of={raw} bs=512 seek={start} conv=notrunc,sparse status=none",
        raw = raw.display(),
        root = root.display()
    ));
    let raw_s = raw.to_str().expect("utf-8");
    let import = xdriver(&["image", "import", "debian-13-nocloud", raw_s, "--os", "debian-13-cloud", "--firmware", "bios"], work.path());
    assert_eq!(import.code, 0, "{}", import.stderr);
    let t = std::time::Instant::now();
    let run = xdriver(&["run", "--image", "debian-13-nocloud", "--accel", "tcg", "--", "true"], work.path());
    let took = t.elapsed();
    let dir = image_dir("debian-13-nocloud");
    let prepared: Vec<_> = std::fs::read_dir(&dir).expect("image dir").flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".qcow2") && e.file_name() != "disk.qcow2").collect();
    let _ = xdriver(&["image", "rm", "debian-13-nocloud"], work.path());
    assert_eq!(run.code, 125, "{}", run.stderr);
    assert!(run.stderr.contains("shows no first-boot agent") && run.stderr.contains("cloud-init.disabled"), "{}", run.stderr);
    assert!(run.stderr.contains(" login: "), "the console's last lines, with the prompt: {}", run.stderr);
    assert!(took < std::time::Duration::from_secs(400), "took {took:?}: {}", run.stderr);
    assert!(prepared.is_empty(), "a failed preparation left {prepared:?}");
    // The run's directory is kept (its console and QEMU logs); nothing of
    // it still runs.
    let kept = run.stderr.split("(run directory kept: ").nth(1).and_then(|r| r.split(')').next()).unwrap_or_else(|| panic!("no kept run dir: {}", run.stderr));
    assert!(std::path::Path::new(kept).join("serial.log").is_file(), "{kept}");
    assert!(xdriver_tests::pids_mentioning(kept).is_empty(), "QEMU outlived xdriver: {:?}", xdriver_tests::pids_mentioning(kept));
}
