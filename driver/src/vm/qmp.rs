//! A QMP client. Commands and their replies use the typed structs of the
//! `qapi` crate; events are kept as raw JSON, because `qapi`'s generated
//! event enum has no catch-all and a newer QEMU's unknown event would
//! otherwise break the stream (qapi-rs issues #17, #23).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot, watch};

/// QMP failures.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket failed.
    #[error("QMP connection: {0}")]
    Io(#[from] std::io::Error),
    /// QEMU closed the connection (it exited or is exiting).
    #[error("QMP connection closed: QEMU has exited")]
    Closed,
    /// The greeting or a reply was not what QMP sends.
    #[error("QMP protocol: {0}")]
    Protocol(String),
    /// QEMU answered with an error.
    #[error("QMP `{command}` failed: {class}: {desc}")]
    Command {
        /// The command.
        command: &'static str,
        /// Error class.
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// No reply in time.
    #[error("QMP `{0}` got no reply within {1:?}")]
    Timeout(&'static str, Duration),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A connected QMP session.
#[derive(Debug)]
pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    events: broadcast::Sender<Value>,
    history: Arc<Mutex<Vec<Value>>>,
    closed: watch::Receiver<bool>,
    /// QEMU's version as the greeting reports it (major, minor, micro).
    pub version: (u64, u64, u64),
}

impl Qmp {
    /// Reads the greeting, negotiates capabilities and starts the reader.
    pub async fn handshake(stream: UnixStream) -> Result<Qmp, QmpError> {
        let (r, w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        let greeting = lines.next_line().await?.ok_or(QmpError::Closed)?;
        let g: Value = serde_json::from_str(&greeting).map_err(|e| QmpError::Protocol(format!("greeting: {e}")))?;
        let v = &g["QMP"]["version"]["qemu"];
        let version = (
            v["major"].as_u64().unwrap_or(0),
            v["minor"].as_u64().unwrap_or(0),
            v["micro"].as_u64().unwrap_or(0),
        );
        let pending: Pending = Arc::default();
        let history: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (events, _) = broadcast::channel(256);
        let (closed_tx, closed) = watch::channel(false);
        {
            let pending = pending.clone();
            let history = history.clone();
            let events = events.clone();
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                        tracing::warn!(%line, "unparsable QMP message ignored");
                        continue;
                    };
                    if msg.get("event").is_some() {
                        tracing::debug!(event = %msg["event"], "QMP event");
                        history.lock().expect("history lock").push(msg.clone());
                        let _ = events.send(msg);
                    } else if let Some(id) = msg.get("id").and_then(Value::as_u64) {
                        if let Some(tx) = pending.lock().expect("pending lock").remove(&id) {
                            let _ = tx.send(msg);
                        }
                    }
                }
                pending.lock().expect("pending lock").clear();
                let _ = closed_tx.send(true);
            });
        }
        let qmp = Qmp {
            writer: tokio::sync::Mutex::new(w),
            pending,
            next_id: AtomicU64::new(1),
            events,
            history,
            closed,
            version,
        };
        qmp.raw("qmp_capabilities", Value::Object(Default::default()), Duration::from_secs(10)).await?;
        Ok(qmp)
    }

    async fn raw(&self, name: &'static str, args: Value, timeout: Duration) -> Result<Value, QmpError> {
        if *self.closed.borrow() {
            return Err(QmpError::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        let msg = serde_json::json!({ "execute": name, "arguments": args, "id": id });
        let mut line = msg.to_string();
        line.push('\n');
        {
            let mut w = self.writer.lock().await;
            if w.write_all(line.as_bytes()).await.is_err() {
                return Err(QmpError::Closed);
            }
        }
        let reply = match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                self.pending.lock().expect("pending lock").remove(&id);
                return Err(QmpError::Timeout(name, timeout));
            }
            Ok(Err(_)) => return Err(QmpError::Closed),
            Ok(Ok(v)) => v,
        };
        if let Some(err) = reply.get("error") {
            return Err(QmpError::Command {
                command: name,
                class: err["class"].as_str().unwrap_or("?").to_string(),
                desc: err["desc"].as_str().unwrap_or("?").to_string(),
            });
        }
        Ok(reply.get("return").cloned().unwrap_or(Value::Null))
    }

    /// Runs a typed command from `qapi::qmp` and decodes its reply.
    pub async fn execute<C: qapi::Command>(&self, cmd: C) -> Result<C::Ok, QmpError> {
        self.execute_within(cmd, Duration::from_secs(30)).await
    }

    /// Like [`Qmp::execute`] with an explicit reply deadline.
    pub async fn execute_within<C: qapi::Command>(&self, cmd: C, timeout: Duration) -> Result<C::Ok, QmpError> {
        let args = serde_json::to_value(&cmd).map_err(|e| QmpError::Protocol(e.to_string()))?;
        let ret = self.raw(C::NAME, args, timeout).await?;
        serde_json::from_value(ret).map_err(|e| QmpError::Protocol(format!("reply to {}: {e}", C::NAME)))
    }

    /// What QEMU does when the guest reboots (QMP `set-action`): `reset`
    /// (reboot) or `shutdown` (exit, as -no-reboot).
    pub async fn set_reboot_action(&self, action: &str) -> Result<(), QmpError> {
        self.raw("set-action", serde_json::json!({ "reboot": action }), Duration::from_secs(10)).await.map(|_| ())
    }

    /// Saves the stopped VM's device state to `path` as a migration
    /// stream, without the RAM blocks that are shared files
    /// (`x-ignore-shared`; see [`crate::vm::snapshot`]), and waits for it.
    pub async fn save_state(&self, path: &std::path::Path, timeout: Duration) -> Result<(), QmpError> {
        self.ignore_shared().await?;
        let uri = format!("exec:cat > {}", xdriver_guests::shell::quote(&path.display().to_string()));
        self.raw("migrate", serde_json::json!({ "uri": uri }), Duration::from_secs(10)).await?;
        self.wait_migration("saving the VM state", timeout).await
    }

    /// Loads a stream [`Qmp::save_state`] wrote into a QEMU started with
    /// `-incoming defer`, and waits for it (the VM stays paused).
    pub async fn load_state(&self, path: &std::path::Path, timeout: Duration) -> Result<(), QmpError> {
        self.ignore_shared().await?;
        let uri = format!("exec:cat {}", xdriver_guests::shell::quote(&path.display().to_string()));
        self.raw("migrate-incoming", serde_json::json!({ "uri": uri }), Duration::from_secs(10)).await?;
        self.wait_migration("loading the VM state", timeout).await
    }

    /// Hot-plugs a vhost-user-fs device with `tag` connected to the
    /// virtiofsd listening on `socket` (a chardev and a device, both named
    /// after the tag).
    pub async fn hotplug_virtiofs(&self, tag: &str, socket: &std::path::Path) -> Result<(), QmpError> {
        let chardev = serde_json::json!({
            "id": tag,
            "backend": { "type": "socket", "data": { "addr": { "type": "unix", "data": { "path": socket.display().to_string() } }, "server": false } }
        });
        self.raw("chardev-add", chardev, Duration::from_secs(10)).await?;
        let device = serde_json::json!({ "driver": "vhost-user-fs-pci", "id": tag, "chardev": tag, "tag": tag });
        self.raw("device_add", device, Duration::from_secs(30)).await.map(|_| ())
    }

    /// Runs a QMP command given as JSON arguments (for commands whose
    /// arguments the typed API makes awkward: `netdev_add`, `device_add`).
    pub async fn raw_command(&self, name: &'static str, args: Value, timeout: Duration) -> Result<Value, QmpError> {
        self.raw(name, args, timeout).await
    }

    async fn ignore_shared(&self) -> Result<(), QmpError> {
        let caps = serde_json::json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] });
        self.raw("migrate-set-capabilities", caps, Duration::from_secs(10)).await.map(|_| ())
    }

    /// Polls `query-migrate` until the migration has completed or failed.
    async fn wait_migration(&self, what: &'static str, timeout: Duration) -> Result<(), QmpError> {
        let t0 = std::time::Instant::now();
        loop {
            let info = self.raw("query-migrate", Value::Object(Default::default()), Duration::from_secs(10)).await?;
            match info["status"].as_str().unwrap_or("") {
                "completed" => return Ok(()),
                "failed" | "cancelled" => {
                    return Err(QmpError::Command { command: what, class: "MigrationFailed".into(), desc: info["error-desc"].as_str().unwrap_or("(no reason given)").to_string() })
                }
                _ => {}
            }
            if t0.elapsed() > timeout {
                return Err(QmpError::Timeout(what, timeout));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Runs a human monitor command and returns its text.
    pub async fn hmp(&self, command_line: &str) -> Result<String, QmpError> {
        self.execute(qapi::qmp::human_monitor_command { command_line: command_line.into(), cpu_index: None })
            .await
    }

    /// Every event received so far.
    pub fn events(&self) -> Vec<Value> {
        self.history.lock().expect("history lock").clone()
    }

    /// The first event received so far that `want` picks (without copying
    /// the history).
    pub fn find_event(&self, want: impl Fn(&Value) -> bool) -> Option<Value> {
        self.history.lock().expect("history lock").iter().find(|e| want(e)).cloned()
    }

    /// A receiver of events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Value> {
        self.events.subscribe()
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Resolves once the connection is closed.
    pub async fn closed(&self) {
        let mut c = self.closed.clone();
        let _ = c.wait_for(|v| *v).await;
    }

    /// The host port QEMU's user network forwards to `guest_port`
    /// (forwards are set up with host port 0, so QEMU picks a free one).
    pub async fn forwarded_port(&self, guest_port: u16) -> Result<u16, QmpError> {
        let text = self.hmp("info usernet").await?;
        parse_usernet(&text, guest_port)
            .ok_or_else(|| QmpError::Protocol(format!("no host forward to guest port {guest_port} in:\n{text}")))
    }
}

/// Finds the host port of the TCP forward to `guest_port` in the output
/// of `info usernet`.
pub fn parse_usernet(text: &str, guest_port: u16) -> Option<u16> {
    text.lines().filter(|l| l.contains("HOST_FORWARD")).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Protocol[State] FD SrcAddr SrcPort DstAddr DstPort RecvQ SendQ
        let (src, dst) = (f.get(3)?.parse::<u16>().ok()?, f.get(5)?.parse::<u16>().ok()?);
        (dst == guest_port).then_some(src)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernet_forward_is_found() {
        let t = "Hub -1 (net0):\r\n  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n  TCP[HOST_FORWARD]   8       127.0.0.1 33529       10.0.2.15    22     0     0\r\n  TCP[HOST_FORWARD]   9       127.0.0.1 40001       10.0.2.15    80     0     0\r\n";
        assert_eq!(parse_usernet(t, 22), Some(33529));
        assert_eq!(parse_usernet(t, 80), Some(40001));
        assert_eq!(parse_usernet(t, 443), None);
    }
}
