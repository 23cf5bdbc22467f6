//! `tenants.yaml`: the desired state of a fleet (DESIGN.md, "tenants.yaml, version 1").
//!
//! [`load`] reads and validates a whole file and returns either the effective spec
//! (defaults merged, secrets resolved) or every problem at once, each located by
//! file, line and column.

mod checks;
mod endpoint;
mod load;
mod secret;

use mai_fleet_core::Invalid;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use serde::Serialize;

pub use checks::{nip as check_nip, nip_digits};
pub use endpoint::{DockerEndpoint, SshTarget, DEFAULT_REMOTE_SOCKET};
pub use secret::ApiKey;

/// Where the fleet's own secrets come from (the spec checks that a provisioning
/// fleet has them; `keys` and `openrouter` read them).
pub const MASTER_KEY_FILE_ENV: &str = "MAI_FLEET_MASTER_KEY_FILE";
pub const MANAGEMENT_KEY_ENV: &str = "MAI_FLEET_OPENROUTER_MANAGEMENT_KEY";
pub const MANAGEMENT_KEY_FILE_ENV: &str = "MAI_FLEET_OPENROUTER_MANAGEMENT_KEY_FILE";

pub use mai_fleet_core::contract::REQUIRED_ENV;

/// The validated fleet, with defaults merged into every tenant.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub file: PathBuf,
    /// SHA-256 of the bytes this spec was parsed from (recorded with each apply).
    pub source_sha256: String,
    pub fleet: String,
    pub hosts: Vec<HostSpec>,
    pub tenants: Vec<TenantSpec>,
    /// Agents `apply` deploys (the `agents:` section); `None`: agents are run
    /// another way and `apply` leaves them alone.
    pub agents: Option<AgentsSpec>,
    /// What one backup of a tenant may take (the `backups:` section).
    pub backups: BackupLimits,
    /// The seller and invoice settings (`invoicing:`); `None`: no invoices.
    pub invoicing: Option<InvoicingSpec>,
}

/// The `invoicing:` section: who sells, how invoices are numbered and priced, and
/// where they are sent.
#[derive(Debug, Clone, Serialize)]
pub struct InvoicingSpec {
    pub seller: Party,
    /// `FV/{yyyy}/{mm}/{seq}`: `{seq}` runs per billed month.
    pub number: String,
    pub currency: InvoiceCurrency,
    /// Percent: 23, 8 or 5.
    pub vat_rate: u32,
    /// The line's text; `{month}` becomes the billed month ("listopad 2026").
    pub line: String,
    pub ksef: Option<KsefSpec>,
}

/// A party of an invoice: NIP (10 digits, checksum verified), name, one-line address.
#[derive(Debug, Clone, Serialize)]
pub struct Party {
    pub nip: String,
    pub name: String,
    pub address: String,
}

mai_fleet_core::text_enum! {
    /// `invoicing.currency`.
    pub enum InvoiceCurrency, "currency; write PLN or USD" {
        Pln = "PLN",
        Usd = "USD",
    }
}

mai_fleet_core::text_enum! {
    /// `invoicing.ksef.environment`: which KSeF the invoices go to.
    pub enum KsefEnvironment, "environment; write test, demo or production" {
        Test = "test",
        Demo = "demo",
        Production = "production",
    }
}

/// `invoicing.ksef`: the environment and the KSeF token (a secret: never shown).
#[derive(Debug, Clone, Serialize)]
pub struct KsefSpec {
    pub environment: KsefEnvironment,
    /// Serialized masked, as every secret of the spec.
    pub token: ApiKey,
}

/// The `backups:` section. A tenant fills its own directory, so a backup of it is
/// bounded: past these it fails with the figures, and nothing partial is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BackupLimits {
    /// Bytes of file content (the store and uploads).
    pub max_bytes: u64,
    /// Files and directories.
    pub max_files: u64,
    /// Wall time of one tenant's backup or restore check, the store's inspection
    /// included.
    pub time: std::time::Duration,
}

impl Default for BackupLimits {
    fn default() -> Self {
        Self {
            max_bytes: 20 << 30,
            max_files: 200_000,
            time: std::time::Duration::from_secs(600),
        }
    }
}

/// The `agents:` section: where every host's agent reaches the fleet database
/// (without credentials: the controller makes each host's own), overridable per host.
#[derive(Debug, Clone, Serialize)]
pub struct AgentsSpec {
    /// The agent image; `mai-fleet/agent:<controller version>` by default.
    pub image: String,
    pub database_url: String,
    /// The database server's CA (PEM, read from `ca_file`), copied into each agent
    /// container.
    #[serde(skip)]
    pub ca_pem: Option<String>,
    /// How often each agent mirrors its host's stores.
    pub interval: std::time::Duration,
}

/// A host's agent as `apply` keeps it.
#[derive(Debug, Clone, Serialize)]
pub enum HostAgent {
    /// Deployed by `apply`: the `agents:` section with this host's overrides.
    Deployed(AgentsSpec),
    /// `agent: false`, or no `agents:` section: run another way (systemd).
    External,
}

/// The agent image this controller deploys unless `agents.image` says otherwise:
/// built from the same source (`manifests/build-images.sh`).
pub fn default_agent_image() -> String {
    format!("mai-fleet/agent:{}", env!("CARGO_PKG_VERSION"))
}

/// How an `ssh://` engine is reached: a key file (else ssh-agent and ssh's
/// defaults) and the known_hosts file that vouches for the server (else ssh's own).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SshOptions {
    pub key: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostSpec {
    pub name: String,
    /// `unix:///var/run/docker.sock`, `tcp://host:2376` or `ssh://user@host`; empty
    /// for a Kubernetes node.
    pub docker: String,
    /// Set for a Kubernetes node (then `docker`, `tls` and `ssh` are not).
    pub kubernetes: Option<KubernetesHost>,
    /// Tenant data lives in `<data_root>/<tenant id>/data` on that host.
    pub data_root: String,
    pub tls: Option<TlsFiles>,
    /// The host address tenant ports are published on (default 127.0.0.1).
    pub publish_address: String,
    pub ssh: SshOptions,
    pub agent: HostAgent,
}

/// `hosts[i].kubernetes`: one node of a cluster, the host's tenants and agent pinned
/// to it, their objects in `namespace`.
#[derive(Debug, Clone, Serialize)]
pub struct KubernetesHost {
    /// `None`: `$KUBECONFIG`, then `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// `None`: the kubeconfig's current context.
    pub context: Option<String>,
    pub node: String,
    /// `mai-<fleet>` unless the spec names one.
    pub namespace: String,
    /// Where the spec says them, for errors about them.
    #[serde(skip)]
    pub at: Box<KubernetesPlaces>,
    /// `https://host:port` where the node's agent (on the node's network) reaches the
    /// API server, for clusters whose pods cannot reach the `kubernetes` Service;
    /// `None`: that Service, as every pod finds it.
    pub agent_api_server: Option<String>,
    /// The tenants' data on a claim of this storage class each, instead of
    /// `<data_root>/<tenant>/data` on the node (`None`).
    pub storage: Option<ClaimStorage>,
}

/// `hosts[i].kubernetes.storage`: each tenant's data directory is a
/// PersistentVolumeClaim of `class`, `size` big (a Kubernetes quantity, `10Gi`
/// unless the spec says).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimStorage {
    pub class: String,
    pub size: String,
}

/// Where a Kubernetes host's node and namespace stand in the spec
/// (`tenants.yaml:14:13`); a defaulted namespace stands at its `kubernetes:` entry.
#[derive(Debug, Clone, Default)]
pub struct KubernetesPlaces {
    pub node: String,
    pub namespace: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantSpec {
    pub id: String,
    /// -> `ORGANIZATION_NAME`
    pub name: String,
    /// -> `OPENROUTER_EXTERNAL_USER`, the store's `client_org_id`
    pub org_id: String,
    pub host: String,
    pub image: String,
    pub timezone: String,
    pub markup_rate: Decimal,
    pub monthly_limit_usd: Option<Decimal>,
    pub email: Option<String>,
    pub nip: Option<String>,
    /// The buyer's address on invoices (`billing.address`), one line.
    pub address: Option<String>,
    /// Host port published to the container's 8080.
    pub port: u16,
    /// Extra variables (defaults' `env` merged under the tenant's own).
    #[serde(serialize_with = "secret::serialize_env_names")]
    pub env: BTreeMap<String, String>,
    /// Which of `env` are secrets, with the `${env:}`/`${file:}` they came from: shown
    /// and stored as that reference, never as the value.
    pub secret_env: BTreeMap<String, String>,
    pub memory_bytes: Option<i64>,
    pub cpus: Option<Decimal>,
    /// Most processes the container may run (fleet default when unset).
    pub pids_limit: Option<i64>,
    /// The key the container gets: from the file (`api_key`), or, for a provisioned
    /// tenant, from the fleet's keyring (`keys::Keyring::prepare`) — `None` until then,
    /// and a tenant without a key is never launched.
    pub api_key: Option<ApiKey>,
    pub key_source: KeySource,
    /// At the client's monthly limit on a key the fleet did not create.
    pub on_limit: OnLimit,
}

/// Where a tenant's OpenRouter key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// `openrouter.api_key`: `${env:}`/`${file:}`, made by hand.
    Given,
    /// `openrouter.provision: true`: created, limited, rotated and removed by the fleet.
    Provisioned {
        #[serde(skip)]
        rotate_every: Option<std::time::Duration>,
    },
}

impl KeySource {
    pub fn is_provisioned(&self) -> bool {
        matches!(self, KeySource::Provisioned { .. })
    }
}

mai_fleet_core::text_enum! {
    /// `billing.on_limit`.
    pub enum OnLimit, "on_limit; write alert or disable" {
        Alert = "alert",
        Disable = "disable",
    }
}

impl TenantSpec {
    pub fn container_name(&self) -> String {
        mai_fleet_core::contract::container_name(&self.id)
    }

    /// `env` as it may be stored and shown: secrets as their reference.
    pub fn env_for_record(&self) -> BTreeMap<String, String> {
        self.env
            .iter()
            .map(|(k, v)| {
                let shown = self.secret_env.get(k).unwrap_or(v);
                (k.clone(), shown.clone())
            })
            .collect()
    }

    /// The whole environment the container gets: the required variables, the ones
    /// derived from the spec, then the extras.
    pub fn container_env(&self) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        // A tenant without its key is refused before any container is made
        // (`apply::desired`); the variable is then simply absent here.
        if let Some(key) = &self.api_key {
            env.insert("OPENROUTER_API_KEY".into(), key.expose().to_string());
        }
        env.insert("OPENROUTER_EXTERNAL_USER".into(), self.org_id.clone());
        env.insert("ORGANIZATION_NAME".into(), self.name.clone());
        env.insert("TZ".into(), self.timezone.clone());
        env.insert("DEFAULT_MARKUP_RATE".into(), self.markup_rate.to_string());
        env
    }
}

/// Where in the file a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// One problem in a spec, located, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if let Some(t) = &self.tenant {
            write!(f, "tenant {t}: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} has {} error(s)", file, diagnostics.len())]
    Invalid {
        file: String,
        diagnostics: Vec<Diagnostic>,
    },
}

/// Reads, validates and resolves a fleet spec; nothing outside the file (but the
/// secrets it names) is touched.
pub fn load(path: &Path) -> Result<FleetSpec, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    load_str(path, &text, &secret::ProcessEnv)
}

/// [`load`] on text already read, with secrets looked up through `env`.
pub fn load_str(
    path: &Path,
    text: &str,
    env: &dyn secret::EnvSource,
) -> Result<FleetSpec, SpecError> {
    // Windows editors start a UTF-8 file with a byte-order mark; it is no key. It
    // stands before line 1, column 1, so no position moves.
    let body = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut spec = load::Loader::new(path, env).load(body)?;
    spec.source_sha256 = crate::crypto::sha256_hex(text.as_bytes());
    Ok(spec)
}

/// A recorded environment (secrets as their `${env:}`/`${file:}` references, as
/// [`TenantSpec::env_for_record`] keeps them) resolved again now, relative to the spec
/// file `file`: the values, and which of them are secrets (name -> reference).
#[allow(clippy::type_complexity)]
pub fn resolve_recorded_env(
    file: &Path,
    recorded: &BTreeMap<String, String>,
) -> Result<(BTreeMap<String, String>, BTreeMap<String, String>), Invalid> {
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut env = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    for (name, value) in recorded {
        match secret::parse_reference(value) {
            Some(reference) => {
                let resolved = secret::resolve(&reference, &base, &secret::ProcessEnv)
                    .map_err(|e| format!("{name}: {e}"))?;
                env.insert(name.clone(), resolved);
                secrets.insert(name.clone(), value.clone());
            }
            None => {
                env.insert(name.clone(), value.clone());
            }
        }
    }
    Ok((env, secrets))
}

pub use checks::{
    name_label, openrouter_key as check_openrouter_key, tenant_id as check_tenant_id,
};
pub use secret::{EnvSource, ProcessEnv};

#[cfg(test)]
mod tests;
