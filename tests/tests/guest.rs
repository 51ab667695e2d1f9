//! Derived images (a spec's `[guest]` table) built for real with
//! mmdebstrap and Debian's apt, in a cache of their own: two builds of the
//! same table at once make one image, a package apt cannot find fails with
//! a message that says so and leaves nothing, and the CLI lists and removes
//! the result by name. (The daemons example boots such images under every
//! manager: tests/tests/examples.rs.)

use std::path::Path;
use std::process::Command;

use xdriver_images::{GuestAdditions, ImageCache, ImageName};
use xdriver_tests::xdriver_bin;

/// A cache in `dir` that shares the user's prepared kernels (the kernel
/// is not what this tests, and preparing it costs a download).
fn cache_in(dir: &Path) -> ImageCache {
    let kernels = xdriver_tests::image_cache().root().join("kernels");
    std::fs::create_dir_all(&kernels).expect("kernels dir");
    std::os::unix::fs::symlink(&kernels, dir.join("kernels")).expect("symlink");
    ImageCache::at(dir)
}

#[test]
fn two_builds_of_one_guest_table_make_one_image_and_a_missing_package_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = cache_in(dir.path());
    let base: ImageName = "debian-12-runit".parse().expect("valid");
    let add = GuestAdditions {
        packages: vec!["hello".into()],
        prepare: vec!["hello -g 'made by prepare' > /etc/xdriver-greeting".into()],
        ..Default::default()
    };
    let missing = GuestAdditions { packages: vec!["xdriver-no-such-package".into()], ..Default::default() };
    let (a, b, bad) = std::thread::scope(|s| {
        let a = s.spawn(|| cache.ensure_with(&base, Some(&add), false));
        let b = s.spawn(|| cache.ensure_with(&base, Some(&add), false));
        let bad = s.spawn(|| cache.ensure_with(&base, Some(&missing), false));
        (a.join().expect("thread"), b.join().expect("thread"), bad.join().expect("thread"))
    });
    let (a, b) = (a.expect("builds"), b.expect("builds"));
    assert_eq!(a.dir, b.dir, "one entry for both");
    let name = add.image_name(&base);
    assert_eq!(a.manifest.name, name);
    assert_eq!(a.manifest.os, "debian-12", "a derived image holds its base's OS");
    let log = std::fs::read_to_string(a.dir.join("build.log")).expect("build.log");
    assert_eq!(log.matches("== stage rootfs").count(), 1, "built once:\n{log}");
    let d = a.manifest.derived.as_ref().expect("derived");
    assert_eq!(d.base, "debian-12-runit");
    assert!(d.added_packages.iter().any(|p| p.starts_with("hello=")), "{:?}", d.added_packages);
    assert!(log.contains("== xdriver: [guest] prepare command 1"), "{log}");

    // The missing package: a clear error naming it and the suite before
    // anything is built, its log kept, no entry left.
    let e = xdriver::cli::chain_error(&bad.expect_err("apt cannot find it"));
    assert!(e.contains("stage `sources`") && e.contains("package is not in bookworm (the archive of "), "{e}");
    assert!(e.contains("): xdriver-no-such-package"), "{e}");
    let log = e.split("log kept in ").nth(1).and_then(|r| r.split(')').next()).expect("log path");
    let text = std::fs::read_to_string(log.trim()).expect("the kept log");
    assert!(text.contains("== stage sources failed") && text.contains("xdriver-no-such-package"), "{text}");
    let names: Vec<String> = cache.list().expect("list").into_iter().map(|e| e.manifest.name).collect();
    assert_eq!(names, std::slice::from_ref(&name), "only the good image");

    // The CLI lists it with its base and packages, and removes it by name.
    let xdriver = |args: &[&str]| Command::new(xdriver_bin()).args(args).env("XDRIVER_CACHE_DIR", dir.path()).output().expect("xdriver runs");
    let out = xdriver(&["image", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&name) && text.contains("debian-12-runit plus [guest] packages hello, 1 prepare command(s)"), "{text}");
    let out = xdriver(&["image", "rm", &name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(cache.list().expect("list").is_empty());
}
