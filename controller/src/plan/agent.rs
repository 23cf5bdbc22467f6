//! The agent container `apply` keeps on each host (`hosts[].agent`): what it should
//! be, and what to do given what runs. Pure, like the tenants' plan.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{data_claim, Action, Observed, LABEL_FLEET};
use crate::spec::{DockerEndpoint, HostAgent, HostSpec, DEFAULT_REMOTE_SOCKET};

/// The host an agent container serves (never `mai-fleet.managed`: tenants' plans
/// and the agent's own discovery ignore it).
pub const LABEL_AGENT_OF: &str = "mai-fleet.agent-of";
pub const LABEL_AGENT_HASH: &str = "mai-fleet.agent-hash";

/// Inside the agent container.
pub const CA_PATH: &str = "/etc/mai-fleet/db-ca.pem";
pub const DATABASE_URL_PATH: &str = "/run/mai-fleet/database-url";
pub const SPOOL_PATH: &str = "/var/lib/mai-fleet/spool";
pub const SOCKET_PATH: &str = "/var/run/docker.sock";

#[derive(Debug, Clone, Serialize)]
pub struct DesiredAgent {
    pub host: String,
    pub name: String,
    pub image: String,
    /// Without credentials: each (re)creation gets the host's own, freshly made.
    pub database_url: String,
    #[serde(skip)]
    pub ca_pem: Option<String>,
    /// Its digest stands in the hash, so a new CA rolls the agent.
    pub ca_sha256: Option<String>,
    pub interval_ms: u64,
    /// The engine's socket and the tenants' data, as the host sees them: mounted
    /// read-only at the same paths.
    pub host_socket: String,
    pub data_root: String,
    pub spool_volume: String,
    /// On a Kubernetes host: where the agent runs and reaches the API (absent for a
    /// Docker host, so its hash is what it was before Kubernetes hosts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubeAgentPlace>,
    pub labels: BTreeMap<String, String>,
}

/// A Kubernetes host's agent: its namespace and node, and the API server's address
/// as the node reaches it when the spec names one.
#[derive(Debug, Clone, Serialize)]
pub struct KubeAgentPlace {
    pub namespace: String,
    pub node: String,
    pub api_server: Option<String>,
    /// The claims the host's tenants keep their data on, `(tenant id, claim)`: the
    /// agent mounts each to read its store, so a tenant added or removed rolls it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<(String, String)>,
}

impl DesiredAgent {
    /// `None` when the host's agent is run another way. `claims`: what
    /// [`claims_to_read`] found.
    pub fn new(fleet: &str, host: &HostSpec, claims: Vec<(String, String)>) -> Option<Self> {
        let HostAgent::Deployed(a) = &host.agent else {
            return None;
        };
        let host_socket = DockerEndpoint::parse(&host.docker)
            .map(|e| e.socket_on_host())
            .unwrap_or_else(|_| DEFAULT_REMOTE_SOCKET.to_string());
        let mut d = Self {
            host: host.name.clone(),
            name: container_name(&host.name),
            image: a.image.clone(),
            database_url: a.database_url.clone(),
            ca_sha256: a
                .ca_pem
                .as_ref()
                .map(|p| crate::crypto::sha256_hex(p.as_bytes())),
            ca_pem: a.ca_pem.clone(),
            interval_ms: a.interval.as_millis() as u64,
            host_socket,
            data_root: host.data_root.clone(),
            spool_volume: format!("mai-agent-{}-spool", host.name),
            kubernetes: host.kubernetes.as_ref().map(|k| KubeAgentPlace {
                namespace: k.namespace.clone(),
                node: k.node.clone(),
                api_server: k.agent_api_server.clone(),
                claims,
            }),
            labels: BTreeMap::new(),
        };
        let hash = d.hash();
        d.labels = BTreeMap::from([
            (LABEL_AGENT_OF.to_string(), host.name.clone()),
            (LABEL_FLEET.to_string(), fleet.to_string()),
            (LABEL_AGENT_HASH.to_string(), hash),
        ]);
        Some(d)
    }

    fn hash(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        crate::crypto::hex(&Sha256::digest(&canonical)[..16])
    }

    pub fn hash_label(&self) -> &str {
        self.labels.get(LABEL_AGENT_HASH).map_or("", String::as_str)
    }

    /// The agent's command line, whichever backend runs it.
    pub fn args(&self) -> Vec<String> {
        let interval = format!("{}ms", self.interval_ms);
        [
            "--host",
            &self.host,
            "--interval",
            &interval,
            "--database-url-file",
            DATABASE_URL_PATH,
            "--spool-dir",
            SPOOL_PATH,
            "--log-format",
            "json",
        ]
        .map(String::from)
        .to_vec()
    }

    /// The URL the agent is handed: the host's role and password in, the CA named.
    pub fn url_with(&self, role: &str, password: &str) -> String {
        let (scheme, rest) = self
            .database_url
            .split_once("://")
            .unwrap_or(("postgres", &self.database_url));
        let mut url = format!("{scheme}://{role}:{password}@{rest}");
        if self.ca_pem.is_some() {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str("sslrootcert=");
            url.push_str(CA_PATH);
        }
        url
    }
}

/// The claims the agent of `host` must read, `(tenant id, claim)`, sorted: of every
/// tenant that stays on the host (the plan's actions but removals), the claim it runs
/// on and the one the spec gives it. Both: a tenant the spec would move keeps its
/// data (and the agent its reading) where it is until it moves.
pub fn claims_to_read(host: &HostSpec, actions: &[Action]) -> Vec<(String, String)> {
    let mut claims: Vec<(String, String)> = Vec::new();
    for a in actions {
        let running = match a {
            Action::Remove { .. } | Action::Blocked { .. } | Action::RemoveLeftover { .. } => {
                continue
            }
            Action::Create { .. } => None,
            Action::Update { previous: o, .. }
            | Action::Start { current: o, .. }
            | Action::Unchanged { current: o, .. }
            | Action::Orphan { container: o, .. } => Some(o),
        };
        let tenant = a.tenant().to_string();
        let mounted = running
            .and_then(|o| o.runtime.as_ref())
            .into_iter()
            .flat_map(|rt| rt.mounts.iter())
            .filter_map(|m| m.strip_prefix("claim "))
            .filter_map(|m| m.split_once(':').map(|(name, _)| name.to_string()));
        let given = data_claim(host, &tenant).map(|c| c.name);
        for c in mounted.chain(given) {
            claims.push((tenant.clone(), c));
        }
    }
    claims.sort();
    claims.dedup();
    claims
}

/// Whether a container's labels make it `fleet`'s agent of `host`.
pub fn is_agent_of<S: std::hash::BuildHasher>(
    labels: &std::collections::HashMap<String, String, S>,
    fleet: &str,
    host: &str,
) -> bool {
    labels.get(LABEL_AGENT_OF).map(String::as_str) == Some(host)
        && labels.get(LABEL_FLEET).map(String::as_str) == Some(fleet)
}

pub fn container_name(host: &str) -> String {
    format!("mai-agent-{host}")
}

/// What to do with a host's agent container.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum AgentAction {
    /// None runs: made (with new credentials) before the host's tenants, so that
    /// their verification can go through it.
    Create,
    /// Another image or configuration: replaced after the host's tenants.
    Roll {
        from_image: String,
        to_image: String,
    },
    /// The right one, stopped.
    Start {
        container: String,
    },
    /// `agent: false` now: the deployed one is removed.
    Remove {
        container: String,
    },
    Unchanged {
        container: String,
    },
}

impl AgentAction {
    pub fn is_change(&self) -> bool {
        !matches!(self, AgentAction::Unchanged { .. })
    }

    /// Whether the container runs (or will) before the host's tenants are rolled.
    pub fn serves_before_tenants(&self) -> bool {
        matches!(
            self,
            AgentAction::Unchanged { .. } | AgentAction::Roll { .. } | AgentAction::Start { .. }
        )
    }

    pub fn describe(&self) -> String {
        match self {
            AgentAction::Create => "agent: create".into(),
            AgentAction::Roll {
                from_image,
                to_image,
            } if from_image != to_image => format!("agent: roll ({from_image} -> {to_image})"),
            AgentAction::Roll { .. } => "agent: roll (configuration changed)".into(),
            AgentAction::Start { container } => format!("agent: start {container}"),
            AgentAction::Remove { container } => {
                format!("agent: remove {container} (agent: false)")
            }
            AgentAction::Unchanged { .. } => "agent: unchanged".into(),
        }
    }
}

/// `agents`: the engine's containers labelled as some host's agent. Only this
/// fleet's agent of this host is ours: another fleet on the same engine may have a
/// host of the same name.
pub fn plan_agent(
    fleet: &str,
    host: &str,
    desired: Option<&DesiredAgent>,
    agents: &[Observed],
) -> Option<AgentAction> {
    let current = agents.iter().find(|o| is_agent_of(&o.labels, fleet, host));
    match (desired, current) {
        (None, None) => None,
        (None, Some(c)) => Some(AgentAction::Remove {
            container: c.name.clone(),
        }),
        (Some(_), None) => Some(AgentAction::Create),
        (Some(d), Some(c)) => {
            let hash = c.labels.get(LABEL_AGENT_HASH).map_or("", String::as_str);
            Some(if hash != d.hash_label() {
                AgentAction::Roll {
                    from_image: c.image.clone(),
                    to_image: d.image.clone(),
                }
            } else if c.state != super::RunState::Running {
                AgentAction::Start {
                    container: c.name.clone(),
                }
            } else {
                AgentAction::Unchanged {
                    container: c.name.clone(),
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::spec::AgentsSpec;

    fn host(agent: HostAgent) -> HostSpec {
        HostSpec {
            name: "hel1-b".into(),
            kubernetes: None,
            docker: "ssh://root@10.0.0.2/run/docker.sock".into(),
            data_root: "/srv/mai".into(),
            tls: None,
            publish_address: "127.0.0.1".into(),
            ssh: Default::default(),
            agent,
        }
    }

    fn agents(image: &str) -> HostAgent {
        HostAgent::Deployed(AgentsSpec {
            image: image.into(),
            database_url: "postgres://db.internal:5432/mai_fleet?sslmode=verify-full".into(),
            ca_pem: Some("-----BEGIN CERTIFICATE-----\n".into()),
            interval: std::time::Duration::from_secs(60),
        })
    }

    fn running(d: &DesiredAgent, state: &str) -> Observed {
        Observed {
            id: "c1".into(),
            name: d.name.clone(),
            image: d.image.clone(),
            state: crate::plan::RunState::parse(state),
            labels: d.labels.clone().into_iter().collect::<HashMap<_, _>>(),
            runtime: None,
        }
    }

    #[test]
    fn plans_follow_hash_and_state() {
        let d = DesiredAgent::new("f", &host(agents("mai-fleet/agent:1")), Vec::new()).unwrap();
        assert_eq!(d.host_socket, "/run/docker.sock");
        assert_eq!(
            plan_agent("f", "hel1-b", Some(&d), &[]),
            Some(AgentAction::Create)
        );
        let same = running(&d, "running");
        assert!(matches!(
            plan_agent("f", "hel1-b", Some(&d), std::slice::from_ref(&same)),
            Some(AgentAction::Unchanged { .. })
        ));
        assert!(matches!(
            plan_agent("f", "hel1-b", Some(&d), &[running(&d, "exited")]),
            Some(AgentAction::Start { .. })
        ));
        let newer = DesiredAgent::new("f", &host(agents("mai-fleet/agent:2")), Vec::new()).unwrap();
        assert_eq!(
            plan_agent("f", "hel1-b", Some(&newer), std::slice::from_ref(&same)),
            Some(AgentAction::Roll {
                from_image: "mai-fleet/agent:1".into(),
                to_image: "mai-fleet/agent:2".into()
            })
        );
        // Another host's agent on the same engine is not this host's.
        assert_eq!(
            plan_agent("f", "hel1-c", Some(&d), std::slice::from_ref(&same)),
            Some(AgentAction::Create)
        );
        assert!(matches!(
            plan_agent("f", "hel1-b", None, &[same]),
            Some(AgentAction::Remove { .. })
        ));
        assert!(DesiredAgent::new("f", &host(HostAgent::External), Vec::new()).is_none());
    }

    #[test]
    fn the_url_gets_credentials_and_the_ca() {
        let d = DesiredAgent::new("f", &host(agents("a:1")), Vec::new()).unwrap();
        assert_eq!(
            d.url_with("mai_agent_hel1_b", "s3cr3t"),
            "postgres://mai_agent_hel1_b:s3cr3t@db.internal:5432/mai_fleet?sslmode=verify-full&sslrootcert=/etc/mai-fleet/db-ca.pem"
        );
    }

    #[test]
    fn another_fleets_agent_is_never_taken_for_ours() {
        // Two fleets may share an engine and a host name: the other fleet's agent
        // carries the same `agent-of` label, and is neither kept, rolled nor removed.
        let ours = DesiredAgent::new("f", &host(agents("mai-fleet/agent:1")), Vec::new()).unwrap();
        let theirs_spec =
            DesiredAgent::new("g", &host(agents("mai-fleet/agent:2")), Vec::new()).unwrap();
        let theirs = running(&theirs_spec, "running");
        assert_eq!(
            plan_agent("f", "hel1-b", Some(&ours), std::slice::from_ref(&theirs)),
            Some(AgentAction::Create)
        );
        assert_eq!(
            plan_agent("f", "hel1-b", None, std::slice::from_ref(&theirs)),
            None
        );
    }
}
