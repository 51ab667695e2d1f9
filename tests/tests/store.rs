//! The shared store on real VMs under TCG: host store paths run in the
//! guest through virtiofs and 9p, with a writable tmpfs overlay on top, and
//! a derivation built by the host's Nix is used (and known to Nix) in a
//! Nix-enabled guest.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use xdriver::vm::nix_store::{find_virtiofsd, ShareFs, StoreShare};
use xdriver::vm::{Channel, Vm, VmConfig};
use xdriver_guests::Init;
use xdriver_tests::{alive, config, recipe_image, webapp_dir};

const T: Duration = Duration::from_secs(120);

fn nix_store(args: &[&str]) -> String {
    let out = Command::new("nix-store").args(args).output().expect("nix-store runs (scripts/setup-host installs Debian's nix-bin)");
    assert!(out.status.success(), "nix-store {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
}

fn store_share(fs: ShareFs) -> StoreShare {
    let virtiofsd = match fs {
        ShareFs::Virtiofs => Some(find_virtiofsd().expect("virtiofsd installed (scripts/setup-host: cargo install virtiofsd)")),
        ShareFs::NineP => None,
    };
    StoreShare { host: "/nix/store".into(), guest: "/nix/store".into(), fs, virtiofsd, os: xdriver_guests::Os::DEBIAN_12 }
}

async fn run(vm: &Vm, cmd: &str) -> String {
    let out = vm.exec(Channel::Backdoor, cmd, &[], T, None).await.expect("exec");
    assert!(out.success(), "`{cmd}`: {out:?}");
    out.stdout_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webapp_runs_from_the_host_store_over_virtiofs_and_9p() {
    // The webapp binary, added to the host's store as Nix would.
    let webapp = nix_store(&["--add", &webapp_dir().join("xdriver-webapp").display().to_string()]);
    assert!(webapp.starts_with("/nix/store/") && webapp.ends_with("-xdriver-webapp"), "{webapp}");
    for fs in [ShareFs::Virtiofs, ShareFs::NineP] {
        let mut cfg = config(Init::SYSTEMD, &format!("store-{}", fs.name()));
        cfg.store = Some(store_share(fs));
        let vm = Vm::start(cfg).await.unwrap_or_else(|e| panic!("{}: {}", fs.name(), xdriver::cli::chain_error(&e)));
        // Which transport, read-only below, an overlay on top.
        let mounts = run(&vm, "cat /proc/mounts").await;
        let kind = match fs {
            ShareFs::Virtiofs => "virtiofs",
            ShareFs::NineP => "9p",
        };
        assert!(mounts.lines().any(|l| l.starts_with(&format!("xdstore /run/xdriver-store/ro {kind} ro"))), "{mounts}");
        assert!(mounts.lines().any(|l| l.starts_with("overlay /nix/store overlay rw")), "{mounts}");
        // The host-built binary runs from /nix/store and serves.
        let page = run(
            &vm,
            &format!(
                "PORT=5077 {webapp} >/tmp/webapp.log 2>&1 & for i in $(seq 100); do curl -sf http://localhost:5077/ && exit 0; sleep 0.2; done; cat /tmp/webapp.log; exit 1"
            ),
        )
        .await;
        assert!(page.contains("5077"), "{}: {page}", fs.name());
        // The guest adds its own path on the overlay; the host never sees
        // it, and the share itself stays read-only.
        run(&vm, "mkdir /nix/store/guest-made-path && echo x > /nix/store/guest-made-path/f").await;
        assert!(!Path::new("/nix/store/guest-made-path").exists(), "a guest write reached the host store");
        let ro = vm.exec(Channel::Backdoor, "touch /run/xdriver-store/ro/nope", &[], T, None).await.expect("exec");
        assert!(!ro.success(), "{}: the share is writable", fs.name());
        if fs == ShareFs::Virtiofs {
            // virtiofsd runs as nobody and goes with the VM.
            let pid = vm.virtiofsd_pid().expect("virtiofsd running") as i32;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("virtiofsd status");
            let uid = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid line");
            assert!(uid.split_whitespace().skip(1).all(|u| u == "65534"), "virtiofsd is not nobody: {uid}");
            vm.shutdown().await;
            for _ in 0..50 {
                if !alive(pid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(!alive(pid), "virtiofsd {pid} outlived its VM");
        } else {
            vm.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_derivation_built_by_the_host_is_used_and_known_in_a_nix_guest() {
    let expr = xdriver_tests::workdir();
    let file = expr.path().join("hello.nix");
    std::fs::write(
        &file,
        r#"derivation {
  name = "xdriver-store-test";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" ''
    /bin/mkdir -p $out/bin
    printf '#!/bin/sh\necho "built by the host for %s"\n' "$1" > $out/bin/hello
    /bin/chmod +x $out/bin/hello
  '' "sh" "the guest" ];
}
"#,
    )
    .expect("write");
    let out = Command::new("nix-build").arg(&file).arg("--no-out-link").output().expect("nix-build runs");
    assert!(out.status.success(), "nix-build: {}", String::from_utf8_lossy(&out.stderr));
    let path = String::from_utf8(out.stdout).expect("utf-8").trim().to_string();
    assert!(path.starts_with("/nix/store/"), "{path}");
    let hash = nix_store(&["-q", "--hash", &path]);

    let mut cfg = VmConfig::new("t-store-nix-sysvinit", recipe_image("debian-12-nix", Init::SYSVINIT));
    cfg.accel = xdriver::vm::qemu::Accel::Tcg;
    cfg.boot_timeout = Duration::from_secs(150);
    cfg.store = Some(store_share(if find_virtiofsd().is_some() { ShareFs::Virtiofs } else { ShareFs::NineP }));
    let vm = Vm::start(cfg).await.unwrap_or_else(|e| panic!("{}", xdriver::cli::chain_error(&e)));
    assert_eq!(run(&vm, &format!("{path}/bin/hello")).await, "built by the host for the guest\n");
    // The guest's Nix knows the path: same hash, valid, in its closure.
    assert_eq!(run(&vm, &format!("nix-store -q --hash {path}")).await.trim(), hash);
    run(&vm, &format!("nix-store --check-validity {path}")).await;
    assert_eq!(run(&vm, &format!("nix-store -qR {path}")).await.trim(), path);
    // And it can add paths of its own on the overlay.
    let own = run(&vm, "echo guest > /tmp/g && nix-store --add /tmp/g").await;
    assert!(own.trim().starts_with("/nix/store/") && own.trim().ends_with("-g"), "{own}");
    assert!(!PathBuf::from(own.trim()).exists(), "the guest's path reached the host store");
    vm.shutdown().await;
}
