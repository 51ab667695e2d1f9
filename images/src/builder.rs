//! Image builders: what turns a recipe into a bootable image. Each OS a
//! recipe can name (`os = "debian"`) has one; [`Debian`](crate::build::Debian)
//! is the only one so far, and another (e.g. a FreeBSD builder) sits beside
//! it by implementing [`ImageBuilder`] and joining [`BUILDERS`].

use std::path::Path;

use crate::build::{BuildError, Debian};
use crate::manifest::Manifest;
use crate::recipe::{ImageName, Recipe};

/// Builds images of one OS from its recipes.
pub trait ImageBuilder: Sync + Send + std::fmt::Debug {
    /// The recipes' `os` value this builder takes.
    fn os(&self) -> &'static str;
    /// Builds `name` from `recipe` into `out` (a fresh directory; `hash`
    /// is the cache key). Kernels and other parts shared between images
    /// go under `kernels`. Returns the manifest, also written to
    /// `out/manifest.json`.
    fn build(&self, recipe: &Recipe, name: &ImageName, hash: &str, out: &Path, kernels: &Path, progress: bool) -> Result<Manifest, BuildError>;
}

/// Every builder.
pub static BUILDERS: &[&dyn ImageBuilder] = &[&Debian];

/// Builds `name` from `recipe` with the builder of the recipe's OS.
pub fn build_image(recipe: &Recipe, name: &ImageName, hash: &str, out: &Path, kernels: &Path, progress: bool) -> Result<Manifest, BuildError> {
    let builder = BUILDERS.iter().find(|b| b.os() == recipe.os).ok_or_else(|| {
        let known: Vec<&str> = BUILDERS.iter().map(|b| b.os()).collect();
        BuildError::NoBuilder(format!("recipe {}: no image builder for OS `{}` (builders: {})", recipe.name, recipe.os, known.join(", ")))
    })?;
    builder.build(recipe, name, hash, out, kernels, progress)
}
