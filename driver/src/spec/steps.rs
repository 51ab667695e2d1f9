//! The test steps of one cell: initialTests, then readiness and tests per
//! instance (in dependency order), then postTests, each rendered with the
//! instance's attributes and the profile's parameters, `if` and `for`
//! applied.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use toml::Spanned;

use super::error::SpecError;
use super::load::{Hook, Spec};
use super::resolve::Resolved;
use super::schema::StepDef;
use super::template::Templates;

/// A test script in Python for the NixOS test driver's `machine` (see
/// `runner::python`), made of segments that each came from one place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PyScript {
    /// The whole script.
    pub text: String,
    /// Where its lines came from, in order.
    pub segments: Vec<PySegment>,
}

/// Lines of a [`PyScript`] from one hook or spec key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PySegment {
    /// Its first line in the script (1-based).
    pub start: usize,
    /// How many lines.
    pub lines: usize,
    /// The step group its calls are recorded under (`readiness/nginx`, …).
    pub group: String,
    /// Where it was written: `file:line` of its first line when known
    /// exactly (`base_line` set), else of the hook that gave it.
    pub origin: String,
    /// The spec file's line of the segment's first line, when known.
    pub base_line: Option<usize>,
}

impl PyScript {
    /// Appends `text` (a newline added if missing) as a segment.
    pub fn push(&mut self, text: &str, group: &str, origin: &str, base_line: Option<usize>) {
        if text.trim().is_empty() {
            return;
        }
        let start = self.text.lines().count() + 1;
        self.text.push_str(text);
        if !text.ends_with('\n') {
            self.text.push('\n');
        }
        let lines = self.text.lines().count() + 1 - start;
        self.segments.push(PySegment { start, lines, group: group.into(), origin: origin.into(), base_line });
    }

    /// Appends rendered steps as calls of the harness's `_xdriver_step_json`
    /// (the step's name, its action as JSON, its timeout), so steps and
    /// Python make up one script.
    pub fn push_steps(&mut self, steps: &[Step], group: &str, origin: &str) {
        // A JSON string is a valid Python string literal.
        let lit = |v: &str| serde_json::to_string(v).unwrap_or_default();
        let mut text = String::new();
        for s in steps {
            let action = serde_json::to_string(&s.action).unwrap_or_default();
            let node = s.node.as_deref().map(|n| format!(", {}", lit(n))).unwrap_or_default();
            text.push_str(&format!("_xdriver_step_json({}, {}, {}{node})\n", lit(&s.name), lit(&action), s.timeout.as_secs_f64()));
        }
        self.push(&text, group, origin, None);
    }
}

/// One Machine API call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Run; must exit 0.
    Succeed(String),
    /// Run; must exit non-zero.
    Fail(String),
    /// Run; any status.
    Execute(String),
    /// Retry until exit 0.
    WaitUntilSucceeds(String),
    /// Retry until exit non-zero.
    WaitUntilFails(String),
    /// Until something listens on the port.
    WaitForOpenPort(u16),
    /// Until nothing listens on the port.
    WaitForClosedPort(u16),
    /// Until the path exists.
    WaitForFile(String),
    /// Until the serial console shows a match.
    WaitForConsoleText(String),
    /// Until the manager says the instance runs.
    WaitForService(String),
    /// Start an instance through its manager.
    StartService(String),
    /// Stop an instance through its manager.
    StopService(String),
    /// Copy a host path into a guest directory.
    CopyToVm {
        /// Host path.
        source: PathBuf,
        /// Guest directory.
        target: String,
    },
    /// Copy a guest path into the cell's results.
    CopyFromVm {
        /// Guest path.
        source: String,
        /// Directory under the cell's results.
        target: String,
    },
    /// Wait.
    Sleep(f64),
    /// The VM's NIC down.
    Block,
    /// The VM's NIC up.
    Unblock,
    /// A host port on 127.0.0.1 to a guest port.
    ForwardPort {
        /// Host port (0: QEMU picks).
        host_port: u16,
        /// Guest port.
        guest_port: u16,
    },
    /// The screen as PNG under the cell's results.
    Screenshot(String),
    /// Text typed on the keyboard.
    SendChars(String),
    /// Power off from inside; wait for QEMU to exit.
    Shutdown,
    /// QMP `quit`.
    Crash,
    /// Reboot through the init; wait until the guest is back.
    Reboot,
    /// Boot again on the same disk after a stop (no-op while running).
    Start,
    /// A Python test script for the NixOS test driver's `machine`.
    Python(PyScript),
}

impl Action {
    /// The Machine API name and argument, e.g. `succeed("curl …")`.
    pub fn display(&self) -> String {
        match self {
            Action::Succeed(c) => format!("succeed({c:?})"),
            Action::Fail(c) => format!("fail({c:?})"),
            Action::Execute(c) => format!("execute({c:?})"),
            Action::WaitUntilSucceeds(c) => format!("wait_until_succeeds({c:?})"),
            Action::WaitUntilFails(c) => format!("wait_until_fails({c:?})"),
            Action::WaitForOpenPort(p) => format!("wait_for_open_port({p})"),
            Action::WaitForClosedPort(p) => format!("wait_for_closed_port({p})"),
            Action::WaitForFile(f) => format!("wait_for_file({f:?})"),
            Action::WaitForConsoleText(r) => format!("wait_for_console_text({r:?})"),
            Action::WaitForService(s) => format!("wait_for_service({s:?})"),
            Action::StartService(s) => format!("start_service({s:?})"),
            Action::StopService(s) => format!("stop_service({s:?})"),
            Action::CopyToVm { source, target } => format!("copy_to_vm({:?}, {target:?})", source.display().to_string()),
            Action::CopyFromVm { source, target } => format!("copy_from_vm({source:?}, {target:?})"),
            Action::Sleep(s) => format!("sleep({s})"),
            Action::Python(p) => format!("python script ({} lines)", p.text.lines().count()),
            Action::Block => "block()".into(),
            Action::Unblock => "unblock()".into(),
            Action::ForwardPort { host_port, guest_port } => format!("forward_port({host_port}, {guest_port})"),
            Action::Screenshot(n) => format!("screenshot({n:?})"),
            Action::SendChars(t) => format!("send_chars({t:?})"),
            Action::Shutdown => "shutdown()".into(),
            Action::Crash => "crash()".into(),
            Action::Reboot => "reboot()".into(),
            Action::Start => "start()".into(),
        }
    }
}

/// A rendered step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// `initialTests`, `readiness/<instance>`, `tests/<instance>`, `postTests`.
    pub group: String,
    /// The step's `name`, or the action's display.
    pub name: String,
    /// What to do.
    pub action: Action,
    /// Its deadline.
    #[serde(with = "secs")]
    pub timeout: Duration,
    /// The node it runs on (None: the instance's node for readiness and
    /// tests, else the first).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub node: Option<String>,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Steps computed by Nix have no place in a TOML file.
fn unspanned(defs: &[StepDef]) -> Vec<Spanned<StepDef>> {
    defs.iter().map(|d| Spanned::new(0..0, d.clone())).collect()
}

impl Spec {
    /// Every step of a cell, in execution order.
    pub fn steps(&self, r: &Resolved) -> Result<Vec<Step>, SpecError> {
        let t = Templates::new(&self.loc, self.literal);
        let processes = Value::Object(r.instances.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        let mut sys_ctx = r.params.clone();
        sys_ctx.insert("processes".into(), processes.clone());
        let sys_ctx = Value::Object(sys_ctx);
        let mut out = Vec::new();
        if let Some(per) = &self.instance_steps {
            // A Nix spec: the same groups in the same order, computed by Nix.
            if per.any_python() {
                return self.nix_python(&t, per, &sys_ctx);
            }
            let steps_of = |h: &Hook| match h {
                Hook::Steps(v) => unspanned(v),
                Hook::Python(_) => Vec::new(),
            };
            self.expand(&t, &unspanned(&per.setup), &sys_ctx, "initialTests", &mut out)?;
            self.expand(&t, &steps_of(&per.initial_tests), &sys_ctx, "initialTests", &mut out)?;
            for (group, map) in [("readiness", &per.readiness), ("tests", &per.tests)] {
                for p in &r.system.processes {
                    let defs = map.get(&p.name).map(steps_of).unwrap_or_default();
                    self.expand(&t, &defs, &sys_ctx, &format!("{group}/{}", p.name), &mut out)?;
                }
            }
            self.expand(&t, &steps_of(&per.post_tests), &sys_ctx, "postTests", &mut out)?;
            return Ok(out);
        }
        let tests = &self.file.tests;
        self.expand(&t, &tests.initial_tests, &sys_ctx, "initialTests", &mut out)?;
        for group in ["readiness", "tests"] {
            let defs = if group == "readiness" { &tests.readiness } else { &tests.tests };
            for p in &r.system.processes {
                let mut ctx = r.params.clone();
                ctx.insert("processes".into(), processes.clone());
                ctx.insert("instanceName".into(), json!(p.name));
                ctx.insert("instance".into(), r.instances.get(&p.name).cloned().unwrap_or(Value::Null));
                self.expand(&t, defs, &Value::Object(ctx), &format!("{group}/{}", p.name), &mut out)?;
            }
        }
        self.expand(&t, &tests.post_tests, &sys_ctx, "postTests", &mut out)?;
        if let Some(py) = &tests.python {
            let base = self.loc.first_content_line(py.span().start);
            let mut script = PyScript { text: String::new(), segments: Vec::new() };
            script.push(py.get_ref(), "python", &format!("{}:{base}", self.path.display()), Some(base));
            let timeout = Duration::from_secs(self.file.timeouts.step);
            out.push(Step { group: "python".into(), name: "[tests] python".into(), action: Action::Python(script), timeout, node: None });
        }
        Ok(out)
    }

    /// One Python script for a Nix cell whose hooks give Python, joined in
    /// nix-processmgmt's order: `start_all()`, initialTests, readiness for
    /// every instance (in attribute-name order), tests for every instance,
    /// postTests. Hooks that give steps become calls in it.
    fn nix_python(&self, t: &Templates, per: &super::load::InstanceSteps, sys_ctx: &Value) -> Result<Vec<Step>, SpecError> {
        let mut script = PyScript { text: String::new(), segments: Vec::new() };
        let origin = |key: &str| per.origins.get(key).cloned().unwrap_or_default();
        let add = |script: &mut PyScript, hook: &Hook, group: &str, key: &str| -> Result<(), SpecError> {
            match hook {
                Hook::Python(text) => script.push(text, group, &origin(key), None),
                Hook::Steps(defs) => {
                    let mut steps = Vec::new();
                    self.expand(t, &unspanned(defs), sys_ctx, group, &mut steps)?;
                    script.push_steps(&steps, group, &origin(key));
                }
            }
            Ok(())
        };
        script.push("start_all()\n", "initialTests", "", None);
        add(&mut script, &Hook::Steps(per.setup.clone()), "initialTests", "systemPackages")?;
        add(&mut script, &per.initial_tests, "initialTests", "initialTests")?;
        for (key, map) in [("readiness", &per.readiness), ("tests", &per.tests)] {
            for (name, hook) in map {
                add(&mut script, hook, &format!("{key}/{name}"), key)?;
            }
        }
        add(&mut script, &per.post_tests, "postTests", "postTests")?;
        let timeout = Duration::from_secs(self.file.timeouts.step);
        Ok(vec![Step { group: "python".into(), name: "testScript".into(), action: Action::Python(script), timeout, node: None }])
    }

    fn expand(&self, t: &Templates, defs: &[Spanned<StepDef>], ctx: &Value, group: &str, out: &mut Vec<Step>) -> Result<(), SpecError> {
        for d in defs {
            let span = d.span();
            let def = d.get_ref();
            let items: Vec<Value> = match &def.each {
                None => vec![ctx.clone()],
                Some(each) => {
                    let Some((var, expr)) = each.split_once(" in ") else {
                        return Err(self.loc.at(span, format!("`for` must read `NAME in EXPRESSION`, not `{each}`")));
                    };
                    let var = var.trim();
                    if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(self.loc.at(span, format!("`for`: `{var}` is not a variable name")));
                    }
                    let seq = t.eval(expr.trim(), ctx, span.clone())?;
                    let iter = seq.try_iter().map_err(|e| self.loc.at(span.clone(), format!("`for`: `{}` is not a list: {e}", expr.trim())))?;
                    iter.map(|item| {
                        let mut m = ctx.as_object().cloned().unwrap_or_default();
                        m.insert(var.to_string(), serde_json::to_value(&item).unwrap_or(Value::Null));
                        Value::Object(m)
                    })
                    .collect()
                }
            };
            for item in items {
                if let Some(cond) = &def.condition {
                    if !t.eval(cond, &item, span.clone())?.is_true() {
                        continue;
                    }
                }
                let action = self.action(t, def, &item, span.clone())?;
                let timeout = Duration::from_secs(def.timeout.unwrap_or(match action {
                    Action::Succeed(_) | Action::Fail(_) | Action::Execute(_) => self.file.timeouts.command,
                    _ => self.file.timeouts.step,
                }));
                let name = match &def.name {
                    Some(n) => t.render(n, &item, span.clone())?,
                    None => action.display(),
                };
                let node = match &def.node {
                    Some(n) => {
                        let n = t.render(n, &item, span.clone())?;
                        let known = if self.file.nodes.is_empty() { n == "machine" } else { self.file.nodes.keys().any(|k| *k.get_ref() == n) };
                        if !known {
                            return Err(self.loc.at(span, format!("step on node `{n}`, which the spec does not have ([nodes.NAME]; without [nodes], the one node is `machine`)")));
                        }
                        Some(n)
                    }
                    None => None,
                };
                out.push(Step { group: group.to_string(), name, action, timeout, node });
            }
        }
        Ok(())
    }

    fn action(&self, t: &Templates, d: &StepDef, ctx: &Value, span: std::ops::Range<usize>) -> Result<Action, SpecError> {
        let r = |s: &str| t.render(s, ctx, span.clone());
        let port = |v: &toml::Value| -> Result<u16, SpecError> {
            let text = match v {
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::String(s) => r(s)?,
                other => other.to_string(),
            };
            text.trim().parse::<u16>().map_err(|_| self.loc.at(span.clone(), format!("`{}` is not a port number", text.trim())))
        };
        let mut found: Vec<Action> = Vec::new();
        if let Some(c) = &d.succeed {
            found.push(Action::Succeed(r(c)?));
        }
        if let Some(c) = &d.fail {
            found.push(Action::Fail(r(c)?));
        }
        if let Some(c) = &d.execute {
            found.push(Action::Execute(r(c)?));
        }
        if let Some(c) = &d.wait_until_succeeds {
            found.push(Action::WaitUntilSucceeds(r(c)?));
        }
        if let Some(c) = &d.wait_until_fails {
            found.push(Action::WaitUntilFails(r(c)?));
        }
        if let Some(p) = &d.wait_for_open_port {
            found.push(Action::WaitForOpenPort(port(p)?));
        }
        if let Some(p) = &d.wait_for_closed_port {
            found.push(Action::WaitForClosedPort(port(p)?));
        }
        if let Some(f) = &d.wait_for_file {
            found.push(Action::WaitForFile(r(f)?));
        }
        if let Some(re) = &d.wait_for_console_text {
            let re = r(re)?;
            regex::Regex::new(&re).map_err(|e| self.loc.at(span.clone(), format!("wait_for_console_text: invalid regex: {e}")))?;
            found.push(Action::WaitForConsoleText(re));
        }
        for (v, f) in [
            (&d.wait_for_service, Action::WaitForService as fn(String) -> Action),
            (&d.start_service, Action::StartService),
            (&d.stop_service, Action::StopService),
        ] {
            if let Some(s) = v {
                found.push(f(r(s)?));
            }
        }
        if let Some(c) = &d.copy_to_vm {
            found.push(Action::CopyToVm { source: self.dir.join(r(&c.source)?), target: r(&c.target)? });
        }
        if let Some(c) = &d.copy_from_vm {
            found.push(Action::CopyFromVm { source: r(&c.source)?, target: r(&c.target)? });
        }
        if let Some(s) = d.sleep {
            found.push(Action::Sleep(s));
        }
        for (flag, a) in [(d.block, Action::Block), (d.unblock, Action::Unblock), (d.shutdown, Action::Shutdown), (d.crash, Action::Crash), (d.reboot, Action::Reboot), (d.start, Action::Start)] {
            match flag {
                Some(true) => found.push(a),
                Some(false) => return Err(self.loc.at(span, format!("`{}` takes `true` (to leave it out, leave the step out)", a.display().trim_end_matches("()")))),
                None => {}
            }
        }
        if let Some(f) = &d.forward_port {
            found.push(Action::ForwardPort { host_port: f.host_port, guest_port: f.guest_port });
        }
        if let Some(n) = &d.screenshot {
            found.push(Action::Screenshot(r(n)?));
        }
        if let Some(t) = &d.send_chars {
            found.push(Action::SendChars(r(t)?));
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(self.loc.at(span, "a step needs one action (succeed, fail, execute, wait_until_succeeds, wait_for_open_port, …)")),
            _ => Err(self.loc.at(span, "a step has more than one action; split it into several steps")),
        }
    }
}
