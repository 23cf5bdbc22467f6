//! From what the rules found and what was stored to what changes: pure, like a
//! reconcile function — desired (candidates) + observed (stored alerts, silences)
//! → transitions and notifications.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::config::AlertsConfig;
use super::Candidate;
pub use crate::store::model::{Alert, Rule, Silence, State, Step, Transition};

/// `open` are the stored alerts not resolved; `candidates` what the rules found now.
pub fn reconcile(
    open: &[Alert],
    candidates: &[Candidate],
    silences: &[Silence],
    now: DateTime<Utc>,
    config: &AlertsConfig,
) -> Step {
    let mut step = Step::default();
    // With nobody to tell, an alert is not marked as told: once a receiver is
    // configured, what fires is sent.
    let can_notify = !config.receivers.is_empty();
    let mut by_fp: HashMap<String, &Alert> =
        open.iter().map(|a| (a.fingerprint.clone(), a)).collect();
    let mut seen = std::collections::HashSet::new();
    for c in candidates {
        let policy = config.policy(c.rule);
        if !policy.enabled {
            continue;
        }
        let fp = c.fingerprint();
        if !seen.insert(fp.clone()) {
            continue;
        }
        let (mut a, before) = match by_fp.remove(&fp) {
            Some(stored) => (stored.clone(), Some(stored.state)),
            None => (
                Alert {
                    fingerprint: fp.clone(),
                    rule: c.rule,
                    tenant: c.tenant.clone(),
                    labels: c.labels.clone(),
                    summary: c.summary.clone(),
                    description: c.description.clone(),
                    state: State::Pending,
                    active_since: now,
                    fired_at: None,
                    resolved_at: None,
                    last_seen_at: now,
                    last_notified_at: None,
                    notified_state: None,
                },
                None,
            ),
        };
        a.summary = c.summary.clone();
        a.description = c.description.clone();
        a.last_seen_at = now;
        let held = (now - a.active_since).to_std().unwrap_or_default();
        if a.state == State::Pending && held >= policy.for_ {
            a.state = State::Firing;
            a.fired_at = Some(now);
        }
        if before != Some(a.state) {
            step.transitions.push(Transition {
                fingerprint: fp.clone(),
                rule: a.rule,
                tenant: a.tenant.clone(),
                from: before,
                to: a.state,
                summary: a.summary.clone(),
            });
        }
        if a.state == State::Firing {
            if silences.iter().any(|s| s.matches(&a)) {
                step.silenced += 1;
            } else {
                let due = match (a.notified_state, a.last_notified_at, policy.repeat) {
                    (Some(State::Firing), Some(last), Some(repeat)) => {
                        (now - last).to_std().unwrap_or_default() >= repeat
                    }
                    (Some(State::Firing), _, None) => false,
                    _ => true,
                };
                if due && can_notify {
                    a.last_notified_at = Some(now);
                    a.notified_state = Some(State::Firing);
                    step.notify.push((a.clone(), State::Firing));
                }
            }
        }
        step.upserts.push(a);
    }
    // What no rule found any more has cleared.
    for (_, stored) in by_fp {
        let mut a = stored.clone();
        let from = a.state;
        a.state = State::Resolved;
        a.resolved_at = Some(now);
        step.transitions.push(Transition {
            fingerprint: a.fingerprint.clone(),
            rule: a.rule,
            tenant: a.tenant.clone(),
            from: Some(from),
            to: State::Resolved,
            summary: a.summary.clone(),
        });
        let told_firing = a.notified_state == Some(State::Firing);
        let silenced = silences.iter().any(|s| s.matches(&a));
        if from == State::Firing && told_firing && config.send_resolved && !silenced && can_notify {
            a.last_notified_at = Some(now);
            a.notified_state = Some(State::Resolved);
            step.notify.push((a.clone(), State::Resolved));
        }
        step.upserts.push(a);
    }
    step
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn config(yaml: &str) -> AlertsConfig {
        let receiver = "receivers:\n  - name: ops\n    webhook: { url: \"http://127.0.0.1:9/\" }\n";
        AlertsConfig::parse("test", &format!("{yaml}{receiver}")).unwrap()
    }

    #[test]
    fn without_receivers_nothing_counts_as_told() {
        let t0 = Utc::now();
        let mut open = Vec::new();
        let c = [cand(Rule::TrackingInactive, "t1")];
        let none = AlertsConfig::parse("test", "").unwrap();
        let s = run(&mut open, &c, &[], t0, &none);
        assert!(s.notify.is_empty());
        assert_eq!(open[0].notified_state, None);
        let s = run(&mut open, &c, &[], t0 + Duration::seconds(60), &config(""));
        assert_eq!(s.notify.len(), 1, "sent once a receiver exists");
    }

    fn cand(rule: Rule, tenant: &str) -> Candidate {
        Candidate::new(
            rule,
            Some(tenant),
            &[],
            format!("{tenant}: {rule}"),
            String::new(),
        )
    }

    fn run(
        open: &mut Vec<Alert>,
        c: &[Candidate],
        s: &[Silence],
        now: DateTime<Utc>,
        cfg: &AlertsConfig,
    ) -> Step {
        let step = reconcile(open, c, s, now, cfg);
        let mut all: HashMap<String, Alert> =
            open.drain(..).map(|a| (a.fingerprint.clone(), a)).collect();
        for a in &step.upserts {
            all.insert(a.fingerprint.clone(), a.clone());
        }
        open.extend(all.into_values().filter(|a| a.state != State::Resolved));
        step
    }

    #[test]
    fn pending_for_then_firing_once_then_resolved_once() {
        let cfg = config("rules:\n  container_down: { for: 2m }\n");
        let t0 = Utc::now();
        let mut open = Vec::new();
        let c = [cand(Rule::ContainerDown, "t1")];
        let s = run(&mut open, &c, &[], t0, &cfg);
        assert_eq!((s.transitions[0].to, s.notify.len()), (State::Pending, 0));
        let s = run(&mut open, &c, &[], t0 + Duration::seconds(60), &cfg);
        assert!(s.transitions.is_empty() && s.notify.is_empty());
        let s = run(&mut open, &c, &[], t0 + Duration::seconds(121), &cfg);
        assert_eq!((s.transitions[0].to, s.notify.len()), (State::Firing, 1));
        for i in 0..30 {
            let s = run(&mut open, &c, &[], t0 + Duration::seconds(130 + i), &cfg);
            assert!(s.notify.is_empty(), "no repeat before the repeat interval");
        }
        let s = run(&mut open, &c, &[], t0 + Duration::hours(5), &cfg);
        assert_eq!(s.notify.len(), 1, "repeat after 4h");
        let s = run(&mut open, &[], &[], t0 + Duration::hours(6), &cfg);
        assert_eq!(s.notify.len(), 1);
        assert_eq!(s.notify[0].1, State::Resolved);
        assert!(open.is_empty());
    }

    #[test]
    fn pending_that_clears_is_never_told() {
        let cfg = config("rules:\n  container_down: { for: 2m }\n");
        let t0 = Utc::now();
        let mut open = Vec::new();
        run(&mut open, &[cand(Rule::ContainerDown, "t1")], &[], t0, &cfg);
        let s = run(&mut open, &[], &[], t0 + Duration::seconds(30), &cfg);
        assert!(s.notify.is_empty());
        assert_eq!(s.transitions[0].to, State::Resolved);
    }

    #[test]
    fn silence_suppresses_and_expiry_resumes() {
        let cfg = config("repeat_interval: 10m\n");
        let t0 = Utc::now();
        let mut open = Vec::new();
        let c = [
            cand(Rule::TrackingInactive, "t1"),
            cand(Rule::TrackingInactive, "t2"),
        ];
        let silence = Silence {
            id: 1,
            tenant: Some("t1".into()),
            rule: None,
        };
        let s = run(&mut open, &c, std::slice::from_ref(&silence), t0, &cfg);
        assert_eq!(s.notify.len(), 1, "t2 only");
        assert_eq!(s.silenced, 1);
        let s = run(&mut open, &c, &[], t0 + Duration::seconds(60), &cfg);
        assert_eq!(s.notify.len(), 1, "t1 once the silence is gone");
        assert_eq!(s.notify[0].0.tenant.as_deref(), Some("t1"));
    }

    #[test]
    fn once_per_episode_rules_never_repeat() {
        let cfg = config("");
        let t0 = Utc::now();
        let mut open = Vec::new();
        let c = [cand(Rule::Budget80, "t1")];
        assert_eq!(run(&mut open, &c, &[], t0, &cfg).notify.len(), 1);
        assert!(run(&mut open, &c, &[], t0 + Duration::days(3), &cfg)
            .notify
            .is_empty());
    }
}
