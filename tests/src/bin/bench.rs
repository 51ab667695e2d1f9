//! Benchmarks (figures, not pass/fail): cold boot to first command per
//! init, the driver's overhead against plain QEMU reaching the sshd banner,
//! and median command latency on the persistent SSH channel and the
//! backdoor against a new OpenSSH connection per command.
//!
//! With `--store`, instead: reading one 100 MB file and walking and reading
//! a tree of 10,000 small files through the shared store over virtiofs and
//! over 9p, against the same reads on the guest's own disk.
//!
//! With `--snapshots`, instead: per init, cold boots against restores of
//! the image's RAM snapshot, to the first command and as whole
//! `xdriver run -- true` processes.
//!
//! `cargo run --release -p xdriver-tests --bin xdriver-bench -- [--runs N] [--inits systemd,sysvinit] [--store | --snapshots]`

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xdriver::vm::qemu::{kernel_cmdline, Accel, Boot, QemuSpec};
use xdriver::vm::{Channel, Vm};
use xdriver_guests::Init;
use xdriver_tests::{config, image};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn fmt(v: &[f64]) -> String {
    let s: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
    s.join(" ")
}

/// Plain QEMU with the same machine, kernel, disk and devices, no driver:
/// seconds from spawn until the forwarded port sends an SSH banner.
fn plain_qemu_to_banner(init: Init) -> f64 {
    let entry = image(init);
    let dir = tempfile::tempdir().expect("tempdir");
    let overlay = dir.path().join("ov.qcow2");
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(entry.disk())
        .arg(&overlay)
        .status()
        .expect("qemu-img");
    assert!(ok.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let spec = QemuSpec {
        binary: "qemu-system-x86_64".into(),
        name: "plain".into(),
        accel: Accel::Tcg,
        cpus: 2,
        mem_mib: 1024,
        boot: Boot::Kernel {
            kernel: entry.kernel_initrd().expect("a built image").0,
            initrd: entry.kernel_initrd().expect("a built image").1,
            cmdline: kernel_cmdline(&entry.manifest.init_path, "-", &[]),
        },
        disk: overlay,
        run_dir: dir.path().to_path_buf(),
        shares: Vec::new(),
        forwards: vec![],
        store: None,
        seed: None,
        ram_file: None,
        incoming: false,
        hotplug_virtiofs: false,
    };
    // The same arguments minus -S and the driver's sockets.
    let mut args = Vec::new();
    let mut it = spec.args().into_iter().peekable();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-S" => {}
            "-chardev" | "-mon" | "-serial" => {
                it.next();
            }
            "-netdev" => {
                it.next();
                args.push(a);
                args.push(format!("user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:{}", xdriver_guests::SSH_PORT));
            }
            _ => args.push(a),
        }
    }
    args.extend(["-serial".into(), format!("file:{}", dir.path().join("serial.log").display())]);
    args.extend(["-chardev".into(), "null,id=backdoor".into()]);
    let t = Instant::now();
    let mut child = Command::new("qemu-system-x86_64").args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("qemu");
    let secs = loop {
        if t.elapsed() > Duration::from_secs(180) {
            panic!("plain QEMU: no banner in 180 s");
        }
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(1000)));
            let mut buf = [0u8; 8];
            if s.read_exact(&mut buf).is_ok() && &buf == b"SSH-2.0-" {
                break t.elapsed().as_secs_f64();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    secs
}

/// The store benchmark's data: one 100 MB file and 10,000 files of 1 KiB in
/// 100 directories, under a fresh host directory.
fn store_data() -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix("xdriver-bench-store-").tempdir().expect("tempdir");
    let big: Vec<u8> = (0..100 * 1000 * 1000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    std::fs::write(d.path().join("big"), big).expect("write");
    for i in 0..100 {
        let sub = d.path().join(format!("tree/d{i:02}"));
        std::fs::create_dir_all(&sub).expect("mkdir");
        for j in 0..100 {
            std::fs::write(sub.join(format!("f{j:02}")), vec![b'x'; 1024]).expect("write");
        }
    }
    d
}

/// Guest shell that times (ms) reading `big` and walking and reading
/// `tree` under `dir`, each from a cold guest page cache.
fn io_script(dir: &str) -> String {
    format!(
        "t() {{ sync; echo 3 > /proc/sys/vm/drop_caches; a=$(date +%s%N); \"$@\" >/dev/null; b=$(date +%s%N); echo $(( (b-a)/1000000 )); }}; \
         cd {dir} && t dd if=big of=/dev/null bs=1M && t find tree && t sh -c 'find tree -type f -exec cat {{}} + | wc -c'"
    )
}

async fn store_io(runs: usize) {
    use xdriver::vm::nix_store::{find_virtiofsd, ShareFs, StoreShare};
    let data = store_data();
    let host = data.path().to_path_buf();
    println!("store benchmark: TCG, 2 vCPUs, systemd guest; {} runs, medians in ms (cold guest page cache; all runs listed)", runs);
    println!("data: one 100 MB file, a tree of 10,000 files of 1 KiB in 100 directories");
    println!();
    println!("| where | read 100 MB | walk 10,000 files (find) | read 10,000 files | runs (read / walk / read all) |");
    println!("|---|---|---|---|---|");
    let virtiofsd = find_virtiofsd();
    for (label, fs) in [("virtiofs", Some(ShareFs::Virtiofs)), ("9p (msize 512 KiB)", Some(ShareFs::NineP)), ("guest disk (ext4 on virtio-blk)", None)] {
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs {
            let mut cfg = config(Init::SYSTEMD, &format!("store{i}"));
            cfg.ssh = false;
            let share_fs = fs.unwrap_or(ShareFs::NineP);
            if share_fs == ShareFs::Virtiofs && virtiofsd.is_none() {
                println!("| {label} | n/a (no virtiofsd) | | | |");
                break;
            }
            cfg.store = Some(StoreShare {
                host: host.clone(),
                guest: host.display().to_string(),
                fs: share_fs,
                virtiofsd: if share_fs == ShareFs::Virtiofs { virtiofsd.clone() } else { None },
                os: xdriver_guests::Os::DEBIAN_12,
            });
            let vm = Vm::start(cfg).await.expect("boot");
            let dir = match fs {
                Some(_) => host.display().to_string(),
                None => {
                    // The same data copied onto the guest's own disk.
                    let cp = vm.exec(Channel::Backdoor, &format!("cp -a {} /root/data && sync", host.display()), &[], Duration::from_secs(900), None).await.expect("copy");
                    assert!(cp.success(), "{cp:?}");
                    "/root/data".to_string()
                }
            };
            let out = vm.exec(Channel::Backdoor, &io_script(&dir), &[], Duration::from_secs(900), None).await.expect("io");
            assert!(out.success(), "{out:?}");
            let v: Vec<f64> = out.stdout_str().split_whitespace().map(|x| x.parse().expect("ms")).collect();
            assert_eq!(v.len(), 3, "{}", out.stdout_str());
            a.push(v[0]);
            b.push(v[1]);
            c.push(v[2]);
            vm.kill().await;
        }
        if a.is_empty() {
            continue;
        }
        let runs_text = (0..a.len()).map(|i| format!("{:.0}/{:.0}/{:.0}", a[i], b[i], c[i])).collect::<Vec<_>>().join(", ");
        println!("| {label} | {:.0} | {:.0} | {:.0} | {runs_text} |", median(a.clone()), median(b.clone()), median(c.clone()));
    }
}

/// Seconds from calling `Vm::start` to the first command done over the
/// backdoor and over SSH; how the VM came up.
async fn first_commands(cfg: xdriver::vm::VmConfig) -> (f64, f64, String) {
    let t = Instant::now();
    let vm = Vm::start(cfg).await.expect("boot");
    let out = vm.exec(Channel::Backdoor, "true", &[], Duration::from_secs(60), None).await.expect("first command");
    assert!(out.success());
    let bd = t.elapsed().as_secs_f64();
    let out = vm.exec(Channel::Ssh, "true", &[], Duration::from_secs(60), None).await.expect("first command");
    assert!(out.success());
    let ssh = t.elapsed().as_secs_f64();
    let how = vm.how_started().to_string();
    vm.kill().await;
    (bd, ssh, how)
}

/// `--snapshots`: per init, cold boots against restores of its RAM
/// snapshot (saved first if missing), each to the first command, and
/// `xdriver run -- true` end to end (the process, QEMU's exit included)
/// both ways.
async fn snapshots(runs: usize, inits: &[Init]) {
    println!("xdriver RAM snapshot benchmark: TCG, 2 vCPUs, 1 GiB, no shares, {runs} runs per figure (medians; all runs listed)");
    println!();
    println!("| init | cold: first command, backdoor / SSH (s) | restored: first command, backdoor / SSH (s) | restored / cold (backdoor) | `xdriver run -- true`, cold / restored (s) | runs (cold; restored; run cold; run restored) |");
    println!("|---|---|---|---|---|---|");
    for &init in inits {
        image(init);
        // Make sure the snapshot exists (the save is not timed here).
        let mut cfg = config(init, "snap");
        cfg.snapshots = true;
        let (_, _, how) = first_commands(cfg.clone()).await;
        assert!(how.starts_with("restored"), "{init}: {how}");
        let (mut cold_bd, mut cold_ssh, mut rest_bd, mut rest_ssh, mut run_cold, mut run_rest) = (vec![], vec![], vec![], vec![], vec![], vec![]);
        for i in 0..runs {
            let mut c = config(init, &format!("cold{i}"));
            c.snapshots = false;
            let (b, s, _) = first_commands(c).await;
            cold_bd.push(b);
            cold_ssh.push(s);
            let (b, s, how) = first_commands(cfg.clone()).await;
            assert!(how.starts_with("restored"), "{init}: {how}");
            rest_bd.push(b);
            rest_ssh.push(s);
            for (cold, v) in [(true, &mut run_cold), (false, &mut run_rest)] {
                let image = format!("debian-12-{init}");
                let mut args = vec!["run", "--image", image.as_str(), "--accel", "tcg", "--no-store", "--channel", "backdoor"];
                if cold {
                    args.push("--cold");
                }
                args.extend(["--", "true"]);
                let t = Instant::now();
                let st = Command::new(xdriver_tests::xdriver_bin()).args(&args).stdout(Stdio::null()).stderr(Stdio::null()).status().expect("xdriver run");
                assert!(st.success(), "xdriver {args:?}");
                v.push(t.elapsed().as_secs_f64());
            }
        }
        let ratio = median(rest_bd.clone()) / median(cold_bd.clone());
        println!(
            "| {init} | {:.2} / {:.2} | {:.2} / {:.2} | {ratio:.3} | {:.2} / {:.2} | {}; {}; {}; {} |",
            median(cold_bd.clone()),
            median(cold_ssh.clone()),
            median(rest_bd.clone()),
            median(rest_ssh.clone()),
            median(run_cold.clone()),
            median(run_rest.clone()),
            fmt(&cold_bd),
            fmt(&rest_bd),
            fmt(&run_cold),
            fmt(&run_rest)
        );
    }
}

async fn latency(vm: &Vm, ch: Channel, n: usize) -> f64 {
    let mut v = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let out = vm.exec(ch, "true", &[], Duration::from_secs(60), None).await.expect("exec");
        assert!(out.success());
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    median(v)
}

/// Median ms for xdriver's own SSH connection to an idle guest: TCP, key
/// exchange, public-key authentication and a first `true`.
async fn russh_connect_latency(vm: &Vm, n: usize) -> f64 {
    let mut v = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let s = xdriver::vm::ssh::Ssh::connect(vm.ssh_port, vm.host_key(), vm.client_key(), Duration::from_secs(60)).await.expect("connect");
        let out = s.exec("true", &[], None).await.expect("exec");
        assert!(out.success());
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    median(v)
}

fn openssh_latency(vm: &Vm, n: usize) -> Option<f64> {
    let dir = tempfile::tempdir().ok()?;
    let key = dir.path().join("key");
    std::fs::write(&key, vm.client_key().private_openssh()).ok()?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).ok()?;
    let mut v = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let st = Command::new("ssh")
            .arg("-i")
            .arg(&key)
            .args(["-p", &vm.ssh_port.to_string()])
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=error"])
            .args(["root@127.0.0.1", "true"])
            .status()
            .ok()?;
        if !st.success() {
            return None;
        }
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Some(median(v))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // XDRIVER_LOG=xdriver=debug shows the driver's own timings (banner,
    // key exchange, backdoor) for each boot.
    xdriver::init_logging();
    let mut runs = 3usize;
    let mut inits: Vec<Init> = Init::built().collect();
    let mut snapshots_mode = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--store" => {
                store_io(runs).await;
                return;
            }
            "--snapshots" => snapshots_mode = true,
            "--inits" => {
                inits = args.next().expect("--inits LIST").split(',').map(|s| s.parse().expect("init name")).collect()
            }
            other => panic!("unknown argument {other}"),
        }
    }
    if snapshots_mode {
        snapshots(runs, &inits).await;
        return;
    }
    println!("xdriver benchmark: TCG, 2 vCPUs, 1 GiB, {runs} runs per figure (medians; all runs listed)");
    println!();
    println!("| init | start returned: backdoor ready (s) | first command done, backdoor (s) | first command done, SSH (s) | runs (backdoor / SSH, s) |");
    println!("|---|---|---|---|---|");
    let mut overhead = None;
    for &init in &inits {
        image(init);
        let (mut bd, mut first_bd, mut first_ssh, mut plain) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs {
            // systemd's runs alternate with plain-QEMU boots of the same
            // image (order swapped every run), so drift on the host hits
            // both sides of the overhead ratio alike.
            if init == Init::SYSTEMD && i % 2 == 0 {
                plain.push(plain_qemu_to_banner(init));
            }
            let t = Instant::now();
            let vm = Vm::start(config(init, &format!("bench{i}"))).await.expect("boot");
            bd.push(t.elapsed().as_secs_f64());
            // The first command on each channel, timed from the start of
            // Vm::start; SSH's handshake went on in the background meanwhile.
            let out = vm.exec(Channel::Backdoor, "true", &[], Duration::from_secs(60), None).await.expect("first command");
            assert!(out.success());
            first_bd.push(t.elapsed().as_secs_f64());
            let out = vm.exec(Channel::Ssh, "true", &[], Duration::from_secs(60), None).await.expect("first command");
            assert!(out.success());
            first_ssh.push(t.elapsed().as_secs_f64());
            vm.kill().await;
            if init == Init::SYSTEMD && i % 2 == 1 {
                plain.push(plain_qemu_to_banner(init));
            }
        }
        if init == Init::SYSTEMD {
            overhead = Some((first_bd.clone(), first_ssh.clone(), plain));
        }
        let runs_text = first_bd.iter().zip(&first_ssh).map(|(b, s)| format!("{b:.2}/{s:.2}")).collect::<Vec<_>>().join(" ");
        println!("| {init} | {:.2} | {:.2} | {:.2} | {runs_text} |", median(bd), median(first_bd), median(first_ssh));
    }
    println!();
    if let Some((first_bd, first_ssh, plain)) = overhead {
        let p = median(plain.clone());
        println!("driver overhead (systemd): plain QEMU to the sshd banner {p:.2} s (runs {})", fmt(&plain));
        for (label, driver) in [("first command done over the backdoor", first_bd), ("first command done over SSH", first_ssh)] {
            let d = median(driver.clone());
            // Each run pairs one xdriver boot with one plain boot next to
            // it, so the median of the pairs' ratios is the figure least
            // moved by the host's speed drifting during the benchmark.
            let pairs: Vec<f64> = driver.iter().zip(&plain).map(|(d, p)| d / p).collect();
            let r = median(pairs.clone());
            println!("- xdriver to {label}: {d:.2} s; ratio of medians {:.3}; median of paired ratios {r:.3} ({:+.1} %; pairs {})",
                d / p, (r - 1.0) * 100.0, pairs.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(" "));
        }
        println!();
    }
    let init = inits.first().copied().unwrap_or(Init::SYSTEMD);
    let vm = Vm::start(config(init, "lat")).await.expect("boot");
    let n = 50;
    let s = latency(&vm, Channel::Ssh, n).await;
    let b = latency(&vm, Channel::Backdoor, n).await;
    let o = openssh_latency(&vm, 10);
    let r = russh_connect_latency(&vm, 10).await;
    println!("command latency on {init} (`true`, median): persistent SSH {s:.1} ms ({n} runs), backdoor {b:.1} ms ({n} runs), new OpenSSH connection {} (10 runs), new xdriver SSH connection {r:.0} ms (10 runs)",
        o.map(|x| format!("{x:.0} ms")).unwrap_or_else(|| "n/a (no ssh client)".into()));
    // What one process start costs inside the guest: the floor under any
    // channel that runs each command in a new process.
    let floor = "for c in '/bin/true' 'sh -c true' 'bash -c true'; do t0=$(date +%s%N); i=0; while [ $i -lt 20 ]; do $c; i=$((i+1)); done; t1=$(date +%s%N); echo \"$c $(( (t1-t0)/20000 ))\"; done";
    let out = vm.exec(Channel::Ssh, floor, &[], Duration::from_secs(120), None).await.expect("floor");
    let figures: Vec<String> = out
        .stdout_str()
        .lines()
        .filter_map(|l| l.rsplit_once(' ').map(|(c, us)| format!("`{c}` {:.1} ms", us.parse::<f64>().unwrap_or(0.0) / 1000.0)))
        .collect();
    println!("process start inside the guest (mean of 20, run by bash over SSH): {}", figures.join(", "));
    vm.shutdown().await;
}
