//! The backdoor script exactly as a Debian image gets it, run by dash (a
//! plain POSIX sh, no bash features) on the host, with a pty standing in
//! for the virtio-serial port, and driven by the real host side
//! ([`xdriver::vm::backdoor::Backdoor`]). The same script in real guests is
//! tested in tests/tests/inits.rs and failures.rs. The FreeBSD variant
//! (no FreeBSD guest can be had here) runs the same way under busybox ash
//! (an ash like FreeBSD's /bin/sh, and stricter than dash), with FreeBSD's
//! b64encode/b64decode and `stat -f %z` given by small shims over their
//! GNU counterparts (bind-mounted over /usr/local/bin in a mount
//! namespace of the shell's own: needs root, as the suite does): its shell
//! is executed, not only parsed. (posh, pdksh's strict descendant, runs
//! it too, but its `wait PID` sometimes returns 1 at once when another
//! child was reaped just before, so a command's status and output are lost
//! there; FreeBSD's sh is an ash, whose `wait` waits.)

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use xdriver::vm::backdoor::Backdoor;
use xdriver::vm::output::Sink;
use xdriver_guests::{backdoor_script, Os};

const T: Duration = Duration::from_secs(30);

struct Harness {
    backdoor: Backdoor,
    shell: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        // The script's whole process group: its watchdog and any command
        // still running outlive the shell otherwise.
        // SAFETY: kill(2) of the process group this harness made for it.
        unsafe { libc::kill(-(self.shell.id() as i32), libc::SIGKILL) };
        let _ = self.shell.wait();
    }
}

/// A pty pair in raw mode: (master, slave path).
fn raw_pty() -> (OwnedFd, OwnedFd, String) {
    let (mut master, mut slave) = (0, 0);
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: openpty writes the two descriptors and the name (128 bytes
    // is more than any pts path); termios and winsize may be null.
    let rc = unsafe { libc::openpty(&mut master, &mut slave, name.as_mut_ptr(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and are ours.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // SAFETY: a zeroed termios is a valid buffer for tcgetattr to fill.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: the slave fd is open; t is a valid termios.
    unsafe {
        assert_eq!(libc::tcgetattr(std::os::fd::AsRawFd::as_raw_fd(&slave), &mut t), 0);
        libc::cfmakeraw(&mut t);
        assert_eq!(libc::tcsetattr(std::os::fd::AsRawFd::as_raw_fd(&slave), libc::TCSANOW, &t), 0);
    }
    // SAFETY: openpty NUL-terminated the name.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
    (master, slave, path)
}

/// dash running the Debian image's backdoor script on a pty, bridged to
/// a socket that the host side reads as it reads QEMU's chardev.
async fn start() -> Harness {
    start_with(&["dash"], Os::DEBIAN_12, false).await
}

/// FreeBSD's b64encode/b64decode and `stat -f %z` over GNU coreutils, for
/// running the FreeBSD backdoor on this host.
fn freebsd_shims(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("freebsd-shims");
    std::fs::create_dir_all(&bin).expect("mkdir");
    for (name, body) in [
        ("b64encode", "#!/bin/sh
# b64encode -r - : raw base64 of stdin
exec base64
"),
        ("b64decode", "#!/bin/sh
# b64decode -r : raw base64 on stdin
exec base64 -d
"),
        ("stat", "#!/bin/sh
# stat -f %z FILE : its size
[ \"$1\" = -f ] && [ \"$2\" = %z ] && exec /usr/bin/stat -c %s \"$3\"\nexec /usr/bin/stat \"$@\"\n"),
    ] {
        std::fs::write(bin.join(name), body).expect("write shim");
        std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    bin
}

/// `shell` (argv before `-c`) running `os`'s backdoor script on a pty.
async fn start_with(shell: &[&str], os: Os, shims: bool) -> Harness {
    let (master, slave, path) = raw_pty();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = if shims {
        // The script sets its own PATH (/usr/local/bin first): the shims
        // are bind-mounted over /usr/local/bin in a mount namespace of the
        // shell's own, so nothing else on the host sees them.
        let bin = freebsd_shims(dir.path());
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c", "mount --bind \"$0\" /usr/local/bin && exec \"$@\""]).arg(&bin).args(shell);
        c
    } else {
        let mut c = Command::new(shell[0]);
        c.args(&shell[1..]);
        c
    };
    let shell = cmd
        .arg("-c")
        .arg(backdoor_script(&*os))
        .env("XDRIVER_BACKDOOR_PORT", &path)
        .env("XDRIVER_BACKDOOR_DIR", dir.path().join("bd"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("the shell runs");
    // The slave stays open here so the pty keeps its raw settings.
    std::mem::forget(slave);
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let mut from_pty = std::fs::File::from(master.try_clone().expect("dup"));
    let mut to_pty = std::fs::File::from(master);
    let mut sock_r = theirs.try_clone().expect("dup");
    let mut sock_w = theirs;
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok(n) = from_pty.read(&mut buf) {
            if n == 0 || sock_w.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok(n) = sock_r.read(&mut buf) {
            if n == 0 || to_pty.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    ours.set_nonblocking(true).expect("nonblocking");
    let backdoor = Backdoor::start(tokio::net::UnixStream::from_std(ours).expect("tokio stream"));
    backdoor.wait_ready(T).await.expect("the script announced itself");
    Harness { backdoor, shell, _dir: dir }
}

#[derive(Default)]
struct Collect {
    chunks: Vec<(Instant, Vec<u8>)>,
    err: Vec<u8>,
}

impl Sink for Collect {
    fn stdout(&mut self, data: &[u8]) {
        self.chunks.push((Instant::now(), data.to_vec()));
    }
    fn stderr(&mut self, data: &[u8]) {
        self.err.extend_from_slice(data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_posix_backdoor_keeps_streams_status_stdin_and_odd_bytes_apart() {
    let h = start().await;
    streams_status_stdin_and_odd_bytes(&h.backdoor).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_freebsd_backdoor_runs_under_busybox_ash() {
    for shell in [&["busybox", "ash"][..]] {
        let h = start_with(shell, Os::FREEBSD, true).await;
        streams_status_stdin_and_odd_bytes(&h.backdoor).await;
        let late = h.backdoor.exec("echo one; sleep 1; echo two", &[], T, None).await.expect("exec");
        assert_eq!(late.stdout_str(), "one\ntwo\n", "{shell:?}");
        let slow = h.backdoor.exec("sleep 200; echo never", &[], Duration::from_secs(1), None).await.expect("exec");
        assert_eq!(slow.status, 124, "{shell:?}: {slow:?}");
    }
}

async fn streams_status_stdin_and_odd_bytes(bd: &Backdoor) {
    let ok = bd.exec("echo out-$((6*7)); echo err >&2; exit 3", &[], T, None).await.expect("exec");
    assert_eq!((ok.status, ok.stdout_str().as_str(), ok.stderr_str().as_str()), (3, "out-42\n", "err\n"));
    let input: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let cat = bd.exec("cat", &input, T, None).await.expect("exec");
    assert!(cat.stdout == input, "stdin did not come back byte for byte ({} of {} bytes)", cat.stdout.len(), input.len());
    let odd = bd.exec("printf '%s|' 'a b' \"q'uote\" 'back\\slash' 'ünï ✓' '100%' '\\x41'; echo", &[], T, None).await.expect("exec");
    assert_eq!(odd.stdout_str(), "a b|q'uote|back\\slash|ünï ✓|100%|\\x41|\n");
    let multi = bd.exec("x=1\nif [ $x = 1 ]; then\n  echo one\nfi\n\n\n", &[], T, None).await.expect("exec");
    assert_eq!((multi.status, multi.stdout_str().as_str()), (0, "one\n"));
    // Nothing of the script's own state leaks into a command.
    let env = bd.exec("pwd; echo \"[${w-}${port-}${cmd-}${out-}]\"", &[], T, None).await.expect("exec");
    assert_eq!(env.stdout_str(), "/root\n[]\n");
    // Output a background child keeps writing goes to a file of its own
    // command, never into the next command's output.
    let t = Instant::now();
    let bg = bd.exec("(sleep 1; echo late) & echo started", &[], T, None).await.expect("exec");
    assert_eq!(bg.stdout_str(), "started\n");
    assert!(t.elapsed() < Duration::from_secs(1), "waited for the background child: {:?}", t.elapsed());
    let next = bd.exec("sleep 2; echo next", &[], T, None).await.expect("exec");
    assert_eq!(next.stdout_str(), "next\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_posix_backdoor_ends_a_command_and_its_children_at_the_deadline() {
    let h = start().await;
    let bd = &h.backdoor;
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("bg.pid");
    let cmd = format!("sleep 300 & echo $! > {}; sleep 200; echo never", pidfile.display());
    let t = Instant::now();
    let slow = bd.exec(&cmd, &[], Duration::from_secs(2), None).await.expect("exec");
    let took = t.elapsed();
    assert_eq!(slow.status, 124, "{slow:?}");
    assert!(!slow.stdout_str().contains("never"));
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(10), "took {took:?}");
    let pid: i32 = std::fs::read_to_string(&pidfile).expect("pid").trim().parse().expect("a pid");
    // Dead means gone or a zombie (its new parent, PID 1, reaps it when
    // it gets round to it).
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')).unwrap_or(false))
            .unwrap_or(false)
    };
    let t = Instant::now();
    while alive() {
        assert!(t.elapsed() < Duration::from_secs(5), "the timed-out command's background child {pid} survived");
        std::thread::sleep(Duration::from_millis(50));
    }
    // One that ignores TERM is killed five seconds later.
    let t = Instant::now();
    let stubborn = bd.exec("trap '' TERM; sleep 100", &[], Duration::from_secs(1), None).await.expect("exec");
    assert_eq!(stubborn.status, 124);
    assert!(t.elapsed() >= Duration::from_secs(6), "took {:?}", t.elapsed());
    assert_eq!(bd.exec("echo still here", &[], T, None).await.expect("exec").stdout_str(), "still here\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_posix_backdoor_streams_output_as_it_comes() {
    let h = start().await;
    let mut sink = Collect::default();
    let t = Instant::now();
    let out = h.backdoor.exec("echo one; sleep 1; echo two >&2; echo three", &[], T, Some(&mut sink)).await.expect("exec");
    assert_eq!(out.status, 0);
    let all: Vec<u8> = sink.chunks.iter().flat_map(|(_, d)| d.clone()).collect();
    assert_eq!(String::from_utf8_lossy(&all), "one\nthree\n");
    assert_eq!(sink.err, b"two\n");
    // "one" arrived before the command ended, not with the rest.
    let (first_at, first) = &sink.chunks[0];
    assert_eq!(first, b"one\n");
    assert!(first_at.duration_since(t) < Duration::from_millis(900), "first chunk after {:?}", first_at.duration_since(t));
}

/// Not a timed test: prints the per-command latency of the script on this
/// host (docs/benchmarks.md has the in-guest figure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_posix_backdoor_latency_on_the_host() {
    let h = start().await;
    let mut v = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let o = h.backdoor.exec("true", &[], T, None).await.expect("exec");
        assert_eq!(o.status, 0);
        v.push(t.elapsed());
    }
    v.sort();
    eprintln!("backdoor under dash on the host: median {:?} per command (min {:?}, max {:?})", v[v.len() / 2], v[0], v[v.len() - 1]);
}
