//! The fleet's persisted domain types: what the store reads and writes, defined
//! here so that the store depends on no other module's types, and the modules that
//! produce them (`docker`, `alerts`) depend on the store's definitions.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// What happened to one tenant in an apply.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub host: String,
    pub tenant: String,
    pub action: crate::plan::Verb,
    pub status: Status,
    pub detail: String,
    pub container: Option<String>,
    pub duration_ms: u64,
}

mai_fleet_core::text_enum! {
    /// How one tenant's part of an apply ended (as shown, stored and serialized).
    pub enum Status, "apply result" {
        /// Done (or nothing to do) and verified where something was launched.
        Ok = "ok",
        /// Verification failed; the previous container serves again.
        RolledBack = "rolled_back",
        /// Failed with nothing to roll back to, or the rollback itself failed.
        Failed = "failed",
        /// Not attempted: the failure budget (`--max-failures`) was spent.
        Skipped = "skipped",
        /// Not attempted: the tenant's host could not be reached.
        Unreachable = "unreachable",
    }
}

mai_fleet_core::text_enum! {
    /// What a recorded day-2 operation on one tenant was.
    pub enum OperationKind, "operation" {
        Restart = "restart",
        Exec = "exec",
        Rollback = "rollback",
        Backup = "backup",
        Restore = "restore",
        RotateKey = "rotate_key",
    }
}

mai_fleet_core::text_enum! {
    /// Where a recorded operation is.
    pub enum OperationStatus, "operation status" {
        Running = "running",
        Ok = "ok",
        Failed = "failed",
        /// A rollout that failed verification and put the previous container back.
        RolledBack = "rolled_back",
    }
}

impl OperationStatus {
    /// `Ok` or `Failed` as a check came out.
    pub fn of(ok: bool) -> Self {
        if ok {
            OperationStatus::Ok
        } else {
            OperationStatus::Failed
        }
    }
}

impl From<Status> for OperationStatus {
    fn from(s: Status) -> Self {
        match s {
            Status::Ok => OperationStatus::Ok,
            Status::RolledBack => OperationStatus::RolledBack,
            _ => OperationStatus::Failed,
        }
    }
}

impl Status {
    /// As a person reads it in progress lines and tables: failures stand out.
    pub fn word(self) -> String {
        match self {
            Status::RolledBack | Status::Failed => self.as_str().replace('_', " ").to_uppercase(),
            _ => self.to_string(),
        }
    }
}

mai_fleet_core::text_enum! {
    /// The rules, by the names alerts carry as `alertname`.
    pub enum Rule, "rule; the rules are tracking_inactive, capture_gap, agent_silent, container_down, budget_80, budget_100, exchange_rate_missing, store_regression, backup_missing, account_credit_low, invoice_unsent" {
        TrackingInactive = "tracking_inactive",
        CaptureGap = "capture_gap",
        AgentSilent = "agent_silent",
        ContainerDown = "container_down",
        Budget80 = "budget_80",
        Budget100 = "budget_100",
        ExchangeRateMissing = "exchange_rate_missing",
        StoreRegression = "store_regression",
        BackupMissing = "backup_missing",
        AccountCreditLow = "account_credit_low",
        InvoiceUnsent = "invoice_unsent",
    }
}

impl Rule {
    pub fn name(self) -> &'static str {
        self.as_str()
    }

    pub fn severity(self) -> &'static str {
        match self {
            Rule::TrackingInactive
            | Rule::CaptureGap
            | Rule::Budget100
            | Rule::AccountCreditLow => "critical",
            Rule::AgentSilent
            | Rule::ContainerDown
            | Rule::StoreRegression
            | Rule::BackupMissing
            | Rule::InvoiceUnsent => "warning",
            Rule::Budget80 | Rule::ExchangeRateMissing => "info",
        }
    }
}

mai_fleet_core::text_enum! {
    /// Where an alert is in its lifecycle.
    pub enum State, "alert state" {
        Pending = "pending",
        Firing = "firing",
        Resolved = "resolved",
    }
}

/// An alert as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub fingerprint: String,
    pub rule: Rule,
    pub tenant: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub summary: String,
    pub description: String,
    pub state: State,
    pub active_since: DateTime<Utc>,
    pub fired_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub last_seen_at: DateTime<Utc>,
    pub last_notified_at: Option<DateTime<Utc>>,
    pub notified_state: Option<State>,
}

#[derive(Debug, Clone)]
pub struct Silence {
    pub id: i64,
    pub tenant: Option<String>,
    pub rule: Option<Rule>,
}

impl Silence {
    pub fn matches(&self, a: &Alert) -> bool {
        self.tenant
            .as_ref()
            .is_none_or(|t| a.tenant.as_ref() == Some(t))
            && self.rule.is_none_or(|r| r == a.rule)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub fingerprint: String,
    pub rule: Rule,
    pub tenant: Option<String>,
    pub from: Option<State>,
    pub to: State,
    pub summary: String,
}

/// What one evaluation changes.
#[derive(Debug, Default)]
pub struct Step {
    /// Every alert whose row changes (state, last seen, annotations, notification).
    pub upserts: Vec<Alert>,
    pub transitions: Vec<Transition>,
    /// Alerts to tell the receivers about, as firing or resolved.
    pub notify: Vec<(Alert, State)>,
    /// Firing alerts kept quiet by a silence this cycle.
    pub silenced: usize,
}
