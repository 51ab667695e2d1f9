//! `xdriver image build|list|rm|gc`.

use std::io::IsTerminal;

use xdriver_guests::Init;
use xdriver_images::{ImageName, Recipe, Store};

use super::args::ImageCommand;
use super::error::CliError;
use crate::exit;

fn store() -> Result<Store, CliError> {
    Store::open_default().map_err(|e| CliError::infra(&e))
}

fn human(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Builds `name` in the default store (blocking work on a worker thread).
pub async fn ensure(name: &ImageName) -> Result<xdriver_images::Entry, CliError> {
    let store = store()?;
    let name = name.clone();
    let progress = std::io::stderr().is_terminal();
    tokio::task::spawn_blocking(move || store.ensure(&name, progress))
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
            let entries = store()?.list().map_err(|e| CliError::infra(&e))?;
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
                println!("{:<22} {:<8} {:>9} {:<20} {:<8} KERNEL", "NAME", "STATUS", "SIZE", "CREATED", "HASH");
            }
            for e in entries {
                let m = &e.manifest;
                println!(
                    "{:<22} {:<8} {:>9} {:<20} {:<8} {}",
                    m.name,
                    if e.current { "current" } else { "stale" },
                    human(e.size_bytes()),
                    m.created_at,
                    &m.recipe_hash[..8],
                    m.kernel.release
                );
            }
            Ok(exit::SUCCESS)
        }
        ImageCommand::Rm { name } => {
            let removed = store()?.remove(&name).map_err(|e| match e {
                xdriver_images::StoreError::NotFound(_) => CliError::usage(e.to_string()),
                e => CliError::infra(&e),
            })?;
            for d in removed {
                eprintln!("removed {}", d.display());
            }
            Ok(exit::SUCCESS)
        }
        ImageCommand::Gc => {
            let r = store()?.gc().map_err(|e| CliError::infra(&e))?;
            for d in &r.removed {
                eprintln!("removed {}", d.display());
            }
            eprintln!("freed {}", human(r.freed_bytes));
            Ok(exit::SUCCESS)
        }
    }
}
