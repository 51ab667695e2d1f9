//! The QEMU command line, built as pure data so it can be snapshot-tested
//! and reproduced (a saved RAM state can only be restored into the same
//! machine shape).
//!
//! xdriver listens on the run directory's sockets and QEMU connects to them
//! as a client, so no output is lost before xdriver is attached and QEMU's
//! start (`-S`, paused) needs no polling for socket files.

use std::path::PathBuf;

/// The accelerator QEMU runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation (only after a boot probe proved it works).
    Kvm,
    /// Software emulation (multi-threaded TCG).
    Tcg,
}

impl Accel {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// How the guest boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// Direct kernel boot.
    Kernel {
        /// Kernel (PVH ELF or bzImage).
        kernel: PathBuf,
        /// Initramfs.
        initrd: PathBuf,
        /// Kernel command line.
        cmdline: String,
    },
    /// The disk's own boot loader (imported images), started by the
    /// firmware.
    Disk {
        /// SeaBIOS, or OVMF's code and this VM's own copy of its variables.
        firmware: Firmware,
    },
}

/// The firmware of a disk boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// QEMU's default SeaBIOS.
    Bios,
    /// UEFI: OVMF as two pflash drives.
    Uefi {
        /// OVMF's code (read-only).
        code: PathBuf,
        /// The VM's writable copy of OVMF's variable store.
        vars: PathBuf,
    },
}

/// OVMF from Debian's `ovmf` package: code and the variable-store
/// template (4 MiB builds).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// See [`OVMF_CODE`].
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// A host directory shared into the guest over 9p.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// Host directory.
    pub host: PathBuf,
    /// Mount point in the guest.
    pub guest: String,
    /// Read-write instead of read-only.
    pub writable: bool,
}

impl Share {
    /// Parses `HOST:GUEST[:rw|:ro]`.
    pub fn parse(s: &str) -> Result<Share, String> {
        let mut parts = s.splitn(3, ':');
        let host = parts.next().filter(|h| !h.is_empty());
        let guest = parts.next().filter(|g| !g.is_empty());
        let (Some(host), Some(guest)) = (host, guest) else {
            return Err(format!("`{s}`: expected HOST:GUEST[:ro|:rw]"));
        };
        let writable = match parts.next() {
            None | Some("ro") => false,
            Some("rw") => true,
            Some(other) => return Err(format!("`{s}`: mode must be ro or rw, not `{other}`")),
        };
        if !guest.starts_with('/') {
            return Err(format!("`{s}`: the guest path `{guest}` must be absolute"));
        }
        let host = std::fs::canonicalize(host).map_err(|e| format!("`{s}`: host path `{host}`: {e}"))?;
        if !host.is_dir() {
            return Err(format!("`{s}`: host path `{}` is not a directory", host.display()));
        }
        Ok(Share { host, guest: guest.to_string(), writable })
    }

    /// The 9p mount tag of the share at `index`.
    pub fn tag(index: usize) -> String {
        format!("xdshare{index}")
    }
}

/// A share as QEMU attaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareDevice {
    /// The share.
    pub share: Share,
    /// The socket of the virtiofsd serving it; None: QEMU's own 9p server.
    pub virtiofs: Option<PathBuf>,
}

/// How the shared store is attached (see [`crate::vm::nix_store`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreDevice {
    /// vhost-user-fs to a running virtiofsd's socket; guest RAM becomes a
    /// shared memfd, which vhost-user needs.
    Virtiofs {
        /// virtiofsd's socket.
        socket: PathBuf,
    },
    /// QEMU's own 9p server, read-only.
    NineP {
        /// Host directory.
        host: PathBuf,
    },
}

/// The 9p `msize` used for shares: large, because the default (8 KiB in
/// QEMU 7.2's guests) makes big reads crawl.
pub const NINEP_MSIZE: u32 = 512 * 1024;

/// Everything that shapes a VM's QEMU invocation.
#[derive(Debug, Clone)]
pub struct QemuSpec {
    /// The QEMU binary.
    pub binary: String,
    /// VM name (shown in `ps` and QMP).
    pub name: String,
    /// Accelerator.
    pub accel: Accel,
    /// vCPUs.
    pub cpus: u32,
    /// RAM.
    pub mem_mib: u32,
    /// Boot path.
    pub boot: Boot,
    /// The VM's copy-on-write overlay.
    pub disk: PathBuf,
    /// The run directory holding the sockets and logs.
    pub run_dir: PathBuf,
    /// Shares, each over 9p or (for guests without 9p) virtio-fs.
    pub shares: Vec<ShareDevice>,
    /// Guest TCP ports forwarded from an ephemeral 127.0.0.1 port.
    pub forwards: Vec<u16>,
    /// The shared store, if any.
    pub store: Option<StoreDevice>,
    /// A NoCloud seed attached as a read-only raw disk (preparation only).
    pub seed: Option<PathBuf>,
    /// Guest RAM in a file (RAM snapshots, see [`crate::vm::snapshot`]):
    /// mapped shared while a snapshot is taken, so the migration stream
    /// skips it (`x-ignore-shared`); mapped private (copy-on-write) when a
    /// cell restores it.
    pub ram_file: Option<RamFile>,
    /// Start waiting for an incoming migration (`-incoming defer`).
    pub incoming: bool,
    /// Leave the virtio-fs devices off the command line: they are
    /// hot-plugged once the VM runs ([`QemuSpec::virtiofs_devices`]), so a
    /// RAM snapshot can be saved and restored without them (QEMU 7.2
    /// cannot migrate vhost-user-fs).
    pub hotplug_virtiofs: bool,
}

/// Guest RAM backed by a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamFile {
    /// The file.
    pub path: PathBuf,
    /// MAP_SHARED (writes reach the file) instead of MAP_PRIVATE.
    pub shared: bool,
}

impl QemuSpec {
    /// The virtio-fs devices (tag, virtiofsd's socket): the shares served
    /// by a virtiofsd, then the store if it is one.
    pub fn virtiofs_devices(&self) -> Vec<(String, PathBuf)> {
        let mut v: Vec<(String, PathBuf)> = self.shares.iter().enumerate().filter_map(|(i, d)| d.virtiofs.clone().map(|s| (Share::tag(i), s))).collect();
        if let Some(StoreDevice::Virtiofs { socket }) = &self.store {
            v.push((crate::vm::nix_store::STORE_TAG.to_string(), socket.clone()));
        }
        v
    }

    /// The argument vector (without the binary).
    pub fn args(&self) -> Vec<String> {
        let rd = |f: &str| self.run_dir.join(f).display().to_string();
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        push(&["-name", &format!("xdriver-{}", self.name)]);
        push(&["-nodefaults", "-no-user-config", "-display", "none", "-S", "-no-reboot"]);
        match self.accel {
            Accel::Tcg => push(&["-machine", "pc", "-accel", "tcg,thread=multi", "-cpu", "max"]),
            Accel::Kvm => push(&["-machine", "pc", "-accel", "kvm", "-cpu", "host"]),
        }
        push(&["-smp", &self.cpus.to_string(), "-m", &self.mem_mib.to_string()]);
        if let Some(f) = &self.ram_file {
            push(&[
                "-object",
                &format!("memory-backend-file,id=mem,size={}M,mem-path={},share={}", self.mem_mib, f.path.display(), if f.shared { "on" } else { "off" }),
                "-numa",
                "node,memdev=mem",
            ]);
        // vhost-user devices (virtio-fs) need guest RAM in shared memory.
        } else if !self.virtiofs_devices().is_empty() {
            push(&[
                "-object",
                &format!("memory-backend-memfd,id=mem,size={}M,share=on", self.mem_mib),
                "-numa",
                "node,memdev=mem",
            ]);
        }
        match &self.boot {
            Boot::Kernel { kernel, initrd, cmdline } => {
                push(&["-kernel", &kernel.display().to_string(), "-initrd", &initrd.display().to_string()]);
                push(&["-append", cmdline]);
            }
            Boot::Disk { firmware: Firmware::Bios } => {}
            Boot::Disk { firmware: Firmware::Uefi { code, vars } } => push(&[
                "-drive",
                &format!("if=pflash,format=raw,unit=0,readonly=on,file={}", code.display()),
                "-drive",
                &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            ]),
        }
        push(&[
            "-drive",
            &format!("file={},if=none,id=disk0,format=qcow2,cache=unsafe,discard=unmap", self.disk.display()),
            "-device",
            "virtio-blk-pci,drive=disk0",
        ]);
        if let Some(seed) = &self.seed {
            push(&[
                "-drive",
                &format!("file={},if=none,id=seed,format=raw,readonly=on", seed.display()),
                "-device",
                "virtio-blk-pci,drive=seed",
            ]);
        }
        let mut netdev = String::from("user,id=net0,restrict=on");
        for port in &self.forwards {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:0-:{port}"));
        }
        push(&["-netdev", &netdev, "-device", "virtio-net-pci,netdev=net0,id=nic0"]);
        push(&["-device", "virtio-rng-pci"]);
        // A new VM generation ID in every QEMU: a guest restored from a RAM
        // snapshot sees it change, and Linux reseeds its RNG at once.
        push(&["-device", "vmgenid,guid=auto"]);
        // A display device so `screendump` has something to capture.
        push(&["-vga", "std"]);
        push(&[
            "-chardev",
            &format!("socket,id=serial0,path={},logfile={},logappend=on", rd("serial.sock"), rd("serial.log")),
            "-serial",
            "chardev:serial0",
        ]);
        push(&[
            "-chardev",
            &format!("socket,id=backdoor,path={}", rd("backdoor.sock")),
            "-device",
            "virtio-serial-pci",
            "-device",
            "virtserialport,chardev=backdoor,name=org.xdriver.backdoor",
        ]);
        push(&["-chardev", &format!("socket,id=qmp,path={}", rd("qmp.sock")), "-mon", "chardev=qmp,mode=control"]);
        for (i, d) in self.shares.iter().enumerate() {
            let tag = Share::tag(i);
            match &d.virtiofs {
                Some(_) if self.hotplug_virtiofs => {}
                Some(socket) => push(&[
                    "-chardev",
                    &format!("socket,id={tag},path={}", socket.display()),
                    "-device",
                    &format!("vhost-user-fs-pci,chardev={tag},tag={tag}"),
                ]),
                None => {
                    let mut v = format!("local,path={},mount_tag={tag},security_model=none,id={tag}", d.share.host.display());
                    if !d.share.writable {
                        v.push_str(",readonly=on");
                    }
                    push(&["-virtfs", &v]);
                }
            }
        }
        match &self.store {
            Some(StoreDevice::Virtiofs { .. }) if self.hotplug_virtiofs => {}
            Some(StoreDevice::Virtiofs { socket }) => push(&[
                "-chardev",
                &format!("socket,id={},path={}", crate::vm::nix_store::STORE_TAG, socket.display()),
                "-device",
                &format!("vhost-user-fs-pci,chardev={t},tag={t}", t = crate::vm::nix_store::STORE_TAG),
            ]),
            Some(StoreDevice::NineP { host }) => push(&[
                "-virtfs",
                &format!("local,path={},mount_tag={t},security_model=none,id={t},readonly=on", host.display(), t = crate::vm::nix_store::STORE_TAG),
            ]),
            None => {}
        }
        if self.incoming {
            push(&["-incoming", "defer"]);
        }
        a
    }
}

/// The kernel command line for a Debian guest.
///
/// Two settings are for speed under TCG, measured on this project's hosts:
/// `acpi=noirq` routes PCI interrupts by the BIOS's table instead of
/// interpreting the ACPI interrupt-link methods for every virtio device
/// (enabling the virtio PCI devices took 1.3-1.5 s of AML, 0.05 s without).
/// Unlike `pci=noacpi` it keeps ACPI's host-bridge windows, so the
/// firmware's BAR assignments stand (with `pci=noacpi` the kernel found
/// them in conflict and left the VGA and I/O-port BARs unassigned);
/// `mitigations=off` drops the speculative-execution workarounds, which
/// protect nothing in a throwaway test guest and cost every system call
/// and context switch (about 1 s less from power-on to sshd);
/// `cryptomgr.notests` skips the kernel's boot-time self-tests of its
/// crypto algorithms (0.45 s of initcalls).
pub fn kernel_cmdline(init_path: &str, ssh_key_b64: &str, extra: &[String]) -> String {
    let mut c = format!(
        "root=/dev/vda rw console=ttyS0,115200 net.ifnames=0 panic=-1 acpi=noirq mitigations=off cryptomgr.notests init={init_path} xdriver.net=10.0.2.15/24,10.0.2.2 xdriver.ssh_key={ssh_key_b64}"
    );
    for e in extra {
        c.push(' ');
        c.push_str(e);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> QemuSpec {
        QemuSpec {
            binary: "qemu-system-x86_64".into(),
            name: "vm1".into(),
            accel: Accel::Tcg,
            cpus: 2,
            mem_mib: 1024,
            boot: Boot::Kernel {
                kernel: "/img/kernel".into(),
                initrd: "/img/initrd.img".into(),
                cmdline: kernel_cmdline("/sbin/init", "S0VZ", &["quiet".into()]),
            },
            disk: "/run/x/overlay.qcow2".into(),
            run_dir: "/run/x".into(),
            shares: vec![ShareDevice { share: Share { host: "/srv".into(), guest: "/mnt".into(), writable: false }, virtiofs: None }],
            forwards: vec![22],
            store: None,
            seed: None,
            ram_file: None,
            incoming: false,
            hotplug_virtiofs: false,
        }
    }

    #[test]
    fn command_line_snapshot() {
        insta::assert_snapshot!(spec().args().join("\n"));
    }

    #[test]
    fn disk_boots_by_bios_or_uefi_with_a_seed() {
        let mut s = spec();
        s.boot = Boot::Disk { firmware: Firmware::Bios };
        s.seed = Some("/run/x/seed.img".into());
        let a = s.args().join(" ");
        assert!(!a.contains("-kernel") && !a.contains("-append") && !a.contains("pflash"), "{a}");
        assert!(a.contains("-drive file=/run/x/seed.img,if=none,id=seed,format=raw,readonly=on -device virtio-blk-pci,drive=seed"), "{a}");
        // The system disk comes first, so it is the first disk the firmware tries.
        assert!(a.find("id=disk0").expect("disk") < a.find("id=seed").expect("seed"), "{a}");
        s.boot = Boot::Disk { firmware: Firmware::Uefi { code: OVMF_CODE.into(), vars: "/run/x/vars.fd".into() } };
        let a = s.args().join(" ");
        assert!(a.contains(&format!("-drive if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE} -drive if=pflash,format=raw,unit=1,file=/run/x/vars.fd")), "{a}");
    }

    #[test]
    fn a_virtiofs_store_makes_guest_ram_a_shared_memfd_and_adds_the_device() {
        let mut s = spec();
        s.store = Some(StoreDevice::Virtiofs { socket: "/run/x/virtiofsd.sock".into() });
        let a = s.args().join(" ");
        assert!(a.contains("-m 1024 -object memory-backend-memfd,id=mem,size=1024M,share=on -numa node,memdev=mem"), "{a}");
        assert!(a.contains("-chardev socket,id=xdstore,path=/run/x/virtiofsd.sock -device vhost-user-fs-pci,chardev=xdstore,tag=xdstore"), "{a}");
        s.store = Some(StoreDevice::NineP { host: "/nix/store".into() });
        let a = s.args().join(" ");
        assert!(!a.contains("memory-backend"), "{a}");
        assert!(a.contains("-virtfs local,path=/nix/store,mount_tag=xdstore,security_model=none,id=xdstore,readonly=on"), "{a}");
    }

    #[test]
    fn a_snapshot_maps_guest_ram_from_a_file_shared_when_saving_and_private_when_restoring() {
        let mut s = spec();
        s.ram_file = Some(RamFile { path: "/c/snap/ram".into(), shared: true });
        let a = s.args().join(" ");
        assert!(a.contains("-m 1024 -object memory-backend-file,id=mem,size=1024M,mem-path=/c/snap/ram,share=on -numa node,memdev=mem"), "{a}");
        assert!(!a.contains("-incoming"), "{a}");
        s.ram_file = Some(RamFile { path: "/c/snap/ram".into(), shared: false });
        s.incoming = true;
        let a = s.args().join(" ");
        assert!(a.contains("mem-path=/c/snap/ram,share=off"), "{a}");
        assert!(a.ends_with("-incoming defer"), "{a}");
    }

    #[test]
    fn hot_plugged_virtiofs_devices_stay_off_the_command_line_but_the_shared_ram_file_does_not() {
        let mut s = spec();
        s.shares[0].virtiofs = Some("/run/x/virtiofsd-xdshare0.sock".into());
        s.store = Some(StoreDevice::Virtiofs { socket: "/run/x/virtiofsd.sock".into() });
        s.ram_file = Some(RamFile { path: "/dev/shm/ram".into(), shared: true });
        s.incoming = true;
        s.hotplug_virtiofs = true;
        let a = s.args().join(" ");
        assert!(!a.contains("vhost-user-fs") && !a.contains("virtiofsd") && !a.contains("memfd"), "{a}");
        assert!(a.contains("mem-path=/dev/shm/ram,share=on -numa node,memdev=mem"), "{a}");
        assert_eq!(
            s.virtiofs_devices(),
            vec![("xdshare0".to_string(), PathBuf::from("/run/x/virtiofsd-xdshare0.sock")), ("xdstore".to_string(), PathBuf::from("/run/x/virtiofsd.sock"))]
        );
        s.hotplug_virtiofs = false;
        assert_eq!(s.args().join(" ").matches("vhost-user-fs-pci").count(), 2);
    }

    #[test]
    fn shares_go_over_virtiofs_for_guests_without_9p() {
        let mut s = spec();
        s.shares[0].virtiofs = Some("/run/x/virtiofsd-xdshare0.sock".into());
        let a = s.args().join(" ");
        assert!(!a.contains("-virtfs"), "{a}");
        assert!(a.contains("-chardev socket,id=xdshare0,path=/run/x/virtiofsd-xdshare0.sock -device vhost-user-fs-pci,chardev=xdshare0,tag=xdshare0"), "{a}");
        assert!(a.contains("memory-backend-memfd"), "{a}");
    }

    #[test]
    fn forwards_bind_loopback_only_and_network_is_restricted() {
        let mut s = spec();
        s.forwards = vec![22, 80];
        let args = s.args().join(" ");
        assert!(args.contains("restrict=on"));
        assert_eq!(args.matches("hostfwd=tcp:127.0.0.1:0-:").count(), 2);
        assert!(!args.contains("hostfwd=tcp::"));
    }

    #[test]
    fn share_parsing() {
        let dir = std::env::temp_dir();
        let d = dir.display();
        let s = Share::parse(&format!("{d}:/mnt/x")).expect("valid");
        assert!(!s.writable);
        assert!(Share::parse(&format!("{d}:/mnt/x:rw")).expect("valid").writable);
        for bad in [format!("{d}"), format!("{d}:rel"), format!("{d}:/m:wx"), "/nonexistent-xd:/m".to_string()] {
            assert!(Share::parse(&bad).is_err(), "{bad}");
        }
    }
}
