//! `xdriver image import` and `export` through the real binary, on disk
//! images made here (no VM boots): compressed and plain inputs, the
//! no-op re-import, refusals that leave nothing behind, two imports at
//! once, and a tar round trip between two caches.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use xdriver_tests::xdriver_bin;

fn xdriver(cache: &Path, args: &[&str]) -> Output {
    Command::new(xdriver_bin()).args(args).env_remove("XDRIVER_LOG").env("XDRIVER_CACHE_DIR", cache).output().expect("spawn")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A 16 MiB raw disk with an MBR partition table (one Linux partition
/// from 1 MiB) and recognisable bytes in that partition.
fn raw_disk(dir: &Path) -> PathBuf {
    let p = dir.join("disk.raw");
    let mut data = vec![0u8; 16 << 20];
    // Partition entry 1: type 0x83, LBA start 2048, 30720 sectors.
    let e = 0x1be;
    data[e + 4] = 0x83;
    data[e + 8..e + 12].copy_from_slice(&2048u32.to_le_bytes());
    data[e + 12..e + 16].copy_from_slice(&30720u32.to_le_bytes());
    data[510] = 0x55;
    data[511] = 0xaa;
    data[1 << 20..(1 << 20) + 12].copy_from_slice(b"xdriver-test");
    std::fs::write(&p, data).expect("write");
    p
}

fn compress(tool: &str, src: &Path) -> PathBuf {
    let st = Command::new(tool).args(["-k", "-f", "-q"]).arg(src).status().expect("compressor");
    assert!(st.success(), "{tool}");
    let ext = match tool {
        "xz" => "xz",
        "gzip" => "gz",
        _ => "zst",
    };
    PathBuf::from(format!("{}.{ext}", src.display()))
}

fn entries(cache: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(cache.join("images"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn manifest(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).expect("the manifest as JSON")
}

#[test]
fn vendor_images_import_compressed_or_plain_once_and_bad_ones_leave_nothing() {
    let work = xdriver_tests::workdir();
    let cache = xdriver_tests::workdir();
    let raw = raw_disk(work.path());
    let xz = compress("xz", &raw);
    let gz = compress("gzip", &raw);

    let o = xdriver(cache.path(), &["image", "import", "debian-12-cloud", xz.to_str().expect("utf-8"), "--os", "debian-12-cloud", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let m = manifest(&o);
    assert_eq!((m["name"].as_str(), m["os"].as_str(), m["init"].as_str()), (Some("debian-12-cloud"), Some("debian-12-cloud"), Some("systemd")));
    assert_eq!(m["import"]["compression"], "xz");
    assert_eq!(m["import"]["source_format"], "raw");
    assert_eq!(m["import"]["firmware"], "bios");
    assert_eq!(m["disk"]["virtual_mib"], 16);
    let dir = entries(cache.path());
    assert_eq!(dir.len(), 1, "{dir:?}");
    // The disk holds the input's bytes.
    let disk = cache.path().join("images").join(&dir[0]).join("disk.qcow2");
    let back = work.path().join("back.raw");
    assert!(Command::new("qemu-img").args(["convert", "-f", "qcow2", "-O", "raw"]).arg(&disk).arg(&back).status().expect("qemu-img").success());
    assert!(std::fs::read(&back).expect("read") == std::fs::read(&raw).expect("read"), "the imported disk differs from the input");

    // The same thing again: a no-op.
    let o = xdriver(cache.path(), &["image", "import", "debian-12-cloud", xz.to_str().expect("utf-8"), "--os", "debian-12-cloud"]);
    assert!(o.status.success() && text(&o).contains("already imported"), "{}", text(&o));
    assert_eq!(entries(cache.path()), dir);

    // gzip, as UEFI: another entry under another name.
    let o = xdriver(cache.path(), &["image", "import", "cloud-uefi", gz.to_str().expect("utf-8"), "--os", "debian-12-cloud", "--firmware", "uefi", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(manifest(&o)["import"]["firmware"], "uefi");
    assert_eq!(entries(cache.path()).len(), 2);

    // A truncated xz file, a wrong checksum, a file that is no disk, an OS
    // whose images are built: refused, with nothing left behind.
    let cut = work.path().join("cut.raw.xz");
    let bytes = std::fs::read(&xz).expect("read");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let before = entries(cache.path());
    let o = xdriver(cache.path(), &["image", "import", "cut", cut.to_str().expect("utf-8"), "--os", "freebsd"]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    assert!(text(&o).contains("not a valid xz stream") && text(&o).contains("truncated or corrupt"), "{}", text(&o));
    let o = xdriver(cache.path(), &["image", "import", "sum", raw.to_str().expect("utf-8"), "--os", "freebsd", "--sha256", &"0".repeat(64)]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    assert!(text(&o).contains("SHA-256 is") && text(&o).contains("not 0000"), "{}", text(&o));
    let tiny = work.path().join("tiny.img");
    std::fs::write(&tiny, b"hello").expect("write");
    let o = xdriver(cache.path(), &["image", "import", "tiny", tiny.to_str().expect("utf-8"), "--os", "nixos"]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    assert!(text(&o).contains("not a usable disk image"), "{}", text(&o));
    let o = xdriver(cache.path(), &["image", "import", "d", raw.to_str().expect("utf-8"), "--os", "debian-12"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("debian-12 images are built by xdriver"), "{}", text(&o));
    assert_eq!(entries(cache.path()), before, "a refused import left something behind");
}

#[test]
fn two_imports_at_once_do_the_work_once() {
    let work = xdriver_tests::workdir();
    let cache = xdriver_tests::workdir();
    let raw = raw_disk(work.path());
    let spawn = || {
        Command::new(xdriver_bin())
            .args(["image", "import", "freebsd", raw.to_str().expect("utf-8"), "--os", "freebsd", "--json"])
            .env("XDRIVER_CACHE_DIR", cache.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().expect("a"), b.wait_with_output().expect("b"));
    assert!(a.status.success() && b.status.success(), "{}\n{}", text(&a), text(&b));
    let (ta, tb) = (text(&a), text(&b));
    assert_eq!([&ta, &tb].iter().filter(|t| t.contains("already imported")).count(), 1, "{ta}\n{tb}");
    assert_eq!(manifest(&a)["created_at"], manifest(&b)["created_at"]);
    assert_eq!(entries(cache.path()).len(), 1);
}

#[test]
fn export_and_import_move_an_image_between_caches() {
    let work = xdriver_tests::workdir();
    let (c1, c2) = (xdriver_tests::workdir(), xdriver_tests::workdir());
    let raw = raw_disk(work.path());
    assert!(xdriver(c1.path(), &["image", "import", "freebsd", raw.to_str().expect("utf-8"), "--os", "freebsd"]).status.success());
    let tar = work.path().join("freebsd.tar");
    let o = xdriver(c1.path(), &["image", "export", "freebsd", "-o", tar.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", text(&o));
    let o = xdriver(c2.path(), &["image", "import", tar.to_str().expect("utf-8")]);
    assert!(o.status.success() && text(&o).contains("imported"), "{}", text(&o));
    assert_eq!(entries(c1.path()), entries(c2.path()));
    let list = xdriver(c2.path(), &["image", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).expect("json");
    assert_eq!(v[0]["manifest"]["os"], "freebsd");
    assert_eq!(v[0]["current"], true);
    let o = xdriver(c2.path(), &["image", "import", tar.to_str().expect("utf-8")]);
    assert!(o.status.success() && text(&o).contains("already imported"), "{}", text(&o));
    // A truncated tar is refused and leaves nothing.
    let c3 = xdriver_tests::workdir();
    let bytes = std::fs::read(&tar).expect("read");
    let cut = work.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).expect("write");
    let o = xdriver(c3.path(), &["image", "import", cut.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    assert!(text(&o).contains("not an image exported by `xdriver image export`"), "{}", text(&o));
    assert!(entries(c3.path()).is_empty(), "{:?}", entries(c3.path()));
}
