//! SSH into a guest through `russh`: one persistent connection per VM,
//! authenticated with a key generated for this run and pinned to the host
//! key recorded in the image manifest. Commands run on channels of that one
//! connection, so several can run at once; files move as tar streams over
//! exec; host ports are forwarded with direct-tcpip channels.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{Algorithm, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Sig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::vm::output::{Output, Sink};
use xdriver_guests::shell::quote;

/// SSH failures.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The host key in the manifest could not be parsed.
    #[error("the image's pinned SSH host key is invalid: {0}")]
    HostKey(String),
    /// No SSH session could be set up before the deadline.
    #[error("SSH to 127.0.0.1:{port} not ready within {timeout:?} (last error: {last})")]
    Connect {
        /// Forwarded port.
        port: u16,
        /// How long it tried.
        timeout: Duration,
        /// The last failure.
        last: String,
    },
    /// The guest refused the run's key.
    #[error("the guest refused this run's SSH key")]
    AuthRefused,
    /// A protocol or connection failure.
    #[error("SSH: {0}")]
    Russh(#[from] russh::Error),
    /// The channel closed without an exit status (the guest or sshd died).
    #[error("SSH channel closed without an exit status (the connection was lost: sshd or its process died, or the guest stopped answering keepalives, 5 s apart, 5 in a row)")]
    NoExitStatus,
    /// A tar stream failed.
    #[error("copy: {0}")]
    Copy(String),
    /// Local I/O.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Accepts only the pinned host key.
struct Pinned {
    expected: PublicKey,
    mismatch: Arc<std::sync::atomic::AtomicBool>,
}

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let ok = matches!(key, PublicKeyOrCertificate::PublicKey { key, .. } if key.key_data() == self.expected.key_data());
        if !ok {
            self.mismatch.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(ok)
    }
}

/// A per-run client key pair.
#[derive(Clone)]
pub struct ClientKey {
    key: Arc<PrivateKey>,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKey(ed25519)")
    }
}

impl ClientKey {
    /// Generates a fresh ed25519 key.
    pub fn generate() -> ClientKey {
        let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).expect("ed25519 generation cannot fail");
        ClientKey { key: Arc::new(key) }
    }

    /// The public key as an OpenSSH line.
    pub fn public_openssh(&self) -> String {
        self.key.public_key().to_openssh().expect("ed25519 public keys encode")
    }

    /// The private key in OpenSSH format (for `--keep`, so a user can ssh in).
    pub fn private_openssh(&self) -> String {
        self.key
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .expect("ed25519 keys encode")
            .to_string()
    }
}

fn sig_number(sig: &Sig) -> i32 {
    match sig {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        Sig::Custom(_) => 0,
    }
}

/// A persistent SSH connection to one guest.
#[derive(Clone)]
pub struct Ssh {
    handle: Arc<Handle<Pinned>>,
    /// The forwarded host port it is connected through.
    pub port: u16,
}

impl std::fmt::Debug for Ssh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ssh").field("port", &self.port).finish()
    }
}

/// After a command's exit status, how long the channel may stay quiet
/// before its output is taken as complete.
const EXIT_QUIET: Duration = Duration::from_millis(150);
/// After a command's exit status, the most time given to its remaining
/// output.
const EXIT_DRAIN: Duration = Duration::from_secs(2);

/// How often an idle connection asks the guest's sshd whether it is there.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered keepalives before the connection is given up.
pub const KEEPALIVE_MAX: usize = 5;

impl Ssh {
    /// Connects as root to 127.0.0.1:`port`, retrying with backoff until
    /// `timeout` (slirp accepts TCP before the guest's sshd listens).
    pub async fn connect(
        port: u16,
        host_key: &str,
        key: &ClientKey,
        timeout: Duration,
    ) -> Result<Ssh, SshError> {
        let expected = PublicKey::from_openssh(host_key).map_err(|e| SshError::HostKey(e.to_string()))?;
        let config = Arc::new(client::Config {
            inactivity_timeout: None,
            // A connection whose guest stops answering (its network gone,
            // sshd stopped, the guest frozen) is given up after 5
            // keepalives 5 s apart: within ~30 s, where 10 s x 6 took 74 s.
            // A guest starved of CPU still answers a keepalive within 25 s.
            keepalive_interval: Some(KEEPALIVE_INTERVAL),
            keepalive_max: KEEPALIVE_MAX,
            nodelay: true,
            window_size: 8 << 20,
            ..Default::default()
        });
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        // slirp accepts every TCP connection at once and only then tries the
        // guest: before the guest's network is up its SYN goes unanswered
        // (and slirp retransmits only seconds later); once the guest is up
        // but sshd is not listening, the guest's reset closes it at once.
        // So each attempt first waits a short while for sshd's banner on a
        // fresh connection (a fresh SYN) and gives up on it quickly; only a
        // connection that has shown a banner gets the handshake, with the
        // rest of the time. A banner slower than the probe's limit makes the
        // limit grow, once the guest is known to answer or after 30 s.
        let mut delay = Duration::from_millis(50);
        let mut probe_limit = Duration::from_secs(1);
        let mut guest_answers = false;
        let mut last;
        loop {
            let probe = async {
                let s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                s.set_nodelay(true)?;
                let mut b = [0u8; 4];
                let n = s.peek(&mut b).await?;
                Ok::<_, std::io::Error>((s, n))
            };
            match tokio::time::timeout(probe_limit, probe).await {
                Ok(Ok((stream, n))) if n > 0 => {
                    tracing::debug!(after = ?started.elapsed(), "sshd banner seen");
                    let mismatch = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let handler = Pinned { expected: expected.clone(), mismatch: mismatch.clone() };
                    let rest = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_secs(1));
                    match tokio::time::timeout(rest, client::connect_stream(config.clone(), stream, handler)).await {
                        Ok(Ok(mut h)) => {
                            tracing::debug!(after = ?started.elapsed(), "SSH key exchange done");
                            let auth = h
                                .authenticate_publickey("root", PrivateKeyWithHashAlg::new(key.key.clone(), None))
                                .await?;
                            if !auth.success() {
                                return Err(SshError::AuthRefused);
                            }
                            tracing::debug!(after = ?started.elapsed(), "SSH connected");
                            return Ok(Ssh { handle: Arc::new(h), port });
                        }
                        Ok(Err(e)) => {
                            if mismatch.load(std::sync::atomic::Ordering::Relaxed) {
                                return Err(SshError::HostKey("the guest presented a different host key than the image manifest pins".into()));
                            }
                            last = e.to_string();
                        }
                        Err(_) => last = format!("the SSH handshake did not finish within {rest:?}"),
                    }
                }
                Ok(Ok(_)) => {
                    guest_answers = true;
                    last = "the connection closed before an SSH banner (sshd not listening yet)".into();
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => {
                    last = format!("no SSH banner within {probe_limit:?}");
                    if guest_answers || started.elapsed() > Duration::from_secs(30) {
                        probe_limit = (probe_limit * 3 / 2).min(Duration::from_secs(10));
                    }
                }
            }
            tracing::trace!(after = ?started.elapsed(), %last, "SSH attempt");
            if tokio::time::Instant::now() + delay > deadline {
                return Err(SshError::Connect { port, timeout, last });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 3 / 2).min(Duration::from_millis(100));
        }
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Runs `cmd` through root's shell, feeding it `stdin`. With a `sink`
    /// output is streamed there and not kept in the result.
    pub async fn exec(&self, cmd: &str, stdin: &[u8], mut sink: Option<&mut dyn Sink>) -> Result<Output, SshError> {
        let ch = self.handle.channel_open_session().await?;
        ch.exec(true, cmd.as_bytes()).await?;
        let (mut rd, wr) = ch.split();
        let input = stdin.to_vec();
        let writer = tokio::spawn(async move {
            if !input.is_empty() {
                wr.data(&input[..]).await?;
            }
            wr.eof().await?;
            Ok::<_, russh::Error>(wr)
        });
        let mut out = Output::default();
        let mut status = None;
        // Once the command has exited, sshd may still be sending what it
        // wrote, but a background child that holds stdout open would keep
        // the channel open for as long as it lives (`sleep 300 & echo
        // started`): after the exit status, read on until the channel
        // closes, it has been quiet for EXIT_QUIET, or EXIT_DRAIN is over.
        let mut exited_at: Option<tokio::time::Instant> = None;
        loop {
            let msg = match exited_at {
                None => rd.wait().await,
                Some(at) => {
                    let quiet = tokio::time::Instant::now() + EXIT_QUIET;
                    match tokio::time::timeout_at(quiet.min(at + EXIT_DRAIN), rd.wait()).await {
                        Ok(m) => m,
                        Err(_) => break,
                    }
                }
            };
            let Some(msg) = msg else { break };
            if matches!(msg, ChannelMsg::ExitStatus { .. } | ChannelMsg::ExitSignal { .. }) && exited_at.is_none() {
                exited_at = Some(tokio::time::Instant::now());
            }
            match msg {
                ChannelMsg::Data { data } => match sink.as_deref_mut() {
                    Some(s) => s.stdout(&data),
                    None => out.stdout.extend_from_slice(&data),
                },
                ChannelMsg::ExtendedData { data, ext: 1 } => match sink.as_deref_mut() {
                    Some(s) => s.stderr(&data),
                    None => out.stderr.extend_from_slice(&data),
                },
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status as i32),
                ChannelMsg::ExitSignal { signal_name, .. } => status = Some(128 + sig_number(&signal_name)),
                _ => {}
            }
        }
        // The writer is done or failed because the command exited early
        // (it did not read all of stdin); neither changes the result. It
        // may still be blocked on a channel a background child holds open.
        writer.abort();
        let _ = writer.await;
        out.status = status.ok_or(SshError::NoExitStatus)?;
        Ok(out)
    }

    /// Copies a local file or directory into the guest directory `dest`
    /// (created if missing), keeping its name and permissions.
    pub async fn copy_to(&self, local: &Path, dest: &str) -> Result<(), SshError> {
        let local = local.to_path_buf();
        let name = local
            .file_name()
            .ok_or_else(|| SshError::Copy(format!("{} has no file name", local.display())))?
            .to_os_string();
        let data = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut b = tar::Builder::new(Vec::new());
            b.follow_symlinks(false);
            if local.is_dir() {
                b.append_dir_all(&name, &local)?;
            } else {
                b.append_path_with_name(&local, &name)?;
            }
            b.into_inner()
        })
        .await
        .map_err(|e| SshError::Copy(e.to_string()))??;
        let cmd = format!("mkdir -p {d} && tar -x -m --no-same-owner -C {d}", d = quote(dest));
        let out = self.exec(&cmd, &data, None).await?;
        if !out.success() {
            return Err(SshError::Copy(format!("`{cmd}` exited {}: {}", out.status, out.stderr_str().trim())));
        }
        Ok(())
    }

    /// Copies the guest file or directory `remote` into the local directory
    /// `dest` (created if missing). Returns the local path.
    pub async fn copy_from(&self, remote: &str, dest: &Path) -> Result<PathBuf, SshError> {
        let p = Path::new(remote);
        let (parent, name) = match (p.parent(), p.file_name()) {
            (Some(parent), Some(name)) => (parent.to_string_lossy().into_owned(), name.to_string_lossy().into_owned()),
            _ => return Err(SshError::Copy(format!("`{remote}` is not a path to a file or directory"))),
        };
        let parent = if parent.is_empty() { ".".into() } else { parent };
        let cmd = format!("tar -c -C {} {}", quote(&parent), quote(&name));
        let out = self.exec(&cmd, &[], None).await?;
        if !out.success() {
            return Err(SshError::Copy(format!("`{cmd}` exited {}: {}", out.status, out.stderr_str().trim())));
        }
        let dest = dest.to_path_buf();
        let target = dest.join(&name);
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dest)?;
            let mut a = tar::Archive::new(&out.stdout[..]);
            a.set_preserve_permissions(true);
            a.unpack(&dest)
        })
        .await
        .map_err(|e| SshError::Copy(e.to_string()))??;
        Ok(target)
    }

    /// Forwards connections to `listener` (on the host) to `guest_port` on
    /// the guest's loopback, until the returned task is aborted.
    pub fn forward(&self, listener: TcpListener, guest_port: u16) -> tokio::task::JoinHandle<()> {
        let handle = self.handle.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, peer)) = listener.accept().await {
                let handle = handle.clone();
                tokio::spawn(async move {
                    let ch = match handle
                        .channel_open_direct_tcpip("127.0.0.1", guest_port.into(), peer.ip().to_string(), peer.port().into())
                        .await
                    {
                        Ok(ch) => ch,
                        Err(e) => {
                            tracing::warn!(guest_port, error = %e, "port forward: guest refused the connection");
                            return;
                        }
                    };
                    let mut stream = ch.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut sock, &mut stream).await;
                    let _ = stream.shutdown().await;
                });
            }
        })
    }

    /// An interactive shell on a pseudo-terminal, wired to the host's
    /// terminal (raw mode while it runs). Returns the shell's exit status.
    pub async fn interactive(&self) -> Result<i32, SshError> {
        use tokio::io::AsyncReadExt;
        let (cols, rows) = crate::terminal::size();
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        let ch = self.handle.channel_open_session().await?;
        ch.request_pty(true, &term, cols, rows, 0, 0, &[]).await?;
        ch.request_shell(true).await?;
        let _raw = crate::terminal::RawMode::enter();
        let (mut rd, wr) = ch.split();
        let input = tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdin.read(&mut buf).await {
                if n == 0 {
                    let _ = wr.eof().await;
                    break;
                }
                if wr.data(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        let mut stdout = tokio::io::stdout();
        let mut status = None;
        while let Some(msg) = rd.wait().await {
            match msg {
                ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => {
                    let _ = stdout.write_all(&data).await;
                    let _ = stdout.flush().await;
                }
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status as i32),
                ChannelMsg::ExitSignal { signal_name, .. } => status = Some(128 + sig_number(&signal_name)),
                _ => {}
            }
        }
        input.abort();
        status.ok_or(SshError::NoExitStatus)
    }
}
