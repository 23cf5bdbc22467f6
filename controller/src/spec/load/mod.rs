//! Walks the YAML node tree and builds the effective spec, collecting every problem.
//!
//! The schema is checked by hand rather than by `serde(deny_unknown_fields)`: serde
//! stops at the first error, and an operator fixing a 20-tenant file wants them all.

mod hosts;
mod invoicing;
mod sections;
mod tenants;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use mai_fleet_core::Invalid;
use marked_yaml::types::{MarkedMappingNode, MarkedSequenceNode};
use marked_yaml::{LoadError, LoaderOptions, Node, Span};
use rust_decimal::Decimal;

use super::secret::{self, ApiKey, EnvSource};
use super::{
    checks, AgentsSpec, BackupLimits, ClaimStorage, Diagnostic, FleetSpec, HostAgent, HostSpec,
    KeySource, KubernetesHost, KubernetesPlaces, OnLimit, Pos, SpecError, SshOptions, TenantSpec,
    TlsFiles, REQUIRED_ENV,
};

const TOP_KEYS: &[&str] = &[
    "version",
    "fleet",
    "defaults",
    "agents",
    "backups",
    "hosts",
    "tenants",
    "invoicing",
];
const BACKUPS_KEYS: &[&str] = &["max_bytes", "max_files", "time"];
const AGENTS_KEYS: &[&str] = &["image", "database_url", "ca_file", "interval"];
const HOST_AGENT_KEYS: &[&str] = &["database_url", "ca_file"];
const SSH_KEYS: &[&str] = &["key", "known_hosts"];
const DEFAULTS_KEYS: &[&str] = &["image", "timezone", "markup_rate", "env", "resources"];
const HOST_KEYS: &[&str] = &[
    "name",
    "docker",
    "data_root",
    "tls",
    "ssh",
    "publish_address",
    "agent",
    "kubernetes",
];
const KUBERNETES_KEYS: &[&str] = &[
    "kubeconfig",
    "context",
    "node",
    "namespace",
    "agent_api_server",
    "storage",
];
const STORAGE_KEYS: &[&str] = &["class", "size"];
/// A claim's size unless the spec says.
const DEFAULT_CLAIM_SIZE: &str = "10Gi";
const TLS_KEYS: &[&str] = &["ca", "cert", "key"];
const TENANT_KEYS: &[&str] = &[
    "id",
    "name",
    "org_id",
    "host",
    "image",
    "timezone",
    "openrouter",
    "billing",
    "port",
    "env",
    "resources",
];
const OPENROUTER_KEYS: &[&str] = &["api_key", "provision", "rotate_every"];
const BILLING_KEYS: &[&str] = &[
    "markup_rate",
    "monthly_limit_usd",
    "email",
    "nip",
    "address",
    "on_limit",
];
const RESOURCES_KEYS: &[&str] = &["memory", "cpus", "pids"];
/// Set by the controller from dedicated keys; `env:` may not set them either.
const DERIVED_ENV: &[(&str, &str)] = &[
    ("TZ", "timezone"),
    ("DEFAULT_MARKUP_RATE", "billing.markup_rate"),
];

const DEFAULT_TIMEZONE: &str = "Europe/Warsaw";
/// Tenant ports answer on the host's loopback only, for a reverse proxy in front.
const DEFAULT_PUBLISH_ADDRESS: &str = "127.0.0.1";

/// `tcp://127.0.0.1:2375`, `tcp://[::1]:2375`: an IP literal of the loopback range. A
/// name (even `localhost…`) may resolve anywhere.
fn loopback_literal(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("tcp://") else {
        return false;
    };
    let hostport = rest.split('/').next().unwrap_or(rest);
    hostport
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| hostport.parse::<std::net::IpAddr>())
        .is_ok_and(|ip| ip.is_loopback())
}

#[derive(Default)]
struct Defaults {
    image: Option<String>,
    timezone: Option<String>,
    markup_rate: Option<Decimal>,
    env: BTreeMap<String, String>,
    /// Names of `env` whose values came from `${env:}`/`${file:}`, with the reference.
    secret_env: BTreeMap<String, String>,
    memory_bytes: Option<i64>,
    cpus: Option<Decimal>,
    pids: Option<i64>,
}

struct Billing {
    markup_rate: Decimal,
    monthly_limit_usd: Option<Decimal>,
    email: Option<String>,
    nip: Option<String>,
    address: Option<String>,
    on_limit: OnLimit,
}

/// `resources:` of the defaults or of a tenant.
#[derive(Default, Clone, Copy)]
struct Resources {
    memory: Option<i64>,
    cpus: Option<Decimal>,
    pids: Option<i64>,
}

/// A tenant's values that must be unique, with where they stand; kept for every
/// tenant, valid or not, so that a duplicate is reported in the same run.
struct Unique {
    tenant: String,
    id: Option<(String, Pos)>,
    org_id: Option<(String, Pos)>,
    host_port: Option<(String, String, Pos)>,
    /// The key's fingerprint: one key in two tenants would bill one client for both.
    key: Option<(String, Pos)>,
}

pub struct Loader<'e> {
    file: String,
    base_dir: PathBuf,
    env: &'e dyn EnvSource,
    diags: Vec<Diagnostic>,
    /// The tenant the diagnostics being collected concern.
    tenant: Option<String>,
    unique: Vec<Unique>,
    /// Where the first `provision: true` stands, and how many tenants say it: what
    /// provisioning needs from the environment is checked once, there.
    provision: Option<(Pos, usize)>,
}

fn pos(span: &Span) -> Pos {
    span.start().map_or(Pos { line: 1, column: 1 }, |m| Pos {
        line: m.line(),
        column: m.column(),
    })
}

impl<'e> Loader<'e> {
    pub fn new(path: &Path, env: &'e dyn EnvSource) -> Self {
        Self {
            file: path.display().to_string(),
            base_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            env,
            diags: Vec::new(),
            tenant: None,
            unique: Vec::new(),
            provision: None,
        }
    }

    pub fn load(mut self, text: &str) -> Result<FleetSpec, SpecError> {
        let spec = self.fleet(text);
        if self.diags.is_empty() {
            if let Some(spec) = spec {
                return Ok(spec);
            }
        }
        self.diags.sort_by_key(|d| (d.line, d.column));
        self.diags.dedup();
        Err(SpecError::Invalid {
            file: self.file,
            diagnostics: self.diags,
        })
    }

    fn diag(&mut self, at: Pos, message: impl Into<String>, hint: Option<String>) {
        self.diags.push(Diagnostic {
            file: self.file.clone(),
            line: at.line,
            column: at.column,
            tenant: self.tenant.clone(),
            message: message.into(),
            hint,
        });
    }

    fn fleet(&mut self, text: &str) -> Option<FleetSpec> {
        let start = Pos { line: 1, column: 1 };
        if text.trim().is_empty() {
            self.diag(
                start,
                "the file is empty",
                Some("a fleet spec starts with `version: 1` and lists `hosts:` and `tenants:`; see docs/tenants-yaml.md".into()),
            );
            return None;
        }
        let options = LoaderOptions::default().error_on_duplicate_keys(true);
        let root = match marked_yaml::parse_yaml_with_options(0, text, options) {
            Ok(root) => root,
            Err(e) => {
                self.syntax_error(e);
                return None;
            }
        };
        let root = self.mapping(&root, "the top level")?;
        self.keys(root, TOP_KEYS, "the top level");

        match self.scalar(root, "version", "version") {
            Some(("1", _)) => {}
            Some((v, at)) => self.diag(
                at,
                format!("unsupported version `{v}`"),
                Some("this controller reads `version: 1`".into()),
            ),
            None => self.diag(
                pos(root.span()),
                "missing `version`",
                Some("add `version: 1` at the top".into()),
            ),
        }
        let fleet = match self.scalar(root, "fleet", "fleet") {
            Some((f, at)) => {
                self.check(at, "fleet", f, checks::name_label(f));
                f.to_string()
            }
            None => "default".to_string(),
        };
        let defaults = match root.get_node("defaults") {
            Some(node) => self.defaults(node),
            None => Defaults::default(),
        };
        let agents = root.get_node("agents").and_then(|n| self.agents(n));
        let backups = root
            .get_node("backups")
            .map(|n| self.backups(n))
            .unwrap_or_default();
        let hosts = match root.get_node("hosts") {
            Some(node) => self.hosts(node, agents.as_ref(), &fleet),
            None => {
                self.diag(
                    pos(root.span()),
                    "missing `hosts`",
                    Some("list the Docker hosts tenants run on".into()),
                );
                Vec::new()
            }
        };
        let tenants = match root.get_node("tenants") {
            Some(node) => self.tenants(node, &defaults, &hosts),
            None => {
                self.diag(
                    pos(root.span()),
                    "missing `tenants`",
                    Some("write `tenants: []` for a fleet with none".into()),
                );
                Vec::new()
            }
        };
        let invoicing = root.get_node("invoicing").and_then(|n| self.invoicing(n));
        self.unique_tenant_values();
        self.provisioning_environment();
        Some(FleetSpec {
            file: PathBuf::from(&self.file),
            source_sha256: String::new(),
            fleet,
            hosts,
            tenants,
            agents,
            backups,
            invoicing,
        })
    }

    fn syntax_error(&mut self, e: LoadError) {
        let (at, message) = match &e {
            LoadError::ScanError(m, scan) => (
                Pos {
                    line: m.line(),
                    column: m.column(),
                },
                format!("YAML syntax error: {}", scan.info()),
            ),
            LoadError::DuplicateKey(inner) => (
                pos(inner.key.span()),
                format!(
                    "key `{}` appears twice in one mapping (first at line {})",
                    inner.key.as_str(),
                    pos(inner.prev_key.span()).line
                ),
            ),
            LoadError::TopLevelMustBeMapping(m) => (
                Pos {
                    line: m.line(),
                    column: m.column(),
                },
                "the top level must be a mapping (`version:`, `hosts:`, `tenants:` …)".to_string(),
            ),
            LoadError::MappingKeyMustBeScalar(m) => (
                Pos {
                    line: m.line(),
                    column: m.column(),
                },
                "mapping keys must be plain names".to_string(),
            ),
            LoadError::UnexpectedAnchor(m) | LoadError::UnexpectedTag(m) => (
                Pos {
                    line: m.line(),
                    column: m.column(),
                },
                "YAML anchors and tags are not supported in a fleet spec".to_string(),
            ),
            other => (Pos { line: 1, column: 1 }, other.to_string()),
        };
        self.diag(at, message, None);
    }

    // ---- node access helpers: each reports what is wrong and returns None ----

    fn mapping<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n MarkedMappingNode> {
        match node {
            Node::Mapping(m) => Some(m),
            _ => {
                self.diag(
                    pos(node.span()),
                    format!("{what} must be a mapping of `key: value` lines"),
                    None,
                );
                None
            }
        }
    }

    fn sequence<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n MarkedSequenceNode> {
        match node {
            Node::Sequence(s) => Some(s),
            // `tenants:` with nothing after it is an empty list, not a mistake.
            Node::Scalar(s) if s.as_str().is_empty() || s.as_str() == "~" => None,
            _ => {
                self.diag(
                    pos(node.span()),
                    format!("{what} must be a list of `- ` entries"),
                    None,
                );
                None
            }
        }
    }

    fn keys(&mut self, map: &MarkedMappingNode, allowed: &[&str], what: &str) {
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                let hint = match checks::suggest(key.as_str(), allowed) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("known keys: {}", allowed.join(", ")),
                };
                self.diag(
                    pos(key.span()),
                    format!("unknown key `{}` in {what}", key.as_str()),
                    Some(hint),
                );
            }
        }
    }

    /// A scalar value; `None` when the key is absent or null, reported when not a scalar.
    fn scalar<'n>(
        &mut self,
        map: &'n MarkedMappingNode,
        key: &str,
        what: &str,
    ) -> Option<(&'n str, Pos)> {
        match map.get_node(key)? {
            Node::Scalar(s) if s.as_str().is_empty() || s.as_str() == "~" => None,
            Node::Scalar(s) => Some((s.as_str(), pos(s.span()))),
            other => {
                self.diag(
                    pos(other.span()),
                    format!("`{what}` must be a single value"),
                    None,
                );
                None
            }
        }
    }

    fn required<'n>(
        &mut self,
        map: &'n MarkedMappingNode,
        key: &str,
        what: &str,
        hint: &str,
    ) -> Option<(&'n str, Pos)> {
        let found = self.scalar(map, key, what);
        if found.is_none()
            && !matches!(
                map.get_node(key),
                Some(Node::Mapping(_) | Node::Sequence(_))
            )
        {
            self.diag(
                pos(map.span()),
                format!("missing `{what}`"),
                Some(hint.to_string()),
            );
        }
        found
    }

    fn check<T>(
        &mut self,
        at: Pos,
        what: &str,
        value: &str,
        result: Result<T, impl Into<Invalid>>,
    ) -> Option<T> {
        match result.map_err(Into::into) {
            Ok(v) => Some(v),
            Err(Invalid(hint)) => {
                self.diag(
                    at,
                    format!("`{what}` value `{value}` is not valid"),
                    Some(hint),
                );
                None
            }
        }
    }
}
