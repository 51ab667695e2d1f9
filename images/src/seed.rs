//! The NoCloud seed: a small FAT file system labelled `CIDATA` holding
//! `meta-data`, `user-data` and optionally `network-config`, the format
//! cloud-init (NoCloud datasource) and FreeBSD's nuageinit(7) both read.
//! Written in Rust (the `fatfs` crate, long file names included), so
//! preparing an image needs no genisoimage, xorriso or mtools.

use std::io::{Cursor, Write};

/// The volume label cloud-init and nuageinit look for (FAT labels are
/// upper case; cloud-init matches `cidata` in either case, FreeBSD shows
/// an msdosfs volume as `/dev/msdosfs/CIDATA`).
pub const SEED_LABEL: &str = "CIDATA";

/// What goes into a seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// `meta-data` (YAML: `instance-id`, `local-hostname`).
    pub meta_data: String,
    /// `user-data` (`#cloud-config` YAML or a `#!` script).
    pub user_data: String,
    /// `network-config`, if any.
    pub network_config: Option<String>,
}

impl Seed {
    /// The seed as a FAT12 image (at least 1 MiB), ready to attach as a
    /// raw disk.
    pub fn to_fat_image(&self) -> std::io::Result<Vec<u8>> {
        let payload = self.meta_data.len() + self.user_data.len() + self.network_config.as_ref().map_or(0, String::len);
        // Room for the FATs, the root directory and cluster slack.
        let size = ((payload + (512 << 10)).div_ceil(1 << 20)).max(1) << 20;
        let mut disk = Cursor::new(vec![0u8; size]);
        let mut label = [b' '; 11];
        label[..SEED_LABEL.len()].copy_from_slice(SEED_LABEL.as_bytes());
        fatfs::format_volume(
            &mut disk,
            fatfs::FormatVolumeOptions::new().fat_type(fatfs::FatType::Fat12).volume_label(label).volume_id(0x5eed_0001),
        )?;
        disk.set_position(0);
        {
            let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())?;
            let mut files: Vec<(&str, &str)> = vec![("meta-data", &self.meta_data), ("user-data", &self.user_data)];
            if let Some(n) = &self.network_config {
                files.push(("network-config", n));
            }
            for (name, text) in files {
                let mut f = fs.root_dir().create_file(name)?;
                f.truncate()?;
                f.write_all(text.as_bytes())?;
                f.flush()?;
            }
            fs.unmount()?;
        }
        Ok(disk.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn seed() -> Seed {
        Seed {
            meta_data: "instance-id: xdriver-1\nlocal-hostname: guest\n".into(),
            user_data: "#cloud-config\nruncmd:\n  - [sh, -c, 'echo hi']\n".into(),
            network_config: Some("version: 2\nethernets: {}\n".into()),
        }
    }

    #[test]
    fn the_seed_reads_back_with_its_label_and_long_names() {
        let img = seed().to_fat_image().expect("a seed");
        assert_eq!(img.len(), 1 << 20);
        let fs = fatfs::FileSystem::new(Cursor::new(img), fatfs::FsOptions::new()).expect("a FAT file system");
        assert_eq!(fs.volume_label().trim_end(), "CIDATA");
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat12);
        let mut names: Vec<String> = fs.root_dir().iter().map(|e| e.expect("entry").file_name()).collect();
        names.sort();
        assert_eq!(names, ["meta-data", "network-config", "user-data"]);
        let mut s = String::new();
        fs.root_dir().open_file("user-data").expect("user-data").read_to_string(&mut s).expect("read");
        assert_eq!(s, seed().user_data);
    }

    /// A real tool reads it as cloud-init's ds-identify and nuageinit's
    /// glabel do: blkid sees a vfat volume labelled CIDATA.
    #[test]
    fn blkid_sees_a_vfat_volume_labelled_cidata() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("seed.img");
        std::fs::write(&p, seed().to_fat_image().expect("a seed")).expect("write");
        let out = std::process::Command::new("blkid").args(["-o", "export", "-p"]).arg(&p).output().expect("blkid runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("TYPE=vfat"), "{text}");
        assert!(text.contains("LABEL=CIDATA"), "{text}");
    }

    #[test]
    fn a_large_user_data_gets_a_larger_image() {
        let mut s = seed();
        s.user_data = "#".repeat(3 << 20);
        let img = s.to_fat_image().expect("a seed");
        assert!(img.len() >= 4 << 20, "{}", img.len());
        let fs = fatfs::FileSystem::new(Cursor::new(img), fatfs::FsOptions::new()).expect("FAT");
        let mut t = String::new();
        fs.root_dir().open_file("user-data").expect("file").read_to_string(&mut t).expect("read");
        assert_eq!(t.len(), 3 << 20);
    }
}
