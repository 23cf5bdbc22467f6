//! Alerts: rules over the fleet database (and OpenRouter's ledger per key), an
//! Alertmanager-like lifecycle (pending → firing → resolved, dedupe by fingerprint,
//! repeat interval, silences) and receivers (webhook, Slack, e-mail) with retries.
//!
//! One evaluation cycle ([`evaluate::run_cycle`]): each rule is one query for the
//! whole fleet; [`lifecycle::reconcile`] turns the candidates and the stored
//! alerts into transitions and notifications (pure); the store writes them in bulk.

pub mod config;
pub mod evaluate;
pub mod lifecycle;
pub mod notify;
pub mod openrouter;
pub mod rules;

pub use crate::store::model::Rule;

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// A rule's finding for one tenant (or host, or the fleet) in this cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub rule: Rule,
    pub tenant: Option<String>,
    /// Identify the alert: `alertname`, `tenant`, and what else tells two apart.
    pub labels: BTreeMap<String, String>,
    /// One line naming the tenant, the cause and the money at stake.
    pub summary: String,
    pub description: String,
}

/// The longest label value; a label names (a tenant, a day, a model), it tells no story.
const MAX_LABEL: usize = 200;
/// The longest summary or description stored and shown.
const MAX_ANNOTATION: usize = 2000;

/// Text a tenant may have written into (a store's error, a model's name), made safe
/// for pages and receivers (`crate::bounded`). Slack's markup is escaped separately
/// (`notify`).
pub(crate) use crate::bounded;

impl Candidate {
    pub fn new(
        rule: Rule,
        tenant: Option<&str>,
        extra: &[(&str, String)],
        summary: String,
        description: String,
    ) -> Self {
        let mut labels = BTreeMap::new();
        labels.insert("alertname".to_string(), rule.name().to_string());
        labels.insert("severity".to_string(), rule.severity().to_string());
        if let Some(t) = tenant {
            labels.insert("tenant".to_string(), t.to_string());
        }
        for (k, v) in extra {
            labels.insert((*k).to_string(), bounded(&v.replace('\n', " "), MAX_LABEL));
        }
        Candidate {
            rule,
            tenant: tenant.map(str::to_string),
            labels,
            summary: bounded(&summary, MAX_ANNOTATION),
            description: bounded(&description, MAX_ANNOTATION),
        }
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.labels)
    }
}

/// A stable hash of the labels (Alertmanager's notion of one alert).
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in labels {
        h.update(k.as_bytes());
        h.update([0xff]);
        h.update(v.as_bytes());
        h.update([0xfe]);
    }
    crate::crypto::hex(&h.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_depends_on_labels_only() {
        let a = Candidate::new(
            Rule::CaptureGap,
            Some("t1"),
            &[("window", "day".into())],
            "x".into(),
            String::new(),
        );
        let b = Candidate::new(
            Rule::CaptureGap,
            Some("t1"),
            &[("window", "day".into())],
            "y".into(),
            "z".into(),
        );
        let c = Candidate::new(
            Rule::CaptureGap,
            Some("t1"),
            &[("window", "month".into())],
            "x".into(),
            String::new(),
        );
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!("budget_80".parse::<Rule>().unwrap(), Rule::Budget80);
        assert!("budget"
            .parse::<Rule>()
            .unwrap_err()
            .to_string()
            .contains("tracking_inactive"));
    }
}
