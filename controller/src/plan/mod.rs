//! The plan: desired tenants against the containers found on a host, as actions.
//!
//! Pure and backend-neutral: a [`Workload`] and what a backend reports ([`Observed`],
//! [`Runtime`]) are in the plan's own terms, so every case is unit-tested without an
//! engine or a cluster, and drift is computed here once for every backend. A backend
//! only executes what this decides.

pub mod agent;
mod drift;
mod workload;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::spec::{FleetSpec, HostSpec, TenantSpec};

pub use drift::{changes, Change, ChangeKind, Field};
pub use workload::{
    claim_name, data_claim, Confinement, DataClaim, Resources, Restart, Runtime, Workload,
    DEFAULT_MEMORY_BYTES, DEFAULT_NANO_CPUS, DEFAULT_PIDS_LIMIT, SPEC_HASH_VERSION,
};

// The container contract is the agent's too: defined once, in the core crate.
pub use mai_fleet_core::contract::labels::{
    FLEET as LABEL_FLEET, HOST as LABEL_HOST, MANAGED as LABEL_MANAGED,
    SPEC_HASH as LABEL_SPEC_HASH, TENANT as LABEL_TENANT,
};
pub use mai_fleet_core::contract::{network_name, APP_PORT, DATA_MOUNT};

/// What a tenant's workload is doing, as its backend reports it (Docker's state
/// words; another backend maps its own onto them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "&'static str")]
pub enum RunState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    /// A word this controller does not know.
    Other,
}

impl RunState {
    pub fn parse(word: &str) -> Self {
        match word {
            "created" => RunState::Created,
            "running" => RunState::Running,
            "paused" => RunState::Paused,
            "restarting" => RunState::Restarting,
            "removing" => RunState::Removing,
            "exited" => RunState::Exited,
            "dead" => RunState::Dead,
            _ => RunState::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Created => "created",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Restarting => "restarting",
            RunState::Removing => "removing",
            RunState::Exited => "exited",
            RunState::Dead => "dead",
            RunState::Other => "unknown",
        }
    }
}

impl From<RunState> for &'static str {
    fn from(s: RunState) -> Self {
        s.as_str()
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A container found on an engine with `mai-fleet.managed=true`.
#[derive(Debug, Clone, Serialize)]
pub struct Observed {
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: RunState,
    pub labels: HashMap<String, String>,
    /// What it runs, when it was inspected (the containers of the host being
    /// planned are); never serialized: it holds the environment.
    #[serde(skip)]
    pub runtime: Option<Runtime>,
}

impl Observed {
    fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("", String::as_str)
    }
    pub fn tenant(&self) -> &str {
        self.label(LABEL_TENANT)
    }
    pub fn host(&self) -> &str {
        self.label(LABEL_HOST)
    }
    pub fn fleet(&self) -> &str {
        self.label(LABEL_FLEET)
    }
    pub fn spec_hash(&self) -> &str {
        self.label(LABEL_SPEC_HASH)
    }
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}

mai_fleet_core::text_enum! {
    /// What was done, or found to do, for one tenant: a planned action's verb, and
    /// the steps an apply records that are no action of the plan (`observe` for an
    /// unreachable host, `rotate` for a key rotation's rollout).
    pub enum Verb, "apply action" {
        Create = "create",
        Update = "update",
        Start = "start",
        Unchanged = "unchanged",
        RemoveLeftover = "remove-leftover",
        Remove = "remove",
        Orphan = "orphan",
        Blocked = "blocked",
        Observe = "observe",
        Rotate = "rotate",
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// No container for the tenant: create, start, verify.
    Create {
        #[serde(skip)]
        desired: Box<Workload>,
        tenant: String,
    },
    /// The spec changed, or the container drifted from it: start a new container,
    /// keep the previous one stopped until the new one is verified, roll back to it
    /// if verification fails.
    Update {
        #[serde(skip)]
        desired: Box<Workload>,
        tenant: String,
        previous: Observed,
        /// What changes, field by field.
        changes: Vec<Change>,
        /// The spec is the one the container was made from, but the container is not
        /// what it says (changed or replaced by hand).
        drift: bool,
    },
    /// Same spec, not running (stopped by hand, or an apply interrupted after create).
    Start {
        tenant: String,
        current: Observed,
    },
    Unchanged {
        tenant: String,
        current: Observed,
    },
    /// Containers of the tenant other than `mai-<id>`: what an interrupted apply left.
    RemoveLeftover {
        tenant: String,
        container: Observed,
    },
    /// In no tenant of the spec: removed with `--prune`, else only reported.
    Remove {
        tenant: String,
        container: Observed,
    },
    Orphan {
        tenant: String,
        container: Observed,
    },
    /// A container of that name exists but is not ours: nothing is touched.
    Blocked {
        tenant: String,
        reason: String,
    },
}

impl Action {
    pub fn tenant(&self) -> &str {
        match self {
            Action::Create { tenant, .. }
            | Action::Update { tenant, .. }
            | Action::Start { tenant, .. }
            | Action::Unchanged { tenant, .. }
            | Action::RemoveLeftover { tenant, .. }
            | Action::Remove { tenant, .. }
            | Action::Orphan { tenant, .. }
            | Action::Blocked { tenant, .. } => tenant,
        }
    }

    pub fn verb(&self) -> Verb {
        match self {
            Action::Create { .. } => Verb::Create,
            Action::Update { .. } => Verb::Update,
            Action::Start { .. } => Verb::Start,
            Action::Unchanged { .. } => Verb::Unchanged,
            Action::RemoveLeftover { .. } => Verb::RemoveLeftover,
            Action::Remove { .. } => Verb::Remove,
            Action::Orphan { .. } => Verb::Orphan,
            Action::Blocked { .. } => Verb::Blocked,
        }
    }

    /// Whether applying it changes anything on the host.
    pub fn is_change(&self) -> bool {
        !matches!(
            self,
            Action::Unchanged { .. } | Action::Orphan { .. } | Action::Blocked { .. }
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("host {host}: container {container} belongs to fleet `{other}`, not `{ours}`; refusing to touch this host (give each fleet its own host names)")]
    ForeignFleet {
        host: String,
        container: String,
        other: String,
        ours: String,
    },
}

/// Plans one host. `observed` is every managed container on the host's engine and
/// `unmanaged_names` the names of other containers there (to detect name clashes).
pub fn plan_host(
    fleet: &str,
    host: &HostSpec,
    desired: &[Workload],
    observed: &[Observed],
    unmanaged_names: &[String],
    prune: bool,
) -> Result<Vec<Action>, PlanError> {
    let ours: Vec<&Observed> = observed.iter().filter(|o| o.host() == host.name).collect();
    if let Some(foreign) = ours.iter().find(|o| o.fleet() != fleet) {
        return Err(PlanError::ForeignFleet {
            host: host.name.clone(),
            container: foreign.name.clone(),
            other: foreign.fleet().to_string(),
            ours: fleet.to_string(),
        });
    }
    let mut by_tenant: BTreeMap<&str, Vec<&Observed>> = BTreeMap::new();
    let mut actions = Vec::new();
    for o in &ours {
        // Labels are anybody's who can start a container on the engine: an id that is
        // not a tenant id (empty, `../x`) names no data directory of ours, and nothing
        // is done to, or in the name of, that container.
        if let Err(hint) = crate::spec::check_tenant_id(o.tenant()) {
            actions.push(Action::Blocked {
                tenant: o.tenant().to_string(),
                reason: format!(
                    "container {} has the tenant label {:?}, which is not a tenant id ({hint}); not touched, its data neither: remove it by hand",
                    o.name,
                    o.tenant()
                ),
            });
            continue;
        }
        by_tenant.entry(o.tenant()).or_default().push(o);
    }

    for d in desired {
        let found = by_tenant.remove(d.tenant.as_str()).unwrap_or_default();
        let (current, leftovers): (Vec<&Observed>, Vec<&Observed>) =
            found.into_iter().partition(|o| o.name == d.name);
        let tenant = d.tenant.clone();
        let action = tenant_action(d, current.first().copied(), &leftovers, unmanaged_names);
        let previous_id = match &action {
            Action::Update { previous, .. } => Some(previous.id.clone()),
            _ => None,
        };
        // Leftovers go first: one still running would hold the tenant's port.
        for l in leftovers {
            if Some(&l.id) != previous_id.as_ref() {
                actions.push(Action::RemoveLeftover {
                    tenant: tenant.clone(),
                    container: l.clone(),
                });
            }
        }
        actions.push(action);
    }
    for (tenant, containers) in by_tenant {
        for c in containers {
            let (tenant, container) = (tenant.to_string(), c.clone());
            actions.push(if prune {
                Action::Remove { tenant, container }
            } else {
                Action::Orphan { tenant, container }
            });
        }
    }
    Ok(actions)
}

/// What to do for one desired tenant given its container (`current`, named
/// `mai-<id>`), the other containers of the tenant (`leftovers`) and the names of
/// containers that are not the fleet's.
fn tenant_action(
    d: &Workload,
    current: Option<&Observed>,
    leftovers: &[&Observed],
    unmanaged_names: &[String],
) -> Action {
    let tenant = d.tenant.clone();
    match current {
        None if unmanaged_names.contains(&d.name) => Action::Blocked {
            tenant: tenant.clone(),
            reason: format!(
                "a container named {} exists that mai-fleet does not manage; rename or remove it",
                d.name
            ),
        },
        // Interrupted after the old container was parked: take the one that already
        // matches (it is restored), else the newest parked one, as the previous.
        None => match leftovers
            .iter()
            .find(|o| o.spec_hash() == d.hash_label())
            .or(leftovers.first())
        {
            Some(prev) => Action::Update {
                desired: Box::new(d.clone()),
                tenant: tenant.clone(),
                previous: (*prev).clone(),
                changes: update_changes(d, prev),
                drift: false,
            },
            None => Action::Create {
                desired: Box::new(d.clone()),
                tenant: tenant.clone(),
            },
        },
        Some(cur) if cur.spec_hash() != d.hash_label() => Action::Update {
            desired: Box::new(d.clone()),
            tenant: tenant.clone(),
            previous: (*cur).clone(),
            changes: update_changes(d, cur),
            drift: false,
        },
        // The label says this spec; the container says otherwise.
        Some(cur)
            if cur
                .runtime
                .as_ref()
                .is_some_and(|r| !changes(d, r).is_empty()) =>
        {
            Action::Update {
                desired: Box::new(d.clone()),
                tenant: tenant.clone(),
                previous: (*cur).clone(),
                changes: update_changes(d, cur),
                drift: true,
            }
        }
        Some(cur) if cur.state != RunState::Running => Action::Start {
            tenant: tenant.clone(),
            current: (*cur).clone(),
        },
        Some(cur) => Action::Unchanged {
            tenant: tenant.clone(),
            current: (*cur).clone(),
        },
    }
}

/// What an update of `previous` to `d` changes: the fields that differ, or the
/// hashes when no field the engine reports does.
fn update_changes(d: &Workload, previous: &Observed) -> Vec<Change> {
    let found = previous
        .runtime
        .as_ref()
        .map(|r| changes(d, r))
        .unwrap_or_default();
    if found.is_empty() {
        vec![drift::hash_change(previous.spec_hash(), d.hash_label())]
    } else {
        found
    }
}

/// A tenant of the spec and the container it wants: kept together, never matched up
/// by position.
#[derive(Clone)]
pub struct DesiredTenant {
    pub spec: TenantSpec,
    pub container: Workload,
}

/// Why a tenant of the spec has no desired container.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    #[error("tenant {tenant}: host `{host}` is not in the spec")]
    UnknownHost { tenant: String, host: String },
    #[error("tenant {tenant}: its OpenRouter key is not provisioned; `controller apply` with the fleet database creates it")]
    NoKey { tenant: String },
}

/// Every tenant with its desired container; a tenant whose host the spec lacks is an
/// error (validation makes it impossible; a dropped tenant must never pass silently).
pub fn desired(spec: &FleetSpec) -> Result<Vec<DesiredTenant>, DesiredError> {
    spec.tenants
        .iter()
        .map(|t| {
            let host = spec
                .hosts
                .iter()
                .find(|h| h.name == t.host)
                .ok_or_else(|| DesiredError::UnknownHost {
                    tenant: t.id.clone(),
                    host: t.host.clone(),
                })?;
            if t.api_key.is_none() {
                return Err(DesiredError::NoKey {
                    tenant: t.id.clone(),
                });
            }
            Ok(DesiredTenant {
                spec: t.clone(),
                container: Workload::new(&spec.fleet, host, t),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ApiKey;

    fn host() -> HostSpec {
        HostSpec {
            name: "hel1-a".into(),
            kubernetes: None,
            docker: "unix:///var/run/docker.sock".into(),
            data_root: "/srv/mai".into(),
            tls: None,
            publish_address: "127.0.0.1".into(),
            ssh: Default::default(),
            agent: crate::spec::HostAgent::External,
        }
    }

    fn tenant(id: &str, image: &str) -> TenantSpec {
        TenantSpec {
            id: id.into(),
            name: format!("Org {id}"),
            org_id: format!("{id}_org"),
            host: "hel1-a".into(),
            image: image.into(),
            timezone: "Europe/Warsaw".into(),
            markup_rate: rust_decimal::Decimal::new(13, 1),
            monthly_limit_usd: None,
            email: None,
            nip: None,
            address: None,
            port: 3001,
            env: BTreeMap::new(),
            memory_bytes: Some(1 << 30),
            cpus: None,
            pids_limit: None,
            secret_env: BTreeMap::new(),
            api_key: Some(ApiKey::new(format!("sk-or-v1-{}", "ab".repeat(32)))),
            key_source: crate::spec::KeySource::Given,
            on_limit: crate::spec::OnLimit::Alert,
        }
    }

    fn observed(d: &Workload, name: &str, state: &str) -> Observed {
        Observed {
            id: format!("{name}-id-0123456789"),
            name: name.into(),
            image: d.image.clone(),
            state: RunState::parse(state),
            labels: d.labels.clone().into_iter().collect(),
            runtime: None,
        }
    }

    fn verbs(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| format!("{}:{}", a.verb(), a.tenant()))
            .collect()
    }

    #[test]
    fn same_spec_is_unchanged_and_a_changed_one_updates() {
        let h = host();
        let a = Workload::new("f", &h, &tenant("aa", "mai/app:1"));
        let b = Workload::new("f", &h, &tenant("bb", "mai/app:1"));
        let b2 = Workload::new("f", &h, &tenant("bb", "mai/app:2"));
        let obs = vec![
            observed(&a, "mai-aa", "running"),
            observed(&b, "mai-bb", "running"),
        ];
        let p = plan_host("f", &h, &[a.clone(), b.clone()], &obs, &[], false).unwrap();
        assert_eq!(verbs(&p), ["unchanged:aa", "unchanged:bb"]);
        let p = plan_host("f", &h, &[a, b2], &obs, &[], false).unwrap();
        assert_eq!(verbs(&p), ["unchanged:aa", "update:bb"]);
    }

    #[test]
    fn hash_is_stable_and_covers_the_key() {
        let h = host();
        let t = tenant("aa", "mai/app:1");
        let one = Workload::new("f", &h, &t).spec_hash();
        assert_eq!(one, Workload::new("f", &h, &t).spec_hash());
        assert!(one.starts_with("v2-") && one.len() == 35, "{one}");
        // The hash containers made by earlier releases carry: a change here would
        // recreate every tenant on upgrade.
        assert_eq!(one, "v2-f12e8817e8d4adfc90661ee756379280");
        let mut rotated = t.clone();
        rotated.api_key = Some(ApiKey::new(format!("sk-or-v1-{}", "cd".repeat(32))));
        assert_ne!(one, Workload::new("f", &h, &rotated).spec_hash());
        // Billing-only fields do not touch the container.
        let mut billing = t;
        billing.monthly_limit_usd = Some(rust_decimal::Decimal::from(100));
        assert_eq!(one, Workload::new("f", &h, &billing).spec_hash());
    }

    #[test]
    fn dropped_tenant_is_orphan_without_prune_and_removed_with_it() {
        let h = host();
        let a = Workload::new("f", &h, &tenant("aa", "mai/app:1"));
        let obs = vec![observed(&a, "mai-aa", "running")];
        assert_eq!(
            verbs(&plan_host("f", &h, &[], &obs, &[], false).unwrap()),
            ["orphan:aa"]
        );
        assert_eq!(
            verbs(&plan_host("f", &h, &[], &obs, &[], true).unwrap()),
            ["remove:aa"]
        );
    }

    #[test]
    fn stopped_container_is_started_and_leftovers_are_cleaned() {
        let h = host();
        let a = Workload::new("f", &h, &tenant("aa", "mai/app:1"));
        let old = Workload::new("f", &h, &tenant("aa", "mai/app:0"));
        let obs = vec![
            observed(&a, "mai-aa", "exited"),
            observed(&old, "mai-aa.prev", "exited"),
        ];
        let p = plan_host("f", &h, std::slice::from_ref(&a), &obs, &[], false).unwrap();
        assert_eq!(verbs(&p), ["remove-leftover:aa", "start:aa"]);
    }

    #[test]
    fn interrupted_update_takes_the_renamed_container_as_previous() {
        let h = host();
        let new = Workload::new("f", &h, &tenant("aa", "mai/app:2"));
        let old = Workload::new("f", &h, &tenant("aa", "mai/app:1"));
        let obs = vec![observed(&old, "mai-aa.prev", "exited")];
        let p = plan_host("f", &h, &[new], &obs, &[], false).unwrap();
        assert_eq!(verbs(&p), ["update:aa"]);
        match &p[0] {
            Action::Update { previous, .. } => assert_eq!(previous.name, "mai-aa.prev"),
            _ => unreachable!(),
        }
    }

    #[test]
    fn other_fleet_on_the_host_is_refused_and_name_clash_blocks() {
        let h = host();
        let a = Workload::new("other", &h, &tenant("aa", "mai/app:1"));
        let obs = vec![observed(&a, "mai-aa", "running")];
        let err = plan_host("f", &h, &[], &obs, &[], true).unwrap_err();
        assert!(matches!(err, PlanError::ForeignFleet { .. }));
        let mine = Workload::new("f", &h, &tenant("aa", "mai/app:1"));
        let p = plan_host("f", &h, &[mine], &[], &["mai-aa".to_string()], false).unwrap();
        assert_eq!(verbs(&p), ["blocked:aa"]);
    }

    #[test]
    fn a_container_whose_tenant_label_is_not_a_tenant_id_is_refused_even_with_prune() {
        let h = host();
        let a = Workload::new("f", &h, &tenant("aa", "mai/app:1"));
        let mut obs = vec![observed(&a, "mai-aa", "running")];
        for (name, label) in [("empty", ""), ("dots", "../x"), ("slash", "a/b")] {
            let mut o = observed(&a, name, "running");
            o.labels.insert(LABEL_TENANT.into(), label.into());
            obs.push(o);
        }
        let p = plan_host("f", &h, std::slice::from_ref(&a), &obs, &[], true).unwrap();
        assert_eq!(
            verbs(&p),
            ["blocked:", "blocked:../x", "blocked:a/b", "unchanged:aa"]
        );
    }

    #[test]
    fn containers_of_another_host_entry_on_the_same_engine_are_not_touched() {
        let h = host();
        let other_host = HostSpec {
            name: "hel1-b".into(),
            ..host()
        };
        let b = Workload::new("f", &other_host, &tenant("bb", "mai/app:1"));
        let obs = vec![observed(&b, "mai-bb", "running")];
        assert!(plan_host("f", &h, &[], &obs, &[], true).unwrap().is_empty());
    }

    fn update_of(actions: &[Action]) -> (&[Change], bool) {
        match actions.last() {
            Some(Action::Update { changes, drift, .. }) => (changes, *drift),
            other => panic!("not an update: {other:?}"),
        }
    }

    /// Issue 13: a container replaced by hand with the old labels copied (spec hash
    /// included) but without OPENROUTER_EXTERNAL_USER was planned as unchanged.
    #[test]
    fn a_container_that_differs_from_its_spec_hash_is_an_update_naming_what_differs() {
        let h = host();
        let d = Workload::new("f", &h, &tenant("aa", "mai/app:1"));
        let mut o = observed(&d, "mai-aa", "running");
        o.runtime = Some(Runtime::of(&d));
        let p = plan_host(
            "f",
            &h,
            std::slice::from_ref(&d),
            std::slice::from_ref(&o),
            &[],
            false,
        )
        .unwrap();
        assert_eq!(verbs(&p), ["unchanged:aa"], "what the spec says: no change");

        let mut by_hand = Runtime::of(&d);
        by_hand.env.remove("OPENROUTER_EXTERNAL_USER");
        by_hand.env.insert("DEBUG_HACK".into(), "1".into());
        by_hand.resources.memory_bytes = 0;
        by_hand.confinement.cap_drop.clear();
        by_hand.confinement.other_security = vec!["seccomp=unconfined".into()];
        o.runtime = Some(by_hand);
        let p = plan_host(
            "f",
            &h,
            std::slice::from_ref(&d),
            std::slice::from_ref(&o),
            &[],
            false,
        )
        .unwrap();
        let (changes, drift) = update_of(&p);
        assert!(drift);
        let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "env DEBUG_HACK removed",
                "env OPENROUTER_EXTERNAL_USER added (aa_org)",
                "memory 0m -> 1024m",
                "cap_drop (none) -> ALL",
                "security_opt no-new-privileges,seccomp=unconfined -> no-new-privileges",
            ]
        );
    }

    #[test]
    fn a_changed_spec_lists_its_changes_and_never_a_secret_value() {
        let h = host();
        let mut t = tenant("aa", "mai/app:1");
        let old = Workload::new("f", &h, &t);
        t.image = "mai/app:2".into();
        t.env.insert("LOG_LEVEL".into(), "DEBUG".into());
        t.env
            .insert("SMTP_PASSWORD".into(), "hunter2-secret".into());
        t.secret_env
            .insert("SMTP_PASSWORD".into(), "${env:SMTP_PASSWORD}".into());
        t.api_key = Some(ApiKey::new(format!("sk-or-v1-{}", "cd".repeat(32))));
        t.port = 3002;
        let new = Workload::new("f", &h, &t);
        let mut o = observed(&old, "mai-aa", "running");
        o.runtime = Some(Runtime::of(&old));
        let p = plan_host("f", &h, std::slice::from_ref(&new), &[o], &[], false).unwrap();
        let (changes, drift) = update_of(&p);
        assert!(!drift, "the spec changed; the container did not drift");
        let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "image mai/app:1 -> mai/app:2",
                "env LOG_LEVEL added (DEBUG)",
                "env OPENROUTER_API_KEY changed (secret)",
                "env SMTP_PASSWORD added",
                "port 127.0.0.1:3001 -> 127.0.0.1:3002",
            ]
        );
        let json = serde_json::to_string(changes).unwrap();
        assert!(
            !json.contains("hunter2") && !json.contains("cdcd") && !json.contains("abab"),
            "{json}"
        );
        assert!(
            json.contains(r#""field":"env","name":"SMTP_PASSWORD","change":"added","secret":true"#),
            "{json}"
        );
    }

    #[test]
    fn without_an_inspection_an_update_names_the_hashes() {
        let h = host();
        let old = Workload::new("f", &h, &tenant("aa", "mai/app:1"));
        let new = Workload::new("f", &h, &tenant("aa", "mai/app:2"));
        let o = observed(&old, "mai-aa", "running");
        let p = plan_host("f", &h, &[new], &[o], &[], false).unwrap();
        let (changes, _) = update_of(&p);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].field, Field::SpecHash);
    }
}
