//! Every init variant of the Debian image, for real under TCG: commands
//! over SSH and the backdoor, file copies both ways, a forwarded port to
//! the guest's nginx, a 9p share, and a clean power-off; and the ACPI
//! power button powering each of them off. The VMs start from the image's
//! RAM snapshot (the first VM of their shape boots cold and saves it), as
//! test cells do; the cold boot of each init is what saves the snapshot,
//! and `failures.rs` and the benchmarks boot cold.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xdriver::vm::qemu::Share;
use xdriver::vm::{Channel, Stopped};
use xdriver_guests::Init;
use xdriver_tests::sha256;

const T: Duration = Duration::from_secs(120);

async fn exercise(init: Init) {
    let share_dir = xdriver_tests::workdir();
    std::fs::write(share_dir.path().join("hello.txt"), format!("hello from the host to {init}\n")).expect("write");
    let share = Share { host: share_dir.path().to_path_buf(), guest: "/mnt/host".into(), writable: false };
    let mut cfg = xdriver_tests::config(init, "init");
    cfg.shares = vec![share];
    cfg.snapshots = true;
    let vm = xdriver_tests::start(cfg).await;
    eprintln!("{init}: {}", vm.how_started());

    // Commands on both channels: stdout, stderr and status kept apart.
    for ch in [Channel::Ssh, Channel::Backdoor] {
        let ok = vm.exec(ch, "echo out-$((6*7)); echo err >&2; cat /proc/1/comm", &[], T, None).await.expect("exec");
        assert_eq!(ok.status, 0, "{init} {ch:?}: {ok:?}");
        assert_eq!(ok.stderr_str(), "err\n", "{init} {ch:?}");
        let expected_pid1 = match init.name() {
            "systemd" => "systemd",
            "runit" => "runit",
            _ => "init",
        };
        assert_eq!(ok.stdout_str(), format!("out-42\n{expected_pid1}\n"), "{init} {ch:?}");
        let bad = vm.exec(ch, "echo partial; exit 7", &[], T, None).await.expect("exec");
        assert_eq!((bad.status, bad.stdout_str().as_str(), bad.stderr.len()), (7, "partial\n", 0), "{init} {ch:?}");
        let input = vm.exec(ch, "tr a-z A-Z", b"stdin reaches the command", T, None).await.expect("exec");
        assert_eq!(input.stdout_str(), "STDIN REACHES THE COMMAND", "{init} {ch:?}");
    }
    eprintln!("{init}: backdoor after {:?}, ssh after {:?}", vm.backdoor_ready_after, vm.ssh_ready_after());

    // A background child that keeps stdout open must not hang the backdoor
    // (the NixOS driver's known hang) nor SSH.
    for ch in [Channel::Backdoor, Channel::Ssh] {
        let t = Instant::now();
        let out = vm.exec(ch, "sh -c 'sleep 600 & echo started'", &[], T, None).await.expect("exec");
        assert_eq!((out.status, out.stdout_str().as_str()), (0, "started\n"), "{ch:?}");
        assert!(t.elapsed() < Duration::from_secs(30), "{ch:?} waited for the background child: {:?}", t.elapsed());
    }

    // Copy a file and a directory in and out; checksums must match.
    let local = xdriver_tests::workdir();
    let payload: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let file = local.path().join("payload.bin");
    std::fs::write(&file, &payload).expect("write");
    std::fs::create_dir_all(local.path().join("tree/sub")).expect("mkdir");
    std::fs::write(local.path().join("tree/sub/a.txt"), b"a\n").expect("write");
    let ssh = vm.ssh().await.expect("ssh");
    ssh.copy_to(&file, "/root/in").await.expect("copy_to file");
    ssh.copy_to(&local.path().join("tree"), "/root/in").await.expect("copy_to dir");
    let sum = vm.exec(Channel::Ssh, "sha256sum /root/in/payload.bin | cut -d' ' -f1; cat /root/in/tree/sub/a.txt", &[], T, None).await.expect("exec");
    assert_eq!(sum.stdout_str(), format!("{}\na\n", sha256(&payload)), "{init}: copy_to checksum");
    vm.exec(Channel::Ssh, "cp /root/in/payload.bin /root/in/back.bin", &[], T, None).await.expect("exec");
    let back = xdriver_tests::workdir();
    let got = ssh.copy_from("/root/in/back.bin", back.path()).await.expect("copy_from file");
    assert_eq!(sha256(&std::fs::read(&got).expect("read")), sha256(&payload), "{init}: copy_from checksum");
    let tree = ssh.copy_from("/root/in/tree", back.path()).await.expect("copy_from dir");
    assert_eq!(std::fs::read(tree.join("sub/a.txt")).expect("read"), b"a\n");

    // Forward a host port to the guest's nginx (not started at boot, so
    // systems under test can have port 80) and fetch its page.
    vm.exec(Channel::Ssh, "nginx; for i in $(seq 100); do nc -z 127.0.0.1 80 && exit 0; sleep 0.2; done; exit 1", &[], T, None)
        .await
        .expect("nginx wait");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let fwd = ssh.forward(listener, 80);
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    sock.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").await.expect("send");
    let mut page = String::new();
    tokio::time::timeout(T, sock.read_to_string(&mut page)).await.expect("page in time").expect("read");
    assert!(page.starts_with("HTTP/1.1 200"), "{init}: {page}");
    assert!(page.contains("Welcome to nginx"), "{init}: {page}");
    fwd.abort();

    // The 9p share: readable, and read-only by default.
    let cat = vm.exec(Channel::Backdoor, "cat /mnt/host/hello.txt", &[], T, None).await.expect("exec");
    assert_eq!(cat.stdout_str(), format!("hello from the host to {init}\n"));
    let w = vm.exec(Channel::Backdoor, "touch /mnt/host/nope", &[], T, None).await.expect("exec");
    assert_ne!(w.status, 0, "{init}: the read-only share accepted a write");
    assert!(!share_dir.path().join("nope").exists());

    let stopped = vm.shutdown().await;
    assert_eq!(stopped, Stopped::GuestPoweroff, "{init}: did not power off from inside");
}

/// The second step of the shutdown: the ACPI power button (QMP
/// `system_powerdown`) must power each image off by itself; busybox's acpid
/// runs the init's power-off command.
async fn power_button(init: Init) {
    let mut cfg = xdriver_tests::config(init, "acpi");
    cfg.ssh = false;
    cfg.snapshots = true;
    // The same shape as `exercise` (one share), so the two restore one
    // snapshot: whichever starts first saves it.
    let share_dir = xdriver_tests::workdir();
    cfg.shares = vec![Share { host: share_dir.path().to_path_buf(), guest: "/mnt/host".into(), writable: false }];
    let vm = xdriver_tests::start(cfg).await;
    // acpid must be reading the button's event device before it is pressed.
    let probe = "for i in $(seq 1 600); do p=$(pgrep -f '^/bin/busybox acpid'); [ -n \"$p\" ] && ls -l /proc/$p/fd | grep -q /dev/input/event && exit 0; sleep 0.2; done; ps -ef; ls -l /dev/input; exit 1";
    let up = vm.exec(Channel::Backdoor, probe, &[], T, None).await.expect("exec");
    assert!(up.success(), "{init}: acpid is not reading an event device:\n{}", up.stdout_str());
    let mut events = vm.qmp.subscribe();
    let pid = vm.pid();
    let t = Instant::now();
    // OpenRC took 44 s to power off on an idle host (it stops every service).
    let off = vm.power_button(Duration::from_secs(180)).await.expect("system_powerdown");
    assert!(off, "{init}: the guest did not power off within 180 s of the ACPI power button\n{}", vm.serial_tail(20));
    eprintln!("{init}: powered off {:?} after the button", t.elapsed());
    // QEMU's SHUTDOWN event says the guest itself shut down.
    let mut reason = None;
    while let Ok(ev) = events.try_recv() {
        if ev["event"] == "SHUTDOWN" {
            reason = Some(ev["data"]["reason"].as_str().unwrap_or_default().to_string());
        }
    }
    assert_eq!(reason.as_deref(), Some("guest-shutdown"), "{init}");
    drop(vm);
    assert!(!xdriver_tests::alive(pid));
}

/// For each init: `exercise` as debian_<init>, `power_button` as
/// power_button_<init>.
macro_rules! per_init {
    ($($init:expr => $exercise:ident, $button:ident;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $exercise() {
                exercise($init).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $button() {
                power_button($init).await;
            }
        )*
    };
}

per_init! {
    Init::SYSTEMD => debian_systemd, power_button_systemd;
    Init::SYSVINIT => debian_sysvinit, power_button_sysvinit;
    Init::OPENRC => debian_openrc, power_button_openrc;
    Init::RUNIT => debian_runit, power_button_runit;
}
