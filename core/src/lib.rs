//! The contract between the controller and the agent: what a managed container looks
//! like (labels, name, mounts, required environment), what a tenant's tracking state
//! is, and the daemons' shared plumbing (durations, logging). Both binaries depend on
//! this crate; neither depends on the other.

pub mod contract;
pub mod duration;
pub mod log;
pub mod probe;
pub mod store;
pub mod tracking;

pub use contract::{check_name_label, check_tenant_id, labels};
pub use tracking::{StoreStatus, Tracking};
