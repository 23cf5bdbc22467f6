//! The contract between the controller and the agent: what a managed container looks
//! like (labels, name, mounts, required environment), what a tenant's tracking state
//! is, and the daemons' shared plumbing (durations, logging). Both binaries depend on
//! this crate; neither depends on the other.

pub mod archive;
pub mod contract;
pub mod duration;
pub mod log;
pub mod probe;
pub mod store;
pub mod tracking;
pub mod tree;

pub use contract::{check_name_label, check_tenant_id, labels};
pub use tracking::{StoreStatus, Tracking};

/// A value someone wrote (a spec value, an argument, a setting) that is not valid.
/// The sentence says why and how to mend it; the caller says where (the spec loader
/// places it at `file:line:col`, a command names its flag).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<String> for Invalid {
    fn from(why: String) -> Self {
        Invalid(why)
    }
}

impl From<&str> for Invalid {
    fn from(why: &str) -> Self {
        Invalid(why.to_string())
    }
}
