//! The fleet-wide sections: `defaults` (and the env maps and `resources` they share
//! with tenants) and `backups`.

use super::*;

impl Loader<'_> {
    pub(super) fn defaults(&mut self, node: &Node) -> Defaults {
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
    pub(super) fn env_map(
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

    pub(super) fn resources(&mut self, node: &Node, what: &str) -> Resources {
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

    pub(super) fn backups(&mut self, node: &Node) -> BackupLimits {
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
}
