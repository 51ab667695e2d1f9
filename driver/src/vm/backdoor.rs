//! The backdoor shell: a root shell on a port of the guest's virtio-serial
//! (virtio console) device, named `org.xdriver.backdoor`, installed into
//! every image and started by the image's own init system. It works before
//! the network is up and while the link is blocked.
//!
//! It is a plain port, not the console port hvc0: QEMU 7.2 silently drops
//! console-port output whenever the host side reads slower than the guest
//! writes (`flush_buf()` in hw/char/virtio-console.c), which lost 9 KiB of
//! a 5 MiB transfer in our tests; a plain port throttles the guest instead.
//!
//! Framing (guest side in `guests/files/backdoor.sh`): the host writes one
//! line `X <id> <timeout-s> <stream> <cmd> <base64 stdin or ->`, the command
//! in `printf %b` escapes (see [`escape_command`]) so the guest decodes it
//! without starting a process; the
//! guest answers with base64 lines
//! `XDO <id> …` (stdout), `XDE <id> …` (stderr) and `XDX <id> <status>`.
//! The guest sends command output through files, not pipes, so a
//! background child that holds stdout open cannot hang a command.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};

use crate::vm::output::{Output, Sink};

/// Backdoor failures.
#[derive(Debug, thiserror::Error)]
pub enum BackdoorError {
    /// The console stream closed (QEMU exited).
    #[error("the backdoor console closed (QEMU exited)")]
    Closed,
    /// The shell did not announce itself in time.
    #[error("the backdoor shell did not come up within {0:?}")]
    NotReady(Duration),
    /// The command outlived its deadline and the guest did not report back.
    #[error("backdoor command got no reply within {0:?}")]
    Timeout(Duration),
    /// The shell restarted while a command ran.
    #[error("the backdoor shell restarted while the command ran")]
    Restarted,
    /// Writing to the console failed.
    #[error("writing to the backdoor console")]
    Io(#[source] std::io::Error),
    /// A reply line could not be decoded.
    #[error("bad backdoor reply: {0}")]
    Protocol(String),
}

/// Where a backdoor's command ids start: a random multiple of a million.
/// The guest keeps each command's files (its done and killed markers) by
/// id, and a VM restored from a RAM snapshot still has those of the
/// session that saved it: ids that started at 1 again found a stale done
/// marker, and a streamed command lost what it wrote after its first
/// moments.
fn first_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    (h.finish() % 1_000_000) * 1_000_000
}

#[derive(Debug)]
enum Msg {
    Out(Vec<u8>),
    Err(Vec<u8>),
    Exit(i32),
    Restarted,
}

type Route = Arc<Mutex<Option<(u64, mpsc::UnboundedSender<Msg>)>>>;

/// The host end of a VM's backdoor.
#[derive(Debug)]
pub struct Backdoor {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    route: Route,
    ready: watch::Receiver<u32>,
    ready_tx: Arc<watch::Sender<u32>>,
    closed: watch::Receiver<bool>,
    next_id: Mutex<u64>,
    /// Set once the guest was reset: the next announcement is a new shell
    /// even with the same pid (early boot pids repeat across boots).
    forget: Arc<std::sync::atomic::AtomicBool>,
}

/// Escapes a command for the guest's `printf '%b'`: plain ASCII letters,
/// digits and punctuation other than the backslash stay as they are, every
/// other byte becomes `\0NNN` (octal: the one escape POSIX's `%b` has, so
/// dash, bash and FreeBSD's sh all decode it), so the result holds no
/// space, no newline and no backslash that `%b` would read differently.
pub fn escape_command(cmd: &str) -> Result<String, BackdoorError> {
    if cmd.contains('\0') {
        return Err(BackdoorError::Protocol("the command contains a NUL byte, which a shell cannot hold".into()));
    }
    if cmd.is_empty() {
        // An empty field would shift the frame's fields; a blank command
        // does the same as none.
        return Ok("\\0040".into());
    }
    let mut out = String::with_capacity(cmd.len() + cmd.len() / 4);
    for &b in cmd.as_bytes() {
        if b.is_ascii_graphic() && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\0{b:03o}"));
        }
    }
    Ok(out)
}

fn decode(b64: &str) -> Result<Vec<u8>, BackdoorError> {
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| BackdoorError::Protocol(e.to_string()))
}

impl Backdoor {
    /// Starts reading the backdoor console QEMU connected with.
    pub fn start(stream: UnixStream) -> Backdoor {
        let (r, w) = stream.into_split();
        let route: Route = Arc::default();
        let (ready_tx, ready) = watch::channel(0u32);
        let ready_tx = Arc::new(ready_tx);
        let ready_tx_r = ready_tx.clone();
        let (closed_tx, closed) = watch::channel(false);
        let rt = route.clone();
        let forget = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let forget_r = forget.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::with_capacity(1 << 20, r).lines();
            let mut instance: Option<String> = None;
            while let Ok(Some(line)) = lines.next_line().await {
                let line = line.trim_end_matches('\r');
                tracing::trace!(line = %line.chars().take(200).collect::<String>(), "backdoor");
                if let Some(rest) = line.strip_prefix("XDRIVER-BACKDOOR-READY") {
                    // "1 <pid>": the same pid again is a repeated
                    // announcement, not a new shell.
                    let id = rest.trim().to_string();
                    if forget_r.swap(false, std::sync::atomic::Ordering::SeqCst) {
                        instance = None;
                    }
                    if instance.as_deref() == Some(id.as_str()) {
                        tracing::debug!(%id, "backdoor announced itself again");
                        continue;
                    }
                    // Only a new shell after an earlier one breaks the
                    // command in flight; and that is said before readiness
                    // is announced, or a command sent the moment the first
                    // shell is ready would take the news for itself.
                    if let Some(old) = instance.replace(id.clone()) {
                        tracing::warn!(old = %old, new = %id, "backdoor shell restarted");
                        if let Some((_, tx)) = rt.lock().expect("route lock").as_ref() {
                            let _ = tx.send(Msg::Restarted);
                        }
                    }
                    ready_tx_r.send_modify(|n| *n += 1);
                    continue;
                }
                let mut parts = line.splitn(3, ' ');
                let (Some(tag), Some(id), rest) = (parts.next(), parts.next(), parts.next()) else { continue };
                let Ok(id) = id.parse::<u64>() else { continue };
                let msg = match (tag, rest) {
                    ("XDO", Some(b)) => decode(b).map(Msg::Out),
                    ("XDE", Some(b)) => decode(b).map(Msg::Err),
                    ("XDX", Some(rc)) => Ok(Msg::Exit(rc.trim().parse().unwrap_or(255))),
                    _ => continue,
                };
                let g = rt.lock().expect("route lock");
                if let (Some((want, tx)), Ok(msg)) = (g.as_ref(), msg) {
                    if *want == id {
                        let _ = tx.send(msg);
                    }
                }
            }
            let _ = closed_tx.send(true);
        });
        Backdoor { writer: tokio::sync::Mutex::new(w), route, ready, ready_tx, closed, next_id: Mutex::new(first_id()), forget }
    }

    /// Waits until the shell has announced itself.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), BackdoorError> {
        let mut r = self.ready.clone();
        let mut closed = self.closed.clone();
        tokio::select! {
            res = tokio::time::timeout(timeout, r.wait_for(|n| *n > 0)) => match res {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(_)) => Err(BackdoorError::Closed),
                Err(_) => Err(BackdoorError::NotReady(timeout)),
            },
            _ = closed.wait_for(|c| *c) => Err(BackdoorError::Closed),
        }
    }

    /// Counts the shell as announced without an announcement: a VM
    /// restored from a snapshot has a shell that announced itself before
    /// the save, and is not going to again.
    pub fn assume_ready(&self) {
        self.ready_tx.send_modify(|n| *n += 1);
    }

    /// Takes the next announcement for a new shell even if its pid is the
    /// last one's (call once the guest has been reset).
    pub fn forget_shell(&self) {
        self.forget.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many times a shell has announced itself (once per boot, plus
    /// once per restart of the guest's backdoor service).
    pub fn announcements(&self) -> u32 {
        *self.ready.borrow()
    }

    /// Waits until a shell announces itself for more than the `n`th time.
    pub async fn wait_announced_after(&self, n: u32, timeout: Duration) -> Result<(), BackdoorError> {
        let mut r = self.ready.clone();
        let res = tokio::time::timeout(timeout, r.wait_for(|k| *k > n)).await.map(|r| r.is_ok());
        match res {
            Ok(true) => Ok(()),
            Ok(false) => Err(BackdoorError::Closed),
            Err(_) => Err(BackdoorError::NotReady(timeout)),
        }
    }

    /// Whether the shell has announced itself.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow() > 0
    }

    /// Runs `cmd` (a bash script) as root with `stdin`. The guest kills it
    /// after `timeout` (0 = no limit). With a `sink`, output is streamed as
    /// it comes (polled every 50 ms in the guest) and not kept in the
    /// returned [`Output`]. One command runs at a time.
    pub async fn exec(
        &self,
        cmd: &str,
        stdin: &[u8],
        timeout: Duration,
        mut sink: Option<&mut dyn Sink>,
    ) -> Result<Output, BackdoorError> {
        let id = {
            let mut n = self.next_id.lock().expect("id lock");
            *n += 1;
            *n
        };
        let mut w = self.writer.lock().await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        *self.route.lock().expect("route lock") = Some((id, tx));
        let secs = if timeout.is_zero() { 0 } else { timeout.as_secs().max(1) };
        let b64 = &base64::engine::general_purpose::STANDARD;
        let input = if stdin.is_empty() { "-".to_string() } else { b64.encode(stdin) };
        let frame = format!("X {id} {secs} {} {} {input}\n", u8::from(sink.is_some()), escape_command(cmd)?);
        let write = async {
            w.write_all(frame.as_bytes()).await.map_err(BackdoorError::Io)?;
            w.flush().await.map_err(BackdoorError::Io)
        };
        let mut out = Output::default();
        let collect = async {
            loop {
                match rx.recv().await {
                    Some(Msg::Out(d)) => match sink.as_deref_mut() {
                        Some(s) => s.stdout(&d),
                        None => out.stdout.extend_from_slice(&d),
                    },
                    Some(Msg::Err(d)) => match sink.as_deref_mut() {
                        Some(s) => s.stderr(&d),
                        None => out.stderr.extend_from_slice(&d),
                    },
                    Some(Msg::Exit(rc)) => {
                        out.status = rc;
                        return Ok(());
                    }
                    Some(Msg::Restarted) => return Err(BackdoorError::Restarted),
                    None => return Err(BackdoorError::Closed),
                }
            }
        };
        // The guest's `timeout -k 5` ends the command; allow for that and
        // for shipping the output back.
        let limit = if secs == 0 { Duration::from_secs(365 * 24 * 3600) } else { timeout + Duration::from_secs(30) };
        let mut closed = self.closed.clone();
        let res = tokio::time::timeout(limit, async {
            tokio::select! {
                r = async { write.await?; collect.await } => r,
                _ = closed.wait_for(|c| *c) => Err(BackdoorError::Closed),
            }
        })
        .await;
        *self.route.lock().expect("route lock") = None;
        match res {
            Err(_) => Err(BackdoorError::Timeout(limit)),
            Ok(r) => r.map(|()| out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::escape_command;

    #[test]
    fn escaped_commands_are_one_field_and_decode_to_the_same_bytes_in_dash_and_bash() {
        let cmds = [
            "true",
            "",
            "echo 'a b'\tc\n  printf '%s\\n' \"$HOME\" | tr a-z A-Z; exit 3",
            "echo \\x41 \\c \\\\ %b %s ünïcödé ✓",
            "cat <<'EOF'\r\nline\nEOF\n",
        ];
        for cmd in cmds {
            let e = escape_command(cmd).expect("escapable");
            assert!(!e.is_empty() && e.bytes().all(|b| b.is_ascii_graphic()), "{e:?}");
            // What the guest does with the field (guests/files/backdoor.sh).
            for sh in ["dash", "bash"] {
                let out = std::process::Command::new(sh)
                    .args(["-c", "c=$(printf '%bx' \"$1\"); c=${c%x}; printf '%s' \"$c\"", sh, &e])
                    .output()
                    .expect("shell");
                let want = if cmd.is_empty() { " " } else { cmd };
                assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{sh}: escaped as {e}");
            }
        }
        assert!(escape_command("a\0b").is_err());
    }
}
