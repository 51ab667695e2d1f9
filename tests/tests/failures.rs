//! How the engine behaves when things go wrong, and the heavy-output and
//! concurrency paths, on real VMs under TCG.

use std::time::{Duration, Instant};

use regex::bytes::Regex;
use xdriver::vm::{Channel, Vm, VmError};
use xdriver_guests::Init;
use xdriver_tests::{alive, boot, config, sha256};

const T: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_mib_of_binary_output_is_byte_identical_on_both_channels() {
    let vm = boot(Init::SYSTEMD, "blob", vec![]).await;
    let made = vm
        .exec(Channel::Ssh, "head -c 5242880 /dev/urandom > /root/blob && sha256sum /root/blob | cut -d' ' -f1", &[], T, None)
        .await
        .expect("exec");
    let want = made.stdout_str().trim().to_string();
    assert_eq!(want.len(), 64, "{made:?}");
    for ch in [Channel::Ssh, Channel::Backdoor] {
        let t = Instant::now();
        let out = vm.exec(ch, "cat /root/blob", &[], T, None).await.expect("exec");
        assert_eq!(out.status, 0);
        assert_eq!(out.stdout.len(), 5 * 1024 * 1024, "{ch:?}");
        assert_eq!(sha256(&out.stdout), want, "{ch:?}: bytes differ");
        eprintln!("{ch:?}: 5 MiB in {:?}", t.elapsed());
    }
    // And 1 MiB of binary stdin goes in intact on both channels.
    let input: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 + i / 255) as u8).collect();
    for ch in [Channel::Ssh, Channel::Backdoor] {
        let out = vm.exec(ch, "sha256sum | cut -d' ' -f1", &input, T, None).await.expect("exec");
        assert_eq!(out.stdout_str().trim(), sha256(&input), "{ch:?}: stdin corrupted");
    }
    vm.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_runs_commands_concurrently() {
    let vm = boot(Init::SYSTEMD, "conc", vec![]).await;
    let ssh = vm.ssh().await.expect("ssh");
    let t = Instant::now();
    let runs = (0..4).map(|i| {
        let ssh = ssh.clone();
        async move { ssh.exec(&format!("sleep 3; echo {i}"), &[], None).await }
    });
    let outs = futures_join(runs.collect()).await;
    let took = t.elapsed();
    for (i, o) in outs.into_iter().enumerate() {
        assert_eq!(o.expect("exec").stdout_str(), format!("{i}\n"));
    }
    // Four 3-second commands one after another would take at least 12 s.
    assert!(took < Duration::from_secs(10), "commands did not overlap: {took:?}");
    vm.shutdown().await;
}

async fn futures_join<F>(fs: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_killed_mid_command_fails_fast_and_leaves_nothing() {
    for ch in [Channel::Ssh, Channel::Backdoor] {
        let vm = boot(Init::SYSTEMD, "kill", vec![]).await;
        let pid = vm.pid();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            // SAFETY: sends SIGKILL to the QEMU this test started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        });
        let t = Instant::now();
        let err = vm.exec(ch, "sleep 600", &[], Duration::ZERO, None).await.expect_err("QEMU was killed");
        let waited = t.elapsed();
        assert!(waited < Duration::from_secs(15), "{ch:?}: took {waited:?} to notice");
        assert!(matches!(err, VmError::QemuExited { .. }), "{ch:?}: {err}");
        let msg = err.to_string();
        assert!(msg.contains("QEMU exited unexpectedly") && msg.contains("sleep 600"), "{msg}");
        assert!(!alive(pid), "QEMU {pid} still running");
        drop(vm);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_never_boots_fails_within_its_deadline_with_the_serial_tail() {
    let mut cfg = config(Init::SYSTEMD, "noboot");
    cfg.extra_cmdline = vec!["init=/nonexistent".into()];
    cfg.boot_timeout = Duration::from_secs(25);
    let t = Instant::now();
    let err = Vm::start(cfg).await.expect_err("cannot boot");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(40), "deadline not kept: {took:?}");
    let msg = err.to_string();
    assert!(matches!(err, VmError::BootTimeout { .. }), "{msg}");
    assert!(msg.contains("init /nonexistent not found"), "serial tail missing from: {msg}");
}

/// A kernel panic at boot (here a real one: no initramfs init, no root
/// driver) gets one more boot, cold or saving a snapshot; when that one
/// panics too, the error shows both and both run directories are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kernel_panic_at_boot_gets_one_more_boot_and_both_run_dirs_are_kept() {
    for snapshots in [false, true] {
        let mut cfg = config(Init::SYSTEMD, if snapshots { "panic-save" } else { "panic-cold" });
        cfg.extra_cmdline = vec!["rdinit=/nonexistent".into()];
        cfg.snapshots = snapshots;
        let before = xdriver::vm::rundir::RunDir::existing(&cfg.name);
        let name = cfg.name.clone();
        let err = Vm::start(cfg).await.expect_err("cannot boot");
        let msg = err.to_string();
        assert!(matches!(err, VmError::BootedTwice { .. }), "snapshots {snapshots}: {msg}");
        assert_eq!(err.kernel_panic(), Some("Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"), "{msg}");
        let kept = xdriver::vm::rundir::RunDir::new_since(&name, &before);
        assert_eq!(kept.len(), 2, "snapshots {snapshots}: run directories kept: {kept:?}");
        // The error names the first boot's directory (the second's is
        // the one a caller finds new after the start, as the runner does).
        assert!(kept.iter().any(|d| msg.contains(&format!("run directory {} kept", d.display()))), "{msg}");
        for d in &kept {
            let log = std::fs::read_to_string(d.join("serial.log")).expect("serial.log");
            assert!(log.contains("Kernel panic - not syncing"), "{}", d.display());
            std::fs::remove_dir_all(d).expect("rm");
        }
    }
}

/// A VM started again after a crash boots its own overlay: when that boot
/// panics, it gets one more boot on the same overlay (moved on from the
/// first boot's kept run directory), as a machine boots again after a
/// crash. Here the guest's init is replaced by one that exits, so both
/// boots panic, and the second one's panic shows it booted the same disk
/// (a fresh overlay of the image would have come up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_started_again_whose_kernel_panics_boots_its_own_overlay_once_more() {
    let mut vm = boot(Init::SYSVINIT, "panic-again", vec![]).await;
    let name = "t-panic-again-sysvinit";
    let broken = vm
        .exec(Channel::Backdoor, "mv /sbin/init /sbin/init.real && printf '#!/bin/sh\\nexit 1\\n' >/sbin/init && chmod 755 /sbin/init && sync", &[], T, None)
        .await
        .expect("exec");
    assert_eq!(broken.status, 0, "{broken:?}");
    let before = xdriver::vm::rundir::RunDir::existing(name);
    vm.kill().await;
    let err = vm.start_again().await.expect_err("its init exits: the kernel panics");
    let msg = xdriver::cli::chain_error(&err);
    assert!(matches!(err, VmError::BootedTwice { .. }), "{msg}");
    assert!(err.kernel_panic().is_some_and(|p| p.contains("Attempted to kill init")), "{msg}");
    let kept = xdriver::vm::rundir::RunDir::new_since(name, &before);
    assert_eq!(kept.len(), 2, "run directories kept: {kept:?}");
    // The overlay went from the first boot's directory to the second's.
    assert_eq!(kept.iter().filter(|d| d.join("overlay.qcow2").is_file()).count(), 1, "{kept:?}");
    for d in &kept {
        let log = std::fs::read_to_string(d.join("serial.log")).expect("serial.log");
        assert!(log.contains("Attempted to kill init"), "{}: {log}", d.display());
        std::fs::remove_dir_all(d).expect("rm");
    }
    drop(vm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_text_waits_see_boot_messages_and_time_out_cleanly() {
    let vm = boot(Init::SYSVINIT, "console", vec![]).await;
    let hit = vm
        .wait_for_console_text(&Regex::new(r"xdriver-initramfs: switching to \S+").expect("re"), T)
        .await
        .expect("boot message");
    assert_eq!(hit, "xdriver-initramfs: switching to /sbin/init");
    vm.exec(Channel::Backdoor, "echo marker-$((40+2)) > /dev/ttyS0", &[], T, None).await.expect("exec");
    vm.wait_for_console_text(&Regex::new("marker-42").expect("re"), T).await.expect("marker");
    let err = vm
        .wait_for_console_text(&Regex::new("never-printed").expect("re"), Duration::from_secs(2))
        .await
        .expect_err("no such text");
    assert!(err.to_string().contains("/never-printed/"), "{err}");
    vm.shutdown().await;
}

/// The backdoor (dash here) runs each command, sourced from a file, in a
/// forked subshell: what a separate shell gave for free must still hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backdoor_commands_keep_their_bytes_status_and_deadline() {
    let vm = boot(Init::SYSVINIT, "bdsem", vec![]).await;
    let bd = |cmd: &'static str, timeout: Duration| vm.exec(Channel::Backdoor, cmd, &[], timeout, None);
    // Bytes the framing must carry: quotes, backslashes, tabs, newlines,
    // UTF-8, percent signs.
    // (Commands run in the backdoor's POSIX sh: dash here.)
    let odd = bd("printf '%s|' 'a b' \"q'uote\" 'back\\slash' \"$(printf 'tab\\there')\" 'ünï ✓' '100%' '\\x41'; echo", T).await.expect("exec");
    assert_eq!(odd.stdout_str(), "a b|q'uote|back\\slash|tab\there|ünï ✓|100%|\\x41|\n", "{odd:?}");
    let multi = bd("x=1\nif [ $x = 1 ]; then\n  echo one\nfi\nexit 3", T).await.expect("exec");
    assert_eq!((multi.status, multi.stdout_str().as_str()), (3, "one\n"));
    // A command that replaces the subshell, one with its own EXIT trap, one
    // that takes descriptor 9 (the shell's own wake-up pipe), one that runs
    // in the shell's working directory and sees none of its variables.
    let exec = bd("exec sh -c 'echo via exec; exit 5'", T).await.expect("exec");
    assert_eq!((exec.status, exec.stdout_str().as_str()), (5, "via exec\n"));
    let trap = bd("trap 'echo bye' EXIT; echo hi", T).await.expect("exec");
    assert_eq!((trap.status, trap.stdout_str().as_str()), (0, "hi\nbye\n"));
    let fd9 = bd("exec 9>/tmp/lock; echo locked >&9; cat /tmp/lock", T).await.expect("exec");
    assert_eq!(fd9.stdout_str(), "locked\n");
    let env = bd("pwd; echo \"[${w-}${port-}${cmd_unset-}]\"; echo $HOME", T).await.expect("exec");
    assert_eq!(env.stdout_str(), "/root\n[]\n/root\n");
    // The deadline ends the command and everything it started (its process
    // group), with timeout(1)'s status 124; the shell carries on.
    let t = Instant::now();
    let slow = bd("sleep 300 & echo $! > /tmp/bg.pid; sleep 200; echo never", Duration::from_secs(3)).await.expect("exec");
    let took = t.elapsed();
    assert_eq!(slow.status, 124, "{slow:?}");
    assert!(!slow.stdout_str().contains("never"));
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(20), "took {took:?}");
    let gone = bd("sleep 1; kill -0 $(cat /tmp/bg.pid) 2>/dev/null && echo alive || echo gone", T).await.expect("exec");
    assert_eq!(gone.stdout_str(), "gone\n", "the timed-out command's background child survived");
    // A command that ignores TERM is killed five seconds later.
    let t = Instant::now();
    let stubborn = bd("trap '' TERM; sleep 100", Duration::from_secs(2)).await.expect("exec");
    assert_eq!(stubborn.status, 124);
    let took = t.elapsed();
    assert!(took >= Duration::from_secs(7) && took < Duration::from_secs(25), "took {took:?}");
    let after = bd("echo still here", T).await.expect("exec");
    assert_eq!(after.stdout_str(), "still here\n");
    vm.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssh_failure_in_the_background_is_reported_to_its_users() {
    // The image's pinned host key replaced by another: the guest's real
    // sshd must be refused. SSH is set up in the background, so the failure
    // is either known by the time the backdoor is ready (the start fails)
    // or reported to the first user of SSH; both must name the cause.
    let mut cfg = config(Init::SYSTEMD, "hostkey");
    cfg.image.manifest.ssh_host_key = xdriver::vm::ssh::ClientKey::generate().public_openssh();
    let t = Instant::now();
    let want = "different host key than the image manifest pins";
    match Vm::start(cfg).await {
        Err(e) => {
            let msg = xdriver::cli::chain_error(&e);
            eprintln!("the start failed after {:?}: {msg}", t.elapsed());
            assert!(msg.contains(want), "{msg}");
        }
        Ok(vm) => {
            eprintln!("the start returned after {:?} (backdoor {:?})", t.elapsed(), vm.backdoor_ready_after);
            // The backdoor works regardless.
            let out = vm.exec(Channel::Backdoor, "echo fine", &[], T, None).await.expect("backdoor");
            assert_eq!(out.stdout_str(), "fine\n");
            let e = vm.ssh().await.expect_err("a wrong host key must not be accepted");
            assert!(e.to_string().contains(want), "{e}");
            let e = vm.exec(Channel::Ssh, "true", &[], T, None).await.expect_err("SSH exec must fail");
            assert!(e.to_string().contains(want), "{e}");
            assert_eq!(vm.ssh_ready_after(), None);
            let pid = vm.pid();
            vm.shutdown().await;
            assert!(!alive(pid), "QEMU {pid} outlived the VM");
        }
    }
}
