//! `agents` and `hosts` (each host's engine endpoint, TLS files, ssh options and
//! agent).

use super::*;

/// What `hosts[i]` runs its tenants on.
enum HostBackend {
    Docker {
        url: String,
        tls: Option<TlsFiles>,
        ssh: SshOptions,
    },
    Kubernetes(KubernetesHost),
}

impl Loader<'_> {
    pub(super) fn agents(&mut self, node: &Node) -> Option<AgentsSpec> {
        let map = self.mapping(node, "`agents`")?;
        self.keys(map, AGENTS_KEYS, "agents");
        let image = match self.scalar(map, "image", "agents.image") {
            Some((v, at)) => {
                self.check(at, "agents.image", v, checks::image_ref(v))?;
                v.to_string()
            }
            None => crate::spec::default_agent_image(),
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
    pub(super) fn agent_database_url(
        &mut self,
        (v, at): (&str, Pos),
        what: &str,
    ) -> Option<String> {
        let checked = checks::agent_database_url(v);
        self.check(at, what, v, checked).map(|()| v.to_string())
    }

    /// `ca_file`'s certificates: `Some(None)` when absent, `None` when given but
    /// unreadable.
    pub(super) fn ca_file(
        &mut self,
        map: &MarkedMappingNode,
        what: &str,
    ) -> Option<Option<String>> {
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
    pub(super) fn host_agent(
        &mut self,
        map: &MarkedMappingNode,
        what: &str,
        agents: Option<&AgentsSpec>,
    ) -> Option<HostAgent> {
        let key = format!("{what}.agent");
        let base = agents.cloned().unwrap_or_else(|| AgentsSpec {
            image: crate::spec::default_agent_image(),
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

    /// `<what>.<name>`: a file (relative to the spec) that can be read: `Some(None)`
    /// when absent, `None` when given but unreadable.
    fn readable_file(
        &mut self,
        map: &MarkedMappingNode,
        name: &str,
        what: &str,
    ) -> Option<Option<std::path::PathBuf>> {
        let Some((p, at)) = self.scalar(map, name, &format!("{what}.{name}")) else {
            return Some(None);
        };
        let path = self.base_dir.join(p);
        match std::fs::File::open(&path) {
            Ok(_) => Some(Some(path)),
            Err(e) => {
                self.diag(
                    at,
                    format!("`{what}.{name}`: cannot read {}: {e}", path.display()),
                    None,
                );
                None
            }
        }
    }

    pub(super) fn ssh(&mut self, node: &Node, what: &str) -> Option<SshOptions> {
        let key = format!("{what}.ssh");
        let map = self.mapping(node, &format!("`{key}`"))?;
        self.keys(map, SSH_KEYS, &key);
        let k = self.readable_file(map, "key", &key);
        let kh = self.readable_file(map, "known_hosts", &key);
        Some(SshOptions {
            key: k?,
            known_hosts: kh?,
        })
    }

    pub(super) fn hosts(
        &mut self,
        node: &Node,
        agents: Option<&AgentsSpec>,
        fleet: &str,
    ) -> Vec<HostSpec> {
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
            let backend = self.backend(map, &what, fleet);
            let data_root = self.required(
                map,
                "data_root",
                &format!("{what}.data_root"),
                "e.g. `data_root: /srv/mai-fleet`",
            );
            let agent = self.host_agent(map, &what, agents);
            let publish = self.publish_address(map, &what);
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
            if let Some((r, at)) = data_root {
                if !r.starts_with('/') {
                    self.diag(
                        at,
                        format!("`{what}.data_root` value `{r}` is not an absolute path"),
                        Some("write it from the root, e.g. /srv/mai-fleet".into()),
                    );
                }
            }
            if let (Some((n, _)), Some(backend), Some((r, _)), Some(publish_address), Some(agent)) =
                (name, backend, data_root, publish, agent)
            {
                let (docker, tls, ssh, kubernetes) = match backend {
                    HostBackend::Docker { url, tls, ssh } => (url, tls, ssh, None),
                    HostBackend::Kubernetes(k) => {
                        (String::new(), None, SshOptions::default(), Some(k))
                    }
                };
                // A Kubernetes tenant is reached through its Service, on no address
                // of the node.
                let publish_address = if kubernetes.is_some() {
                    String::new()
                } else {
                    publish_address
                };
                hosts.push(HostSpec {
                    name: n.to_string(),
                    docker,
                    kubernetes,
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

    /// A host's backend: `docker:` (with `tls`/`ssh`) or `kubernetes:`, exactly one.
    fn backend(&mut self, map: &MarkedMappingNode, what: &str, fleet: &str) -> Option<HostBackend> {
        if let Some(k) = map.get_node("kubernetes") {
            let mut clash = false;
            for key in ["docker", "tls", "ssh", "publish_address"] {
                if let Some((_, v)) = map.iter().find(|(k, _)| k.as_str() == key) {
                    let at = pos(v.span());
                    self.diag(
                        at,
                        format!("`{what}.{key}` is set on a Kubernetes host"),
                        Some("a host is a Docker engine or a Kubernetes node, never both".into()),
                    );
                    clash = true;
                }
            }
            let k = self.kubernetes(k, what, fleet);
            return if clash {
                None
            } else {
                k.map(HostBackend::Kubernetes)
            };
        }
        let docker = self.required(
            map,
            "docker",
            &format!("{what}.docker"),
            "e.g. `docker: unix:///var/run/docker.sock`, or `kubernetes: {node: …}` for a Kubernetes node",
        );
        let tls = map.get_node("tls").and_then(|t| self.tls(t, what));
        let ssh = match map.get_node("ssh") {
            Some(n) => self.ssh(n, what),
            None => Some(SshOptions::default()),
        };
        if let Some(endpoint) = docker {
            self.docker_endpoint(map, what, endpoint, tls.is_some());
        }
        Some(HostBackend::Docker {
            url: docker?.0.to_string(),
            tls,
            ssh: ssh?,
        })
    }

    /// `hosts[i].kubernetes`: `node` required, a readable kubeconfig when one is named,
    /// a namespace that is a DNS label (`mai-<fleet>` by default).
    fn kubernetes(&mut self, node: &Node, host_what: &str, fleet: &str) -> Option<KubernetesHost> {
        let what = format!("{host_what}.kubernetes");
        let map = self.mapping(node, &format!("`{what}`"))?;
        self.keys(map, KUBERNETES_KEYS, &what);
        let kubeconfig = self.readable_file(map, "kubeconfig", &what);
        let context = self
            .scalar(map, "context", &format!("{what}.context"))
            .map(|(c, _)| c.to_string());
        let file = self.file.clone();
        let located = move |at: Pos| format!("{file}:{}:{}", at.line, at.column);
        let mut node_at = located(pos(map.span()));
        let mut namespace_at = node_at.clone();
        let node_name = match self.required(
            map,
            "node",
            &format!("{what}.node"),
            "the node this host's tenants and agent run on, e.g. `node: fsn1-k1`",
        ) {
            Some((n, at)) => {
                node_at = located(at);
                self.check(at, &format!("{what}.node"), n, checks::dns_subdomain(n))
                    .map(|()| n.to_string())
            }
            None => None,
        };
        let agent_api_server =
            match self.scalar(map, "agent_api_server", &format!("{what}.agent_api_server")) {
                Some((u, at)) => self
                    .check(
                        at,
                        &format!("{what}.agent_api_server"),
                        u,
                        checks::https_host_port(u),
                    )
                    .map(|()| Some(u.to_string())),
                None => Some(None),
            };
        let namespace = match self.scalar(map, "namespace", &format!("{what}.namespace")) {
            Some((n, at)) => {
                namespace_at = located(at);
                self.check(at, &format!("{what}.namespace"), n, checks::dns_label(n))
                    .map(|()| n.to_string())
            }
            None => Some(format!("mai-{fleet}")),
        };
        let storage = match map.get_node("storage") {
            Some(n) => self.storage(n, &what).map(Some),
            None => Some(None),
        };
        Some(KubernetesHost {
            kubeconfig: kubeconfig?,
            context,
            node: node_name?,
            namespace: namespace?,
            at: Box::new(KubernetesPlaces {
                node: node_at,
                namespace: namespace_at,
            }),
            agent_api_server: agent_api_server?,
            storage: storage?,
        })
    }

    /// `hosts[i].kubernetes.storage`: a class (a DNS subdomain, as Kubernetes names
    /// it) and a size in binary units.
    fn storage(&mut self, node: &Node, kube_what: &str) -> Option<ClaimStorage> {
        let what = format!("{kube_what}.storage");
        let map = self.mapping(node, &format!("`{what}`"))?;
        self.keys(map, STORAGE_KEYS, &what);
        let class = self
            .required(
                map,
                "class",
                &format!("{what}.class"),
                "the StorageClass of the tenants' claims, e.g. `class: local-path`",
            )
            .and_then(|(c, at)| {
                self.check(at, &format!("{what}.class"), c, checks::dns_subdomain(c))
                    .map(|()| c.to_string())
            });
        let size = match self.scalar(map, "size", &format!("{what}.size")) {
            Some((v, at)) => self
                .check(at, &format!("{what}.size"), v, checks::claim_size(v))
                .map(|()| v.to_string()),
            None => Some(DEFAULT_CLAIM_SIZE.to_string()),
        };
        Some(ClaimStorage {
            class: class?,
            size: size?,
        })
    }

    /// `hosts[i].publish_address`: an IP address, loopback by default.
    fn publish_address(&mut self, map: &MarkedMappingNode, what: &str) -> Option<String> {
        match self.scalar(map, "publish_address", &format!("{what}.publish_address")) {
            Some((a, at)) => self.check(
                at,
                &format!("{what}.publish_address"),
                a,
                a.parse::<std::net::IpAddr>().map(|_| ()).map_err(|_| {
                    "an IP address: 127.0.0.1 (the default, behind a reverse proxy), a private address, or 0.0.0.0 for every interface".to_string()
                }),
            ).map(|()| a.to_string()),
            None => Some(DEFAULT_PUBLISH_ADDRESS.to_string()),
        }
    }

    /// `hosts[i].docker`: a scheme the controller speaks, a valid ssh:// target, `ssh`
    /// only with ssh://, and a remote tcp:// endpoint only with `tls`.
    fn docker_endpoint(
        &mut self,
        map: &MarkedMappingNode,
        what: &str,
        (d, at): (&str, Pos),
        has_tls: bool,
    ) {
        let scheme_ok = ["unix:///", "tcp://", "ssh://"]
            .iter()
            .any(|s| d.starts_with(s));
        if !scheme_ok {
            self.diag(
                at,
                format!("`{what}.docker` value `{d}` is not a Docker endpoint"),
                Some("use unix:///path/to/docker.sock, tcp://host:2376 or ssh://user@host".into()),
            );
        } else if let Some(Err(hint)) = d
            .starts_with("ssh://")
            .then(|| crate::spec::SshTarget::parse(d))
        {
            self.diag(
                at,
                format!("`{what}.docker` value `{d}` is not a valid ssh:// endpoint"),
                Some(format!("{hint}; write ssh://user@host[:port]")),
            );
        } else if !d.starts_with("ssh://") && map.get_node("ssh").is_some() {
            self.diag(
                at,
                format!("`{what}.ssh` is set but `{what}.docker` is not an ssh:// endpoint"),
                None,
            );
        } else if d.starts_with("tcp://") && !has_tls && !loopback_literal(d) {
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

    pub(super) fn tls(&mut self, node: &Node, host_what: &str) -> Option<TlsFiles> {
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
}
