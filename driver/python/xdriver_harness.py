# xdriver's Python harness: runs a test script written for the NixOS test
# driver against one cell's VM. It is a look-alike of that driver's script
# API (the `machine` object, `start_all`, `subtest`, `retry`, `t`, ...), not
# the driver itself: every call is a request to the xdriver process that
# started this one, which runs it on the VM and records it as a step.
#
# Channel: requests go out and replies come in over the Unix socket named
# by XDRIVER_HARNESS_SOCKET, one JSON object per line. Running a script,
# stdout and stderr are the cell's python.log. With --interactive, stdin and
# stdout are xdriver's terminal and a Python prompt has `machine` ready.
#
# Usage (by xdriver): python3 xdriver_harness.py SCRIPT.py SEGMENTS.json [--interactive]

import contextlib
import json
import os
import pathlib
import re
import socket
import sys
import time
import traceback
import unittest

INTERACTIVE = "--interactive" in sys.argv[3:]
_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
_sock.connect(os.environ["XDRIVER_HARNESS_SOCKET"])
_rpc_out = _sock.makefile("w", encoding="utf-8")
_rpc_in = _sock.makefile("r", encoding="utf-8")
if not INTERACTIVE:
    _null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(_null, 0)
sys.stdout.reconfigure(line_buffering=True)

SCRIPT = os.path.abspath(sys.argv[1])
with open(sys.argv[2], encoding="utf-8") as f:
    META = json.load(f)
SEGMENTS = META["segments"]


def _segment(line):
    """The segment (group, line within it, origin) a script line came from."""
    for s in SEGMENTS:
        if s["start"] <= line < s["start"] + s["lines"]:
            k = line - s["start"] + 1
            origin = s["origin"]
            if s.get("base_line") and ":" in origin:
                # Known exactly: the spec file's line of this very line.
                origin = f"{origin.rsplit(':', 1)[0]}:{s['base_line'] + k - 1}"
            return s["group"], k, origin
    return "script", line, ""


def _script_line():
    """The innermost line of the test script on the current stack."""
    f = sys._getframe(1)
    while f is not None:
        if f.f_code.co_filename == SCRIPT:
            return f.f_lineno
        f = f.f_back
    return 0


class TestScriptError(Exception):
    """Not a test failure and not a driver bug (as in the NixOS driver)."""


class RequestedAssertionFailed(TestScriptError):
    """A machine call's check failed (succeed, fail, the waits, retry, t)."""


class MachineError(Exception):
    """The VM or a channel broke, or a call cannot be done on this cell."""


def _call(op, **args):
    # A machine call inside a polling condition's block checks it first
    # (not the calls the condition itself makes).
    if _ACTIVE_CONDITIONS and op not in ("log", "subtest"):
        _check_conditions()
    args["op"] = op
    args["line"] = _script_line()
    _rpc_out.write(json.dumps(args) + "\n")
    _rpc_out.flush()
    # Ctrl-C at a prompt while a call runs: the call still ends in xdriver,
    # and its reply must be read before the next call's.
    interrupted = False
    while True:
        try:
            reply = _rpc_in.readline()
            break
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt
    if not reply:
        raise MachineError("xdriver closed the channel (the run's deadline, or xdriver stopped)")
    r = json.loads(reply)
    # What the nodes' serial consoles printed since the last call (while
    # serial_stdout is on), as the NixOS driver logs it: "node # line".
    for node, text in (r.get("console") or {}).items():
        for line in text.splitlines():
            print(f"{node} # {line}", file=sys.stderr)
    if "error" in r:
        if r.get("kind") == "failed":
            raise RequestedAssertionFailed(r["error"])
        raise MachineError(r["error"])
    return r.get("value")


def _secs(t):
    """Seconds from a number or a datetime.timedelta (newer scripts)."""
    if t is None:
        return None
    if hasattr(t, "total_seconds"):
        return t.total_seconds()
    return float(t)


def _step(call, action, timeout=None):
    return _call("step", call=call, action=action, timeout=_secs(timeout))


_LOCAL = ("localhost", "127.0.0.1", "::1")


class Machine:
    """The NixOS test driver's Machine, for one xdriver cell's VM."""

    def __init__(self, name):
        self.name = name
        self.booted = True
        self.connected = True

    def __repr__(self):
        return f"<Machine '{self.name}'>"

    # Every call names the node it is for.
    def _call(self, op, **args):
        return _call(op, node=self.name, **args)

    def _step(self, call, action, timeout=None):
        return _call("step", node=self.name, call=call, action=action, timeout=_secs(timeout))

    # Running commands: bash, `set -euo pipefail`, working directory /tmp,
    # stdout returned (stderr goes to the transcript), as in the NixOS driver.
    def execute(self, command, check_return=True, check_output=True, timeout=900):
        # timeout=None: no limit but the run's (--timeout), as in the NixOS driver.
        limit = "none" if timeout is None else _secs(timeout)
        r = self._call("exec", command=command, timeout=limit, expect=None, call=f"execute({command!r})")
        if not check_output:
            return (-2, "")
        if not check_return:
            return (-1, r["stdout"])
        return (r["status"], r["stdout"])

    def succeed(self, *commands, timeout=None):
        output = ""
        for command in commands:
            r = self._call("exec", command=command, timeout=_secs(timeout), expect="success", call=f"succeed({command!r})")
            if r["status"] != 0:
                print(f"output: {r['stdout']}")
                raise RequestedAssertionFailed(f"command `{command}` failed (exit code {r['status']})")
            output += r["stdout"]
        return output

    def fail(self, *commands, timeout=None):
        output = ""
        for command in commands:
            r = self._call("exec", command=command, timeout=_secs(timeout), expect="failure", call=f"fail({command!r})")
            if r["status"] == 0:
                raise RequestedAssertionFailed(f"command `{command}` unexpectedly succeeded")
            output += r["stdout"]
        return output

    def wait_until_succeeds(self, command, timeout=900):
        return self._step(f"wait_until_succeeds({command!r})", {"wait_until_succeeds": command}, timeout)["stdout"]

    def wait_until_fails(self, command, timeout=900):
        return self._step(f"wait_until_fails({command!r})", {"wait_until_fails": command}, timeout)["stdout"]

    def sleep(self, secs):
        self.succeed(f"sleep {_secs(secs):g}")

    # Waiting on the guest.
    # On localhost the guest OS's own port check (no nc needed); elsewhere
    # `nc -z ADDR PORT`, as in the NixOS driver.
    def wait_for_open_port(self, port, addr="localhost", timeout=900):
        if addr in _LOCAL:
            self._step(f"wait_for_open_port({port})", {"wait_for_open_port": int(port)}, timeout)
        else:
            self._step(f"wait_for_open_port({port}, {addr!r})", {"wait_until_succeeds": f"nc -z {addr} {int(port)}"}, timeout)

    def wait_for_closed_port(self, port, addr="localhost", timeout=900):
        if addr in _LOCAL:
            self._step(f"wait_for_closed_port({port})", {"wait_for_closed_port": int(port)}, timeout)
        else:
            self._step(f"wait_for_closed_port({port}, {addr!r})", {"wait_until_fails": f"nc -z {addr} {int(port)}"}, timeout)

    def wait_for_open_unix_socket(self, addr, is_datagram=False, timeout=900):
        flags = "-uU" if is_datagram else "-U"
        cmd = f"test -S {addr} && {{ ! command -v nc >/dev/null 2>&1 || nc -z {flags} {addr}; }}"
        self._step(f"wait_for_open_unix_socket({addr!r})", {"wait_until_succeeds": cmd}, timeout)

    def wait_for_file(self, filename, timeout=900):
        # Unquoted, as in the NixOS driver: globs and variables expand.
        self._step(f"wait_for_file({filename!r})", {"wait_until_succeeds": f"test -e {filename}"}, timeout)

    def wait_for_console_text(self, regex, timeout=None):
        self._step(f"wait_for_console_text({regex!r})", {"wait_for_console_text": regex}, timeout if timeout is not None else 900)

    # OCR of the screen (Debian's tesseract on the host), as the NixOS
    # driver's; one reading of the screen, not its three image variants.
    def get_screen_text(self):
        return self._call("screen_text", call="get_screen_text()")

    def get_screen_text_variants(self):
        return [self.get_screen_text()]

    def wait_for_text(self, regex, timeout=900):
        found = []

        def seen(last):
            text = self.get_screen_text()
            if re.search(regex, text):
                found.append(text)
                return True
            return False

        retry(seen, timeout=timeout)
        return found[0] if found else None

    def get_console_log(self):
        return self._call("console_log")

    # Services: mapped to the cell's process manager. A unit name means the
    # instance of that name (".service" and nix-processmgmt's "nix-process-"
    # prefix are dropped).
    @staticmethod
    def _instance(unit):
        for suffix in (".service",):
            if unit.endswith(suffix):
                unit = unit[: -len(suffix)]
        if unit.startswith("nix-process-"):
            unit = unit[len("nix-process-"):]
        return unit

    def wait_for_unit(self, unit, user=None, timeout=900):
        self._step(f"wait_for_unit({unit!r})", {"wait_for_service": self._instance(unit)}, timeout)

    # The manager's own start/stop: (status, its output), as systemctl's
    # in the NixOS driver; a failure is the script's to judge.
    def start_job(self, jobname, user=None):
        r = self._call("service", verb="start", name=self._instance(jobname), call=f"start_job({jobname!r})")
        return (r["status"], r["stdout"])

    def stop_job(self, jobname, user=None):
        r = self._call("service", verb="stop", name=self._instance(jobname), call=f"stop_job({jobname!r})")
        return (r["status"], r["stdout"])

    def systemctl(self, q, user=None):
        if META.get("manager") != "systemd":
            raise MachineError(f"systemctl({q!r}): this cell's process manager is {META.get('manager')}, not systemd "
                               "(use wait_for_unit/start_job/stop_job, which map to every manager)")
        if user is not None:
            q = q.replace("'", "\\'")
            return self.execute(f"su -l {user} --shell /bin/sh -c $'XDG_RUNTIME_DIR=/run/user/`id -u` systemctl --user {q}'")
        return self.execute(f"systemctl {q}")

    # systemd's view of a unit, as the NixOS driver gives it (systemd cells
    # only: systemctl() refuses elsewhere, saying which manager the cell has).
    def get_unit_info(self, unit, user=None):
        status, lines = self.systemctl(f'--no-pager show "{unit}"', user)
        if status != 0:
            under = "" if user is None else f" under user {user!r}"
            raise MachineError(f'retrieving systemctl info for unit "{unit}"{under} failed with exit code {status}')
        return dict(l.split("=", 1) for l in lines.splitlines() if "=" in l)

    def get_unit_property(self, unit, property, user=None):
        status, lines = self.systemctl(f'--no-pager show --property="{property}" "{unit}"', user)
        if status != 0:
            under = "" if user is None else f" under user {user!r}"
            raise MachineError(f'retrieving systemctl property "{property}" for unit "{unit}"{under} failed with exit code {status}')
        key, _, value = lines.rstrip("\n").partition("=")
        if key != property:
            raise MachineError(f'systemctl show printed {lines!r} for property "{property}" of unit "{unit}"')
        return value

    def require_unit_state(self, unit, require_state="active"):
        state = self.get_unit_info(unit)["ActiveState"]
        if state != require_state:
            raise RequestedAssertionFailed(f"Expected unit '{unit}' to to be in state '{require_state}' but it is in state '{state}'")

    # Screen, keyboard, console, monitor.
    def screenshot(self, filename):
        self._step(f"screenshot({filename!r})", {"screenshot": str(filename)})

    def send_monitor_command(self, command):
        return self._call("hmp", command=command, call=f"send_monitor_command({command!r})")

    def send_key(self, key, delay=0.01, log=True):
        # A character is typed as send_chars types it; anything else is a
        # QEMU key name (e.g. "ctrl-alt-delete").
        if len(key) == 1:
            self._step(f"send_key({key!r})", {"send_chars": key})
        else:
            self._call("hmp", command=f"sendkey {key}", call=f"send_key({key!r})", quiet=not log)
        if delay:
            time.sleep(delay)

    def send_chars(self, chars, delay=0.01):
        self._step(f"send_chars({chars!r})", {"send_chars": chars})

    def send_console(self, chars):
        self._call("send_console", chars=chars, call=f"send_console({chars!r})")

    # The network: block/unblock take the VM's NIC down and up (xdriver has
    # one, the user-mode NIC; the NixOS driver's block() leaves that one up
    # and takes the test VLAN down). forward_port listens on 127.0.0.1 only.
    def block(self):
        self._step("block()", "block")

    def unblock(self):
        self._step("unblock()", "unblock")

    def forward_port(self, host_port=8080, guest_port=80):
        self._step(f"forward_port({host_port}, {guest_port})", {"forward_port": {"host_port": int(host_port), "guest_port": int(guest_port)}})

    # Lifecycle.
    def start(self, allow_reboot=False):
        self._step("start()", "start")
        self.booted = self.connected = True

    def shutdown(self):
        self._step("shutdown()", "shutdown")
        self.booted = self.connected = False

    def crash(self):
        self._step("crash()", "crash")
        self.booted = self.connected = False

    def reboot(self):
        self._step("reboot()", "reboot")

    def wait_for_shutdown(self):
        self._call("wait_for_shutdown", call="wait_for_shutdown()")
        self.booted = self.connected = False

    def is_up(self):
        # Asked of the VM: a guest that powered off or crashed from inside
        # (a command's `poweroff`, a kernel panic) is not up.
        up = bool(self._call("is_up"))
        self.booted = self.connected = up
        return up

    # Files.
    def copy_from_host(self, source, target):
        self._call("copy_from_host", source=os.path.abspath(str(source)), target=str(target),
              call=f"copy_from_host({str(source)!r}, {str(target)!r})")

    def copy_from_host_via_shell(self, source, target):
        self.copy_from_host(source, target)

    def copy_from_vm(self, source, target_dir=""):
        self._step(f"copy_from_vm({source!r}, {target_dir!r})", {"copy_from_vm": {"source": str(source), "target": str(target_dir) or "."}})

    copy_from_machine = copy_from_vm

    # xdriver's own steps, for a test that wants them by name.
    def wait_for_service(self, instance, timeout=900):
        self._step(f"wait_for_service({instance!r})", {"wait_for_service": instance}, timeout)

    def log(self, msg):
        log.log(msg)

    @contextlib.contextmanager
    def nested(self, msg, attrs=None):
        with log.nested(msg):
            yield


class _Log:
    def log(self, msg):
        print(msg, file=sys.stderr)
        _call("log", message=str(msg))

    info = log
    warning = log
    error = log

    @contextlib.contextmanager
    def nested(self, msg, attrs=None):
        self.log(msg)
        yield

    def subtest(self, name):
        return subtest(name)


log = _Log()
# The cell's nodes, in the spec's order ([nodes.NAME]; one, `machine`,
# without). `machine` is the first node, as the NixOS driver has it for a
# test of one machine.
machines = [Machine(n) for n in META.get("nodes") or [META.get("machine", "machine")]]
machine = machines[0]
_by_name = {m.name: m for m in machines}


class VLan:
    """A vlan of the cell (a `vde_switch` xdriver started), as the NixOS
    driver's: `nr`, `socket_dir` (the switch's socket directory, in the run
    directory) and `pid`. xdriver starts and stops it; the script only
    reads it."""

    def __init__(self, nr, socket_dir, pid):
        self.nr = nr
        self.socket_dir = pathlib.Path(socket_dir)
        self.pid = pid

    def __repr__(self):
        return f"<VLan {self.nr}>"


vlans = [VLan(v["nr"], v["socket_dir"], v["pid"]) for v in META.get("vlans") or []]


def create_machine(*args, **kwargs):
    raise MachineError("create_machine() is not supported by xdriver: a cell's machines are its spec's [nodes] "
                       "(or the Nix spec's `nodes`), started before the script")


def start_all():
    """Every node is up and deployed before the script runs: start_all()
    boots again any node the script shut down or crashed."""
    for m in machines:
        m._step("start_all()", "start")


def join_all():
    for m in machines:
        m.wait_for_shutdown()


def _step_json(call, action, timeout, node=None):
    m = _by_name[node] if node is not None else machine
    return m._step(call, json.loads(action), timeout)


def serial_stdout_on():
    """Each node's serial console goes to the script's log (python.log), a
    call at a time (on at the start, as in the NixOS driver)."""
    _call("serial_stdout", on=True)


def serial_stdout_off():
    _call("serial_stdout", on=False)


@contextlib.contextmanager
def subtest(name):
    _call("subtest", name=name, phase="start")
    try:
        yield
    except Exception as e:
        log.log(f'Test "{name}" failed with error: "{e}"')
        raise
    _call("subtest", name=name, phase="end")


def retry(fn, timeout=900, timeout_seconds=None):
    """Calls fn(False) once a second until it is true, then fn(True) once."""
    budget = _secs(timeout_seconds if timeout_seconds is not None else timeout)
    start = time.monotonic()
    while time.monotonic() - start < budget:
        if fn(False):
            return
        time.sleep(1)
    elapsed = time.monotonic() - start
    if not fn(True):
        raise RequestedAssertionFailed(f"action timed out after {elapsed:.2f} seconds (timeout={budget:g})")


class PollingConditionError(Exception):
    """A polling condition did not hold while its `with` block ran."""


# The conditions whose `with` blocks are open, innermost last; each is
# checked (at most every seconds_interval) before a machine call.
_ACTIVE_CONDITIONS = []


class _Condition:
    """A check that must keep holding while a `with` block runs (the NixOS
    driver's polling_condition): true, or None, or no exception, is a pass."""

    def __init__(self, fn, seconds_interval, description):
        self.fn = fn
        self.seconds_interval = float(seconds_interval)
        self.description = str(description) if description is not None else (fn.__doc__ or fn.__name__).strip()
        self.last = float("-inf")
        self.running = 0

    def _holds(self):
        self.running += 1
        try:
            try:
                r = self.fn()
            except Exception:
                r = False
            return r is None or bool(r)
        finally:
            self.running -= 1
            self.last = time.monotonic()

    def check(self, force=False):
        due = time.monotonic() - self.last >= self.seconds_interval
        if self.running or (not due and not force):
            return True
        ok = self._holds()
        print(f"polling condition {'held' if ok else 'failed'}: {self.description}")
        return ok

    def __enter__(self):
        _ACTIVE_CONDITIONS.append(self)
        return self

    def __exit__(self, *exc):
        assert _ACTIVE_CONDITIONS and _ACTIVE_CONDITIONS[-1] is self
        _ACTIVE_CONDITIONS.pop()

    def wait(self, timeout=900):
        """Waits until the condition holds (checked once a second)."""
        retry(lambda last: self.check(force=True), timeout=timeout)

    def __call__(self):
        return self.fn()


def polling_condition(fun_=None, *, seconds_interval=2.0, description=None):
    """As a decorator, bare or with arguments: `with cond:` checks cond
    before each machine call in the block, at most every seconds_interval,
    and raises PollingConditionError when it fails."""
    if fun_ is None:
        return lambda fn: _Condition(fn, seconds_interval, description)
    return _Condition(fun_, seconds_interval, description)


def _check_conditions():
    for c in list(_ACTIVE_CONDITIONS):
        if not c.check():
            raise PollingConditionError(f"polling condition failed: {c.description}")


class _AssertionTester(unittest.TestCase):
    failureException = RequestedAssertionFailed

    def runTest(self):
        pass


t = _AssertionTester()


def _symbols():
    s = {
        "machine": machine, "machines": machines, "start_all": start_all, "join_all": join_all,
        "subtest": subtest, "retry": retry, "log": log, "t": t, "os": os,
        "serial_stdout_on": serial_stdout_on, "serial_stdout_off": serial_stdout_off,
        "Machine": Machine, "RequestedAssertionFailed": RequestedAssertionFailed,
        "TestScriptError": TestScriptError, "MachineError": MachineError,
        "polling_condition": polling_condition, "PollingConditionError": PollingConditionError,
        "_xdriver_step": _step,
        "_xdriver_step_json": _step_json,
    }
    s["vlans"] = vlans
    s["create_machine"] = create_machine
    s["driver"] = driver
    for v in vlans:
        s[f"vlan{v.nr}"] = v
    for m in machines:
        s[m.name] = m
    return s


class _Driver:
    """`driver` in the script, as the NixOS driver's object for what scripts
    read of it: `machines`, `vlans`, `test_symbols()` and the script
    functions as methods. Not that driver: no `run_tests`, `test_script`
    or `global_timeout` (xdriver runs the script and keeps the cell's
    timeout)."""

    machines = machines
    vlans = vlans

    def test_symbols(self):
        return _symbols()

    start_all = staticmethod(start_all)
    join_all = staticmethod(join_all)
    subtest = staticmethod(subtest)
    retry = staticmethod(retry)
    polling_condition = staticmethod(polling_condition)
    serial_stdout_on = staticmethod(serial_stdout_on)
    serial_stdout_off = staticmethod(serial_stdout_off)
    create_machine = staticmethod(create_machine)


driver = _Driver()


def _failure_text(e):
    """The traceback through the script only, each line with where it came from."""
    lines = ["Traceback (most recent call last):"]
    for fs in traceback.extract_tb(e.__traceback__):
        if fs.filename != SCRIPT:
            continue
        group, k, origin = _segment(fs.lineno)
        where = f"{group}, its line {k}" + (f"; written at {origin}" if origin else "")
        lines.append(f"  script line {fs.lineno} ({where})")
        if fs.line:
            lines.append(f"    {fs.line}")
    if isinstance(e, SyntaxError) and e.filename == SCRIPT and e.lineno:
        group, k, origin = _segment(e.lineno)
        lines.append(f"  script line {e.lineno} ({group}, its line {k}" + (f"; written at {origin}" if origin else "") + ")")
        if e.text:
            lines.append(f"    {e.text.rstrip()}")
    lines.append(f"{type(e).__name__}: {e}")
    return "\n".join(lines)


def _line_of(e):
    if isinstance(e, SyntaxError) and e.filename == SCRIPT and e.lineno:
        return e.lineno
    line = 0
    for fs in traceback.extract_tb(e.__traceback__):
        if fs.filename == SCRIPT:
            line = fs.lineno
    return line


def _prompt(source):
    """A Python prompt with the script's names, as the NixOS driver's
    interactive mode: `test_script()` runs the cell's script."""
    import code
    try:
        import readline  # noqa: F401 -- line editing and history at the prompt
    except ImportError:
        pass
    symbols = _symbols()

    def test_script():
        exec(compile(source, SCRIPT, "exec"), symbols)

    symbols["test_script"] = test_script
    names = ", ".join(f"`{m.name}`" for m in machines)
    banner = (f"xdriver: {META['os']}/{META['manager']}: deployed; {names} "
              + ("is" if len(machines) == 1 else "are") + " ready "
              f"(e.g. {machine.name}.succeed(\"uname -a\")).\n"
              + ("test_script() runs the cell's test script. " if source.strip() else "")
              + "Ctrl-D ends the session and stops the VM.")
    code.interact(banner=banner, local=symbols, exitmsg="")


def main():
    with open(SCRIPT, encoding="utf-8") as f:
        source = f.read()
    if INTERACTIVE:
        _prompt(source)
        _rpc_out.write(json.dumps({"op": "done", "line": 0}) + "\n")
        _rpc_out.flush()
        return
    try:
        code = compile(source, SCRIPT, "exec")
        exec(code, _symbols())
    except BaseException as e:  # noqa: B036 -- every way out is reported
        traceback.print_exc()
        kind = "failed" if isinstance(e, (RequestedAssertionFailed, AssertionError)) else "error"
        if isinstance(e, MachineError):
            kind = "infra"
        try:
            _rpc_out.write(json.dumps({"op": "failed", "kind": kind, "type": type(e).__name__, "message": str(e),
                                       "line": _line_of(e), "traceback": _failure_text(e)}) + "\n")
            _rpc_out.flush()
        except OSError:
            pass
        sys.exit(1)
    _rpc_out.write(json.dumps({"op": "done", "line": 0}) + "\n")
    _rpc_out.flush()


if __name__ == "__main__":
    main()
