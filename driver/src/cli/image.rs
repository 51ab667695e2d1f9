//! `xdriver image build|list|rm|gc|import|export`.

use std::io::IsTerminal;

use xdriver_guests::Init;
use xdriver_images::{ImageName, Recipe, ImageCache};

use super::args::ImageCommand;
use super::error::CliError;
use crate::exit;

fn cache() -> Result<ImageCache, CliError> {
    ImageCache::open_default().map_err(|e| CliError::infra(&e))
}

fn human(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Builds `name` in the default image cache (blocking work on a worker thread).
pub async fn ensure(name: &ImageName) -> Result<xdriver_images::Entry, CliError> {
    let cache = cache()?;
    let name = name.clone();
    let progress = std::io::stderr().is_terminal();
    tokio::task::spawn_blocking(move || cache.ensure(&name, progress))
        .await
        .map_err(|e| CliError { code: exit::INFRA, message: e.to_string() })?
        .map_err(|e| CliError::infra(&e))
}

pub(super) async fn main(cmd: ImageCommand) -> Result<i32, CliError> {
    match cmd {
        ImageCommand::Build { recipe, inits, json } => {
            let (recipe, mut inits) = match recipe.parse::<ImageName>() {
                Ok(n) => (n.recipe, vec![n.init]),
                Err(_) => (recipe, inits),
            };
            let r = Recipe::load(&recipe).map_err(|e| CliError::usage(e.to_string()))?;
            if inits.is_empty() {
                inits = r.inits.keys().copied().collect::<Vec<Init>>();
            }
            let mut manifests = Vec::new();
            for init in inits {
                let name: ImageName = format!("{recipe}-{init}").parse().map_err(|e: xdriver_images::RecipeError| CliError::usage(e.to_string()))?;
                let e = ensure(&name).await?;
                eprintln!("{}: {} ({}, built in {:.1} s)", name, e.dir.display(), human(e.size_bytes()), e.manifest.build_seconds);
                manifests.push(e.manifest);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&manifests).expect("manifests serialize"));
            }
            Ok(exit::SUCCESS)
        }
        ImageCommand::List { json } => {
            let entries = cache()?.list().map_err(|e| CliError::infra(&e))?;
            if json {
                let v: Vec<_> = entries
                    .iter()
                    .map(|e| serde_json::json!({ "dir": e.dir, "current": e.current, "size_bytes": e.size_bytes(), "manifest": e.manifest }))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v).expect("serializes"));
                return Ok(exit::SUCCESS);
            }
            if entries.is_empty() {
                eprintln!("no images built yet (try `xdriver image build debian-12`)");
            } else {
                println!("{:<31} {:<8} {:>9} {:<20} {:<8} KERNEL / SOURCE", "NAME", "STATUS", "SIZE", "CREATED", "HASH");
            }
            for e in entries {
                let m = &e.manifest;
                println!(
                    "{:<31} {:<8} {:>9} {:<20} {:<8} {}{}",
                    m.name,
                    if e.current { "current" } else { "stale" },
                    human(e.size_bytes()),
                    m.created_at,
                    &m.recipe_hash[..8],
                    match (&m.kernel, &m.import) {
                        (Some(k), _) => k.release.clone(),
                        (None, Some(i)) => format!("imported ({} firmware) from {}", i.firmware, i.source_file),
                        (None, None) => String::new(),
                    },
                    m.derived.as_ref().map(|d| format!("; {} plus [guest] {}", d.base, derived_summary(&d.additions))).unwrap_or_default()
                );
            }
            Ok(exit::SUCCESS)
        }
        ImageCommand::Rm { name } => {
            let removed = cache()?.remove(&name).map_err(|e| match e {
                xdriver_images::CacheError::NotFound(_) => CliError::usage(e.to_string()),
                e => CliError::infra(&e),
            })?;
            for d in removed {
                eprintln!("removed {}", d.display());
            }
            Ok(exit::SUCCESS)
        }
        ImageCommand::Import { name, file, os, firmware, sha256, json } => {
            let cache = cache()?;
            let progress = std::io::stderr().is_terminal();
            let imported = match file {
                None => {
                    let tar = std::path::PathBuf::from(&name);
                    if os.is_some() || firmware.is_some() || sha256.is_some() {
                        return Err(CliError::usage("importing an exported tar takes no --os, --firmware or --sha256 (the tar's manifest has them)"));
                    }
                    if !xdriver_images::is_tar(&tar).map_err(|e| CliError::usage(crate::cli::chain_error(&e)))? {
                        return Err(CliError::usage(format!(
                            "{}: not a tar from `xdriver image export`; to import a disk image give a name first: xdriver image import NAME FILE --os OS",
                            tar.display()
                        )));
                    }
                    tokio::task::spawn_blocking(move || cache.import_tar(&tar, progress)).await
                }
                Some(file) => {
                    let Some(os) = os else {
                        return Err(CliError::usage("--os is required to import a disk image (which OS is in it?)"));
                    };
                    if !file.is_file() {
                        return Err(CliError::usage(format!("{}: no such file", file.display())));
                    }
                    tokio::task::spawn_blocking(move || cache.import_disk(&name, &file, os, firmware, sha256.as_deref(), progress)).await
                }
            }
            .map_err(|e| CliError { code: exit::INFRA, message: e.to_string() })?
            .map_err(|e| match e {
                xdriver_images::ImportError::NotImported { .. } | xdriver_images::ImportError::BadName(_) => CliError::usage(e.to_string()),
                e => CliError { code: exit::INFRA, message: crate::cli::chain_error(&e) },
            })?;
            for d in &imported.replaced {
                eprintln!("replaced {}", d.display());
            }
            let m = &imported.entry.manifest;
            eprintln!(
                "{}: {} ({}, {}{})",
                m.name,
                imported.entry.dir.display(),
                human(imported.entry.size_bytes()),
                if imported.new { "imported" } else { "already imported" },
                m.import.as_ref().map(|i| format!("; os {}, {} firmware", m.os, i.firmware)).unwrap_or_default()
            );
            if json {
                println!("{}", serde_json::to_string_pretty(m).expect("a manifest serializes"));
            }
            Ok(exit::SUCCESS)
        }
        ImageCommand::Export { name, output } => {
            let cache = cache()?;
            let entries = cache.list().map_err(|e| CliError::infra(&e))?;
            let Some(entry) = entries.into_iter().rfind(|e| e.manifest.name == name && e.current) else {
                return Err(CliError::usage(format!("no current image named `{name}` in the cache (see `xdriver image list`)")));
            };
            let out = output.clone();
            let bytes = tokio::task::spawn_blocking(move || cache.export(&entry, &out))
                .await
                .map_err(|e| CliError { code: exit::INFRA, message: e.to_string() })?
                .map_err(|e| CliError { code: exit::INFRA, message: crate::cli::chain_error(&e) })?;
            eprintln!("{name}: {} ({})", output.display(), human(bytes));
            Ok(exit::SUCCESS)
        }
        ImageCommand::Gc => {
            let cache = cache()?;
            let r = cache.gc().map_err(|e| CliError::infra(&e))?;
            for d in &r.removed {
                eprintln!("removed {}", d.display());
            }
            // Prepared disks of an earlier preparation (another key), and
            // leftovers of interrupted ones whose lock is free.
            let mut freed = r.freed_bytes;
            for e in cache.list().map_err(|e| CliError::infra(&e))?.iter().filter(|e| e.manifest.import.is_some()) {
                for p in crate::vm::prepare::stale_files(&cache, e).map_err(|e| CliError::infra(&e))? {
                    freed += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                    if std::fs::remove_file(&p).is_ok() {
                        eprintln!("removed {}", p.display());
                    }
                }
            }
            // RAM snapshots no VM will restore.
            for e in cache.list().map_err(|e| CliError::infra(&e))? {
                for s in crate::vm::snapshot::stale(&e.dir, "qemu-system-x86_64") {
                    let bytes = s.disk_usage();
                    if std::fs::remove_dir_all(&s.dir).is_ok() {
                        let _ = std::fs::remove_file(s.dir.with_extension("lock"));
                        freed += bytes;
                        eprintln!("removed {}", s.dir.display());
                    }
                }
            }
            eprintln!("freed {}", human(freed));
            Ok(exit::SUCCESS)
        }
    }
}

/// A derived image's additions in a few words for `image list`.
pub(super) fn derived_summary(a: &xdriver_images::GuestAdditions) -> String {
    let mut parts = Vec::new();
    if !a.packages.is_empty() {
        parts.push(format!("packages {}", a.packages.join(" ")));
    }
    if !a.prepare.is_empty() {
        parts.push(format!("{} prepare command(s)", a.prepare.len()));
    }
    if !a.boot_services.is_empty() {
        parts.push(format!("boot services {}", a.boot_services.join(" ")));
    }
    if let Some(d) = a.disk_mib {
        parts.push(format!("disk {d} MiB"));
    }
    parts.join(", ")
}
