//! The long-lived jobs of `controller serve` (rates, alert evaluation, OpenRouter
//! polling, notification senders, the page cache's listener, the database probe),
//! supervised: each runs in a task of its own; one that ends, fails or panics is
//! logged, reported on `/healthz` and restarted with back-off. All stop together on
//! a shared cancellation token, each at its next wait, so work under way (a
//! notification being sent) finishes or stays queued in Postgres for the next start.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Why a job stopped: any error of the domain it runs, with its causes.
pub type JobError = Box<dyn std::error::Error + Send + Sync>;

/// A job's run: the error says why it stopped.
pub type JobFuture = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>>;

/// What a job is handed each time it (re)starts.
#[derive(Clone)]
pub struct JobContext {
    name: String,
    cancel: CancellationToken,
    health: Arc<Health>,
}

impl JobContext {
    /// Waits `d`; false when the server is stopping (the job should return).
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.cancel.cancelled() => false,
        }
    }

    pub fn stopping(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves when the server is stopping.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// The job did a round of its work: it is alive (see [`Job::late_after`]).
    pub fn beat(&self) {
        self.health
            .update(&self.name, |j| j.last_beat = Some(Instant::now()));
    }
}

/// A supervised job: a name, how to start it, and how long it may go without a
/// [`JobContext::beat`] before `/healthz` calls it late.
pub struct Job {
    pub name: String,
    pub late_after: Option<Duration>,
    pub start: Box<dyn Fn(JobContext) -> JobFuture + Send + Sync>,
}

impl Job {
    /// A job whose runs end in any error a `JobError` is made from (a domain's
    /// typed error keeps its causes; a plain message is accepted too).
    pub fn new<F, Fut, E>(name: impl Into<String>, late_after: Option<Duration>, start: F) -> Self
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<JobError> + 'static,
    {
        Self {
            name: name.into(),
            late_after,
            start: Box::new(move |ctx| {
                let run = start(ctx);
                Box::pin(async move { run.await.map_err(Into::into) })
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    /// Stopped by a failure; restarts after its back-off.
    BackingOff,
    Stopped,
}

#[derive(Debug, Clone)]
struct JobHealth {
    state: JobState,
    restarts: u32,
    last_failure: Option<(chrono::DateTime<chrono::Utc>, String)>,
    started: Instant,
    last_beat: Option<Instant>,
    late_after: Option<Duration>,
}

/// What `/healthz` reports: every job and the database, as last seen. Reading it
/// never waits on anything.
#[derive(Default)]
pub struct Health {
    jobs: Mutex<BTreeMap<String, JobHealth>>,
    /// When the database was last probed, and what was wrong with it then.
    database: Mutex<Option<(Instant, Option<String>)>>,
}

/// The database probe's verdict is stale past this (the probe itself is stuck).
const DATABASE_STALE: Duration = Duration::from_secs(15);

#[derive(Debug, Serialize)]
pub struct HealthReport {
    pub ok: bool,
    pub database: String,
    pub jobs: BTreeMap<String, JobReport>,
    /// What is wrong, one line each (empty when ok).
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct JobReport {
    pub state: JobState,
    pub restarts: u32,
    /// For the log and tests; not shown on the open endpoint.
    #[serde(skip)]
    pub last_failure: Option<String>,
    pub last_failure_at: Option<chrono::DateTime<chrono::Utc>>,
    pub seconds_since_beat: Option<u64>,
    pub late: bool,
}

impl Health {
    fn update(&self, name: &str, f: impl FnOnce(&mut JobHealth)) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(j) = jobs.get_mut(name) {
            f(j);
        }
    }

    /// The database probe's verdict: `None` when it answered, else what is wrong.
    pub fn set_database(&self, problem: Option<String>) {
        *self.database.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), problem));
    }

    pub fn report(&self) -> HealthReport {
        let now = Instant::now();
        let mut problems = Vec::new();
        let database = match &*self.database.lock().unwrap_or_else(|p| p.into_inner()) {
            None => {
                problems.push("fleet database: not probed yet".to_string());
                "unknown".to_string()
            }
            Some((at, _)) if now.duration_since(*at) > DATABASE_STALE => {
                problems.push(format!(
                    "fleet database: no answer for {} s",
                    now.duration_since(*at).as_secs()
                ));
                "late".to_string()
            }
            Some((_, None)) => "ok".to_string(),
            // The error itself goes to the log: /healthz is open to anyone.
            Some((_, Some(_))) => {
                problems.push("fleet database: unavailable".to_string());
                "unavailable".to_string()
            }
        };
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let jobs = jobs
            .iter()
            .map(|(name, j)| {
                let since = j.last_beat.unwrap_or(j.started);
                let late = j.state == JobState::Running
                    && j.late_after.is_some_and(|l| now.duration_since(since) > l);
                match j.state {
                    JobState::BackingOff => {
                        problems.push(format!("job {name}: down after a failure, restarting"))
                    }
                    JobState::Stopped => problems.push(format!("job {name}: stopped")),
                    JobState::Running if late => problems.push(format!(
                        "job {name}: late, last round {} s ago",
                        now.duration_since(since).as_secs()
                    )),
                    JobState::Running => {}
                }
                let report = JobReport {
                    state: j.state,
                    restarts: j.restarts,
                    last_failure: j.last_failure.as_ref().map(|(_, e)| e.clone()),
                    last_failure_at: j.last_failure.as_ref().map(|(t, _)| *t),
                    seconds_since_beat: j.last_beat.map(|b| now.duration_since(b).as_secs()),
                    late,
                };
                (name.clone(), report)
            })
            .collect();
        HealthReport {
            ok: problems.is_empty(),
            database,
            jobs,
            problems,
        }
    }
}

/// First and longest wait before a failed job is started again; a job that ran
/// this long before failing starts over from the first.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
const STABLE_AFTER: Duration = Duration::from_secs(60);

pub struct Supervisor {
    set: JoinSet<()>,
    cancel: CancellationToken,
    health: Arc<Health>,
    /// `MAI_FLEET_FAULT_PANIC=<job>`: that job's first run panics (the supervision
    /// test's fault injection; nothing else reads it).
    fault: Option<String>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Self {
            set: JoinSet::new(),
            cancel: CancellationToken::new(),
            health: Arc::new(Health::default()),
            fault: crate::env::raw("MAI_FLEET_FAULT_PANIC").filter(|v| !v.is_empty()),
        }
    }

    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    pub fn spawn(&mut self, job: Job) {
        let name = job.name.clone();
        {
            let mut jobs = self.health.jobs.lock().unwrap_or_else(|p| p.into_inner());
            jobs.insert(
                name.clone(),
                JobHealth {
                    state: JobState::Running,
                    restarts: 0,
                    last_failure: None,
                    started: Instant::now(),
                    last_beat: None,
                    late_after: job.late_after,
                },
            );
        }
        let inject = self.fault.as_deref() == Some(name.as_str());
        let ctx = JobContext {
            name,
            cancel: self.cancel.clone(),
            health: Arc::clone(&self.health),
        };
        self.set.spawn(supervise(job, ctx, inject));
    }

    /// Stops every job: each at its next wait, the rest aborted after `grace`.
    pub async fn shutdown(mut self, grace: Duration) {
        self.cancel.cancel();
        let all = async { while self.set.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                grace_s = grace.as_secs(),
                "jobs still busy at shutdown were stopped; queued work stays queued"
            );
            self.set.abort_all();
        }
    }
}

async fn supervise(job: Job, ctx: JobContext, mut inject_panic: bool) {
    let name = job.name.as_str();
    let mut backoff = BACKOFF_FIRST;
    loop {
        let started = Instant::now();
        ctx.health.update(name, |j| {
            j.state = JobState::Running;
            j.started = started;
        });
        let run = (job.start)(ctx.clone());
        let handle = if std::mem::take(&mut inject_panic) {
            tokio::spawn(async move {
                drop(run);
                panic!("fault injected by MAI_FLEET_FAULT_PANIC")
            })
        } else {
            tokio::spawn(run)
        };
        let why = match handle.await {
            Ok(Ok(())) if ctx.stopping() => break,
            Ok(Ok(())) => "ended by itself".to_string(),
            Ok(Err(e)) => crate::error_chain(&*e),
            Err(e) if e.is_panic() => format!("panicked: {}", panic_text(e.into_panic())),
            Err(_) => break,
        };
        if ctx.stopping() {
            break;
        }
        if started.elapsed() >= STABLE_AFTER {
            backoff = BACKOFF_FIRST;
        }
        tracing::error!(
            job = name,
            error = why.as_str(),
            restart_in_ms = backoff.as_millis() as u64,
            "job failed; restarting"
        );
        ctx.health.update(name, |j| {
            j.state = JobState::BackingOff;
            j.restarts += 1;
            j.last_failure = Some((chrono::Utc::now(), why.clone()));
        });
        if !ctx.sleep(backoff).await {
            break;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    ctx.health.update(name, |j| j.state = JobState::Stopped);
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_panicking_job_is_restarted_and_reported_then_all_stop_on_cancel() {
        let runs = Arc::new(AtomicU32::new(0));
        let mut sup = Supervisor::new();
        let counted = Arc::clone(&runs);
        sup.spawn(Job::new("flaky", None, move |ctx| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    panic!("boom");
                }
                while ctx.sleep(Duration::from_secs(1)).await {
                    ctx.beat();
                }
                Ok::<(), JobError>(())
            }
        }));
        let health = sup.health();
        health.set_database(None);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let r = health.report();
        assert!(!r.ok, "down between failure and restart: {:?}", r.problems);
        assert_eq!(r.problems, ["job flaky: down after a failure, restarting"]);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let r = health.report();
        assert!(r.ok, "{:?}", r.problems);
        assert_eq!(r.jobs["flaky"].restarts, 1);
        assert_eq!(
            r.jobs["flaky"].last_failure.as_deref(),
            Some("panicked: boom")
        );
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        sup.shutdown(Duration::from_secs(5)).await;
        assert_eq!(health.report().jobs["flaky"].state, JobState::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_without_a_beat_for_too_long_is_late() {
        let mut sup = Supervisor::new();
        sup.spawn(Job::new(
            "stuck",
            Some(Duration::from_secs(5)),
            |ctx| async move {
                ctx.cancelled().await;
                Ok::<(), JobError>(())
            },
        ));
        let health = sup.health();
        health.set_database(None);
        tokio::time::sleep(Duration::from_secs(6)).await;
        // The database probe is stale by now too: both are named.
        health.set_database(None);
        let r = health.report();
        assert!(!r.ok);
        assert!(r.jobs["stuck"].late);
        assert!(
            r.problems.iter().any(|p| p.contains("job stuck: late")),
            "{:?}",
            r.problems
        );
        sup.shutdown(Duration::from_secs(1)).await;
    }
}
