//! `xdriver run`: boot a fresh VM, run one command (or a shell), shut down.

use std::sync::atomic::Ordering;
use std::time::Duration;

use xdriver_images::ImageName;

use super::args::RunArgs;
use super::error::CliError;
use crate::vm::accel;
use crate::exit;
use crate::vm::output::HostStdio;
use crate::vm::qemu::Share;
use xdriver_guests::shell::quote;
use crate::vm::{Channel, Vm, VmConfig};

use super::HANDLES_SIGNALS;

fn shell_join(words: &[String]) -> String {
    // One word is taken as a shell command line; several are quoted argv.
    if words.len() == 1 {
        words[0].clone()
    } else {
        words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")
    }
}

pub(super) async fn main(args: RunArgs) -> Result<i32, CliError> {
    let shares = args.shares.iter().map(|s| Share::parse(s).map_err(|e| CliError::usage(format!("--share {e}")))).collect::<Result<Vec<_>, _>>()?;
    if args.command.is_empty() && args.channel == Channel::Backdoor && !args.keep {
        return Err(CliError::usage("an interactive shell needs --channel ssh (the backdoor has no terminal)"));
    }
    let cache = xdriver_images::ImageCache::open_default().map_err(|e| CliError::infra(&e))?;
    // What --image names: a derived image (a spec's [guest], booted like
    // the built one it adds to), an imported one, or a built one.
    enum Source {
        Ready(xdriver_images::Entry),
        Imported(xdriver_images::Entry),
        Built(ImageName),
    }
    let source = if let Some(e) = cache.derived(&args.image) {
        Source::Ready(e)
    } else if args.image.contains('+') {
        return Err(CliError::usage(format!(
            "no derived image `{}` in the cache: derived images are built by `xdriver test` from a spec's [guest] table (see `xdriver image list`)",
            args.image
        )));
    } else if let Some(e) = cache.imported(&args.image) {
        Source::Imported(e)
    } else {
        Source::Built(args.image.parse().map_err(|e: xdriver_images::RecipeError| {
            CliError::usage(format!("{e} (or the name of an imported image: see `xdriver image list`)"))
        })?)
    };
    let decision = accel::decide(args.vm.accel, "qemu-system-x86_64", cache.root())
        .await
        .map_err(|e| CliError { code: exit::INFRA, message: e.to_string() })?;
    eprintln!("xdriver: accel {}: {}", decision.accel.name(), decision.reason);
    let (image, disk) = match source {
        Source::Ready(entry) => (entry, crate::vm::DiskUse::Image),
        Source::Imported(entry) => {
            if crate::vm::prepare::lookup(&entry, None).map_err(|e| CliError::infra(&e))?.is_none() {
                eprintln!("xdriver: preparing {} (its first boot, with a NoCloud seed; once per image)", entry.manifest.name);
            }
            let p = crate::vm::prepare::ensure(&cache, &entry, None, decision.accel, args.vm.mem_mib.unwrap_or(super::args::DEFAULT_MEM_MIB)).await.map_err(|e| CliError::infra(&e))?;
            (entry, crate::vm::DiskUse::Prepared { disk: p.disk, host_key: p.host_key })
        }
        Source::Built(name) => (super::image::ensure(&name).await?, crate::vm::DiskUse::Image),
    };
    let mut cfg = VmConfig::new(&format!("run-{}", image.manifest.init), image);
    cfg.disk = disk;
    cfg.accel = decision.accel;
    cfg.cpus = args.vm.cpus.unwrap_or(super::args::DEFAULT_CPUS);
    cfg.mem_mib = args.vm.mem_mib.unwrap_or(super::args::DEFAULT_MEM_MIB);
    cfg.shares = shares;
    cfg.snapshots = !args.vm.cold;
    if let Some(mut plan) = crate::vm::nix_store::StorePlan::from_flags(args.vm.store.as_deref(), args.vm.no_store, args.vm.share_fs).map_err(CliError::usage)? {
        plan.snapshots = !args.vm.cold;
        let os: xdriver_guests::Os = cfg.image.manifest.os.parse().map_err(|e| CliError { code: exit::INFRA, message: format!("image {}: its manifest names {e}", cfg.image.manifest.name) })?;
        let (share, why) = plan.share_for(os).map_err(CliError::usage)?;
        eprintln!("xdriver: store {} over {} ({why})", share.host.display(), share.fs.name());
        cfg.store = Some(share);
    }
    cfg.ssh = args.channel == Channel::Ssh || args.command.is_empty();
    cfg.boot_timeout = Duration::from_secs(args.boot_timeout);
    cfg.extra_cmdline = args.append.clone();
    let wants_ssh = cfg.ssh;
    let mut vm = match Vm::start(cfg).await {
        Ok(vm) => vm,
        Err(e) => return Err(CliError::infra(&e)),
    };
    // Vm::start returns once the backdoor answers; what is run here over
    // SSH (or reached with --keep) needs the SSH connection too. If it
    // fails, that ends the run like any infrastructure failure below.
    let ssh_up = if wants_ssh { vm.ssh().await.map(drop) } else { Ok(()) };
    let status = match ssh_up {
        Err(e) => Err(CliError::infra(&e)),
        Ok(()) => {
            eprintln!(
                "xdriver: {} up in {:.1} s (backdoor {:.1} s; {}), run dir {}",
                args.image,
                vm.ssh_ready_after().map_or(vm.ready_after, |s| s.max(vm.ready_after)).as_secs_f64(),
                vm.backdoor_ready_after.as_secs_f64(),
                vm.how_started(),
                vm.run_dir().display()
            );
            if args.keep {
                return keep(vm, &args).await;
            }
            if args.command.is_empty() {
                match vm.ssh().await {
                    Ok(s) => s.interactive().await.map_err(|e| CliError::infra(&e)),
                    Err(e) => Err(CliError::infra(&e)),
                }
            } else {
                let cmd = shell_join(&args.command);
                let mut sink = HostStdio;
                vm.exec(args.channel, &cmd, &[], Duration::from_secs(args.timeout), Some(&mut sink))
                    .await
                    .map(|o| o.status)
                    .map_err(|e| CliError::infra(&e))
            }
        }
    };
    if status.is_err() || args.keep_logs {
        vm.keep_run_dir();
    }
    let run_dir = vm.run_dir().to_path_buf();
    // The overlay is thrown away, so QEMU just goes; with --keep-logs the
    // overlay is kept, and the guest powers off so that it is clean.
    let stopped = if args.keep_logs { vm.shutdown().await } else { vm.quit().await };
    tracing::info!(?stopped, "VM stopped");
    match status {
        Ok(code) => Ok(code),
        Err(mut e) => {
            e.message.push_str(&format!("\n(logs kept in {})", run_dir.display()));
            Err(e)
        }
    }
}

async fn keep(mut vm: Vm, args: &RunArgs) -> Result<i32, CliError> {
    HANDLES_SIGNALS.store(true, Ordering::SeqCst);
    vm.keep_run_dir();
    let keyfile = vm.run_dir().join("id_ed25519");
    std::fs::write(&keyfile, vm.client_key().private_openssh()).map_err(|e| CliError::infra(&e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&keyfile, std::fs::Permissions::from_mode(0o600));
    }
    if !args.command.is_empty() {
        let mut sink = HostStdio;
        let out = vm.exec(args.channel, &shell_join(&args.command), &[], Duration::from_secs(args.timeout), Some(&mut sink)).await;
        if let Err(e) = out {
            return Err(CliError::infra(&e));
        }
    }
    let rd = vm.run_dir().display().to_string();
    println!("VM {} is up (QEMU pid {}). Reach it with:", vm.name, vm.pid());
    println!("  ssh -i {rd}/id_ed25519 -p {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1", vm.ssh_port);
    println!("  serial log: {rd}/serial.log");
    println!("Press Ctrl-C (or send SIGTERM to {}) to shut it down.", std::process::id());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| CliError::infra(&e))?;
    let mut ex = vm.qmp.subscribe();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
        _ = async { while let Ok(ev) = ex.recv().await { if ev["event"] == "SHUTDOWN" { break; } } } => {},
    }
    eprintln!("xdriver: shutting down {}", vm.name);
    let stopped = vm.shutdown().await;
    eprintln!("xdriver: stopped ({stopped:?})");
    Ok(exit::SUCCESS)
}
