//! How a plan is carried out on a host, whichever backend carries it: the options of
//! an execution and of a launch's verification, progress, and the day-2 verbs' logs
//! request and output. The backends take these; the use cases pass them through
//! [`crate::backend`].

use std::time::Duration;

// Apply results are persisted: the store defines them.
pub use crate::store::model::{Outcome, Status};

/// Receives progress lines as they happen (host, tenant, message).
pub type Progress = dyn Fn(&str, &str, &str) + Send + Sync;

pub struct ExecuteOptions {
    pub parallel: usize,
    pub verify: VerifyOptions,
    pub stop_timeout_s: i32,
    pub purge_data: bool,
    /// Stop starting rollouts once this many tenants failed, fleet-wide.
    pub max_failures: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// How long the container must run without restarting.
    pub settle: Duration,
    /// Give up after this long.
    pub timeout: Duration,
    pub poll: Duration,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            settle: Duration::from_secs(2),
            timeout: Duration::from_secs(60),
            poll: Duration::from_millis(100),
        }
    }
}

/// What a logs request asks for.
pub struct LogsRequest {
    pub follow: bool,
    /// Unix seconds.
    pub since: Option<i64>,
    pub tail: Option<String>,
}

/// A piece of a container's output, as the engine frames it.
pub struct Output {
    pub stderr: bool,
    pub text: String,
}

/// Why a launched workload was not verified, with its last log lines (masked): the
/// outcome's detail. `Ok` of a verification says how it was verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unverified(pub String);

impl From<String> for Unverified {
    fn from(why: String) -> Self {
        Unverified(why)
    }
}
