//! mai-fleet controller library: the fleet spec, the plan from desired to observed
//! state, the Docker backend that executes it, and the fleet database.

pub mod alerts;
pub mod apply;
pub mod billing;
pub mod crypto;
pub mod docker;
pub use mai_fleet_core::duration;
pub mod http;
pub mod keys;
pub mod openrouter;
pub mod ops;
pub mod plan;
pub mod rates;
pub mod schedule;
pub mod spec;
pub mod store;
pub mod supervisor;
pub mod web;
