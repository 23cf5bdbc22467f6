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
    #[error("host {host}: {url} cannot be used: {source}")]
    Transport {
        host: String,
        url: String,
        #[source]
        source: Box<transport::TransportError>,
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

/// Why a container (a tenant's or the host's agent) could not be launched. The
/// texts are what an operator reads in apply's table and the history.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The seeds' incident was a container started without its key: it served and
    /// recorded nothing. No path may create one.
    #[error(
        "refused: the container would start without a valid OPENROUTER_API_KEY and track nothing"
    )]
    NoKey,
    #[error("network {network} exists without {ICC}=false (driver {driver}, {ICC}={icc}): its containers reach each other's ports; remove it (`docker network rm {network}`) and apply again")]
    SharedNetwork {
        network: String,
        driver: String,
        icc: String,
    },
    #[error("network {network} could not be made: {source}")]
    Network {
        network: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "image {image} is not on host {host}, not on this machine, and pulling it failed: {source}"
    )]
    Pull {
        image: String,
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("sending image {image} to host {host} failed: {source}")]
    Send {
        image: String,
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("host {host} refused image {image}: {message}")]
    ImageRefused {
        image: String,
        host: String,
        message: String,
    },
    #[error("image {image} was sent to host {host} but is not there")]
    ImageMissing { image: String, host: String },
    #[error("a container named {name} is on the host but is not this fleet's agent (labels {agent_of_label} = {agent_of:?}, {fleet_label} = {fleet:?}); apply never removes a container it does not own: rename or remove it", agent_of_label = crate::plan::agent::LABEL_AGENT_OF, fleet_label = crate::plan::LABEL_FLEET)]
    NotOurs {
        name: String,
        agent_of: Option<String>,
        fleet: Option<String>,
    },
    #[error("packing the agent's files: {0}")]
    Pack(#[source] std::io::Error),
    #[error("not running (exit code {code}, {restarts} restart(s))")]
    NotRunning { code: i64, restarts: i64 },
    /// A launch that failed, with the container's last log lines (masked).
    #[error("{name}: {source}{logs}")]
    Failed {
        name: String,
        #[source]
        source: Box<LaunchError>,
        logs: String,
    },
    #[error(transparent)]
    Engine(#[from] DockerError),
}

/// Docker's option that keeps a bridge's containers from reaching each other.
pub const ICC: &str = "com.docker.network.bridge.enable_icc";
