//! Image recipes: data files in `images/recipes/`, compiled into the binary
//! so an installed xdriver needs no source tree.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use xdriver_guests::Init;

/// Bumped whenever the builder's output changes for the same recipe, so the
/// cache key changes with it.
pub const BUILDER_VERSION: u32 = 3;

// RECIPES: every file in images/recipes/, listed by build.rs.
include!(concat!(env!("OUT_DIR"), "/recipes.rs"));

/// A recipe that is another one plus packages.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Extension {
    name: String,
    extends: String,
    #[serde(default)]
    extra_packages: Vec<String>,
}

/// A recipe or image name that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// No recipe has this name.
    #[error("unknown image `{name}`: expected <recipe>-<init>, e.g. debian-12-systemd (recipes: {known})")]
    Unknown {
        /// What was asked for.
        name: String,
        /// The recipes there are.
        known: String,
    },
    /// The recipe has no such init variant.
    #[error("recipe `{recipe}` has no init variant `{init}`")]
    NoInit {
        /// The recipe.
        recipe: String,
        /// The init asked for.
        init: Init,
    },
    /// The TOML is invalid (a bug in a shipped recipe).
    #[error("recipe {name}: {source}")]
    Parse {
        /// The recipe.
        name: String,
        /// The parser's message, with line and column.
        #[source]
        source: toml::de::Error,
    },
}

/// The kernel part of a recipe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelRecipe {
    /// Debian package of the kernel (a meta package is resolved).
    pub package: String,
    /// Debian package providing a static /bin/busybox for the initramfs.
    pub busybox_package: String,
    /// Modules the initramfs loads before it mounts the root disk.
    pub modules: Vec<String>,
    /// Modules nothing before `switch_root` needs (shares, the store, the
    /// ACPI power button): the initramfs loads them in the background while
    /// it finds and mounts the root disk.
    #[serde(default)]
    pub background_modules: Vec<String>,
}

/// One init variant of a recipe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRecipe {
    /// Packages this variant adds.
    pub packages: Vec<String>,
    /// sysv-rc services installed by those packages that must not start
    /// at boot (xdriver brings them up itself, e.g. supervisord for the
    /// supervisord backend). Their `/etc/rc?.d/[SK]NN<name>` links are
    /// removed.
    #[serde(default)]
    pub disable_services: Vec<String>,
    /// systemd units masked in the image (linked to /dev/null): boot work a
    /// test VM does not need, which under TCG costs seconds of CPU.
    #[serde(default)]
    pub mask_units: Vec<String>,
    /// systemd generators masked the same way (in
    /// /etc/systemd/system-generators): each runs on every boot.
    #[serde(default)]
    pub mask_generators: Vec<String>,
    /// systemd units that start on first use (D-Bus or socket activation)
    /// rather than at boot: their multi-user.target.wants links are removed.
    #[serde(default)]
    pub on_demand: Vec<String>,
}

/// A parsed recipe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Name, e.g. `debian-12`.
    pub name: String,
    /// OS family.
    pub os: String,
    /// OS release.
    pub release: String,
    /// Debian suite for mmdebstrap.
    pub suite: String,
    /// sources.list lines.
    pub mirrors: Vec<String>,
    /// apt options (`Name=value`) for every apt run of the build, e.g.
    /// `Acquire::Check-Valid-Until=false` for a testing suite whose mirror
    /// is older than its Release file's week of validity.
    #[serde(default)]
    pub apt_options: Vec<String>,
    /// Packages every variant gets.
    pub packages: Vec<String>,
    /// dpkg path-exclude globs.
    pub path_excludes: Vec<String>,
    /// Services the packages enable that must not start at boot in any
    /// variant (see [`InitRecipe::disable_services`]).
    #[serde(default)]
    pub disable_services: Vec<String>,
    /// Virtual disk size.
    pub disk_mib: u64,
    /// Kernel and initramfs.
    pub kernel: KernelRecipe,
    /// Init variants.
    pub inits: BTreeMap<Init, InitRecipe>,
    /// What a spec adds on top (its `[guest]` table): set on derived
    /// recipes only.
    #[serde(skip)]
    pub additions: Option<GuestAdditions>,
    #[serde(skip)]
    source: String,
}

/// What a spec's `[guest]` table adds to a built image: the OS's own
/// packages, commands run once in the image, a disk size, and which of the
/// packages' own services may still start at boot. Each distinct value
/// makes a derived image of its own (`<base>+<tag>`, cached by hash).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestAdditions {
    /// Debian packages installed with apt (no Recommends), from the
    /// recipe's mirrors, at build time.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Shell commands run once, in order, chrooted into the image after
    /// the packages are in (`sh -c`, as root; no daemon may be left running).
    #[serde(default)]
    pub prepare: Vec<String>,
    /// Virtual disk size (MiB), instead of the recipe's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
    /// Services of the added packages that keep starting at boot (every
    /// other service they bring is disabled: the spec decides what runs).
    #[serde(default)]
    pub boot_services: Vec<String>,
}

impl GuestAdditions {
    /// Whether this adds nothing (the base image serves).
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty() && self.prepare.is_empty() && self.disk_mib.is_none() && self.boot_services.is_empty()
    }

    /// The derived image's tag: 8 hex digits of the additions' hash.
    pub fn tag(&self) -> String {
        let json = serde_json::to_string(self).expect("additions serialize");
        hex::encode(Sha256::digest(json.as_bytes()))[..8].to_string()
    }

    /// The derived image's name: `<base image>+<tag>`, e.g.
    /// `debian-12-systemd+1a2b3c4d`.
    pub fn image_name(&self, base: &ImageName) -> String {
        format!("{base}+{}", self.tag())
    }
}

impl Recipe {
    /// Every shipped recipe's name.
    pub fn names() -> Vec<&'static str> {
        RECIPES.iter().map(|(n, _)| *n).collect()
    }

    /// Loads a shipped recipe by name.
    pub fn load(name: &str) -> Result<Recipe, RecipeError> {
        let (_, text) = RECIPES.iter().find(|(n, _)| *n == name).ok_or_else(|| RecipeError::Unknown {
            name: name.into(),
            known: Recipe::names().join(", "),
        })?;
        let parsed: toml::Table = toml::from_str(text).map_err(|source| RecipeError::Parse { name: name.into(), source })?;
        if parsed.contains_key("extends") {
            let ext: Extension = toml::from_str(text).map_err(|source| RecipeError::Parse { name: name.into(), source })?;
            let mut r = Recipe::load(&ext.extends)?;
            r.name = ext.name;
            r.packages.extend(ext.extra_packages);
            // Both texts name the cache entry.
            r.source = format!("{}\n{text}", r.source);
            return Ok(r);
        }
        let mut r: Recipe = toml::from_str(text).map_err(|source| RecipeError::Parse { name: name.into(), source })?;
        r.source = text.to_string();
        Ok(r)
    }

    /// This recipe plus a spec's additions: the same base packages and
    /// kernel, the additions' packages and commands on top, their disk size.
    /// Its hash covers the base recipe and the additions.
    pub fn derive(&self, add: &GuestAdditions) -> Recipe {
        let mut r = self.clone();
        if let Some(mib) = add.disk_mib {
            r.disk_mib = mib;
        }
        let json = serde_json::to_string(add).expect("additions serialize");
        r.source = format!("{}\n# guest additions\n{json}", self.source);
        r.additions = Some(add.clone());
        r
    }

    /// The cache key of one variant: the recipe text, the variant, the
    /// builder version and the files xdriver writes into the guest.
    pub fn hash(&self, init: Init) -> String {
        let mut h = Sha256::new();
        h.update(self.source.as_bytes());
        h.update(init.name().as_bytes());
        h.update(BUILDER_VERSION.to_le_bytes());
        h.update(crate::initramfs::INIT_SCRIPT.as_bytes());
        h.update(crate::kernel::PREP_VERSION.to_le_bytes());
        for e in xdriver_guests::provision(init, "xdriver") {
            h.update(format!("{e:?}").as_bytes());
        }
        for s in init.replaced_boot_scripts() {
            h.update(s.as_bytes());
        }
        for s in init.pruned_init_scripts() {
            h.update(b"pruned ");
            h.update(s.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// A buildable image: a recipe and an init variant, written
/// `<recipe>-<init>` (e.g. `debian-12-systemd`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageName {
    /// Recipe name.
    pub recipe: String,
    /// Init variant.
    pub init: Init,
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.recipe, self.init)
    }
}

impl FromStr for ImageName {
    type Err = RecipeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || RecipeError::Unknown { name: s.into(), known: Recipe::names().join(", ") };
        let (recipe, init) = s.rsplit_once('-').ok_or_else(unknown)?;
        let init: Init = init.parse().map_err(|_| unknown())?;
        let r = Recipe::load(recipe).map_err(|_| unknown())?;
        if !r.inits.contains_key(&init) {
            return Err(RecipeError::NoInit { recipe: recipe.into(), init });
        }
        Ok(ImageName { recipe: recipe.into(), init })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_recipes_parse_and_hashes_differ_per_init() {
        let r = Recipe::load("debian-12").expect("ships");
        assert_eq!(r.suite, "bookworm");
        let hashes: std::collections::HashSet<_> = Init::built().map(|i| r.hash(i)).collect();
        assert_eq!(hashes.len(), 4);
        assert_eq!(r.hash(Init::RUNIT), r.hash(Init::RUNIT));
    }

    #[test]
    fn the_nix_recipe_is_debian_12_plus_nix_with_its_own_cache_entries() {
        let base = Recipe::load("debian-12").expect("ships");
        let nix = Recipe::load("debian-12-nix").expect("ships");
        assert_eq!(nix.name, "debian-12-nix");
        assert_eq!(nix.suite, base.suite);
        assert_eq!(nix.packages.last().map(String::as_str), Some("nix-bin"));
        assert_eq!(nix.packages.len(), base.packages.len() + 1);
        assert_eq!(nix.inits.len(), base.inits.len());
        for i in Init::built() {
            assert_ne!(nix.hash(i), base.hash(i), "{i}");
        }
        let n: ImageName = "debian-12-nix-sysvinit".parse().expect("valid");
        assert_eq!((n.recipe.as_str(), n.init), ("debian-12-nix", Init::SYSVINIT));
    }

    #[test]
    fn derived_recipes_hash_the_base_and_the_additions() {
        let base = Recipe::load("debian-12").expect("ships");
        let add = GuestAdditions { packages: vec!["redis-server".into()], ..Default::default() };
        let d = base.derive(&add);
        assert_eq!(d.packages, base.packages, "the base's packages are the --include list; additions come after");
        assert_eq!(d.additions.as_ref(), Some(&add));
        assert_ne!(d.hash(Init::SYSTEMD), base.hash(Init::SYSTEMD));
        assert_eq!(d.hash(Init::SYSTEMD), base.derive(&add.clone()).hash(Init::SYSTEMD), "same additions, same image");
        let more = GuestAdditions { prepare: vec!["true".into()], ..add.clone() };
        assert_ne!(base.derive(&more).hash(Init::SYSTEMD), d.hash(Init::SYSTEMD));
        let big = GuestAdditions { disk_mib: Some(4096), ..add.clone() };
        assert_eq!(base.derive(&big).disk_mib, 4096);
        let name: ImageName = "debian-12-runit".parse().expect("valid");
        let image = add.image_name(&name);
        assert!(image.starts_with("debian-12-runit+") && image.len() == "debian-12-runit+".len() + 8, "{image}");
        assert_eq!(image, add.image_name(&name));
        assert!(GuestAdditions::default().is_empty() && !add.is_empty());
    }

    #[test]
    fn every_recipe_in_the_folder_is_shipped_and_loads() {
        let files: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/recipes"))
            .expect("recipes folder")
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".toml").map(str::to_string))
            .collect();
        let mut names = Recipe::names();
        names.sort();
        let mut files_sorted = files.clone();
        files_sorted.sort();
        assert_eq!(names, files_sorted);
        for n in ["debian-12", "debian-13", "debian-14"] {
            let r = Recipe::load(n).expect("loads");
            assert_eq!(r.release, n.trim_start_matches("debian-"), "{n}");
            let inits: Vec<Init> = r.inits.keys().copied().collect();
            assert_eq!(inits, Init::built().collect::<Vec<_>>(), "{n}: every Debian init");
        }
    }

    #[test]
    fn image_names_parse() {
        let n: ImageName = "debian-12-openrc".parse().expect("valid");
        assert_eq!((n.recipe.as_str(), n.init), ("debian-12", Init::OPENRC));
        assert_eq!(n.to_string(), "debian-12-openrc");
        let n: ImageName = "debian-14-runit".parse().expect("valid");
        assert_eq!((n.recipe.as_str(), n.init), ("debian-14", Init::RUNIT));
        for bad in ["debian-12", "debian-11-systemd", "debian-12-upstart", ""] {
            let e = bad.parse::<ImageName>().expect_err(bad);
            assert!(e.to_string().contains("debian-12-systemd"), "{e}");
        }
    }
}
