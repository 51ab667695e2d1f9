//! Guest images: recipes (data in `images/recipes/`), the builder that turns
//! a recipe into a bootable qcow2 disk plus a kernel and initramfs for
//! direct boot, importing vendor images, the NoCloud seed, and the
//! content-addressed image cache under the user's
//! cache directory.

mod apt;
mod build;
mod builder;
mod cpio;
mod import;
mod initramfs;
mod kernel;
mod lock;
mod manifest;
pub mod pkgsite;
mod recipe;
mod seed;
mod cache;

pub use apt::{AptError, PrivateApt};
pub use build::{added_packages, services_of, BuildError, Debian, Services, BUILD_TOOLS};
pub use builder::{build_image, ImageBuilder, BUILDERS};
pub use import::{is_tar, Compression, ImportError, Imported};
pub use initramfs::INIT_SCRIPT;
pub use kernel::{resolve_module_order, KernelError};
pub use lock::{FileLock, LockError};
pub use manifest::{DerivedInfo, DiskInfo, ImportInfo, KernelFormat, KernelInfo, Manifest, MANIFEST_SCHEMA};
pub use recipe::{GuestAdditions, ImageName, Recipe, RecipeError, BUILDER_VERSION};
pub use seed::{Seed, SEED_LABEL};
pub use cache::{Entry, GcReport, ImageCache, CacheError};
