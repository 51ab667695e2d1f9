//! FreeBSD's package repository index, read on the host: `packagesite.pkg`
//! (a tar, compressed with zstd or xz, holding `packagesite.yaml`: one JSON
//! object per package) and the closure of what a spec asks for, so the
//! host can fetch `.pkg` files for an imported FreeBSD image whose network
//! stays restricted. *Unverified* against a real repository: none can be
//! reached from the machines xdriver is developed on.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Read;

use serde::Deserialize;

/// One package of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkgEntry {
    /// Its name, e.g. `redis`.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its file under the repository's URL, e.g. `All/redis-7.2.4.pkg`.
    pub repopath: String,
    /// The names of the packages it depends on.
    pub deps: Vec<String>,
}

#[derive(Deserialize)]
struct Raw {
    name: String,
    version: String,
    #[serde(default)]
    repopath: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    deps: BTreeMap<String, serde_json::Value>,
}

/// The bytes of `packagesite.yaml` inside `packagesite.pkg`.
pub fn packagesite_yaml(pkg: &[u8]) -> Result<String, String> {
    let plain = decompress(pkg)?;
    let mut ar = tar::Archive::new(&plain[..]);
    for e in ar.entries().map_err(|e| format!("packagesite.pkg is not a tar: {e}"))? {
        let mut e = e.map_err(|e| format!("packagesite.pkg: {e}"))?;
        let path = e.path().map_err(|e| format!("packagesite.pkg: {e}"))?.to_string_lossy().into_owned();
        if path.trim_start_matches("./") == "packagesite.yaml" {
            let mut s = String::new();
            e.read_to_string(&mut s).map_err(|e| format!("packagesite.yaml: {e}"))?;
            return Ok(s);
        }
    }
    Err("packagesite.pkg holds no packagesite.yaml".into())
}

fn decompress(b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    if b.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let mut d = ruzstd::decoding::StreamingDecoder::new(b).map_err(|e| format!("zstd: {e}"))?;
        d.read_to_end(&mut out).map_err(|e| format!("zstd: {e}"))?;
    } else if b.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        lzma_rs::xz_decompress(&mut &b[..], &mut out).map_err(|e| format!("xz: {e}"))?;
    } else {
        out = b.to_vec();
    }
    Ok(out)
}

/// The index: every package by name (the last entry of a name wins).
pub fn parse(yaml: &str) -> Result<BTreeMap<String, PkgEntry>, String> {
    let mut out = BTreeMap::new();
    for (i, line) in yaml.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let r: Raw = serde_json::from_str(line).map_err(|e| format!("packagesite.yaml line {}: {e}", i + 1))?;
        let repopath = r.repopath.or(r.path).ok_or_else(|| format!("packagesite.yaml line {}: package {} has no repopath", i + 1, r.name))?;
        out.insert(r.name.clone(), PkgEntry { name: r.name, version: r.version, repopath, deps: r.deps.into_keys().collect() });
    }
    Ok(out)
}

/// What must be fetched for `wanted`: the packages and all they depend
/// on, but those `installed`, dependencies first.
pub fn closure<'a>(index: &'a BTreeMap<String, PkgEntry>, wanted: &[String], installed: &BTreeSet<String>) -> Result<Vec<&'a PkgEntry>, String> {
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    let mut queue: VecDeque<&str> = wanted.iter().map(String::as_str).collect();
    while let Some(n) = queue.pop_front() {
        if installed.contains(n) || !seen.insert(n.to_string()) {
            continue;
        }
        let e = index.get(n).ok_or_else(|| format!("no package `{n}` in the repository"))?;
        order.push(e);
        queue.extend(e.deps.iter().map(String::as_str));
    }
    order.reverse();
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"{"name":"redis","origin":"databases/redis","version":"7.2.4","repopath":"All/redis-7.2.4.pkg","deps":{"openssl":{"origin":"security/openssl","version":"3.0"}}}
{"name":"openssl","origin":"security/openssl","version":"3.0","repopath":"All/openssl-3.0.pkg"}
{"name":"pkg","origin":"ports-mgmt/pkg","version":"1.21.3","path":"All/pkg-1.21.3.pkg"}
"#;

    #[test]
    fn the_index_is_read_and_the_closure_has_dependencies_first() {
        let idx = parse(YAML).expect("parses");
        assert_eq!(idx["pkg"].repopath, "All/pkg-1.21.3.pkg", "older indexes say path");
        let c = closure(&idx, &["redis".into()], &BTreeSet::new()).expect("resolves");
        let names: Vec<&str> = c.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["openssl", "redis"]);
        let c = closure(&idx, &["redis".into()], &["openssl".to_string()].into()).expect("resolves");
        assert_eq!(c.len(), 1, "what the guest has is not fetched");
        let e = closure(&idx, &["nosuch".into()], &BTreeSet::new()).expect_err("unknown");
        assert!(e.contains("no package `nosuch`"), "{e}");
        assert!(parse("{not json").is_err());
    }

    #[test]
    fn packagesite_pkg_is_a_tar_maybe_compressed() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(YAML.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "packagesite.yaml", YAML.as_bytes()).expect("append");
        let t = b.into_inner().expect("tar");
        assert_eq!(packagesite_yaml(&t).expect("plain tar"), YAML);
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &t[..], &mut xz).expect("xz");
        assert_eq!(packagesite_yaml(&xz).expect("xz tar"), YAML);
    }
}
