//! A tenant's health as one agent cycle saw it, and whether its usage tracking is
//! active: the seeds' incident (required env missing, nothing tracked for two days)
//! shows up here as `inactive` with the reasons, within one cycle.

use chrono::NaiveDate;
use mai_fleet_core::{StoreStatus, Tracking};
use serde::{Deserialize, Serialize};

use crate::discover::TenantContainer;
use crate::reader::{ReadError, Snapshot};

/// What health needs of a store, kept between cycles so that a store whose files did
/// not change need not be opened again.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreState {
    Read {
        variant: String,
        /// Rows refused this read, and why.
        refused: Option<String>,
        org_row_present: bool,
        last_usage_change: Option<i64>,
        live_counter_date: Option<NaiveDate>,
    },
    /// `store_status` and the reason.
    Failed(StoreStatus, String),
}

impl StoreState {
    pub fn of(result: &Result<Snapshot, ReadError>, has_data_mount: bool) -> Self {
        match result {
            Ok(s) => StoreState::Read {
                variant: s.variant.clone(),
                refused: s.refused_reason(),
                org_row_present: s.org_row_present,
                last_usage_change: s.last_usage_change(),
                live_counter_date: s.live.as_ref().map(|l| l.counter_date),
            },
            Err(ReadError::Missing(_)) if !has_data_mount => StoreState::Failed(
                StoreStatus::NoDataMount,
                "no volume is mounted at the app's data directory".into(),
            ),
            Err(e @ ReadError::Missing(_)) => {
                StoreState::Failed(StoreStatus::Missing, e.to_string())
            }
            Err(e @ ReadError::Unreadable(_)) => {
                StoreState::Failed(StoreStatus::Unreadable, e.to_string())
            }
            Err(e @ ReadError::Refused(_)) => {
                StoreState::Failed(StoreStatus::Refused, e.to_string())
            }
            Err(e @ ReadError::UnknownSchema(_)) => {
                StoreState::Failed(StoreStatus::UnknownSchema, e.to_string())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub tenant: String,
    pub container: String,
    pub container_state: String,
    pub restart_count: i64,
    pub started_at: Option<String>,
    /// Whether the container is the one the last apply wanted (spec hash matches).
    pub in_spec: bool,
    pub env_missing: Vec<String>,
    pub store_status: StoreStatus,
    pub schema_variant: Option<String>,
    pub org_row_present: Option<bool>,
    pub last_usage_change: Option<i64>,
    pub live_counter_date: Option<NaiveDate>,
    pub tracking: Tracking,
    pub reasons: Vec<String>,
}

pub fn assess(c: &TenantContainer, in_spec: bool, store: &StoreState) -> Health {
    let mut reasons = Vec::new();
    if c.state != "running" {
        reasons.push(format!(
            "container is {}",
            if c.state.is_empty() {
                "in an unknown state"
            } else {
                &c.state
            }
        ));
    }
    if !c.env_missing.is_empty() {
        reasons.push(format!(
            "required env missing: {}",
            c.env_missing.join(", ")
        ));
    }
    let (store_status, variant, org_row, last_change, live_date) = match store {
        StoreState::Read {
            variant,
            refused,
            org_row_present,
            last_usage_change,
            live_counter_date,
        } => {
            if let Some(r) = refused {
                reasons.push(r.clone());
            }
            (
                StoreStatus::Ok,
                Some(variant.clone()),
                Some(*org_row_present),
                *last_usage_change,
                *live_counter_date,
            )
        }
        StoreState::Failed(status, reason) => {
            reasons.push(reason.clone());
            (*status, None, None, None, None)
        }
    };
    if org_row == Some(false) {
        reasons.push(match &c.org_id {
            Some(org) => format!("no organization row for `{org}` in client_organizations: the app never initialised tracking"),
            None => "no organization row in client_organizations: OPENROUTER_EXTERNAL_USER is not set, so the app cannot create one".to_string(),
        });
    }
    if c.restart_count > 0 && c.state == "restarting" {
        reasons.push(format!("restart loop ({} restarts)", c.restart_count));
    }
    Health {
        tenant: c.tenant.clone(),
        container: c.container.clone(),
        container_state: c.state.clone(),
        restart_count: c.restart_count,
        started_at: c.started_at.clone(),
        in_spec,
        env_missing: c.env_missing.clone(),
        store_status,
        schema_variant: variant,
        org_row_present: org_row,
        last_usage_change: last_change,
        live_counter_date: live_date,
        tracking: if reasons.is_empty() {
            Tracking::Active
        } else {
            Tracking::Inactive
        },
        reasons,
    }
}
