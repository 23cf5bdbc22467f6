//! A tenant's workload as the plan sees it, whichever backend runs it: what the spec
//! wants ([`Workload`]) and what a backend found running ([`Runtime`]), in the same
//! terms. A backend renders a workload its own way (Docker: a container's create body;
//! Kubernetes: a pod template) and reports what runs in these terms, so drift is
//! computed once, here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::spec::{HostSpec, TenantSpec};

use super::{
    network_name, DATA_MOUNT, LABEL_FLEET, LABEL_HOST, LABEL_MANAGED, LABEL_SPEC_HASH, LABEL_TENANT,
};

/// Version of the canonical form hashed into `mai-fleet.spec-hash`. A controller that
/// adds fields keeps hashing old containers in the version their label names, so an
/// upgrade does not recreate the fleet (the Compose failure DESIGN.md warns of).
///
/// v2 (issue 9) added the confinement every tenant gets (capabilities, privileges,
/// processes, network, published address): a v1 container runs unconfined, so the
/// first apply after the upgrade replaces each tenant once, verified as any update.
pub const SPEC_HASH_VERSION: &str = "v2";

/// Limits a tenant gets when neither its spec nor the defaults name one: a tenant
/// without limits can starve every other tenant of its host.
pub const DEFAULT_MEMORY_BYTES: i64 = 2 << 30;
pub const DEFAULT_NANO_CPUS: i64 = 1_000_000_000;
pub const DEFAULT_PIDS_LIMIT: i64 = 512;

/// What a tenant may use of its host. Requests equal limits on every backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub memory_bytes: i64,
    /// CPUs in billionths (Docker's `NanoCpus`; Kubernetes' millicores × 10⁶).
    pub nano_cpus: i64,
    pub pids_limit: i64,
}

/// Whether the backend brings the workload back when it exits.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Restart {
    /// Always, until an operator stops it: what every tenant gets.
    #[default]
    UnlessStopped,
    Always,
    OnFailure,
    Never,
    /// A policy this controller does not know, in the backend's word.
    Other(String),
}

impl Restart {
    pub fn parse(word: &str) -> Self {
        match word {
            "unless-stopped" => Restart::UnlessStopped,
            "always" => Restart::Always,
            "on-failure" => Restart::OnFailure,
            "no" | "" => Restart::Never,
            other => Restart::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Restart::UnlessStopped => "unless-stopped",
            Restart::Always => "always",
            Restart::OnFailure => "on-failure",
            Restart::Never => "no",
            Restart::Other(word) => word,
        }
    }
}

/// The confinement every tenant gets, as policy: the Docker backend renders it into a
/// container's host config, a Kubernetes backend into the pod's security context.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Confinement {
    /// Capabilities dropped: every one (`ALL`). The app listens above 1024 and
    /// writes only its data directory.
    pub cap_drop: Vec<String>,
    /// No process gains a privilege it was not started with (setuid, file
    /// capabilities).
    pub no_new_privileges: bool,
    /// Other security options the backend reports (a seccomp or AppArmor profile
    /// switched off by hand): a tenant wants none.
    pub other_security: Vec<String>,
    pub restart: Restart,
}

impl Confinement {
    /// What every tenant gets.
    pub fn tenant() -> Self {
        Self {
            cap_drop: vec!["ALL".to_string()],
            no_new_privileges: true,
            other_security: Vec::new(),
            restart: Restart::UnlessStopped,
        }
    }

    /// The security options as words, Docker's `security_opt` form: how drift names
    /// them whichever backend reported them.
    pub fn security_words(&self) -> Vec<String> {
        let mut words: Vec<String> = self
            .no_new_privileges
            .then(|| "no-new-privileges".to_string())
            .into_iter()
            .collect();
        words.extend(self.other_security.iter().cloned());
        words
    }
}

/// Everything a tenant's workload is made of, derived from the spec. A backend makes
/// the workload from this and nothing else, so the hash covers all of it.
#[derive(Clone)]
pub struct Workload {
    pub tenant: String,
    /// The workload's name on its host (`mai-<id>`).
    pub name: String,
    pub image: String,
    /// Holds the API key: never print it (`Debug` shows the names only).
    pub env: BTreeMap<String, String>,
    /// Names of the variables whose values are secrets (the key, `${env:}`/`${file:}`
    /// values): a plan shows that they change, never their values.
    pub secret_env: BTreeSet<String>,
    /// The tenant's port on its host, and the address it is published on.
    pub port: u16,
    pub publish_address: String,
    /// The tenant's data directory on its host, mounted at [`DATA_MOUNT`] unless
    /// `claim` is set.
    pub data_dir: String,
    /// On a Kubernetes host with a storage class: the claim that holds the data
    /// instead of `data_dir`.
    pub claim: Option<DataClaim>,
    pub resources: Resources,
    pub confinement: Confinement,
    /// The fleet's isolated network: no tenant reaches another's port (Docker: one
    /// bridge network with inter-container traffic off).
    pub network: String,
    pub labels: BTreeMap<String, String>,
}

/// A tenant's data directory as a PersistentVolumeClaim of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataClaim {
    /// `mai-<id>-data`
    pub name: String,
    pub class: String,
    pub size: String,
}

/// Shows env names only: values include the API key.
impl fmt::Debug for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workload")
            .field("name", &self.name)
            .field("image", &self.image)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("port", &self.port)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// The form hashed, version 2: the field names and order containers made since v2
/// carry in their label. Backend words (Docker's) are part of the format, not of the
/// workload.
#[derive(Serialize)]
struct HashedV2<'a> {
    image: &'a str,
    env: &'a BTreeMap<String, String>,
    host_port: u16,
    publish_address: &'a str,
    data_dir: &'a str,
    memory_bytes: i64,
    nano_cpus: i64,
    pids_limit: i64,
    cap_drop: &'a [String],
    security_opt: Vec<String>,
    network: &'a str,
    restart_policy: &'a str,
}

impl Workload {
    pub fn new(fleet: &str, host: &HostSpec, t: &TenantSpec) -> Self {
        let nano_cpus = t
            .cpus
            .and_then(|c| {
                (c * rust_decimal::Decimal::from(1_000_000_000u64))
                    .trunc()
                    .try_into()
                    .ok()
            })
            .unwrap_or(DEFAULT_NANO_CPUS);
        let mut w = Self {
            tenant: t.id.clone(),
            name: t.container_name(),
            image: t.image.clone(),
            env: t.container_env(),
            secret_env: t
                .secret_env
                .keys()
                .cloned()
                .chain(["OPENROUTER_API_KEY".to_string()])
                .collect(),
            port: t.port,
            publish_address: host.publish_address.clone(),
            data_dir: format!("{}/{}/data", host.data_root, t.id),
            claim: data_claim(host, &t.id),
            resources: Resources {
                memory_bytes: t.memory_bytes.unwrap_or(DEFAULT_MEMORY_BYTES),
                nano_cpus,
                // Kubernetes limits processes per node (the kubelet's podPidsLimit),
                // not per pod: a Kubernetes tenant has no limit of its own.
                pids_limit: if host.kubernetes.is_some() {
                    0
                } else {
                    t.pids_limit.unwrap_or(DEFAULT_PIDS_LIMIT)
                },
            },
            confinement: Confinement::tenant(),
            network: network_name(fleet),
            labels: BTreeMap::new(),
        };
        let hash = w.spec_hash();
        w.labels = BTreeMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_TENANT.to_string(), t.id.clone()),
            (LABEL_HOST.to_string(), host.name.clone()),
            (LABEL_FLEET.to_string(), fleet.to_string()),
            (LABEL_SPEC_HASH.to_string(), hash),
        ]);
        w
    }

    /// `v2-` + 32 hex digits of SHA-256 over the canonical JSON (fields in a fixed
    /// order, env sorted). The key is inside, so a rotation recreates the workload.
    pub fn spec_hash(&self) -> String {
        let hashed = HashedV2 {
            image: &self.image,
            env: &self.env,
            host_port: self.port,
            publish_address: &self.publish_address,
            data_dir: &self.mount_source(),
            memory_bytes: self.resources.memory_bytes,
            nano_cpus: self.resources.nano_cpus,
            pids_limit: self.resources.pids_limit,
            cap_drop: &self.confinement.cap_drop,
            security_opt: self.confinement.security_words(),
            network: &self.network,
            restart_policy: self.confinement.restart.as_str(),
        };
        let canonical = serde_json::to_vec(&hashed).unwrap_or_default();
        let digest = Sha256::digest(&canonical);
        format!("{SPEC_HASH_VERSION}-{}", crate::crypto::hex(&digest[..16]))
    }

    pub fn hash_label(&self) -> &str {
        self.labels.get(LABEL_SPEC_HASH).map_or("", String::as_str)
    }

    /// The data directory's mount, `source:target`.
    pub fn mount(&self) -> String {
        format!("{}:{DATA_MOUNT}", self.mount_source())
    }

    /// Where the data comes from: the host's directory, or `claim <name>`.
    pub fn mount_source(&self) -> String {
        match &self.claim {
            Some(c) => format!("claim {}", c.name),
            None => self.data_dir.clone(),
        }
    }

    /// `address:port` the tenant is published on.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.publish_address, self.port)
    }
}

/// The claim that holds tenant `tenant`'s data on a host with a storage class.
pub fn claim_name(tenant: &str) -> String {
    format!("{}-data", mai_fleet_core::contract::container_name(tenant))
}

/// Tenant `tenant`'s claim on `host`: `None` unless the host keeps tenants' data on
/// claims (`storage:`).
pub fn data_claim(host: &HostSpec, tenant: &str) -> Option<DataClaim> {
    let s = host.kubernetes.as_ref()?.storage.as_ref()?;
    Some(DataClaim {
        name: claim_name(tenant),
        class: s.class.clone(),
        size: s.size.clone(),
    })
}

/// What a workload runs, as its backend reports it, in the plan's terms. `env` holds
/// secrets: it is never serialized and `Debug` shows names only.
#[derive(Clone, Default, PartialEq)]
pub struct Runtime {
    pub image: String,
    /// The environment less what the image sets by itself.
    pub env: BTreeMap<String, String>,
    /// Every mount, `source:target`.
    pub mounts: Vec<String>,
    pub resources: Resources,
    /// `address:port` of every binding of the app port.
    pub ports: Vec<String>,
    pub confinement: Confinement,
    pub network: String,
    /// The `mai-fleet.*` labels.
    pub labels: BTreeMap<String, String>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("image", &self.image)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
impl Runtime {
    /// What a backend reports of a workload made exactly from `w`.
    pub fn of(w: &Workload) -> Self {
        Self {
            image: w.image.clone(),
            env: w.env.clone(),
            mounts: vec![w.mount()],
            resources: w.resources,
            ports: vec![w.endpoint()],
            confinement: w.confinement.clone(),
            network: w.network.clone(),
            labels: w.labels.clone(),
        }
    }
}
