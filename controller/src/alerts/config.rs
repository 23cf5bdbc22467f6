//! What alerts are evaluated how often, and where notifications go.
//!
//! Quick setup by environment (`MAI_FLEET_ALERT_WEBHOOK_URL`, `..._SLACK_URL`,
//! `..._SMTP_URL` with `..._EMAIL_TO`); the full set in a YAML file named by
//! `MAI_FLEET_ALERTS_CONFIG` (docs/alerts.md). Unknown keys are errors.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Deserialize;

use super::Rule;
use crate::duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the alerts config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Invalid { path: String, detail: String },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    evaluation_interval: Option<String>,
    evaluation_cron: Option<String>,
    repeat_interval: Option<String>,
    send_resolved: Option<bool>,
    agent_interval: Option<String>,
    retry_max: Option<String>,
    give_up_after: Option<String>,
    external_url: Option<String>,
    #[serde(default)]
    rules: BTreeMap<String, RuleFile>,
    #[serde(default)]
    receivers: Vec<ReceiverFile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(rename = "for")]
    for_: Option<String>,
    /// A duration, or `never` (notify once per episode).
    repeat_interval: Option<String>,
    enabled: Option<bool>,
    tolerance_percent: Option<Decimal>,
    tolerance_usd: Option<Decimal>,
    /// backup_missing: the age past which a tenant's newest backup is too old.
    max_age: Option<String>,
    /// account_credit_low: fire when the credit covers fewer days than this;
    /// invoice_unsent: fire this many days after a month's close.
    days: Option<Decimal>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiverFile {
    name: String,
    webhook: Option<UrlFile>,
    slack: Option<UrlFile>,
    email: Option<EmailFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UrlFile {
    url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailFile {
    /// `smtp://host:25` (plain), `smtp+starttls://host:587`, `smtps://host:465`.
    smtp: String,
    from: String,
    to: Vec<String>,
    username: Option<String>,
    /// The variable holding the SMTP password (never the password itself).
    password_env: Option<String>,
}

#[derive(Debug, Clone)]
pub enum ReceiverKind {
    /// Alertmanager's webhook payload (version 4).
    Webhook { url: String },
    /// `{"text": ...}` as Slack's incoming webhooks take it.
    Slack { url: String },
    Email {
        smtp: String,
        from: String,
        to: Vec<String>,
        username: Option<String>,
        password_env: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct Receiver {
    pub name: String,
    pub kind: ReceiverKind,
}

#[derive(Debug, Clone)]
pub struct RulePolicy {
    pub enabled: bool,
    /// How long a condition holds before the alert fires.
    pub for_: Duration,
    /// None: once per episode.
    pub repeat: Option<Duration>,
}

#[derive(Debug, Clone)]
pub enum Evaluation {
    Every(Duration),
    Cron(Box<cron::Schedule>),
}

#[derive(Debug, Clone)]
pub struct AlertsConfig {
    pub evaluation: Evaluation,
    pub send_resolved: bool,
    /// The agents' cycle; `agent_silent` fires after three without a heartbeat.
    pub agent_interval: Duration,
    pub retry_max: Duration,
    pub give_up_after: Duration,
    pub external_url: String,
    pub capture_tolerance_percent: Decimal,
    pub capture_tolerance_usd: Decimal,
    /// `backup_missing` fires for a tenant without a backup younger than this.
    pub backup_max_age: Duration,
    /// `account_credit_low` fires when the account's credit covers fewer days
    /// than this at the trailing 7-day burn.
    pub credit_low_days: Decimal,
    /// `invoice_unsent` fires for a closed month whose invoices KSeF has not all
    /// accepted this many days after the close.
    pub invoice_days: i64,
    pub rules: HashMap<Rule, RulePolicy>,
    pub receivers: Vec<Receiver>,
}

fn default_policy(rule: Rule, repeat: Duration) -> RulePolicy {
    let (for_, repeat) = match rule {
        Rule::CaptureGap => (Duration::from_secs(600), Some(repeat)),
        Rule::ContainerDown => (Duration::from_secs(120), Some(repeat)),
        // A month's budget line is crossed once: say it once.
        Rule::Budget80 | Rule::Budget100 | Rule::StoreRegression => (Duration::ZERO, None),
        _ => (Duration::ZERO, Some(repeat)),
    };
    RulePolicy {
        // Without a backup directory the fleet takes no backups: nothing to miss.
        enabled: rule != Rule::BackupMissing || env("MAI_FLEET_BACKUP_DIR").is_some(),
        for_,
        repeat,
    }
}

/// How often rules are evaluated: the environment's cron or interval, else the
/// file's, else every minute.
fn evaluation(path: &str, f: &FileConfig) -> Result<Evaluation, ConfigError> {
    Ok(
        match (
            env("MAI_FLEET_ALERT_CRON").or(f.evaluation_cron.clone()),
            env("MAI_FLEET_ALERT_INTERVAL").or(f.evaluation_interval.clone()),
        ) {
            (Some(c), _) => Evaluation::Cron(Box::new(crate::schedule::parse_cron(&c).map_err(
                |detail| ConfigError::Invalid {
                    path: path.to_string(),
                    detail: format!("evaluation_cron: {detail}"),
                },
            )?)),
            (None, Some(i)) => Evaluation::Every(dur(path, "evaluation_interval", &i)?),
            (None, None) => Evaluation::Every(Duration::from_secs(60)),
        },
    )
}

/// Each rule's policy and the settings of the rules that have some.
struct RuleSettings {
    rules: HashMap<Rule, RulePolicy>,
    backup_max_age: Duration,
    credit_low_days: Decimal,
    invoice_days: i64,
    tol_pct: Decimal,
    tol_usd: Decimal,
}

fn rule_settings(
    path: &str,
    files: &BTreeMap<String, RuleFile>,
    repeat: Duration,
) -> Result<RuleSettings, ConfigError> {
    let mut rules: HashMap<Rule, RulePolicy> = Rule::ALL
        .iter()
        .map(|r| (*r, default_policy(*r, repeat)))
        .collect();
    // Nightly backups, with two hours' grace.
    let mut backup_max_age = Duration::from_secs(26 * 3600);
    let mut credit_low_days = Decimal::from(7);
    let mut invoice_days = 5;
    let mut tol_pct = Decimal::from(2);
    let mut tol_usd = Decimal::new(5, 2);
    for (name, rf) in files {
        let rule = Rule::from_str(name).map_err(|detail| ConfigError::Invalid {
            path: path.to_string(),
            detail: format!("rules: {detail}"),
        })?;
        let p = rules
            .entry(rule)
            .or_insert_with(|| default_policy(rule, repeat));
        if let Some(e) = rf.enabled {
            p.enabled = e;
        }
        if let Some(d) = &rf.for_ {
            p.for_ = dur(path, &format!("rules.{name}.for"), d)?;
        }
        if let Some(r) = &rf.repeat_interval {
            p.repeat = if r.trim() == "never" {
                None
            } else {
                Some(dur(path, &format!("rules.{name}.repeat_interval"), r)?)
            };
        }
        if let Some(a) = &rf.max_age {
            if rule != Rule::BackupMissing {
                return Err(ConfigError::Invalid {
                    path: path.to_string(),
                    detail: format!("rules.{name}: max_age applies to backup_missing only"),
                });
            }
            backup_max_age = dur(path, &format!("rules.{name}.max_age"), a)?;
        }
        if let (Some(d), Rule::InvoiceUnsent) = (rf.days, rule) {
            invoice_days = i64::try_from(d)
                .ok()
                .filter(|n| d.fract().is_zero() && (0..=366).contains(n))
                .ok_or_else(|| ConfigError::Invalid {
                    path: path.to_string(),
                    detail: format!("rules.{name}: days is a whole number of days from 0 to 366"),
                })?;
        } else if let Some(d) = rf.days {
            if rule != Rule::AccountCreditLow || d <= Decimal::ZERO {
                return Err(ConfigError::Invalid {
                    path: path.to_string(),
                    detail: format!(
                        "rules.{name}: days (above 0) applies to account_credit_low and invoice_unsent only"
                    ),
                });
            }
            credit_low_days = d;
        }
        if rule == Rule::CaptureGap {
            tol_pct = rf.tolerance_percent.unwrap_or(tol_pct);
            tol_usd = rf.tolerance_usd.unwrap_or(tol_usd);
        } else if rf.tolerance_percent.is_some() || rf.tolerance_usd.is_some() {
            return Err(ConfigError::Invalid {
                path: path.to_string(),
                detail: format!("rules.{name}: tolerances apply to capture_gap only"),
            });
        }
    }
    Ok(RuleSettings {
        rules,
        backup_max_age,
        credit_low_days,
        invoice_days,
        tol_pct,
        tol_usd,
    })
}

/// The receivers set up by environment alone (`MAI_FLEET_ALERT_WEBHOOK_URL`,
/// `..._SLACK_URL`, `..._SMTP_URL` with `..._EMAIL_TO`).
fn env_receivers() -> Result<Vec<Receiver>, ConfigError> {
    let mut receivers = Vec::new();
    if let Some(url) = env("MAI_FLEET_ALERT_WEBHOOK_URL") {
        receivers.push(Receiver {
            name: "webhook".into(),
            kind: ReceiverKind::Webhook { url },
        });
    }
    if let Some(url) = env("MAI_FLEET_ALERT_SLACK_URL") {
        receivers.push(Receiver {
            name: "slack".into(),
            kind: ReceiverKind::Slack { url },
        });
    }
    if let Some(smtp) = env("MAI_FLEET_ALERT_SMTP_URL") {
        let to: Vec<String> = env("MAI_FLEET_ALERT_EMAIL_TO")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if to.is_empty() {
            return Err(ConfigError::Invalid {
                path: "environment".into(),
                detail: "MAI_FLEET_ALERT_SMTP_URL is set but MAI_FLEET_ALERT_EMAIL_TO names nobody"
                    .into(),
            });
        }
        receivers.push(Receiver {
            name: "email".into(),
            kind: ReceiverKind::Email {
                smtp,
                from: env("MAI_FLEET_ALERT_EMAIL_FROM")
                    .unwrap_or_else(|| "mai-fleet@localhost".into()),
                to,
                username: env("MAI_FLEET_ALERT_SMTP_USER"),
                password_env: env("MAI_FLEET_ALERT_SMTP_USER")
                    .map(|_| "MAI_FLEET_ALERT_SMTP_PASSWORD".into()),
            },
        });
    }
    Ok(receivers)
}

/// The file's receivers, then the environment's quick ones; every name once, and no
/// SMTP password over plain smtp://.
fn receivers(path: &str, files: Vec<ReceiverFile>) -> Result<Vec<Receiver>, ConfigError> {
    let mut receivers = Vec::new();
    for r in files {
        let kind = match (r.webhook, r.slack, r.email) {
            (Some(w), None, None) => ReceiverKind::Webhook { url: w.url },
            (None, Some(s), None) => ReceiverKind::Slack { url: s.url },
            (None, None, Some(e)) => ReceiverKind::Email {
                smtp: e.smtp,
                from: e.from,
                to: e.to,
                username: e.username,
                password_env: e.password_env,
            },
            _ => {
                return Err(ConfigError::Invalid {
                    path: path.to_string(),
                    detail: format!(
                        "receiver `{}` needs exactly one of webhook, slack, email",
                        r.name
                    ),
                })
            }
        };
        receivers.push(Receiver { name: r.name, kind });
    }
    receivers.extend(env_receivers()?);
    let mut seen = std::collections::HashSet::new();
    for r in &receivers {
        if let ReceiverKind::Email {
            smtp,
            username: Some(_),
            ..
        } = &r.kind
        {
            if smtp.starts_with("smtp://") {
                return Err(ConfigError::Invalid {
                    path: path.to_string(),
                    detail: format!(
                        "receiver `{}` would send its SMTP password in plain text over {smtp}; use smtp+starttls:// or smtps://",
                        r.name
                    ),
                });
            }
        }
        if !seen.insert(r.name.clone()) {
            return Err(ConfigError::Invalid {
                path: path.to_string(),
                detail: format!("two receivers are named `{}`", r.name),
            });
        }
    }
    Ok(receivers)
}

fn dur(path: &str, what: &str, text: &str) -> Result<Duration, ConfigError> {
    duration::parse(text).map_err(|e| ConfigError::Invalid {
        path: path.to_string(),
        detail: format!("{what}: {e}"),
    })
}

fn env(name: &str) -> Option<String> {
    crate::env::text(name)
}

impl AlertsConfig {
    /// From `MAI_FLEET_ALERTS_CONFIG` (when set) and the quick-setup variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        let file = env("MAI_FLEET_ALERTS_CONFIG");
        let (path, text) = match &file {
            Some(p) => (
                p.clone(),
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?,
            ),
            None => ("environment".to_string(), String::new()),
        };
        Self::parse(&path, &text)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        Self::parse(&p, &text)
    }

    pub fn parse(path: &str, text: &str) -> Result<Self, ConfigError> {
        let f: FileConfig = if text.trim().is_empty() {
            FileConfig::default()
        } else {
            marked_yaml::from_yaml(0, text).map_err(|e| ConfigError::Invalid {
                path: path.to_string(),
                detail: e.to_string(),
            })?
        };
        let evaluation = evaluation(path, &f)?;
        let repeat = match &f.repeat_interval {
            Some(r) => dur(path, "repeat_interval", r)?,
            None => Duration::from_secs(4 * 3600),
        };
        let RuleSettings {
            rules,
            backup_max_age,
            credit_low_days,
            invoice_days,
            tol_pct,
            tol_usd,
        } = rule_settings(path, &f.rules, repeat)?;
        let receivers = receivers(path, f.receivers)?;
        Ok(AlertsConfig {
            evaluation,
            send_resolved: f.send_resolved.unwrap_or(true),
            agent_interval: match env("MAI_FLEET_AGENT_INTERVAL").or(f.agent_interval) {
                Some(a) => dur(path, "agent_interval", &a)?,
                None => Duration::from_secs(60),
            },
            retry_max: match &f.retry_max {
                Some(r) => dur(path, "retry_max", r)?,
                None => Duration::from_secs(300),
            },
            give_up_after: match &f.give_up_after {
                Some(r) => dur(path, "give_up_after", r)?,
                None => Duration::from_secs(24 * 3600),
            },
            external_url: env("MAI_FLEET_EXTERNAL_URL")
                .or(f.external_url)
                .unwrap_or_else(|| "http://localhost:8080".into()),
            capture_tolerance_percent: tol_pct,
            capture_tolerance_usd: tol_usd,
            backup_max_age,
            credit_low_days,
            invoice_days,
            rules,
            receivers,
        })
    }

    pub fn policy(&self, rule: Rule) -> RulePolicy {
        self.rules.get(&rule).cloned().unwrap_or(RulePolicy {
            enabled: true,
            for_: Duration::ZERO,
            repeat: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sets_rules_and_receivers_and_refuses_typos() {
        let c = AlertsConfig::parse(
            "alerts.yaml",
            "repeat_interval: 1h\nrules:\n  capture_gap: { for: 0s, tolerance_percent: 5 }\n  budget_80: { repeat_interval: never }\nreceivers:\n  - name: ops\n    webhook: { url: http://x/hook }\n",
        )
        .unwrap();
        assert_eq!(c.policy(Rule::CaptureGap).for_, Duration::ZERO);
        assert_eq!(c.capture_tolerance_percent, Decimal::from(5));
        assert_eq!(
            c.policy(Rule::TrackingInactive).repeat,
            Some(Duration::from_secs(3600))
        );
        assert!(c.policy(Rule::Budget80).repeat.is_none());
        assert_eq!(c.receivers.len(), 1);
        let e = AlertsConfig::parse("alerts.yaml", "repeat_intervall: 1h\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("repeat_intervall") && e.contains("alerts.yaml"),
            "{e}"
        );
        let e = AlertsConfig::parse("alerts.yaml", "rules:\n  tracking: {}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tracking_inactive"), "{e}");
    }
}
