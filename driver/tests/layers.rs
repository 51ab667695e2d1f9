//! The layers stay layered: the engine (`vm`), the specs, the runner and
//! the reports never import the command-line front end (`cli`), so they
//! can be used, tested and split out without it.

use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("source dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn nothing_below_the_cli_imports_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for layer in ["vm", "spec", "runner", "report"] {
        sources(&src.join(layer), &mut files);
    }
    assert!(files.len() > 20, "{files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        for (i, line) in text.lines().enumerate() {
            assert!(!line.contains("crate::cli"), "{}:{}: imports the CLI: {line}", f.display(), i + 1);
        }
    }
}
