//! Bring-up: QEMU's process and sockets, and the guest until its
//! channels answer (the boot watch gives up early on a hung kernel or a
//! first boot that will not run its seed), the shares and the store
//! mounted, SSH set up in the background.

use super::*;
use super::plan::LaunchPlan;
use super::setup::{Part, Setup};

impl Vm {
    pub(super) async fn launch(cfg: VmConfig, mode: Launch) -> Result<Vm, VmError> {
        let called = Instant::now();
        let mut run = RunDir::create(&cfg.name).map_err(|e| VmError::Prepare(format!("run directory: {e}")))?;
        // Kept if starting fails (logs of a failed boot survive); released
        // once the VM is up.
        run.keep();
        let key = ClientKey::generate();
        let key_b64 = base64::engine::general_purpose::STANDARD.encode(key.public_openssh());
        let m = &cfg.image.manifest;
        // What this launch does, worked out first (pure; plan.rs), then
        // done step by step.
        let mut plan = LaunchPlan::of(&cfg, &mode, run.path(), &key_b64)?;
        let os = plan.os;
        let disk = plan.qemu.disk.clone();
        if let Some(overlay) = &plan.move_overlay {
            std::fs::rename(overlay, &disk).map_err(|e| VmError::Prepare(format!("moving the stopped VM's overlay {}: {e}", overlay.display())))?;
        }
        if let Some(backing) = &plan.overlay_of {
            let out = tokio::process::Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(backing)
                .arg(&disk)
                .output()
                .await
                .map_err(|e| VmError::Prepare(format!("qemu-img: {e}")))?;
            if !out.status.success() {
                return Err(VmError::Prepare(format!("qemu-img create: {}", String::from_utf8_lossy(&out.stderr).trim())));
            }
        }
        if let (Some(template), Boot::Disk { firmware: Firmware::Uefi { vars, .. } }) = (&plan.vars_from, &plan.qemu.boot) {
            std::fs::copy(template, vars).map_err(|e| VmError::Prepare(format!("UEFI needs OVMF (Debian's `ovmf` package): {}: {e}", template.display())))?;
        }
        let (key_over_backdoor, want_ssh, host_key) = (plan.key_over_backdoor, plan.want_ssh, plan.host_key.clone());
        let mut virtiofsd = None;
        let mut share_daemons = Vec::new();
        for d in &plan.daemons {
            let started = if d.store {
                let bin = cfg.store.as_ref().and_then(|st| st.virtiofsd.clone()).ok_or_else(|| VmError::Prepare("virtiofs store without a virtiofsd".into()))?;
                Virtiofsd::start(&bin, &d.host, run.path()).await.map_err(|e| VmError::Prepare(format!("virtiofsd: {e}")))?
            } else {
                let bin = crate::vm::nix_store::find_virtiofsd().ok_or_else(|| {
                    VmError::Prepare(format!(
                        "{os} guests have no 9p, so shares need virtio-fs: install virtiofsd (`cargo install virtiofsd`, or set XDRIVER_VIRTIOFSD)"
                    ))
                })?;
                Virtiofsd::start_named(&bin, &d.host, run.path(), &d.name, d.writable, false)
                    .await
                    .map_err(|e| VmError::Prepare(format!("virtiofsd for {}: {e}", d.host.display())))?
            };
            debug_assert_eq!(started.socket, d.socket, "the plan names the daemon's socket");
            tracing::debug!(pid = ?started.pid(), user = started.user, socket = %started.socket.display(), "virtiofsd started");
            if d.store {
                virtiofsd = Some(started);
            } else {
                share_daemons.push(started);
            }
        }
        let ram_copy = match (&mode, &plan.ram_copy_of) {
            (Launch::Restore(s), Some(from)) => {
                let from = from.clone();
                let copy = tokio::task::spawn_blocking(move || RamCopy::make(&from)).await.map_err(|e| e.to_string()).and_then(|r| r);
                let copy = copy.map_err(|detail| VmError::Hotplug { snapshot: s.dir.clone(), detail })?;
                plan.ram_copy_path(copy.path());
                Some(copy)
            }
            _ => None,
        };
        let _ = std::fs::write(run.join("launch.plan"), plan.describe());
        let spec = plan.qemu.clone();
        let hotplugs = plan.hotplugs.clone();
        let boot_kind = spec.boot.clone();
        if let Launch::Restore(s) = &mode {
            // The console from the saving VM's boot, then this VM's (QEMU
            // appends to the log).
            let mut log = std::fs::read(s.serial_log()).unwrap_or_default();
            log.extend_from_slice(format!("\n[xdriver: restored from the RAM snapshot {}]\n", s.dir.display()).as_bytes());
            std::fs::write(run.join("serial.log"), log).map_err(|e| VmError::Prepare(format!("serial log: {e}")))?;
        }
        let listen = |f: &str| UnixListener::bind(run.join(f)).map_err(|e| VmError::Prepare(format!("socket {f}: {e}")));
        let (l_serial, l_backdoor, l_qmp) = (listen("serial.sock")?, listen("backdoor.sock")?, listen("qmp.sock")?);
        std::fs::write(run.join("qemu.cmdline"), format!("{} {}\n", spec.binary, spec.args().iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")))
            .map_err(|e| VmError::Prepare(e.to_string()))?;
        let stderr_path = run.join("qemu.log");
        let stderr_file = std::fs::File::create(&stderr_path).map_err(|e| VmError::Prepare(e.to_string()))?;
        let mut cmd = tokio::process::Command::new(&spec.binary);
        cmd.args(spec.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr_file)
            .kill_on_drop(true)
            .process_group(0);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            let parent = libc::getpid();
            // The RAM copy's descriptor is close-on-exec everywhere but in
            // this QEMU, which opens it by its number.
            let keep_fd = ram_copy.as_ref().map(|c| std::os::fd::AsRawFd::as_raw_fd(&c.0));
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                if let Some(fd) = keep_fd {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        tracing::debug!(after = ?called.elapsed(), "spawning QEMU");
        let mut child = cmd.spawn().map_err(|e| VmError::Start { detail: format!("{}: {e}", spec.binary), stderr: String::new() })?;
        let pid = child.id().map(|p| p as i32).unwrap_or(-1);
        register(pid, true);
        let (tx, exited) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            register(pid, false);
            let _ = tx.send(Some(status));
        });
        let stderr_of = || std::fs::read_to_string(&stderr_path).unwrap_or_default();

        let accept = async {
            let (a, b, c) = tokio::try_join!(l_serial.accept(), l_backdoor.accept(), l_qmp.accept())?;
            Ok::<_, std::io::Error>((a.0, b.0, c.0))
        };
        let mut ex = exited.clone();
        let (serial, bd, qmp_sock) = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(30), accept) => match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(VmError::Start { detail: e.to_string(), stderr: stderr_of() }),
                Err(_) => return Err(VmError::Start { detail: "QEMU did not connect its sockets within 30 s".into(), stderr: stderr_of() }),
            },
            _ = ex.wait_for(Option::is_some) => {
                let status = exited.borrow().clone().unwrap_or_default();
                return Err(VmError::Start { detail: format!("QEMU exited ({status})"), stderr: stderr_of() });
            }
        };
        tracing::debug!(after = ?called.elapsed(), "QEMU connected its sockets");
        let console = Console::start(serial);
        let backdoor = Backdoor::start(bd);
        let qmp = Qmp::handshake(qmp_sock).await?;
        let ssh_port = qmp.forwarded_port(xdriver_guests::SSH_PORT).await?;
        let mut vm = Vm {
            name: cfg.name.clone(),
            run,
            pid,
            exited,
            qmp,
            console,
            backdoor,
            ssh: None,
            ssh_task: None,
            ssh_go: cfg.ssh_later.then(|| Arc::new(tokio::sync::Notify::new())),
            key,
            ssh_port,
            init: m.init,
            os,
            host_key,
            backdoor_ready_after: Duration::ZERO,
            ready_after: Duration::ZERO,
            share_server_gone: watch_daemons(virtiofsd.iter().chain(share_daemons.iter())),
            virtiofsd,
            _share_daemons: share_daemons,
            shares: cfg.shares.clone(),
            store: cfg.store.clone(),
            config: cfg.clone(),
            start_note: String::new(),
            boot: boot_kind,
        };
        if let Launch::Restore(s) = &mode {
            let restore_err = |detail: String| VmError::Restore { snapshot: s.dir.clone(), detail };
            match vm.until_exit("loading the RAM snapshot", vm.qmp.load_state(&s.state(), Duration::from_secs(60))).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(restore_err(e.to_string())),
                Err(e) => return Err(restore_err(e.to_string())),
            }
            drop(ram_copy);
            for (tag, socket) in &hotplugs {
                if let Err(e) = vm.qmp.hotplug_virtiofs(tag, socket).await {
                    return Err(VmError::Hotplug { snapshot: s.dir.clone(), detail: format!("hot-plugging the virtio-fs device {tag}: {e}") });
                }
            }
        }
        // The vlan NICs, before the guest runs: at a cold boot it finds
        // them as it boots; a restored guest takes them as hot-plugged
        // (the saving VM had none), while it sets itself up.
        if !matches!(mode, Launch::Save(_)) {
            vm.plug_vlans(&cfg.vlans).await.map_err(|e| VmError::Vlan(e.to_string()))?;
        }
        vm.qmp.execute(qapi::qmp::cont {}).await?;
        let t0 = Instant::now();
        tracing::info!(vm = %vm.name, accel = cfg.accel.name(), after = ?called.elapsed(), "VM started");

        // The two channels come up independently. The SSH handshake (key
        // exchange and authentication against a guest still booting: about
        // half a second under TCG) runs in a task of its own, so the VM is
        // ready as soon as the backdoor answers and the shares are mounted;
        // the first user of SSH waits for the rest. (An imported image gets
        // the key over the backdoor first, so its SSH starts after that.)
        if want_ssh && !key_over_backdoor {
            vm.spawn_ssh(t0, cfg.boot_timeout);
        }
        let backdoor_side = async {
            if let Launch::Restore(s) = &mode {
                // The shell announced itself before the save.
                vm.backdoor.assume_ready();
                let epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                let key = if want_ssh { vm.os.authorize_ssh_key(&vm.key.public_openssh()) } else { "true".into() };
                let mut seed = [0u8; 32];
                getrandom(&mut seed);
                let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
                let mut setup = Setup::default();
                setup.push_isolated(Part::Restored, snapshot::after_restore_script(&vm.os.set_clock(epoch), &vm.os.reseed_rng(&hex), &key));
                if !hotplugs.is_empty() {
                    setup.push(Part::VirtiofsWait, vm.os.wait_virtiofs_hotplug(hotplugs.len()).unwrap_or_default());
                }
                vm.mount_and_net_parts(&mut setup, true)?;
                match vm.run_setup(&setup, Some(s)).await {
                    Err(VmError::Backdoor(e)) => return Err(VmError::Restore { snapshot: s.dir.clone(), detail: format!("the restored guest's backdoor: {e}") }),
                    r => r?,
                }
                tracing::debug!(vm = %vm.name, after = ?t0.elapsed(), "set up after the restore");
                return Ok(t0.elapsed());
            }
            let ready = vm.backdoor.wait_ready(cfg.boot_timeout);
            // A guest kernel that hangs early (seen under TCG with two
            // vCPUs: a CPU stuck in a soft lockup, or a lost timer
            // interrupt that RCU reports as a stall) never comes up; its
            // console says so long before the deadline.
            // A preparation's backdoor comes from the NoCloud seed, run by
            // the image's first-boot agent; an image without one (or with
            // the NoCloud datasource off) reaches its login prompt and
            // waits there: said once the prompt is FIRST_BOOT_GRACE old.
            let serial_log = vm.run.join("serial.log");
            let seeded = matches!(cfg.disk, DiskUse::Preparing { .. });
            let hung = async {
                let mut prompt_at: Option<std::time::Instant> = None;
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let Ok(log) = std::fs::read(&serial_log) else { continue };
                    let log = String::from_utf8_lossy(&log);
                    if let Some(why) = kernel_hang(&log) {
                        return format!("the guest kernel hung before the backdoor shell came up ({why}); given up early");
                    }
                    if seeded && prompt_at.is_none() && login_prompt(&log) {
                        prompt_at = Some(std::time::Instant::now());
                    }
                    // No agent on the console by the prompt: none will run
                    // (systemd runs cloud-init before the getty and prints
                    // its lines there; FreeBSD's rc runs nuageinit before
                    // its gettys start).
                    let agent = first_boot_agent_seen(&log);
                    let grace = if agent { FIRST_BOOT_GRACE } else { NO_AGENT_GRACE };
                    if let Some(at) = prompt_at.filter(|at| at.elapsed() >= grace) {
                        return if agent {
                            format!(
                                "the guest reached its login prompt {} s ago, and its first-boot agent ran, but it has not run \
                                 xdriver's NoCloud seed (the user-data that starts the backdoor): its NoCloud datasource is off \
                                 (a datasource_list without NoCloud) or it failed (see the console); given up early",
                                at.elapsed().as_secs()
                            )
                        } else {
                            format!(
                                "the guest reached its login prompt {} s ago and its console shows no first-boot agent (no \
                                 cloud-init or nuageinit line), so nothing will run xdriver's NoCloud seed (the user-data that \
                                 starts the backdoor): the image has no cloud-init (or nuageinit), or it is switched off \
                                 (/etc/cloud/cloud-init.disabled, cloud-init=disabled on the kernel command line); given up early",
                                at.elapsed().as_secs()
                            )
                        };
                    }
                }
            };
            let ready = async {
                tokio::select! {
                    r = ready => Ok(r),
                    why = hung => Err(why),
                }
            };
            match vm.until_exit("waiting for the backdoor shell", ready).await? {
                Ok(Ok(())) => {}
                Err(why) => {
                    return Err(VmError::BootTimeout {
                        waited_for: why,
                        timeout: t0.elapsed(),
                        serial: vm.serial_tail(30),
                    })
                }
                Ok(Err(BackdoorError::NotReady(t))) => {
                    return Err(VmError::BootTimeout {
                        waited_for: "the backdoor shell (virtio-serial port org.xdriver.backdoor) did not announce itself".into(),
                        timeout: t,
                        serial: vm.serial_tail(30),
                    })
                }
                Ok(Err(e)) => return Err(e.into()),
            }
            let after = t0.elapsed();
            if matches!(mode, Launch::Save(_)) {
                return Ok(after);
            }
            let mut setup = Setup::default();
            if want_ssh && key_over_backdoor {
                setup.push_isolated(Part::Key, vm.os.authorize_ssh_key(&vm.key.public_openssh()));
            }
            vm.mount_and_net_parts(&mut setup, true)?;
            vm.run_setup(&setup, None).await?;
            Ok(after)
        };
        vm.backdoor_ready_after = match backdoor_side.await {
            Ok(v) => v,
            // A channel closing during boot is usually QEMU exiting: say so,
            // with its stderr and the serial tail.
            Err(e @ VmError::Backdoor(_)) => {
                if vm.wait_exit(Duration::from_secs(3)).await {
                    return Err(vm.exited_error("booting"));
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        vm.ready_after = t0.elapsed();
        if want_ssh && key_over_backdoor {
            vm.spawn_ssh(t0, cfg.boot_timeout);
        }
        // An SSH set-up that has already failed fails the start, as it
        // would have if the start had waited for it.
        if let Some(rx) = &vm.ssh {
            let failed = matches!(&*rx.borrow(), Some(SshOutcome::TimedOut { .. } | SshOutcome::Failed(_)));
            if failed {
                return Err(vm.ssh().await.expect_err("SSH set-up failed"));
            }
        }
        vm.run.release();
        Ok(vm)
    }

    /// Starts the SSH set-up in the background (see [`Vm::ssh`]).
    fn spawn_ssh(&mut self, t0: Instant, timeout: Duration) {
        let (tx, rx) = watch::channel(None);
        let (port, host_key, key) = (self.ssh_port, self.host_key.clone(), self.key.clone());
        let go = self.ssh_go.clone();
        let task = tokio::spawn(async move {
            if let Some(go) = go {
                go.notified().await;
            }
            let outcome = match Ssh::connect(port, &host_key, &key, timeout).await {
                Ok(s) => SshOutcome::Up(s, t0.elapsed()),
                Err(SshError::Connect { timeout, last, .. }) => SshOutcome::TimedOut { timeout, last },
                Err(e) => SshOutcome::Failed(e.to_string()),
            };
            let _ = tx.send(Some(outcome));
        });
        self.ssh = Some(rx);
        self.ssh_task = Some(task.abort_handle());
    }

    /// Lets an SSH set-up held back by [`VmConfig::ssh_later`] start (a
    /// no-op otherwise, and the second time).
    pub fn begin_ssh(&self) {
        if let Some(go) = &self.ssh_go {
            go.notify_one();
        }
    }

    /// Mounts every share and the store and configures the vlan NICs
    /// again (after a reboot).
    pub(super) async fn mount_shares_and_store(&self) -> Result<(), VmError> {
        let mut setup = Setup::default();
        self.mount_and_net_parts(&mut setup, false)?;
        self.run_setup(&setup, None).await
    }

    /// Registers the host's store paths in the guest's Nix database, so
    /// `nix-store` there knows what the shared store holds (the NixOS
    /// driver registers its closure the same way).
    pub(super) async fn load_host_nix_db(&self, s: &StoreShare) -> Result<(), VmError> {
        let share = s.clone();
        let db = tokio::task::spawn_blocking(move || host_nix_db(&share)).await.ok().flatten();
        if let Some(db) = db {
            let t = Instant::now();
            let load = self.exec(Channel::Backdoor, "nix-store --load-db", &db, Duration::from_secs(120), None).await?;
            if !load.success() {
                return Err(VmError::Share {
                    host: s.host.clone(),
                    guest: s.guest.clone(),
                    detail: format!("registering the host's store paths (nix-store --load-db): {}", load.stderr_str().trim()),
                });
            }
            tracing::debug!(bytes = db.len(), took = ?t.elapsed(), "host store paths registered in the guest's Nix database");
        }
        Ok(())
    }

    /// A setup command on the backdoor while the VM comes up.
    pub(super) async fn setup_exec_within(&self, cmd: &str, timeout: Duration) -> Result<Output, VmError> {
        // Rarely (seen on sysvinit guests under load, at the moment the
        // serial getty starts) the backdoor shell is replaced by a new one
        // while this first command runs; the new shell has announced itself
        // by the time that is reported, so try again on it.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.exec(Channel::Backdoor, cmd, &[], timeout, None).await {
                Err(VmError::Backdoor(BackdoorError::Restarted)) if attempt < 3 => {
                    tracing::warn!(vm = %self.name, attempt, "backdoor restarted during setup; retrying");
                }
                other => return other,
            }
        }
    }
}

/// A receiver set to a daemon's name and share when one of `daemons`
/// exits (its process gone or a zombie), polled every 250 ms.
fn watch_daemons<'a>(daemons: impl Iterator<Item = &'a Virtiofsd>) -> watch::Receiver<Option<String>> {
    let (tx, rx) = watch::channel(None);
    let watched: Vec<(u32, String)> = daemons.filter_map(|d| d.pid().map(|p| (p, format!("virtiofsd {} (pid {p})", d.socket.display())))).collect();
    if !watched.is_empty() {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if tx.is_closed() {
                    return;
                }
                let dead = watched.iter().find(|(pid, _)| {
                    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z')).unwrap_or(true)
                });
                if let Some((_, name)) = dead {
                    let _ = tx.send(Some(name.clone()));
                    return;
                }
            }
        });
    }
    rx
}

/// How long a preparation waits for the seed's backdoor after the guest
/// showed its login prompt: cloud-init's final stage (which runs the
/// seed's commands) starts as the serial getty does and took under 30 s
/// to the backdoor on the Debian cloud images under TCG.
const FIRST_BOOT_GRACE: Duration = Duration::from_secs(180);

/// The same wait when the console has shown no first-boot agent at all by
/// the prompt: a little time for a late line, no more.
const NO_AGENT_GRACE: Duration = Duration::from_secs(20);

/// Whether a console log shows a first-boot agent at work: cloud-init's
/// units or its own lines (`cloud-init[PID]: Cloud-init v. …`), or
/// FreeBSD's nuageinit.
pub fn first_boot_agent_seen(log: &str) -> bool {
    log.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("cloud-init") || l.contains("nuageinit")
    })
}

/// Whether a console log shows a getty's login prompt (`host login: `, or
/// FreeBSD's `login: ` on a line of its own).
pub fn login_prompt(log: &str) -> bool {
    log.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("login: ") || l.split_once(" login: ").is_some_and(|(host, _)| !host.is_empty() && !host.contains(char::is_whitespace))
    })
}

/// How many reports of a stuck guest kernel, and over how long (by the
/// kernel's own timestamps), mean it hung: the soft-lockup watchdog
/// reports every ~28 s and RCU's stall detector every ~21 s while a CPU
/// stays stuck, so three reports 40 s apart or more are a kernel that made
/// no progress for over a minute. (One stall of the host can make each
/// vCPU and RCU report at once: a burst is not a hang.)
const HANG_REPORTS: usize = 3;
const HANG_SPAN_S: f64 = 40.0;

/// Whether a kernel console log shows a hung kernel: [`HANG_REPORTS`]
/// soft-lockup or RCU-stall reports spanning [`HANG_SPAN_S`] or more.
/// Returns the last report's line.
pub fn kernel_hang(log: &str) -> Option<String> {
    let reports: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("BUG: soft lockup - CPU#") || l.contains("detected stalls on CPUs") || l.contains("self-detected stall on CPU"))
        .collect();
    // "[   28.773646] watchdog: …" -> 28.773646
    let stamp = |l: &str| l.trim_start().strip_prefix('[').and_then(|r| r.split_once(']')).and_then(|(t, _)| t.trim().parse::<f64>().ok());
    let span = match (reports.first().and_then(|l| stamp(l)), reports.last().and_then(|l| stamp(l))) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    (reports.len() >= HANG_REPORTS && span >= HANG_SPAN_S).then(|| {
        let last = reports[reports.len() - 1];
        // Without the timestamp and the "rcu: INFO:"/"watchdog:" prefix.
        let text = last.rsplit_once("] ").map_or(last, |(_, t)| t);
        format!("{} kernel reports like \"{}\"", reports.len(), text.trim())
    })
}


/// A copy of a snapshot's RAM file in a memfd, which a restored VM maps
/// shared (vhost-user needs guest RAM in shared memory; the snapshot's own
/// file must stay as it is). Only the file's data is copied, so the
/// memfd's holes stay holes. A memfd, not a file in /dev/shm: it is not
/// held to the tmpfs's size, and nothing of it outlives the processes
/// that hold it (an interrupted run leaves nothing behind). QEMU gets it
/// as an inherited descriptor, `/proc/self/fd/N`.
struct RamCopy(std::os::fd::OwnedFd);

impl RamCopy {
    fn make(from: &std::path::Path) -> Result<RamCopy, String> {
        use std::os::fd::{AsRawFd, FromRawFd};
        use std::os::unix::fs::FileExt;
        let src = std::fs::File::open(from).map_err(|e| format!("{}: {e}", from.display()))?;
        let len = src.metadata().map_err(|e| format!("{}: {e}", from.display()))?.len();
        // SAFETY: memfd_create with a NUL-terminated name; the descriptor
        // it returns is owned here alone.
        let fd = unsafe { libc::memfd_create(c"xdriver-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a new descriptor nobody else owns.
        let dst = std::fs::File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        dst.set_len(len).map_err(|e| format!("sizing the RAM copy: {e}"))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut pos: u64 = 0;
        while pos < len {
            // The next data extent (SEEK_DATA/SEEK_HOLE; ENXIO: no more data).
            // SAFETY: lseek on a descriptor this function holds open.
            let data = unsafe { libc::lseek(src.as_raw_fd(), pos as libc::off_t, libc::SEEK_DATA) };
            if data < 0 {
                break;
            }
            let hole = unsafe { libc::lseek(src.as_raw_fd(), data, libc::SEEK_HOLE) };
            let end = if hole < 0 { len } else { (hole as u64).min(len) };
            let mut at = data as u64;
            while at < end {
                let want = buf.len().min((end - at) as usize);
                let n = src.read_at(&mut buf[..want], at).map_err(|e| format!("reading the snapshot's RAM: {e}"))?;
                if n == 0 {
                    break;
                }
                dst.write_all_at(&buf[..n], at).map_err(|e| format!("copying the snapshot's RAM: {e}"))?;
                at += n as u64;
            }
            pos = end.max(at);
        }
        Ok(RamCopy(dst.into()))
    }

    /// The path QEMU maps it by (in QEMU's own /proc, the same number).
    fn path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.0.as_raw_fd()))
    }
}

#[cfg(test)]
mod tests {
    use super::kernel_hang;

    // Lines from two boots that hung under TCG (Debian 12's 6.1 kernels, two
    // vCPUs, QEMU 7.2): a soft lockup in the crypto self-tests, and CPU 0
    // idling with its timer interrupt lost.
    const LOCKUP: &str = "[    4.707615] io scheduler mq-deadline registered\n[   28.773646] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [cryptomgr_test:50]\n[   28.776737] RIP: 0010:alg_test+0x4f/0x540\n";
    const LOCKUP2: &str = "[   56.773208] watchdog: BUG: soft lockup - CPU#0 stuck for 52s! [cryptomgr_test:50]\n";
    const LOCKUP3: &str = "[   84.773366] watchdog: BUG: soft lockup - CPU#0 stuck for 78s! [cryptomgr_test:50]\n";
    const STALL: &str = "[   22.705481] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n[   22.706219] rcu: \t0-...!: (4 GPs behind) idle=f580/0/0x0 softirq=40/45 fqs=1 (false positive?)\n";
    const STALL2: &str = "[   43.729395] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n";
    const STALL3: &str = "[   64.753371] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n";

    #[test]
    fn a_first_boot_agent_is_seen_by_its_units_or_its_lines() {
        use super::first_boot_agent_seen;
        assert!(first_boot_agent_seen("[   46.2] cloud-init[549]: Cloud-init v. 25.1.4 running 'init-local'\n"));
        assert!(first_boot_agent_seen("         Starting \x1b[0;1;39mcloud-init-local.service\x1b[0m\n"));
        assert!(first_boot_agent_seen("Starting nuageinit.\n"));
        assert!(!first_boot_agent_seen("[  OK  ] Reached target getty.target\r\nxdriver login: "));
    }

    #[test]
    fn a_login_prompt_is_told_from_other_lines_with_login_in_them() {
        use super::login_prompt;
        assert!(login_prompt("[  OK  ] Reached target getty.target\r\nxdriver login: [  164.175288] systemd-ssh-generator[734]: x\n"));
        assert!(login_prompt("FreeBSD/amd64 (freebsd) (ttyu0)\n\nlogin: "));
        assert!(!login_prompt("[  OK  ] Started systemd-logind.service - User Login Management.\n"));
        assert!(!login_prompt("Debian GNU/Linux 13 xdriver ttyS0\n\n"));
        assert!(!login_prompt("pam_unix(login:session): session opened\n"));
    }

    #[test]
    fn three_lockup_or_stall_reports_over_40_s_are_a_hang_fewer_or_a_burst_are_not() {
        assert_eq!(kernel_hang("[    0.000000] Linux version 6.1.0\n[    3.0] Run /init as init process\n"), None);
        assert_eq!(kernel_hang(&format!("{LOCKUP}{LOCKUP2}")), None, "two reports may be a starved host");
        assert_eq!(
            kernel_hang(&format!("{LOCKUP}{LOCKUP2}{LOCKUP3}")).as_deref(),
            Some("3 kernel reports like \"watchdog: BUG: soft lockup - CPU#0 stuck for 78s! [cryptomgr_test:50]\"")
        );
        assert_eq!(kernel_hang(&format!("{STALL}{STALL2}{STALL3}")).as_deref(), Some("3 kernel reports like \"rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\""));
        // One host stall reported by RCU and by both vCPUs' watchdogs within
        // seconds (22.7 to 28.8 s) is no hang.
        let burst = format!("{STALL}{LOCKUP}[   28.801000] watchdog: BUG: soft lockup - CPU#1 stuck for 24s! [swapper/1:0]\n");
        assert_eq!(kernel_hang(&burst), None);
        assert!(kernel_hang(&format!("{burst}{STALL3}")).is_some(), "22.7 to 64.8 s");
    }
}

