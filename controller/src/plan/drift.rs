//! Drift: what a container actually runs against what the spec wants, field by field.
//! The spec-hash label says only that a container was made from some spec; a
//! container replaced by hand may carry the label and still lack a variable (the
//! incident mai-fleet exists for), so the plan compares what the engine reports.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use super::{Runtime, Workload, LABEL_SPEC_HASH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Apply adds it (the container lacks it).
    Added,
    /// Apply removes it (the spec does not have it).
    Removed,
    Changed,
}

mai_fleet_core::text_enum! {
    /// What of a tenant a change is to, whichever backend runs it.
    pub enum Field, "changed field" {
        Image = "image",
        Env = "env",
        Memory = "memory",
        Cpus = "cpus",
        Pids = "pids",
        Port = "port",
        Mount = "mount",
        RestartPolicy = "restart_policy",
        CapDrop = "cap_drop",
        SecurityOpt = "security_opt",
        Network = "network",
        Label = "label",
        SpecHash = "spec_hash",
    }
}

/// One field that apply changes. Values of secrets are never held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub field: Field,
    /// The variable's or label's name, for `env` and `label`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub change: ChangeKind,
    /// What the container has now (absent for secrets and for what it lacks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// What apply sets (absent for secrets and for what it removes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The value is a secret: shown as neither `from` nor `to`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field.as_str())?;
        if let Some(n) = &self.name {
            write!(f, " {n}")?;
        }
        match (self.change, &self.from, &self.to) {
            (ChangeKind::Added, _, Some(to)) => write!(f, " added ({to})"),
            (ChangeKind::Added, _, None) => f.write_str(" added"),
            (ChangeKind::Removed, _, _) => f.write_str(" removed"),
            (ChangeKind::Changed, Some(from), Some(to)) => {
                let from = if from.is_empty() { "(none)" } else { from };
                write!(f, " {from} -> {to}")
            }
            (ChangeKind::Changed, None, Some(to)) => write!(f, " changed (-> {to})"),
            (ChangeKind::Changed, _, _) if self.secret => f.write_str(" changed (secret)"),
            (ChangeKind::Changed, _, _) => f.write_str(" changed"),
        }
    }
}

fn changed(field: Field, from: String, to: String) -> Change {
    Change {
        field,
        name: None,
        change: ChangeKind::Changed,
        from: Some(from),
        to: Some(to),
        secret: false,
    }
}

fn mib(bytes: i64) -> String {
    format!("{}m", bytes / (1 << 20))
}

fn cpus(nano: i64) -> String {
    let whole = nano / 1_000_000_000;
    let frac = nano % 1_000_000_000;
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{}", format!("{frac:09}").trim_end_matches('0'))
    }
}

/// Every field in which `runtime` differs from `desired`, in a fixed order. Empty:
/// the workload is what the spec wants.
pub fn changes(desired: &Workload, runtime: &Runtime) -> Vec<Change> {
    let mut out = Vec::new();
    if runtime.image != desired.image {
        out.push(changed(
            Field::Image,
            runtime.image.clone(),
            desired.image.clone(),
        ));
    }
    out.extend(env_changes(desired, runtime));
    let (have, want) = (&runtime.resources, &desired.resources);
    let scalar = [
        (
            Field::Memory,
            mib(have.memory_bytes),
            mib(want.memory_bytes),
        ),
        (Field::Cpus, cpus(have.nano_cpus), cpus(want.nano_cpus)),
        (
            Field::Pids,
            have.pids_limit.to_string(),
            want.pids_limit.to_string(),
        ),
        (
            Field::RestartPolicy,
            runtime.confinement.restart.as_str().to_string(),
            desired.confinement.restart.as_str().to_string(),
        ),
        (
            Field::Network,
            runtime.network.clone(),
            desired.network.clone(),
        ),
    ];
    for (field, from, to) in scalar {
        if from != to {
            out.push(changed(field, from, to));
        }
    }
    let lists = [
        (Field::Port, runtime.ports.clone(), vec![desired.endpoint()]),
        (Field::Mount, runtime.mounts.clone(), vec![desired.mount()]),
        (
            Field::CapDrop,
            runtime.confinement.cap_drop.clone(),
            desired.confinement.cap_drop.clone(),
        ),
        (
            Field::SecurityOpt,
            runtime.confinement.security_words(),
            desired.confinement.security_words(),
        ),
    ];
    for (field, have, want) in lists {
        if have != want {
            out.push(changed(field, have.join(","), want.join(",")));
        }
    }
    let names: BTreeSet<&String> = desired
        .labels
        .keys()
        .chain(runtime.labels.keys())
        .filter(|k| k.as_str() != LABEL_SPEC_HASH)
        .collect();
    for name in names {
        let (have, want) = (runtime.labels.get(name), desired.labels.get(name));
        if have != want {
            out.push(Change {
                field: Field::Label,
                name: Some(name.clone()),
                change: match (have, want) {
                    (None, _) => ChangeKind::Added,
                    (_, None) => ChangeKind::Removed,
                    _ => ChangeKind::Changed,
                },
                from: have.cloned(),
                to: want.cloned(),
                secret: false,
            });
        }
    }
    out
}

/// Changes of the environment, by name. A secret's value (the key, a `${env:}` or
/// `${file:}` variable) is neither shown nor kept; the container's current value of
/// any variable is never shown (it may have been a secret before).
fn env_changes(desired: &Workload, runtime: &Runtime) -> Vec<Change> {
    let names: BTreeSet<&String> = desired.env.keys().chain(runtime.env.keys()).collect();
    let mut out = Vec::new();
    for name in names {
        let (have, want) = (runtime.env.get(name), desired.env.get(name));
        if have == want {
            continue;
        }
        let secret = desired.secret_env.contains(name);
        out.push(Change {
            field: Field::Env,
            name: Some(name.clone()),
            change: match (have, want) {
                (None, _) => ChangeKind::Added,
                (_, None) => ChangeKind::Removed,
                _ => ChangeKind::Changed,
            },
            from: None,
            to: want.filter(|_| !secret).cloned(),
            secret,
        });
    }
    out
}

/// What an update changes when the hash says the spec changed but no field shows it
/// (a field the engine does not report): the hashes themselves.
pub fn hash_change(from: &str, to: &str) -> Change {
    Change {
        field: Field::SpecHash,
        name: None,
        change: ChangeKind::Changed,
        from: Some(from.to_string()),
        to: Some(to.to_string()),
        secret: false,
    }
}
