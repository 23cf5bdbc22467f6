//! Walks the YAML node tree and builds the effective spec, collecting every problem.
//!
//! The schema is checked by hand rather than by `serde(deny_unknown_fields)`: serde
//! stops at the first error, and an operator fixing a 20-tenant file wants them all.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use marked_yaml::types::{MarkedMappingNode, MarkedSequenceNode};
use marked_yaml::{LoadError, LoaderOptions, Node, Span};
use rust_decimal::Decimal;

use super::secret::{self, ApiKey, EnvSource};
use super::{
    checks, AgentsSpec, BackupLimits, Diagnostic, FleetSpec, HostAgent, HostSpec, KeySource,
    OnLimit, Pos, SpecError, SshOptions, TenantSpec, TlsFiles, REQUIRED_ENV,
};

const TOP_KEYS: &[&str] = &[
    "version", "fleet", "defaults", "agents", "backups", "hosts", "tenants",
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
];
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
            Some(node) => self.hosts(node, agents.as_ref()),
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
        result: Result<T, String>,
    ) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(hint) => {
                self.diag(
                    at,
                    format!("`{what}` value `{value}` is not valid"),
                    Some(hint),
                );
                None
            }
        }
    }

    // ---- sections ----

    fn defaults(&mut self, node: &Node) -> Defaults {
        let mut d = Defaults::default();
        let Some(map) = self.mapping(node, "`defaults`") else {
            return d;
        };
        self.keys(map, DEFAULTS_KEYS, "defaults");
        if let Some((image, at)) = self.scalar(map, "image", "defaults.image") {
            d.image = self
                .check(at, "defaults.image", image, checks::image_ref(image))
                .map(|()| image.to_string());
        }
        if let Some((tz, at)) = self.scalar(map, "timezone", "defaults.timezone") {
            d.timezone = self
                .check(at, "defaults.timezone", tz, checks::timezone(tz))
                .map(|()| tz.to_string());
        }
        if let Some((m, at)) = self.scalar(map, "markup_rate", "defaults.markup_rate") {
            d.markup_rate = self.check(at, "defaults.markup_rate", m, checks::markup_rate(m));
        }
        if let Some(env) = map.get_node("env") {
            (d.env, d.secret_env) = self.env_map(env, "defaults.env");
        }
        if let Some(res) = map.get_node("resources") {
            let r = self.resources(res, "defaults.resources");
            (d.memory_bytes, d.cpus, d.pids) = (r.memory, r.cpus, r.pids);
        }
        d
    }

    /// The variables of an `env:` map, and those of them that are secrets (written as
    /// `${env:}`/`${file:}`, resolved here) with their reference.
    fn env_map(
        &mut self,
        node: &Node,
        what: &str,
    ) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let mut env = BTreeMap::new();
        let mut secrets = BTreeMap::new();
        let Some(map) = self.mapping(node, &format!("`{what}`")) else {
            return (env, secrets);
        };
        for (key, value) in map.iter() {
            let name = key.as_str();
            let at = pos(key.span());
            if REQUIRED_ENV.contains(&name) {
                self.diag(
                    at,
                    format!("`{what}` may not set {name}"),
                    Some("the controller sets it from the tenant's `name`, `org_id` and `openrouter.api_key`".into()),
                );
                continue;
            }
            if let Some((_, key_name)) = DERIVED_ENV.iter().find(|(v, _)| *v == name) {
                self.diag(
                    at,
                    format!("`{what}` may not set {name}"),
                    Some(format!("set `{key_name}` instead")),
                );
                continue;
            }
            if self.check(at, what, name, checks::env_name(name)).is_none() {
                continue;
            }
            match value {
                Node::Scalar(s) => match secret::parse_reference(s.as_str()) {
                    Some(reference) => {
                        match secret::resolve(&reference, &self.base_dir, self.env) {
                            Ok(v) => {
                                env.insert(name.to_string(), v);
                                secrets.insert(name.to_string(), s.as_str().trim().to_string());
                            }
                            Err(problem) => self.diag(
                                pos(s.span()),
                                format!("`{what}.{name}`: {problem}"),
                                None,
                            ),
                        }
                    }
                    None => {
                        env.insert(name.to_string(), s.as_str().to_string());
                    }
                },
                other => self.diag(
                    pos(other.span()),
                    format!("`{what}.{name}` must be a single value"),
                    None,
                ),
            }
        }
        (env, secrets)
    }

    fn resources(&mut self, node: &Node, what: &str) -> Resources {
        let Some(map) = self.mapping(node, &format!("`{what}`")) else {
            return Resources::default();
        };
        self.keys(map, RESOURCES_KEYS, what);
        let memory = self
            .scalar(map, "memory", &format!("{what}.memory"))
            .and_then(|(m, at)| {
                self.check(at, &format!("{what}.memory"), m, checks::memory_bytes(m))
            });
        let cpus = self
            .scalar(map, "cpus", &format!("{what}.cpus"))
            .and_then(|(c, at)| self.check(at, &format!("{what}.cpus"), c, checks::cpus(c)));
        let pids = self
            .scalar(map, "pids", &format!("{what}.pids"))
            .and_then(|(p, at)| {
                let n = p
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (16..=1_000_000).contains(n));
                self.check(
                    at,
                    &format!("{what}.pids"),
                    p,
                    n.ok_or_else(|| {
                        "use a whole number of processes from 16 to 1000000".to_string()
                    }),
                )
            });
        Resources { memory, cpus, pids }
    }

    fn backups(&mut self, node: &Node) -> BackupLimits {
        let mut limits = BackupLimits::default();
        let Some(map) = self.mapping(node, "`backups`") else {
            return limits;
        };
        self.keys(map, BACKUPS_KEYS, "backups");
        if let Some((v, at)) = self.scalar(map, "max_bytes", "backups.max_bytes") {
            if let Some(n) = self.check(at, "backups.max_bytes", v, checks::byte_size(v)) {
                limits.max_bytes = n;
            }
        }
        if let Some((v, at)) = self.scalar(map, "max_files", "backups.max_files") {
            let n = v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| "write a whole number above 0".to_string());
            if let Some(n) = self.check(at, "backups.max_files", v, n) {
                limits.max_files = n;
            }
        }
        if let Some((v, at)) = self.scalar(map, "time", "backups.time") {
            if let Some(t) = self.check(at, "backups.time", v, crate::duration::parse(v)) {
                limits.time = t;
            }
        }
        limits
    }

    fn agents(&mut self, node: &Node) -> Option<AgentsSpec> {
        let map = self.mapping(node, "`agents`")?;
        self.keys(map, AGENTS_KEYS, "agents");
        let image = match self.scalar(map, "image", "agents.image") {
            Some((v, at)) => {
                self.check(at, "agents.image", v, checks::image_ref(v))?;
                v.to_string()
            }
            None => super::default_agent_image(),
        };
        let url = self.required(
            map,
            "database_url",
            "agents.database_url",
            "where agents reach the fleet database, without credentials, e.g. `postgres://db.internal:5432/mai_fleet?sslmode=verify-full`",
        )?;
        let database_url = self.agent_database_url(url, "agents.database_url")?;
        let ca_pem = self.ca_file(map, "agents.ca_file");
        let interval = match self.scalar(map, "interval", "agents.interval") {
            Some((v, at)) => self.check(at, "agents.interval", v, crate::duration::parse(v))?,
            None => std::time::Duration::from_secs(60),
        };
        Some(AgentsSpec {
            image,
            database_url,
            ca_pem: ca_pem?,
            interval,
        })
    }

    /// A database URL for agents: no credentials (the controller makes each host's),
    /// and TLS asked for unless the server is on loopback.
    fn agent_database_url(&mut self, (v, at): (&str, Pos), what: &str) -> Option<String> {
        let checked = checks::agent_database_url(v);
        self.check(at, what, v, checked).map(|()| v.to_string())
    }

    /// `ca_file`'s certificates: `Some(None)` when absent, `None` when given but
    /// unreadable.
    fn ca_file(&mut self, map: &MarkedMappingNode, what: &str) -> Option<Option<String>> {
        match self.scalar(map, "ca_file", what) {
            Some((p, at)) => {
                let path = self.base_dir.join(p);
                match std::fs::read_to_string(&path) {
                    Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => Some(Some(text)),
                    Ok(_) => {
                        self.diag(
                            at,
                            format!("`{what}`: {} holds no PEM certificate", path.display()),
                            None,
                        );
                        None
                    }
                    Err(e) => {
                        self.diag(
                            at,
                            format!("`{what}`: cannot read {}: {e}", path.display()),
                            None,
                        );
                        None
                    }
                }
            }
            None => Some(None),
        }
    }

    /// `hosts[i].agent`: true (the default), false, or `{database_url, ca_file}`.
    fn host_agent(
        &mut self,
        map: &MarkedMappingNode,
        what: &str,
        agents: Option<&AgentsSpec>,
    ) -> Option<HostAgent> {
        let key = format!("{what}.agent");
        let base = agents.cloned().unwrap_or_else(|| AgentsSpec {
            image: super::default_agent_image(),
            database_url: String::new(),
            ca_pem: None,
            interval: std::time::Duration::from_secs(60),
        });
        match map.get_node("agent") {
            None => Some(match agents {
                Some(a) => HostAgent::Deployed(a.clone()),
                None => HostAgent::External,
            }),
            Some(Node::Scalar(s)) if s.as_str() == "false" => Some(HostAgent::External),
            Some(Node::Scalar(s)) if s.as_str() == "true" => match agents {
                Some(a) => Some(HostAgent::Deployed(a.clone())),
                None => {
                    self.diag(
                        pos(s.span()),
                        format!("`{key}: true` needs the `agents:` section"),
                        Some("say once where agents reach the fleet database: `agents: { database_url: postgres://db.internal:5432/mai_fleet?sslmode=verify-full, ca_file: db-ca.pem }`".into()),
                    );
                    None
                }
            },
            Some(Node::Mapping(m)) => {
                self.keys(m, HOST_AGENT_KEYS, &key);
                let url = match self.scalar(m, "database_url", &format!("{key}.database_url")) {
                    Some(u) => self.agent_database_url(u, &format!("{key}.database_url"))?,
                    None if agents.is_some() => base.database_url.clone(),
                    None => {
                        self.diag(
                            pos(m.span()),
                            format!("missing `{key}.database_url`"),
                            Some("or say it once for every host in `agents:`".into()),
                        );
                        return None;
                    }
                };
                let ca_pem = self
                    .ca_file(m, &format!("{key}.ca_file"))?
                    .or(base.ca_pem.clone());
                Some(HostAgent::Deployed(AgentsSpec {
                    database_url: url,
                    ca_pem,
                    ..base
                }))
            }
            Some(other) => {
                self.diag(
                    pos(other.span()),
                    format!("`{key}` must be true, false or `{{database_url, ca_file}}`"),
                    None,
                );
                None
            }
        }
    }

    fn ssh(&mut self, node: &Node, what: &str) -> Option<SshOptions> {
        let key = format!("{what}.ssh");
        let map = self.mapping(node, &format!("`{key}`"))?;
        self.keys(map, SSH_KEYS, &key);
        let mut file = |name: &str| match self.scalar(map, name, &format!("{key}.{name}")) {
            Some((p, at)) => {
                let path = self.base_dir.join(p);
                match std::fs::File::open(&path) {
                    Ok(_) => Some(Some(path)),
                    Err(e) => {
                        self.diag(
                            at,
                            format!("`{key}.{name}`: cannot read {}: {e}", path.display()),
                            None,
                        );
                        None
                    }
                }
            }
            None => Some(None),
        };
        let (k, kh) = (file("key"), file("known_hosts"));
        Some(SshOptions {
            key: k?,
            known_hosts: kh?,
        })
    }

    fn hosts(&mut self, node: &Node, agents: Option<&AgentsSpec>) -> Vec<HostSpec> {
        let mut hosts: Vec<HostSpec> = Vec::new();
        let Some(seq) = self.sequence(node, "`hosts`") else {
            return hosts;
        };
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, node) in seq.iter().enumerate() {
            let what = format!("hosts[{i}]");
            let Some(map) = self.mapping(node, &what) else {
                continue;
            };
            self.keys(map, HOST_KEYS, &what);
            let name = self.required(
                map,
                "name",
                &format!("{what}.name"),
                "name the host, e.g. `name: hel1-a`",
            );
            let docker = self.required(
                map,
                "docker",
                &format!("{what}.docker"),
                "e.g. `docker: unix:///var/run/docker.sock`",
            );
            let data_root = self.required(
                map,
                "data_root",
                &format!("{what}.data_root"),
                "e.g. `data_root: /srv/mai-fleet`",
            );
            let tls = map.get_node("tls").and_then(|t| self.tls(t, &what));
            let ssh = match map.get_node("ssh") {
                Some(n) => self.ssh(n, &what),
                None => Some(SshOptions::default()),
            };
            let agent = self.host_agent(map, &what, agents);
            let publish = match self.scalar(map, "publish_address", &format!("{what}.publish_address")) {
                Some((a, at)) => self.check(
                    at,
                    &format!("{what}.publish_address"),
                    a,
                    a.parse::<std::net::IpAddr>().map(|_| ()).map_err(|_| {
                        "an IP address: 127.0.0.1 (the default, behind a reverse proxy), a private address, or 0.0.0.0 for every interface".to_string()
                    }),
                ).map(|()| a.to_string()),
                None => Some(DEFAULT_PUBLISH_ADDRESS.to_string()),
            };
            if let Some((n, at)) = name {
                if self
                    .check(at, "hosts.name", n, checks::name_label(n))
                    .is_some()
                {
                    if let Some(line) = seen.insert(n.to_string(), at.line) {
                        self.diag(
                            at,
                            format!("host `{n}` is defined twice (first at line {line})"),
                            Some("host names must be unique".into()),
                        );
                    }
                }
            }
            if let Some((d, at)) = docker {
                let scheme_ok = ["unix:///", "tcp://", "ssh://"]
                    .iter()
                    .any(|s| d.starts_with(s));
                if !scheme_ok {
                    self.diag(
                        at,
                        format!("`{what}.docker` value `{d}` is not a Docker endpoint"),
                        Some(
                            "use unix:///path/to/docker.sock, tcp://host:2376 or ssh://user@host"
                                .into(),
                        ),
                    );
                } else if let Some(Err(hint)) =
                    d.starts_with("ssh://").then(|| super::SshTarget::parse(d))
                {
                    self.diag(
                        at,
                        format!("`{what}.docker` value `{d}` is not a valid ssh:// endpoint"),
                        Some(format!("{hint}; write ssh://user@host[:port]")),
                    );
                } else if !d.starts_with("ssh://") && map.get_node("ssh").is_some() {
                    self.diag(
                        at,
                        format!(
                            "`{what}.ssh` is set but `{what}.docker` is not an ssh:// endpoint"
                        ),
                        None,
                    );
                } else if d.starts_with("tcp://") && tls.is_none() && !loopback_literal(d) {
                    self.diag(
                        at,
                        format!("`{what}.docker` is a remote tcp:// endpoint without `tls`"),
                        Some(
                            "add `tls: {ca, cert, key}` with the engine's client certificates (plain tcp:// only for a loopback address such as 127.0.0.1)"
                                .into(),
                        ),
                    );
                }
            }
            if let Some((r, at)) = data_root {
                if !r.starts_with('/') {
                    self.diag(
                        at,
                        format!("`{what}.data_root` value `{r}` is not an absolute path"),
                        Some("write it from the root, e.g. /srv/mai-fleet".into()),
                    );
                }
            }
            if let (
                Some((n, _)),
                Some((d, _)),
                Some((r, _)),
                Some(publish_address),
                Some(ssh),
                Some(agent),
            ) = (name, docker, data_root, publish, ssh, agent)
            {
                hosts.push(HostSpec {
                    name: n.to_string(),
                    docker: d.to_string(),
                    data_root: r.trim_end_matches('/').to_string(),
                    tls,
                    publish_address,
                    ssh,
                    agent,
                });
            }
        }
        hosts
    }

    fn tls(&mut self, node: &Node, host_what: &str) -> Option<TlsFiles> {
        let what = format!("{host_what}.tls");
        let map = self.mapping(node, &format!("`{what}`"))?;
        self.keys(map, TLS_KEYS, &what);
        let mut file = |key: &str| {
            let (p, at) =
                self.required(map, key, &format!("{what}.{key}"), "path to a PEM file")?;
            let path = self.base_dir.join(p);
            if let Err(e) = std::fs::File::open(&path) {
                self.diag(
                    at,
                    format!("`{what}.{key}`: cannot read {}: {e}", path.display()),
                    None,
                );
                return None;
            }
            Some(path)
        };
        let (ca, cert, key) = (file("ca"), file("cert"), file("key"));
        Some(TlsFiles {
            ca: ca?,
            cert: cert?,
            key: key?,
        })
    }

    fn tenants(&mut self, node: &Node, defaults: &Defaults, hosts: &[HostSpec]) -> Vec<TenantSpec> {
        let Some(seq) = self.sequence(node, "`tenants`") else {
            return Vec::new();
        };
        let mut tenants = Vec::new();
        for (i, node) in seq.iter().enumerate() {
            if let Some(t) = self.tenant(node, i, defaults, hosts) {
                tenants.push(t);
            }
            self.tenant = None;
        }
        tenants
    }

    fn tenant(
        &mut self,
        node: &Node,
        index: usize,
        defaults: &Defaults,
        hosts: &[HostSpec],
    ) -> Option<TenantSpec> {
        let what = format!("tenants[{index}]");
        let map = self.mapping(node, &what)?;
        // Name the tenant in every diagnostic below, by id when it has one.
        self.tenant = Some(match map.get_node("id").and_then(Node::as_scalar) {
            Some(id) if !id.as_str().is_empty() => id.as_str().to_string(),
            _ => what.clone(),
        });
        let errors_before = self.diags.len();
        self.keys(map, TENANT_KEYS, "a tenant");

        let id = self.required(
            map,
            "id",
            "id",
            "give the tenant an id like `kancelaria-nowak`",
        );
        if let Some((v, at)) = id {
            self.check(at, "id", v, checks::tenant_id(v));
        }
        let name = self.required(
            map,
            "name",
            "name",
            "the client's name, e.g. `Kancelaria Nowak Sp. k.`",
        );
        let org = self.required(
            map,
            "org_id",
            "org_id",
            "the client organization id sent to OpenRouter as external user",
        );
        if let Some((v, at)) = org {
            self.check(at, "org_id", v, checks::org_id(v));
        }
        let host = self.required(map, "host", "host", "name one of the `hosts`");
        if let Some((h, at)) = host {
            if !hosts.iter().any(|x| x.name == h) {
                let names: Vec<&str> = hosts.iter().map(|x| x.name.as_str()).collect();
                let hint = match checks::suggest(h, &names) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None if names.is_empty() => "define it under `hosts`".to_string(),
                    None => format!("hosts are: {}", names.join(", ")),
                };
                self.diag(at, format!("unknown host `{h}`"), Some(hint));
            }
        }
        let image = match self.scalar(map, "image", "image") {
            Some((img, at)) => self
                .check(at, "image", img, checks::image_ref(img))
                .map(|()| img.to_string()),
            None => {
                if defaults.image.is_none() {
                    self.diag(
                        pos(map.span()),
                        "no image",
                        Some("set `image:` on the tenant or in `defaults`".into()),
                    );
                }
                defaults.image.clone()
            }
        };
        let timezone = match self.scalar(map, "timezone", "timezone") {
            Some((tz, at)) => self
                .check(at, "timezone", tz, checks::timezone(tz))
                .map(|()| tz.to_string()),
            None => Some(
                defaults
                    .timezone
                    .clone()
                    .unwrap_or_else(|| DEFAULT_TIMEZONE.to_string()),
            ),
        };
        let key = self.openrouter(map);
        let billing = self.billing(map, defaults);
        let port = self.required(
            map,
            "port",
            "port",
            "the host port published to the app's 8080, e.g. `port: 3001`",
        );
        let port_value = port.and_then(|(p, at)| {
            let parsed = p.parse::<u16>().ok().filter(|n| *n >= 1024);
            self.check(
                at,
                "port",
                p,
                parsed.ok_or_else(|| "use a port from 1024 to 65535".to_string()),
            )
        });
        let mut env = defaults.env.clone();
        let mut secret_env = defaults.secret_env.clone();
        if let Some(node) = map.get_node("env") {
            let (own, own_secrets) = self.env_map(node, "env");
            for name in own.keys() {
                secret_env.remove(name);
            }
            env.extend(own);
            secret_env.extend(own_secrets);
        }
        let res = match map.get_node("resources") {
            Some(node) => self.resources(node, "resources"),
            None => Resources::default(),
        };

        self.unique.push(Unique {
            tenant: self.tenant.clone().unwrap_or_default(),
            id: id.map(|(v, at)| (v.to_string(), at)),
            org_id: org.map(|(v, at)| (v.to_string(), at)),
            host_port: host
                .zip(port)
                .map(|((h, _), (p, at))| (h.to_string(), p.to_string(), at)),
            key: match &key {
                Some((_, Some(k), at)) => Some((k.fingerprint(), *at)),
                _ => None,
            },
        });
        if self.diags.len() > errors_before {
            return None;
        }
        Some(TenantSpec {
            id: id?.0.to_string(),
            name: name?.0.to_string(),
            org_id: org?.0.to_string(),
            host: host?.0.to_string(),
            image: image?,
            timezone: timezone?,
            markup_rate: billing.markup_rate,
            monthly_limit_usd: billing.monthly_limit_usd,
            email: billing.email,
            nip: billing.nip,
            port: port_value?,
            env,
            memory_bytes: res.memory.or(defaults.memory_bytes),
            cpus: res.cpus.or(defaults.cpus),
            pids_limit: res.pids.or(defaults.pids),
            secret_env,
            on_limit: billing.on_limit,
            api_key: key.as_ref().and_then(|(_, k, _)| k.clone()),
            key_source: key?.0,
        })
    }

    /// `openrouter:` — a key the operator gives (`api_key`), or one the fleet
    /// provisions (`provision: true`, with `rotate_every`).
    fn openrouter(&mut self, map: &MarkedMappingNode) -> Option<(KeySource, Option<ApiKey>, Pos)> {
        let Some(node) = map.get_node("openrouter") else {
            self.diag(pos(map.span()), "missing `openrouter.api_key`", Some("add `openrouter: { api_key: ${env:VAR} }`, or `openrouter: { provision: true }` for a key the fleet creates; without a key the app tracks nothing".into()));
            return None;
        };
        let or = self.mapping(node, "`openrouter`")?;
        self.keys(or, OPENROUTER_KEYS, "openrouter");
        let provision = match self.scalar(or, "provision", "openrouter.provision") {
            Some(("true", at)) => Some(at),
            Some(("false", _)) | None => None,
            Some((v, at)) => {
                self.diag(
                    at,
                    format!("`openrouter.provision` is `{v}`"),
                    Some("write `provision: true` for a key the fleet creates".into()),
                );
                return None;
            }
        };
        let rotate_every = match self.scalar(or, "rotate_every", "openrouter.rotate_every") {
            Some((v, at)) => {
                let parsed = crate::duration::parse(v).and_then(|d| {
                    if d < std::time::Duration::from_secs(3600) {
                        Err("rotate at most once an hour (e.g. `90d`)".to_string())
                    } else {
                        Ok(d)
                    }
                });
                let d = self.check(at, "openrouter.rotate_every", v, parsed)?;
                if provision.is_none() {
                    self.diag(
                        at,
                        "`openrouter.rotate_every` needs `provision: true`",
                        Some("the fleet rotates only keys it owns; a key from `api_key` is pinned by the file (`controller keys adopt` takes it over)".into()),
                    );
                    return None;
                }
                Some(d)
            }
            None => None,
        };
        if let Some(at) = provision {
            if let Some(n) = or.get_node("api_key") {
                self.diag(
                    pos(n.span()),
                    "`openrouter` has both `api_key` and `provision: true`",
                    Some("keep one: the fleet creates a provisioned key itself".into()),
                );
                return None;
            }
            self.provision.get_or_insert((at, 0)).1 += 1;
            return Some((KeySource::Provisioned { rotate_every }, None, at));
        }
        let (text, at) = self.required(
            or,
            "api_key",
            "openrouter.api_key",
            "e.g. `api_key: ${env:NOWAK_OPENROUTER_KEY}`, or `provision: true`",
        )?;
        let Some(reference) = secret::parse_reference(text) else {
            // Never echo the value: it may be the key itself.
            self.diag(
                at,
                "`openrouter.api_key` is written inline",
                Some("keep keys out of the file: use ${env:VAR} or ${file:PATH}".into()),
            );
            return None;
        };
        match secret::resolve(&reference, &self.base_dir, self.env) {
            Ok(key) => match checks::openrouter_key(&key) {
                Ok(()) => Some((KeySource::Given, Some(ApiKey::new(key)), at)),
                Err(hint) => {
                    self.diag(
                        at,
                        format!(
                            "`openrouter.api_key` from {} is not an OpenRouter API key",
                            text.trim()
                        ),
                        Some(hint),
                    );
                    None
                }
            },
            Err(problem) => {
                self.diag(at, format!("`openrouter.api_key`: {problem}"), None);
                None
            }
        }
    }

    /// What provisioned keys need from the controller's environment: the master key
    /// (sealing keys at rest) and the management key (making them), each said
    /// exactly, once, at the first `provision: true`.
    fn provisioning_environment(&mut self) {
        let Some((at, count)) = self.provision else {
            return;
        };
        self.tenant = None;
        let who = format!("{count} tenant(s) with `provision: true`");
        match self.env.var(super::MASTER_KEY_FILE_ENV) {
            None => self.diag(
                at,
                format!("{who} need the fleet's master key, and {} is not set", super::MASTER_KEY_FILE_ENV),
                Some(format!("`head -c 32 /dev/urandom > master.key; chmod 600 master.key` and export {}=/path/to/master.key", super::MASTER_KEY_FILE_ENV)),
            ),
            Some(path) => {
                if let Err(e) = crate::crypto::Sealer::from_file(std::path::Path::new(&path)) {
                    self.diag(at, format!("{who} need the fleet's master key: {e}"), None);
                }
            }
        }
        let mgmt = super::MANAGEMENT_KEY_ENV;
        let mgmt_file = super::MANAGEMENT_KEY_FILE_ENV;
        match (self.env.var(mgmt), self.env.var(mgmt_file)) {
            (Some(v), _) if !v.trim().is_empty() => {}
            (_, Some(path)) if !path.trim().is_empty() => {
                if let Err(e) = crate::crypto::read_secret_file(std::path::Path::new(&path)) {
                    self.diag(at, format!("{who} need the OpenRouter management key: {mgmt_file}: {e}"), None);
                }
            }
            _ => self.diag(
                at,
                format!("{who} need the OpenRouter management key, and neither {mgmt} nor {mgmt_file} is set"),
                Some("create a management key in OpenRouter's settings and export it (a file: chmod 600)".into()),
            ),
        }
    }

    /// Billing keys; a bad value is reported and the tenant is then dropped by the
    /// caller (it counts diagnostics), so the placeholders returned here never escape.
    fn billing(&mut self, map: &MarkedMappingNode, defaults: &Defaults) -> Billing {
        let mut billing = Billing {
            markup_rate: defaults.markup_rate.unwrap_or_else(|| Decimal::new(13, 1)),
            monthly_limit_usd: None,
            email: None,
            nip: None,
            on_limit: OnLimit::Alert,
        };
        let Some(b) = map
            .get_node("billing")
            .and_then(|n| self.mapping(n, "`billing`"))
        else {
            return billing;
        };
        self.keys(b, BILLING_KEYS, "billing");
        if let Some((m, at)) = self.scalar(b, "markup_rate", "billing.markup_rate") {
            if let Some(rate) = self.check(at, "billing.markup_rate", m, checks::markup_rate(m)) {
                billing.markup_rate = rate;
            }
        }
        if let Some((m, at)) = self.scalar(b, "monthly_limit_usd", "billing.monthly_limit_usd") {
            billing.monthly_limit_usd =
                self.check(at, "billing.monthly_limit_usd", m, checks::money_usd(m));
        }
        if let Some((e, at)) = self.scalar(b, "email", "billing.email") {
            billing.email = self
                .check(at, "billing.email", e, checks::email(e))
                .map(|()| e.to_string());
        }
        if let Some((n, at)) = self.scalar(b, "nip", "billing.nip") {
            billing.nip = self
                .check(at, "billing.nip", n, checks::nip(n))
                .map(|()| n.to_string());
        }
        if let Some((v, at)) = self.scalar(b, "on_limit", "billing.on_limit") {
            let parsed = v
                .parse::<OnLimit>()
                .map_err(|_| "write `alert` (the default) or `disable`".to_string());
            if let Some(o) = self.check(at, "billing.on_limit", v, parsed) {
                billing.on_limit = o;
            }
        }
        billing
    }

    fn unique_tenant_values(&mut self) {
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut orgs: HashMap<String, usize> = HashMap::new();
        let mut ports: HashMap<(String, String), (usize, String)> = HashMap::new();
        let mut keys: HashMap<String, (usize, String)> = HashMap::new();
        for u in std::mem::take(&mut self.unique) {
            self.tenant = Some(u.tenant.clone());
            if let Some((id, at)) = u.id {
                if let Some(line) = ids.insert(id.clone(), at.line) {
                    self.diag(
                        at,
                        format!("id `{id}` is used twice (first at line {line})"),
                        Some("tenant ids must be unique: each becomes a container name".into()),
                    );
                }
            }
            if let Some((org, at)) = u.org_id {
                if let Some(line) = orgs.insert(org.clone(), at.line) {
                    self.diag(
                        at,
                        format!("org_id `{org}` is used twice (first at line {line})"),
                        Some("two containers with one org id would mix two clients' usage".into()),
                    );
                }
            }
            if let Some((fingerprint, at)) = u.key {
                if let Some((line, other)) = keys.insert(fingerprint, (at.line, u.tenant.clone())) {
                    self.diag(
                        at,
                        format!("this OpenRouter key is also tenant {other}'s (line {line})"),
                        Some(
                            "give each tenant a key of its own: spend is told apart by key".into(),
                        ),
                    );
                }
            }
            if let Some((host, port, at)) = u.host_port {
                if let Some((line, other)) =
                    ports.insert((host.clone(), port.clone()), (at.line, u.tenant))
                {
                    self.diag(
                        at,
                        format!(
                            "port {port} on host {host} is taken by tenant {other} (line {line})"
                        ),
                        Some("give each tenant on a host its own port".into()),
                    );
                }
            }
        }
        self.tenant = None;
    }
}
