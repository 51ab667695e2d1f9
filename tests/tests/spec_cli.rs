//! `xdriver plan` and `xdriver test` without booting anything: spec errors
//! point at file, line and column and exit 2; conflicts name both
//! instances; unsupported cells are skipped with their reason.

use std::path::Path;
use std::process::Command;

use xdriver_tests::{example, xdriver_bin};

fn xdriver(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(xdriver_bin())
        .args(args)
        .env_remove("XDRIVER_LOG")
        .env("XDRIVER_WEBAPP_DIR", "/")
        .output()
        .expect("spawn");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn spec_file(dir: &Path, text: &str) -> String {
    let p = dir.join("xdriver.toml");
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

const GOOD: &str = r#"name = "t"
[constructors.app]
params.port = { type = "int" }
process.foreground = ["/bin/app", "{{ port }}"]
[instances.a]
constructor = "app"
port = 1000
"#;

#[test]
fn spec_errors_say_where_and_what() {
    let dir = xdriver_tests::workdir();
    let cases: &[(&str, &str, &str)] = &[
        ("name = \"t\"\n[instances.a]\nport = \n", ":3:", "string values must be quoted"),
        (&GOOD.replace("process.foreground", "process.forground"), ":4:9:", "unknown field `forground`"),
        (&GOOD.replace("constructor = \"app\"", "constructor = \"ap\""), ":6:15:", "unknown constructor `ap` (defined: app)"),
        (&GOOD.replace("port = 1000", "port = \"many\""), ":7:8:", "expected an integer"),
        (&GOOD.replace("port = 1000\n", ""), ":5:", "does not set parameter `port`"),
        (&GOOD.replace("\"{{ port }}\"", "\"{{ prot }}\""), ":5:", "undefined"),
        (&format!("{GOOD}[tests]\nreadiness = [{{ sleep = 1, succeed = \"true\" }}]\n"), ":9:14:", "more than one action"),
        (&format!("{GOOD}[tests]\nreadiness = [{{ wait_for_open_port = \"{{{{ instance.nope }}}}\" }}]\n"), ":9:14:", "undefined"),
        (&format!("{GOOD}[instances.b]\nconstructor = \"app\"\nport = 1000\n"), "", "`a` and `b` both use port 1000"),
        (&format!("{GOOD}[instances.b]\nprocess.foreground = [\"x\"]\nprocess.dependencies = [\"c\"]\n"), ":8:", "depends on `c`, which is not an instance"),
    ];
    for (text, at, needle) in cases {
        let path = spec_file(dir.path(), text);
        let (code, _, err) = xdriver(&["plan", &path, "--manager", "sysvinit", "--profile", "privileged"]);
        assert_eq!(code, 2, "{text}\n{err}");
        assert!(err.contains(&format!("{path}{at}")), "expected `{path}{at}` in: {err}");
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
    }
}

#[test]
fn plan_shows_configs_commands_and_steps_without_booting() {
    let webapps = example("webapps");
    let (code, out, err) = xdriver(&["plan", webapps.to_str().expect("utf-8"), "--manager", "systemd", "--profile", "unprivileged"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("--- file /home/unprivileged/.config/systemd/user/webapp1.service"), "{out}");
    assert!(out.contains("listen 8080;"), "unprivileged nginx must move to 8080:\n{out}");
    assert!(out.contains("[bootstrap] $ loginctl enable-linger unprivileged"), "{out}");
    assert!(out.contains("curl --fail -sS -H 'Host: webapp6.local' http://localhost:8081 | grep ': 5005'"), "{out}");
    let (code, out, _) = xdriver(&["plan", webapps.to_str().expect("utf-8"), "--manager", "openrc", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(2));
    assert!(v[1]["cell"]["image"]["Err"].as_str().is_some_and(|r| r.contains("no user services")), "{v}");
}

#[test]
fn an_os_without_an_image_fails_its_cells_with_the_import_command() {
    let webapps = example("webapps");
    let results = xdriver_tests::workdir();
    let cache = xdriver_tests::workdir();
    let out = Command::new(xdriver_bin())
        .args(["test", webapps.to_str().expect("utf-8"), "--os", "freebsd", "--manager", "bsdrc", "--accel", "tcg", "--results-dir"])
        .arg(results.path())
        .env_remove("XDRIVER_LOG")
        .env("XDRIVER_WEBAPP_DIR", "/")
        .env("XDRIVER_CACHE_DIR", cache.path())
        .output()
        .expect("spawn");
    let (code, out) = (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned());
    // Not a skip, and not a pass: nothing ran.
    assert_eq!(code, Some(125), "{out}");
    assert!(out.contains("ERROR freebsd/bsdrc/privileged"), "{out}");
    assert!(out.contains("no image `freebsd` in the image cache"), "{out}");
    assert!(out.contains("xdriver image import freebsd FreeBSD-14.4-RELEASE-amd64-BASIC-CLOUDINIT-ufs.qcow2.xz --os freebsd"), "{out}");
    assert!(out.contains("2 cells: 0 passed, 0 failed, 2 infrastructure errors, 0 skipped"), "{out}");
}

#[test]
fn a_run_of_skipped_cells_only_exits_4_and_keeps_their_earlier_results() {
    let webapps = example("webapps");
    let results = xdriver_tests::workdir();
    // An earlier run's results for a cell that is skipped now.
    let earlier = results.path().join("nginx-reverse-proxy-hostbased/debian-12-bsdrc-privileged");
    std::fs::create_dir_all(&earlier).expect("mkdir");
    std::fs::write(earlier.join("result.json"), "{}").expect("write");
    let (code, out, err) = xdriver(&[
        "test",
        webapps.to_str().expect("utf-8"),
        "--os",
        "debian-12",
        "--manager",
        "bsdrc",
        "--results-dir",
        results.path().to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(out.contains("SKIP  debian-12/bsdrc/privileged") && out.contains("bsdrc runs on FreeBSD guests only"), "{out}");
    assert!(out.contains("2 cells: 0 passed, 0 failed, 0 infrastructure errors, 2 skipped"), "{out}");
    assert!(err.contains("no cell ran"), "{err}");
    assert!(earlier.join("result.json").is_file(), "a skipped cell removed its earlier results");
}

#[test]
fn bad_flags_exit_2() {
    let (code, _, err) = xdriver(&["test", "tests/examples/webapps", "--manager", "upstart"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown process manager `upstart`"), "{err}");
    let (code, _, err) = xdriver(&["plan", "/nonexistent/spec"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read the spec"), "{err}");
    let (code, _, err) = xdriver(&["plan", "tests/examples/webapps", "--set", "novalue"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn list_prints_cells_and_a_github_matrix() {
    let spec = example("webapps");
    let out = Command::new(xdriver_bin()).arg("list").arg(&spec).output().expect("xdriver runs");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("RUN   debian-12/systemd/privileged") && text.contains("debian-12-systemd (14 steps)"), "{text}");
    assert!(text.contains("SKIP  debian-12/openrc/unprivileged") && text.contains("no user services"), "{text}");
    assert!(text.contains("12 cells, 11 to run, 1 skipped; default --jobs here: "), "{text}");
    let out = Command::new(xdriver_bin()).arg("list").arg(&spec).arg("--github-matrix").output().expect("xdriver runs");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("matrix JSON");
    let include = v["include"].as_array().expect("include list");
    assert_eq!(include.len(), 11, "runnable cells only");
    let first = &include[0];
    for k in ["cell", "name", "os", "manager", "profile", "image"] {
        assert!(first[k].is_string(), "{k} in {first}");
    }
    assert!(include.iter().all(|c| c["cell"] != "debian-12/openrc/unprivileged"));
    // Shards are checked by flag parsing too.
    let out = Command::new(xdriver_bin()).arg("list").arg(&spec).args(["--shard", "3/2"]).output().expect("xdriver runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("need 1 <= I <= N"));
}
