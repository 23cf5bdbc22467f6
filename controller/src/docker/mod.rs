//! The Docker backend: observes a host's managed containers and executes planned
//! actions on it, verifying every launched tenant and rolling back one that fails.
//!
//! - `engine`: the connection to one engine, what it observes, container primitives.
//! - `executor`: a host's actions scheduled per tenant, the failure budget.
//! - `rollout`: one tenant's create or update, with rollback to the previous container.
//! - `verify`, `health`: whether a launched tenant runs and tracks usage.
//! - `data_dir`: the tenant's data directory on a local engine.
//! - `verbs`: the day-2 verbs on one container (output, restart, stop/start, pause,
//!   exec, copy out and in), which `ops` uses.

pub mod agent;
mod data_dir;
mod engine;
mod executor;
mod health;
mod rollout;
mod ssh;
mod transport;
mod verbs;
mod verify;

use crate::execution::{ExecuteOptions, Outcome, Progress, Status};
pub use engine::{Engine, Observation};
pub use executor::execute;
pub use verify::{last_logs, verify};

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("host {host}: {url} cannot be used: {reason}")]
    UnsupportedEndpoint {
        host: String,
        url: String,
        reason: String,
    },
    #[error("host {host}: cannot reach the Docker engine at {url}: {source}")]
    Connect {
        host: String,
        url: String,
        #[source]
        source: bollard::errors::Error,
    },
    /// The engine did not answer in time, or its ssh connection failed: the host
    /// is reported unreachable and the others go on.
    #[error("host {host}: {url} is unreachable: {reason}")]
    Unreachable {
        host: String,
        url: String,
        reason: String,
    },
    #[error("host {host}: {source}")]
    HostKey {
        host: String,
        #[source]
        source: ssh::SshError,
    },
    #[error("host {host}: {what}: {source}")]
    Api {
        host: String,
        what: String,
        #[source]
        source: bollard::errors::Error,
    },
}
