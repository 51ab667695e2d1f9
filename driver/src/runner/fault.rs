//! What broke when a cell is an infrastructure error: its fault class,
//! the lines that show it, and where they are. Worked out from the cell's
//! reason (xdriver's own words, whose phrases are kept stable for this)
//! and the consoles the cell kept, so every report (the terminal line,
//! result.json, report.json, JUnit, HTML) names the same class.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The kinds of infrastructure failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultClass {
    /// The guest did not come up (or came up wrong).
    Boot,
    /// The guest's kernel panicked.
    GuestPanic,
    /// The guest's OOM killer took a process xdriver needed.
    Oom,
    /// The backdoor or SSH connection went away under a command.
    ChannelLost,
    /// A RAM snapshot could not be used.
    Snapshot,
    /// The image (or its disk) is broken or could not be made.
    Image,
    /// No space left on a host device (the cache, the run directory).
    DiskFull,
    /// virtiofsd (a share's server) went away.
    ShareServer,
    /// The driver or the host otherwise (a deadline, a bug, a tool).
    Driver,
}

impl FaultClass {
    /// Its name in reports (`guest-panic`, …).
    pub fn name(self) -> &'static str {
        match self {
            FaultClass::Boot => "boot",
            FaultClass::GuestPanic => "guest-panic",
            FaultClass::Oom => "oom",
            FaultClass::ChannelLost => "channel-lost",
            FaultClass::Snapshot => "snapshot",
            FaultClass::Image => "image",
            FaultClass::DiskFull => "disk-full",
            FaultClass::ShareServer => "share-server",
            FaultClass::Driver => "driver",
        }
    }

    /// In words, for the terminal line and the HTML report.
    pub fn words(self) -> &'static str {
        match self {
            FaultClass::Boot => "the guest did not boot",
            FaultClass::GuestPanic => "the guest kernel panicked",
            FaultClass::Oom => "the guest ran out of memory",
            FaultClass::ChannelLost => "a channel to the guest was lost",
            FaultClass::Snapshot => "a RAM snapshot could not be used",
            FaultClass::Image => "the image is broken",
            FaultClass::DiskFull => "no space left on a host device",
            FaultClass::ShareServer => "a share's server (virtiofsd) died",
            FaultClass::Driver => "the driver or the host",
        }
    }
}

/// An infrastructure failure's class and evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// Its class.
    pub class: FaultClass,
    /// The lines that show it (at most [`EVIDENCE_LINES`]).
    pub evidence: Vec<String>,
    /// Where they are: a file of the cell's results and its lines
    /// (`serial.log:812-830`, `nodes/server/serial.log:40-52`), or None when
    /// they are the reason's own.
    pub log: Option<String>,
}

/// Lines of evidence kept.
pub const EVIDENCE_LINES: usize = 12;

/// The lines of `text` that contain any of `needles`, at most
/// [`EVIDENCE_LINES`].
fn lines_with(text: &str, needles: &[&str]) -> Vec<String> {
    text.lines().filter(|l| needles.iter().any(|n| l.contains(n))).take(EVIDENCE_LINES).map(|l| l.trim_end().to_string()).collect()
}

/// The first console (of `consoles`: the path relative to the results
/// directory and its text) with lines containing any of `needles`: those
/// lines' span, as (evidence, `file:first-last`).
fn in_consoles(consoles: &[(String, String)], needles: &[&str]) -> Option<(Vec<String>, String)> {
    for (name, text) in consoles {
        let lines: Vec<&str> = text.lines().collect();
        let hits: Vec<usize> = (0..lines.len()).filter(|&i| needles.iter().any(|n| lines[i].contains(n))).collect();
        if let (Some(&first), Some(&last)) = (hits.first(), hits.last()) {
            let ev = hits.iter().take(EVIDENCE_LINES).map(|&i| lines[i].trim_end().to_string()).collect();
            return Some((ev, format!("{name}:{}-{}", first + 1, last + 1)));
        }
    }
    None
}

/// A panic in one of `consoles`: its lines from its start, and where.
fn panic_in(consoles: &[(String, String)]) -> Option<(Vec<String>, String)> {
    for (name, text) in consoles {
        let lines: Vec<&str> = text.lines().collect();
        if let Some((start, _)) = crate::vm::find_panic(&lines) {
            let end = (start + EVIDENCE_LINES).min(lines.len());
            return Some((lines[start..end].iter().map(|l| l.trim_end().to_string()).collect(), format!("{name}:{}-{end}", start + 1)));
        }
    }
    None
}

/// The fault of an infrastructure error whose reason is `reason`, given
/// the consoles its cell kept.
pub fn classify(reason: &str, consoles: &[(String, String)]) -> Fault {
    let from_reason = |class: FaultClass, needles: &[&str]| Fault { class, evidence: lines_with(reason, needles), log: None };
    let lower = reason.to_lowercase();
    if lower.contains("deadline") {
        return from_reason(FaultClass::Driver, &["deadline"]);
    }
    if reason.contains("the guest kernel panicked") || reason.contains("Kernel panic - not syncing") {
        return match panic_in(consoles) {
            Some((evidence, log)) => Fault { class: FaultClass::GuestPanic, evidence, log: Some(log) },
            None => from_reason(FaultClass::GuestPanic, &["panic"]),
        };
    }
    if lower.contains("no space left on") {
        return from_reason(FaultClass::DiskFull, &["o space left"]);
    }
    if reason.contains("virtiofsd") && (reason.contains("exited") || reason.contains("died")) {
        return from_reason(FaultClass::ShareServer, &["virtiofsd"]);
    }
    if reason.contains("RAM snapshot") {
        return from_reason(FaultClass::Snapshot, &["snapshot"]);
    }
    if reason.contains("qemu-img") || reason.contains("Image is corrupt") || reason.contains("not in qcow2 format") || reason.contains("image build") || reason.starts_with("image ") {
        return from_reason(FaultClass::Image, &["qemu-img", "image", "Image", "qcow2"]);
    }
    if lower.starts_with("boot:") || reason.contains("did not come up") || reason.contains("while booting") || (lower.starts_with("node ") && lower.contains(": boot:")) {
        return from_reason(FaultClass::Boot, &["boot", "come up", "hung", "panic"]);
    }
    let channel = ["SSH channel closed", "SSH connection", "SSH session", "the backdoor", "backdoor closed", "channel closed", "keepalive"];
    if channel.iter().any(|c| reason.contains(c)) {
        // The OOM killer taking the channel's shell or sshd.
        if let Some((evidence, log)) = in_consoles(consoles, &["Out of memory: Killed process", "oom-kill:"]) {
            return Fault { class: FaultClass::Oom, evidence, log: Some(log) };
        }
        return from_reason(FaultClass::ChannelLost, &channel);
    }
    from_reason(FaultClass::Driver, &[reason.lines().next().unwrap_or("")])
}

/// The consoles a cell's results directory holds: its own serial.log and
/// each node's.
pub fn consoles_of(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut add = |rel: String| {
        if let Ok(b) = std::fs::read(dir.join(&rel)) {
            out.push((rel, String::from_utf8_lossy(&b).into_owned()));
        }
    };
    add("serial.log".into());
    if let Ok(rd) = std::fs::read_dir(dir.join("nodes")) {
        let mut names: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        for n in names {
            add(format!("nodes/{n}/serial.log"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(text: &str) -> Vec<(String, String)> {
        vec![("serial.log".into(), text.into())]
    }

    #[test]
    fn a_panic_is_shown_from_its_cause_with_its_lines_in_the_console() {
        let log = "[ 1.0] ok\n[ 5.1] sysrq: Trigger a crash\n[ 5.1] Kernel panic - not syncing: sysrq triggered crash\n[ 5.1] CPU: 0 PID: 1\n";
        let f = classify("step `echo c > /proc/sysrq-trigger`: the guest kernel panicked while running a command", &console(log));
        assert_eq!(f.class, FaultClass::GuestPanic);
        assert_eq!(f.evidence[0], "[ 5.1] sysrq: Trigger a crash");
        assert!(f.evidence[1].contains("Kernel panic - not syncing"), "{f:?}");
        assert_eq!(f.log.as_deref(), Some("serial.log:2-4"));
    }

    #[test]
    fn each_class_from_xdrivers_words() {
        let none = console("");
        let c = |r: &str| classify(r, &none).class;
        assert_eq!(c("boot: the guest did not come up within 180s: the backdoor shell"), FaultClass::Boot);
        assert_eq!(c("node client: boot: QEMU exited unexpectedly (exit status: 1) while booting"), FaultClass::Boot);
        assert_eq!(c("restoring the RAM snapshot /c/s: the restored guest's backdoor: closed"), FaultClass::Snapshot);
        assert_eq!(c("boot: preparing the VM: qemu-img create: Image is not in qcow2 format"), FaultClass::Image);
        assert_eq!(c("step: SSH channel closed without an exit status"), FaultClass::ChannelLost);
        assert_eq!(c("the VM's disk: No space left on device (os error 28)"), FaultClass::DiskFull);
        assert_eq!(c("image: building image debian-12-sysvinit failed: no space left on the device holding the cache /c"), FaultClass::DiskFull);
        assert_eq!(c("step `ls /nix/store`: virtiofsd for /nix/store exited (signal 9)"), FaultClass::ShareServer);
        assert_eq!(c("xdriver's deadline (--deadline) passed while booting"), FaultClass::Driver);
        assert_eq!(c("xdriver bug: the cell's task panicked: oops"), FaultClass::Driver);
        // A lost channel with the OOM killer in the console is the OOM.
        let oom = console("x\n[ 9.0] Out of memory: Killed process 150 (backdoor) total-vm:2MB\n");
        let f = classify("step: the backdoor closed while running a command", &oom);
        assert_eq!((f.class, f.log.as_deref()), (FaultClass::Oom, Some("serial.log:2-2")));
    }
}
