//! Test scripts in Python, the NixOS test driver's way: the host's
//! `python3` runs the script with xdriver's harness
//! (`driver/python/xdriver_harness.py`), whose `machine` sends every call
//! here as one line of JSON; each is run on the cell's VM and recorded as
//! a step of the group its script line came from.

use super::event::Reporter;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::cell::{CellResult, Outcome, RunOptions, StepStatus, DEADLINE};
use super::machine::{describe, Machine, StepError};
use crate::error_chain::chain_error;
use crate::spec::{Action, PyScript};
use crate::vm::Channel;

/// The harness, written next to the script in the cell's results.
pub const HARNESS: &str = include_str!("../../python/xdriver_harness.py");

/// The shell line that runs a script's command as the NixOS driver does:
/// bash with `set -euo pipefail`, in /tmp, with root's HOME (POSIX sh with
/// `set -eu` where there is no bash).
pub fn bash_command(cmd: &str) -> String {
    let q = xdriver_guests::shell::quote(&format!("set -euo pipefail; {cmd}"));
    let qs = xdriver_guests::shell::quote(&format!("set -eu; {cmd}"));
    format!("cd /tmp || exit 1; export USER=root HOME=/root; if command -v bash >/dev/null 2>&1; then exec bash -c {q}; else exec sh -c {qs}; fi")
}

/// The group a script line's calls are recorded under.
fn group_of(script: &PyScript, line: usize) -> String {
    script
        .segments
        .iter()
        .find(|s| s.start <= line && line < s.start + s.lines)
        .map(|s| s.group.clone())
        .unwrap_or_else(|| "python".into())
}

/// A step's deadline from the script (seconds or null), cut to the run's.
fn deadline(v: &Value, default: Duration, opts: &RunOptions) -> (Duration, bool) {
    // "none" (`execute(timeout=None)`): no limit but the run's; zero means
    // none to `Vm::exec`.
    if v.as_str() == Some("none") {
        return match opts.deadline {
            Some(_) => opts.clamp(Duration::MAX),
            None => (Duration::ZERO, false),
        };
    }
    let want = v.as_f64().filter(|s| *s > 0.0).map(Duration::from_secs_f64).unwrap_or(default);
    opts.clamp(want)
}

/// What one call gave: the reply for the script, and how it is recorded.
struct Done {
    reply: Value,
    status: StepStatus,
    message: Option<String>,
}

impl Done {
    fn ok(value: Value) -> Done {
        Done { reply: json!({ "value": value }), status: StepStatus::Pass, message: None }
    }
    fn failed(reason: String) -> Done {
        Done { reply: json!({ "error": reason, "kind": "failed" }), status: StepStatus::Fail, message: Some(reason) }
    }
    fn infra(reason: String) -> Done {
        Done { reply: json!({ "error": reason, "kind": "infra" }), status: StepStatus::Error, message: Some(reason) }
    }
}

/// How the harness talks to its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Runs the script; its output goes to `python.log`.
    Script,
    /// A Python prompt on xdriver's terminal with `machine` ready
    /// (`--interactive`, `--keep`); `test_script()` runs the script.
    Prompt,
}

/// Runs `script` against the cell's VM, recording each call in `result`;
/// `timeout` is a call's default deadline. The script, the harness, its
/// segment table and `python.log` (the script's own output and any
/// traceback) stay in the cell's results.
pub async fn run(ms: &mut [Machine<'_>], script: &PyScript, opts: &RunOptions, timeout: Duration, result: &mut CellResult, progress: &dyn Reporter) -> Result<(), Outcome> {
    session(ms, script, opts, timeout, result, Mode::Script, progress).await
}

/// Runs the harness in `mode`. Requests and replies go over a Unix socket
/// in the VM's run directory (short enough for a socket path), so the
/// harness's stdin and stdout are free for a prompt.
pub async fn session(ms: &mut [Machine<'_>], script: &PyScript, opts: &RunOptions, timeout: Duration, result: &mut CellResult, mode: Mode, progress: &dyn Reporter) -> Result<(), Outcome> {
    if mode == Mode::Prompt {
        // Ctrl-C at the prompt is Python's KeyboardInterrupt, not the end
        // of the run: the binary's handler leaves it alone meanwhile.
        crate::terminal::HANDLES_SIGNALS.store(true, std::sync::atomic::Ordering::SeqCst);
        let r = run_session(ms, script, opts, timeout, result, mode, progress).await;
        crate::terminal::HANDLES_SIGNALS.store(false, std::sync::atomic::Ordering::SeqCst);
        return r;
    }
    run_session(ms, script, opts, timeout, result, mode, progress).await
}

async fn run_session(ms: &mut [Machine<'_>], script: &PyScript, opts: &RunOptions, timeout: Duration, result: &mut CellResult, mode: Mode, progress: &dyn Reporter) -> Result<(), Outcome> {
    let err = |reason: String| Outcome::Error { reason };
    // The script's files go in the cell's directory: the first node's
    // (a cell of one), or the one above the nodes' own.
    let first = ms[0].artifacts;
    let nodes_dir = first.parent().filter(|p| p.file_name().is_some_and(|n| n == "nodes"));
    let base = nodes_dir.and_then(Path::parent).unwrap_or(first);
    let dir = &std::path::absolute(base).map_err(|e| err(format!("{}: {e}", base.display())))?;
    let names: Vec<String> = ms.iter().map(|m| m.name.clone()).collect();
    let m = &ms[0];
    let script_path = dir.join("test-script.py");
    let meta_path = dir.join("test-script.json");
    let harness_path = dir.join("xdriver_harness.py");
    // The cell's vlans, each once, in number order: the script's `vlans`.
    let mut vlans: Vec<(u32, String, u32)> = Vec::new();
    for (sw, _) in ms.iter().flat_map(|m| m.net.iter()) {
        if !vlans.iter().any(|v| v.0 == sw.vlan()) {
            vlans.push((sw.vlan(), sw.sock().display().to_string(), sw.pid()));
        }
    }
    vlans.sort();
    let vlans: Vec<_> = vlans.into_iter().map(|(nr, dir, pid)| json!({ "nr": nr, "socket_dir": dir, "pid": pid })).collect();
    let meta = json!({ "segments": script.segments, "manager": m.backend.manager.name(), "os": m.os().name(), "machine": names[0], "nodes": names, "vlans": vlans });
    for (p, text) in [(&script_path, script.text.clone()), (&meta_path, meta.to_string()), (&harness_path, HARNESS.to_string())] {
        std::fs::write(p, text).map_err(|e| err(format!("writing {}: {e}", p.display())))?;
    }
    let sock_path = m.vm.run_dir().join("harness.sock");
    let _ = std::fs::remove_file(&sock_path);
    let listener = tokio::net::UnixListener::bind(&sock_path).map_err(|e| err(format!("{}: {e}", sock_path.display())))?;
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg("-u").arg(&harness_path).arg(&script_path).arg(&meta_path).env("XDRIVER_HARNESS_SOCKET", &sock_path).kill_on_drop(true);
    match mode {
        Mode::Script => {
            let log = std::fs::File::create(dir.join("python.log")).map_err(|e| err(format!("python.log: {e}")))?;
            let log2 = log.try_clone().map_err(|e| err(format!("python.log: {e}")))?;
            cmd.current_dir(dir).stdin(Stdio::null()).stdout(Stdio::from(log)).stderr(Stdio::from(log2));
        }
        Mode::Prompt => {
            cmd.arg("--interactive").current_dir(dir).stdin(Stdio::inherit()).stdout(Stdio::inherit()).stderr(Stdio::inherit());
        }
    }
    let mut child = cmd.spawn().map_err(|e| err(format!("cannot start python3 for the test script (is it installed?): {e}")))?;
    let stream = tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(60), listener.accept()) => match r {
            Ok(Ok((s, _))) => s,
            Ok(Err(e)) => return Err(err(format!("accepting the harness's connection: {e}"))),
            Err(_) => return Err(err("python3 did not connect to xdriver within 60 s".into())),
        },
        st = child.wait() => {
            let log = std::fs::read_to_string(dir.join("python.log")).unwrap_or_default();
            return Err(err(format!("python3 ended ({}) before it connected to xdriver: {}", st.map(|s| s.to_string()).unwrap_or_default(), log.trim())));
        }
    };
    drop(listener);
    let _ = std::fs::remove_file(&sock_path);
    let (rd, mut to_py) = stream.into_split();
    let mut from_py = BufReader::new(rd).lines();
    let mut done = false;
    let mut failure: Option<Outcome> = None;
    // serial_stdout: each node's console since the last call goes back with
    // every reply (on from the start, as the NixOS driver logs it), read
    // from where the script started.
    let mut serial_stdout = true;
    let mut console_at = consoles_end(ms);
    // The reason of the last call that failed, by script line: the
    // traceback that follows it gets the command's output appended.
    let mut last_fail: Option<(usize, String)> = None;
    loop {
        // A prompt waits on its user, not on the run's deadline.
        let (left, _) = if mode == Mode::Prompt { (Duration::from_secs(7 * 24 * 3600), false) } else { opts.clamp(Duration::from_secs(7 * 24 * 3600)) };
        let line = match tokio::time::timeout(left, from_py.next_line()).await {
            Err(_) => {
                failure = Some(Outcome::Fail { group: "python".into(), step: "testScript".into(), reason: format!("{DEADLINE} while the script ran") });
                break;
            }
            Ok(Ok(Some(l))) => l,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                failure = Some(err(format!("reading from python3: {e}")));
                break;
            }
        };
        let req: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                failure = Some(err(format!("python3 sent something that is not a request ({e}): {line}")));
                break;
            }
        };
        let op = req["op"].as_str().unwrap_or_default().to_string();
        let at = req["line"].as_u64().unwrap_or(0) as usize;
        let group = group_of(script, at);
        match op.as_str() {
            "done" => {
                done = true;
                continue;
            }
            "serial_stdout" => {
                serial_stdout = req["on"].as_bool().unwrap_or(true);
                if serial_stdout {
                    // From now on: what it printed while off is not logged.
                    console_at = consoles_end(ms);
                }
                if to_py.write_all(b"{\"value\":null}\n").await.is_err() {
                    break;
                }
                continue;
            }
            "failed" => {
                let mut reason = req["traceback"].as_str().unwrap_or("the script failed").to_string();
                // A call on this line failed and was recorded already.
                let recorded = last_fail.as_ref().filter(|(l, _)| *l == at);
                if let Some((_, why)) = recorded {
                    reason.push_str(&format!("\n{why}"));
                }
                let kind = req["kind"].as_str().unwrap_or("failed");
                if recorded.is_none() {
                    let status = if kind == "infra" { StepStatus::Error } else { StepStatus::Fail };
                    let name = format!("script line {at}: {}", req["type"].as_str().unwrap_or("error"));
                    result.steps_total += 1;
                    result.record(progress, &group, &name, status, Duration::ZERO, Some(reason.clone()));
                }
                failure = Some(if kind == "infra" { err(reason) } else { Outcome::Fail { group: group.clone(), step: format!("script line {at}"), reason } });
                continue;
            }
            _ => {}
        }
        let call = req["call"].as_str().unwrap_or(&op).to_string();
        // The call's node (a cell of several names it in the step).
        let node = req["node"].as_str().unwrap_or(&names[0]);
        let Some(i) = ms.iter().position(|m| m.name == node) else {
            failure = Some(err(format!("the script called node `{node}`, which this cell does not have")));
            break;
        };
        let call = if names.len() > 1 && !matches!(op.as_str(), "log" | "subtest" | "done" | "failed") { format!("{node}.{call}") } else { call };
        let started = Instant::now();
        let d = perform(&mut ms[i], &op, &req, &group, opts, timeout).await;
        let quiet = matches!(op.as_str(), "log" | "console_log") || req["quiet"].as_bool() == Some(true) || (op == "subtest" && req["phase"] == "start");
        if !quiet {
            result.steps_total += 1;
            if d.status == StepStatus::Pass {
                result.steps_passed += 1;
            }
            result.record(progress, &group, &call, d.status, started.elapsed(), d.message.clone());
        }
        if d.status != StepStatus::Pass {
            last_fail = Some((at, d.message.clone().unwrap_or_default()));
        }
        let mut reply = d.reply;
        if serial_stdout {
            let mut console = serde_json::Map::new();
            for (m, at) in ms.iter().zip(console_at.iter_mut()) {
                let text = serial_since(&m.vm.run_dir().join("serial.log"), at);
                if !text.is_empty() {
                    console.insert(m.name.clone(), json!(text));
                }
            }
            if !console.is_empty() {
                reply["console"] = Value::Object(console);
            }
        }
        let mut text = reply.to_string();
        text.push('\n');
        if to_py.write_all(text.as_bytes()).await.is_err() {
            break;
        }
    }
    drop(to_py);
    let status = match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(Ok(s)) => Some(s),
        _ => {
            let _ = child.kill().await;
            None
        }
    };
    if let Some(f) = failure {
        return Err(f);
    }
    if !done {
        let log = std::fs::read_to_string(dir.join("python.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(err(format!(
            "python3 ended ({}) before the script did; python.log ends:\n{}",
            status.map(|s| s.to_string()).unwrap_or_else(|| "killed".into()),
            tail.join("\n")
        )));
    }
    Ok(())
}

/// Each node's serial log and its length now.
fn consoles_end(ms: &[Machine<'_>]) -> Vec<(PathBuf, u64)> {
    ms.iter()
        .map(|m| {
            let path = m.vm.run_dir().join("serial.log");
            let len = std::fs::metadata(&path).map(|md| md.len()).unwrap_or(0);
            (path, len)
        })
        .collect()
}

/// What `path` got since `at` (a VM started again has a new log: from its
/// start), with `at` moved to its end; carriage returns dropped.
fn serial_since(path: &Path, at: &mut (PathBuf, u64)) -> String {
    use std::io::{Read, Seek};
    if at.0 != path {
        *at = (path.to_path_buf(), 0);
    }
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    if f.seek(std::io::SeekFrom::Start(at.1)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(1 << 20).read_to_end(&mut buf);
    at.1 += buf.len() as u64;
    String::from_utf8_lossy(&buf).replace('\r', "")
}

/// Does one call.
async fn perform(m: &mut Machine<'_>, op: &str, req: &Value, group: &str, opts: &RunOptions, default_timeout: Duration) -> Done {
    let s = |k: &str| req[k].as_str().unwrap_or_default().to_string();
    match op {
        "exec" => {
            let command = s("command");
            let (timeout, cut) = deadline(&req["timeout"], default_timeout, opts);
            let t = Instant::now();
            match m.vm.exec(Channel::Backdoor, &bash_command(&command), &[], timeout, None).await {
                Ok(out) => {
                    m.transcript.push(group, &command, Some(out.status), out.stdout_str(), out.stderr_str(), t.elapsed());
                    let reply = json!({ "status": out.status, "stdout": out.stdout_str() });
                    let bad = match req["expect"].as_str() {
                        Some("success") => !out.success(),
                        Some("failure") => out.success(),
                        _ => false,
                    };
                    if bad {
                        let mut why = describe(&command, &out);
                        if cut {
                            why = format!("{DEADLINE}; {why}");
                        }
                        Done { reply: json!({ "value": reply }), status: StepStatus::Fail, message: Some(why) }
                    } else {
                        Done::ok(reply)
                    }
                }
                Err(e) => {
                    m.transcript.push(group, &command, None, String::new(), e.to_string(), t.elapsed());
                    Done::infra(chain_error(&e))
                }
            }
        }
        "step" => {
            let action: Action = match serde_json::from_value(req["action"].clone()) {
                Ok(Action::Python(_)) | Err(_) => return Done::infra(format!("not a step xdriver knows: {}", req["action"])),
                Ok(a) => a,
            };
            let (timeout, cut) = deadline(&req["timeout"], default_timeout, opts);
            match m.step_output(group, &action, timeout).await {
                Ok(out) => Done::ok(json!({ "stdout": out.map(|o| o.stdout_str()).unwrap_or_default() })),
                Err(StepError::Failed(r)) => Done::failed(if cut { format!("{DEADLINE} during this step; {r}") } else { r }),
                Err(StepError::Infra(e)) => Done::infra(chain_error(&e)),
            }
        }
        // QEMU running and its guest answering on the backdoor now (a guest
        // crashed or powered off from inside is not up).
        "is_up" => {
            let up = m.vm.is_running() && m.vm.exec(Channel::Backdoor, "true", &[], Duration::from_secs(10), None).await.is_ok_and(|o| o.success());
            Done::ok(json!(up))
        }
        // start_job/stop_job: the manager's start or stop command, whose
        // status and output go back to the script (as systemctl's do in the
        // NixOS driver); a non-zero status is the script's to judge.
        "service" => {
            let name = s("name");
            let cmd = match s("verb").as_str() {
                "start" => m.backend.start(&name),
                "stop" => m.backend.stop(&name),
                v => return Done::infra(format!("no service verb `{v}`")),
            };
            let (timeout, _) = deadline(&req["timeout"], default_timeout, opts);
            let t = Instant::now();
            match m.vm.exec(Channel::Backdoor, &cmd, &[], timeout, None).await {
                Ok(out) => {
                    m.transcript.push(group, &cmd, Some(out.status), out.stdout_str(), out.stderr_str(), t.elapsed());
                    let text = format!("{}{}", out.stdout_str(), out.stderr_str());
                    Done::ok(json!({ "status": out.status, "stdout": text }))
                }
                Err(e) => Done::infra(chain_error(&e)),
            }
        }
        // OCR of the guest's screen: QMP screendump, then Debian's tesseract.
        "screen_text" => {
            let png = m.artifacts.join("ocr-screen.png");
            if let Err(e) = m.vm.screendump(&png).await {
                return Done::infra(chain_error(&e));
            }
            let run = tokio::process::Command::new("tesseract").arg(&png).arg("stdout").stdin(Stdio::null()).output();
            match tokio::time::timeout(Duration::from_secs(120), run).await {
                Ok(Ok(out)) if out.status.success() => Done::ok(json!(String::from_utf8_lossy(&out.stdout))),
                Ok(Ok(out)) => Done::infra(format!("tesseract {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    Done::infra("OCR needs Debian's tesseract-ocr on the host (`tesseract` not found: apt-get install tesseract-ocr)".into())
                }
                Ok(Err(e)) => Done::infra(format!("tesseract: {e}")),
                Err(_) => Done::infra("tesseract took over 120 s".into()),
            }
        }
        "console_log" => {
            let log = std::fs::read(m.vm.run_dir().join("serial.log")).unwrap_or_default();
            Done::ok(json!(String::from_utf8_lossy(&log).replace('\r', "")))
        }
        "hmp" => match m.vm.qmp.hmp(&s("command")).await {
            Ok(text) => Done::ok(json!(text)),
            Err(e) => Done::infra(format!("monitor command `{}`: {e}", s("command"))),
        },
        "send_console" => match m.vm.console.send(s("chars").as_bytes()).await {
            Ok(()) => Done::ok(Value::Null),
            Err(e) => Done::infra(format!("send_console: {e}")),
        },
        "wait_for_shutdown" => {
            let (timeout, _) = opts.clamp(Duration::from_secs(900));
            if m.vm.wait_exit(timeout).await {
                Done::ok(Value::Null)
            } else {
                Done::failed(format!("wait_for_shutdown(): the VM still ran after {:.0} s", timeout.as_secs_f64()))
            }
        }
        "copy_from_host" => copy_from_host(m, &s("source"), &s("target"), group, opts).await,
        "log" => {
            tracing::info!(target: "xdriver::script", "{}", s("message"));
            Done::ok(Value::Null)
        }
        "subtest" => Done::ok(Value::Null),
        other => Done::infra(format!("the harness asked for `{other}`, which xdriver does not know")),
    }
}

/// Copies a host file or directory to `target` in the guest (through the
/// backdoor, as a tar stream or the file's bytes).
async fn copy_from_host(m: &mut Machine<'_>, source: &str, target: &str, group: &str, opts: &RunOptions) -> Done {
    use xdriver_guests::shell::quote;
    let src = Path::new(source);
    let (bytes, cmd) = if src.is_dir() {
        let mut b = tar::Builder::new(Vec::new());
        if let Err(e) = b.append_dir_all(".", src) {
            return Done::failed(format!("copy_from_host: {source}: {e}"));
        }
        match b.into_inner() {
            Ok(v) => (v, format!("mkdir -p {t} && tar -x -C {t}", t = quote(target))),
            Err(e) => return Done::failed(format!("copy_from_host: {source}: {e}")),
        }
    } else {
        match std::fs::read(src) {
            Ok(v) => {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(src).map(|md| md.permissions().mode() & 0o7777).unwrap_or(0o644);
                (v, format!("mkdir -p \"$(dirname {t})\" && cat > {t} && chmod {mode:o} {t}", t = quote(target)))
            }
            Err(e) => return Done::failed(format!("copy_from_host: {source}: {e}")),
        }
    };
    let (timeout, _) = opts.clamp(Duration::from_secs(300));
    match m.run(group, &cmd, &bytes, timeout).await {
        Ok(out) if out.success() => Done::ok(Value::Null),
        Ok(out) => Done::failed(format!("copy_from_host({source}, {target}): {}", describe(&cmd, &out))),
        Err(e) => Done::infra(chain_error(&e)),
    }
}
