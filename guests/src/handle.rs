//! What every registry handle ([`Os`](crate::Os), [`Manager`](crate::Manager),
//! [`Init`](crate::Init)) is: a `Copy` wrapper of a `&'static dyn Trait`
//! from its registry, dereferencing to the trait, compared and hashed by
//! name, ordered by registry position, shown and serialized as its name.

/// Implements the handle traits for `$handle(&'static dyn $trait)` whose
/// entries live in `$registry` and which has `fn name(self) -> &'static str`.
macro_rules! registry_handle {
    ($handle:ident, $trait:ident, $registry:ident) => {
        impl $handle {
            fn index(self) -> usize {
                $registry.iter().position(|e| e.name() == self.0.name()).expect("every handle comes from its registry")
            }
        }

        impl std::ops::Deref for $handle {
            type Target = dyn $trait;
            fn deref(&self) -> &Self::Target {
                self.0
            }
        }

        impl PartialEq for $handle {
            fn eq(&self, other: &$handle) -> bool {
                self.name() == other.name()
            }
        }
        impl Eq for $handle {}
        impl PartialOrd for $handle {
            fn partial_cmp(&self, other: &$handle) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for $handle {
            fn cmp(&self, other: &$handle) -> std::cmp::Ordering {
                self.index().cmp(&other.index())
            }
        }
        impl std::hash::Hash for $handle {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.name().hash(state);
            }
        }

        impl std::fmt::Debug for $handle {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($handle), self.name())
            }
        }

        impl std::fmt::Display for $handle {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl serde::Serialize for $handle {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }
    };
}

pub(crate) use registry_handle;
