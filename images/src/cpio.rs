//! A writer for the `newc` cpio format the Linux kernel unpacks as an
//! initramfs. Writing it ourselves needs no root (device nodes are just
//! header fields) and no external tool.

/// Builds an archive in memory.
#[derive(Debug, Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn header(&mut self, name: &str, mode: u32, size: usize, rdev: (u32, u32)) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let h = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.ino, mode, 0, 0, 1, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0
        );
        self.buf.extend_from_slice(h.as_bytes());
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// A directory (parents must be added first).
    pub fn dir(&mut self, name: &str) {
        self.header(name, 0o040755, 0, (0, 0));
    }

    /// A regular file with permission bits `perm`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.header(name, 0o100000 | perm, data.len(), (0, 0));
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// A symbolic link.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.header(name, 0o120777, target.len(), (0, 0));
        self.buf.extend_from_slice(target.as_bytes());
        self.pad();
    }

    /// A character device node.
    pub fn chardev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.header(name, 0o020000 | perm, 0, (major, minor));
    }

    /// Ends the archive and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, (0, 0));
        while !self.buf.len().is_multiple_of(512) {
            self.buf.push(0);
        }
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_terminated() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("bin/x", 0o755, b"abc");
        c.chardev("dev/console", 0o600, 5, 1);
        let out = c.finish();
        assert_eq!(out.len() % 512, 0);
        assert!(out.starts_with(b"070701"));
        let s = String::from_utf8_lossy(&out);
        assert!(s.contains("bin/x\0"));
        assert!(s.contains("TRAILER!!!\0"));
        // the file's data follows its 4-byte aligned header
        let at = out.windows(3).position(|w| w == b"abc").expect("data present");
        assert_eq!(at % 4, 0);
    }
}
