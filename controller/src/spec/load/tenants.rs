//! `tenants`: each tenant, its `openrouter` key source and `billing`, what
//! provisioning needs from the environment, and the values no two tenants may share.

use super::*;

impl Loader<'_> {
    pub(super) fn tenants(
        &mut self,
        node: &Node,
        defaults: &Defaults,
        hosts: &[HostSpec],
    ) -> Vec<TenantSpec> {
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

    pub(super) fn tenant(
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
        if let Some(named) = host {
            self.known_host(named, hosts);
        }
        let image = self.image(map, defaults);
        let timezone = self.timezone(map, defaults);
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
        let (env, secret_env) = self.tenant_env(map, defaults);
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
            address: billing.address,
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
    /// A tenant's `host` must be one of the `hosts`; the nearest name is suggested.
    fn known_host(&mut self, (h, at): (&str, Pos), hosts: &[HostSpec]) {
        if hosts.iter().any(|x| x.name == h) {
            return;
        }
        let names: Vec<&str> = hosts.iter().map(|x| x.name.as_str()).collect();
        let hint = match checks::suggest(h, &names) {
            Some(s) => format!("did you mean `{s}`?"),
            None if names.is_empty() => "define it under `hosts`".to_string(),
            None => format!("hosts are: {}", names.join(", ")),
        };
        self.diag(at, format!("unknown host `{h}`"), Some(hint));
    }

    /// The tenant's `image`, else the defaults'; neither is an error.
    fn image(&mut self, map: &MarkedMappingNode, defaults: &Defaults) -> Option<String> {
        match self.scalar(map, "image", "image") {
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
        }
    }

    /// The tenant's `timezone`, else the defaults', else Europe/Warsaw.
    fn timezone(&mut self, map: &MarkedMappingNode, defaults: &Defaults) -> Option<String> {
        match self.scalar(map, "timezone", "timezone") {
            Some((tz, at)) => self
                .check(at, "timezone", tz, checks::timezone(tz))
                .map(|()| tz.to_string()),
            None => Some(
                defaults
                    .timezone
                    .clone()
                    .unwrap_or_else(|| DEFAULT_TIMEZONE.to_string()),
            ),
        }
    }

    /// The defaults' env with the tenant's own over it; a variable the tenant sets
    /// in plain text is no longer a secret of the defaults'.
    fn tenant_env(
        &mut self,
        map: &MarkedMappingNode,
        defaults: &Defaults,
    ) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
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
        (env, secret_env)
    }

    pub(super) fn openrouter(
        &mut self,
        map: &MarkedMappingNode,
    ) -> Option<(KeySource, Option<ApiKey>, Pos)> {
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
                        Err("rotate at most once an hour (e.g. `90d`)".into())
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
                        Some(hint.0),
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
    pub(super) fn provisioning_environment(&mut self) {
        let Some((at, count)) = self.provision else {
            return;
        };
        self.tenant = None;
        let who = format!("{count} tenant(s) with `provision: true`");
        match self.env.var(crate::spec::MASTER_KEY_FILE_ENV) {
            None => self.diag(
                at,
                format!("{who} need the fleet's master key, and {} is not set", crate::spec::MASTER_KEY_FILE_ENV),
                Some(format!("`head -c 32 /dev/urandom > master.key; chmod 600 master.key` and export {}=/path/to/master.key", crate::spec::MASTER_KEY_FILE_ENV)),
            ),
            Some(path) => {
                if let Err(e) = crate::crypto::Sealer::from_file(std::path::Path::new(&path)) {
                    self.diag(at, format!("{who} need the fleet's master key: {e}"), None);
                }
            }
        }
        let mgmt = crate::spec::MANAGEMENT_KEY_ENV;
        let mgmt_file = crate::spec::MANAGEMENT_KEY_FILE_ENV;
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
    pub(super) fn billing(&mut self, map: &MarkedMappingNode, defaults: &Defaults) -> Billing {
        let mut billing = Billing {
            markup_rate: defaults.markup_rate.unwrap_or_else(|| Decimal::new(13, 1)),
            monthly_limit_usd: None,
            email: None,
            nip: None,
            address: None,
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
        if let Some((a, at)) = self.scalar(b, "address", "billing.address") {
            billing.address = self
                .check(at, "billing.address", a, super::invoicing::invoice_text(a))
                .map(|()| a.to_string());
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

    pub(super) fn unique_tenant_values(&mut self) {
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
