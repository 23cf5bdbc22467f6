//! A real multi-server fleet (issue 11): three Docker engines — this machine's
//! (`unix://`), one in a network namespace reached over `ssh://` through OpenSSH, one
//! in another reached over `tcp://` with TLS client certificates — one spec, six
//! tenants under load, agents deployed by `apply` shipping to a PostgreSQL that
//! accepts TLS only, each with its own credentials.
//!
//! The load lasts `MAI_FLEET_E2E_LOAD_S` seconds (120 by default; CI sets it short).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use mai_fleet_e2e::hosts::{ssh_key, Access, RemoteEngine};
use mai_fleet_e2e::pg_tls::TlsPostgres;
use mai_fleet_e2e::{fleet_sums_in, psql, require_services, store_sums, Fleet, RunResult};

const DEV: &str = "mai-fleet/tenant:dev";
const SSH_INDEX: u8 = 61;
const TCP_INDEX: u8 = 62;

/// Dropped in this order: the servers first (their directories are inside the
/// fleet's, which goes last), then the database.
struct Setup {
    ssh: RemoteEngine,
    tcp: RemoteEngine,
    _pg: TlsPostgres,
    f: Fleet,
    known_hosts: std::path::PathBuf,
    /// Tenant id → host entry.
    tenants: Vec<(String, &'static str)>,
}

impl Setup {
    fn host(&self, short: &str) -> String {
        format!("{}-{short}", self.f.name)
    }

    /// The spec in `file` (in the test's directory).
    fn spec(
        &self,
        file: &str,
        agent_image: &str,
        images: &BTreeMap<String, &str>,
    ) -> std::path::PathBuf {
        let f = &self.f;
        let dir = f.dir.display();
        let pg = self._pg.port;
        let ca = self._pg.ca();
        let mut s = format!(
            "version: 1\nfleet: {name}\ndefaults:\n  timezone: Europe/Warsaw\n  resources: {{ memory: 128m, cpus: 0.5 }}\n\
             agents:\n  image: {agent_image}\n  database_url: postgres://127.0.0.1:{pg}/fleet?sslmode=verify-full\n  ca_file: {ca}\n  interval: 1s\n\
             hosts:\n\
             \x20 - name: {name}-local\n    docker: unix:///var/run/docker.sock\n    data_root: {dir}/data-local\n\
             \x20 - name: {name}-ssh\n    docker: ssh://root@{ssh_addr}\n    data_root: {dir}/data-ssh\n\
             \x20   ssh: {{ key: {dir}/id_ed25519, known_hosts: {kh} }}\n\
             \x20   agent: {{ database_url: \"postgres://{ssh_gw}:{pg}/fleet?sslmode=verify-full\" }}\n\
             \x20 - name: {name}-tcp\n    docker: tcp://{tcp_addr}:2376\n    data_root: {dir}/data-tcp\n\
             \x20   tls: {{ ca: {dir}/docker-certs/ca.pem, cert: {dir}/docker-certs/client.pem, key: {dir}/docker-certs/client-key.pem }}\n\
             \x20   agent: {{ database_url: \"postgres://{tcp_gw}:{pg}/fleet?sslmode=verify-full\" }}\n\
             tenants:\n",
            name = f.name,
            ca = ca.display(),
            kh = self.known_hosts.display(),
            ssh_addr = self.ssh.address(),
            ssh_gw = self.ssh.gateway(),
            tcp_addr = self.tcp.address(),
            tcp_gw = self.tcp.gateway(),
        );
        for (i, (id, host)) in self.tenants.iter().enumerate() {
            let image = images.get(id).copied().unwrap_or(DEV);
            s.push_str(&format!(
                "  - id: {id}\n    name: Klient {id}\n    org_id: org_{id}\n    host: {name}-{host}\n    image: {image}\n\
                 \x20   openrouter: {{ api_key: \"${{env:E2E_KEY_{i}}}\" }}\n\
                 \x20   billing: {{ email: faktury@{id}.pl, nip: \"5260250274\", markup_rate: 1.3 }}\n\
                 \x20   port: {port}\n    env: {{ SIM_USAGE_PER_MIN: \"600\" }}\n",
                name = f.name,
                port = f.base_port + i as u16,
            ));
        }
        let path = f.dir.join(file);
        std::fs::write(&path, s).unwrap();
        path
    }

    fn engine_of(&self, host: &str) -> Option<&RemoteEngine> {
        match host {
            "ssh" => Some(&self.ssh),
            "tcp" => Some(&self.tcp),
            _ => None,
        }
    }

    /// Container name → (id, started at), on all three engines.
    fn containers(&self) -> BTreeMap<String, (String, String)> {
        let mut out = BTreeMap::new();
        let ps = |args: &[&str]| -> String {
            let o = std::process::Command::new("docker")
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let fmt = "{{.Names}} {{.ID}}";
        let mut lines: Vec<(String, String)> = Vec::new();
        let filter = format!("label=mai-fleet.fleet={}", self.f.name);
        for l in ps(&["ps", "-a", "--filter", &filter, "--format", fmt]).lines() {
            lines.push(("local".into(), l.to_string()));
        }
        for (e, n) in [(&self.ssh, "ssh"), (&self.tcp, "tcp")] {
            for l in e.docker(&["ps", "-a", "--format", fmt]).lines() {
                lines.push((n.into(), l.to_string()));
            }
        }
        for (engine, l) in lines {
            let (name, id) = l.split_once(' ').unwrap();
            let started = match engine.as_str() {
                "local" => ps(&["inspect", "-f", "{{.State.StartedAt}}", name]),
                "ssh" => self
                    .ssh
                    .docker(&["inspect", "-f", "{{.State.StartedAt}}", name]),
                _ => self
                    .tcp
                    .docker(&["inspect", "-f", "{{.State.StartedAt}}", name]),
            };
            out.insert(
                format!("{engine}/{name}"),
                (id.to_string(), started.trim().to_string()),
            );
        }
        out
    }
}

fn timed(f: &Fleet, args: &[&str]) -> (RunResult, Duration) {
    let started = Instant::now();
    let r = f.controller(args);
    (r, started.elapsed())
}

fn apply(f: &Fleet, spec: &Path) -> RunResult {
    f.apply(spec, &[])
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn one_spec_three_engines_ssh_tls_and_local() {
    if !require_services() {
        return;
    }
    let load = Duration::from_secs(
        std::env::var("MAI_FLEET_E2E_LOAD_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(120),
    );
    let mut f = Fleet::new("fleet3");
    let dir = f.dir.clone();
    ssh_key(&dir.join("id_ed25519"));
    let certs = dir.join("docker-certs");
    mai_fleet_e2e::tls::make_certs_for(&certs, &[&format!("10.77.{TCP_INDEX}.2")]);
    let ssh = RemoteEngine::start(
        &format!("s{}", std::process::id() % 10000),
        SSH_INDEX,
        &dir.join("engine-ssh"),
        &Access::Ssh {
            key: dir.join("id_ed25519"),
        },
    );
    let tcp = RemoteEngine::start(
        &format!("t{}", std::process::id() % 10000),
        TCP_INDEX,
        &dir.join("engine-tcp"),
        &Access::Tls {
            certs: certs.clone(),
        },
    );
    let pg = TlsPostgres::start_on(
        &dir.join("pg"),
        f.base_port + 15,
        &[&ssh.gateway(), &tcp.gateway()],
    );
    psql(
        &pg.admin_url(),
        "CREATE ROLE fleet_owner LOGIN CREATEROLE PASSWORD 'owner-pw'",
    );
    psql(&pg.admin_url(), "CREATE DATABASE fleet OWNER fleet_owner");
    f.database_url = format!(
        "postgres://fleet_owner:owner-pw@127.0.0.1:{}/fleet?sslmode=verify-full&sslrootcert={}",
        pg.port,
        pg.ca().display()
    );
    let known_hosts = dir.join("known_hosts");
    std::fs::write(&known_hosts, "").unwrap();
    let tenants: Vec<(String, &str)> = ["l1", "l2", "s1", "s2", "t1", "t2"]
        .iter()
        .map(|s| {
            let host = match &s[..1] {
                "l" => "local",
                "s" => "ssh",
                _ => "tcp",
            };
            (f.id(s), host)
        })
        .collect();
    let setup = Setup {
        ssh,
        tcp,
        _pg: pg,
        f,
        known_hosts: known_hosts.clone(),
        tenants,
    };
    let f = &setup.f;
    // What `manifests/build-images.sh` builds, and `apply` deploys by default.
    let agent_image = format!("mai-fleet/agent:{}", env!("CARGO_PKG_VERSION"));
    let spec = setup.spec("tenants.yaml", &agent_image, &BTreeMap::new());
    assert_eq!(f.controller(&["migrate"]).code, 0);

    // An unknown host key is refused, with the command that would accept it; the
    // other hosts are still planned.
    let plan = f.controller(&["plan", spec.to_str().unwrap()]);
    assert_eq!(plan.code, 2, "{}", plan.all());
    let ssh_host = setup.host("ssh");
    assert!(
        plan.stdout
            .contains(&format!("warning: host {ssh_host} could not be observed"))
            && plan.stdout.contains("is not in")
            && plan
                .stdout
                .contains(&format!("ssh-keyscan -p 22 {}", setup.ssh.address())),
        "{}",
        plan.all()
    );
    // A changed host key (another server's) is refused too, and said so.
    let other_key = std::fs::read_to_string(dir.join("id_ed25519.pub")).unwrap();
    let mut parts = other_key.split_whitespace();
    std::fs::write(
        &known_hosts,
        format!(
            "{} {} {}\n",
            setup.ssh.address(),
            parts.next().unwrap(),
            parts.next().unwrap()
        ),
    )
    .unwrap();
    let plan = f.controller(&["plan", spec.to_str().unwrap()]);
    assert!(
        plan.stdout.contains("CHANGED") && plan.stdout.contains("ssh-keygen -R"),
        "{}",
        plan.all()
    );
    std::fs::write(&known_hosts, setup.ssh.known_hosts_line()).unwrap();

    // First apply: three engines, six tenants, three agents.
    let load_started = Instant::now();
    let first = apply(f, &spec);
    assert_eq!(first.code, 0, "{}", first.all());
    for (id, _) in &setup.tenants {
        assert!(
            first
                .stdout
                .lines()
                .any(|l| l.contains(id.as_str()) && l.contains("usage tracking initialized")),
            "{id} verified with tracking initialized:\n{}",
            first.all()
        );
    }
    // Images the remote hosts lacked were sent over the engine connection, once each.
    for h in ["ssh", "tcp"] {
        let host = setup.host(h);
        let sends = first
            .stderr
            .lines()
            .filter(|l| l.contains(&format!("{host}/-: sending {DEV}")))
            .count();
        assert_eq!(sends, 1, "{host}:\n{}", first.all());
    }
    assert_eq!(
        first.stdout.matches(": create ok ").count(),
        3,
        "three agents deployed:\n{}",
        first.all()
    );
    // Each engine lists exactly its own tenants and one agent.
    for (short, engine) in [("ssh", &setup.ssh), ("tcp", &setup.tcp)] {
        let mut expected: Vec<String> = setup
            .tenants
            .iter()
            .filter(|(_, h)| *h == short)
            .map(|(id, _)| format!("mai-{id}"))
            .collect();
        expected.push(format!("mai-agent-{}", setup.host(short)));
        expected.sort();
        assert_eq!(engine.containers(), expected, "engine {short}");
        // The tenant's port is on the server's loopback only: verification went
        // through the engine and the agent, not to the port.
        let t = engine
            .inspect(&format!(
                "mai-{}",
                setup.tenants.iter().find(|(_, h)| *h == short).unwrap().0
            ))
            .unwrap();
        let binding = &t["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostIp"];
        assert_eq!(binding, "127.0.0.1");
        let agent = engine
            .inspect(&format!("mai-agent-{}", setup.host(short)))
            .unwrap();
        assert_eq!(agent["HostConfig"]["RestartPolicy"]["Name"], "always");
        let binds = agent["HostConfig"]["Binds"].to_string();
        assert!(
            binds.contains("/var/run/docker.sock:/var/run/docker.sock:ro"),
            "{binds}"
        );
        assert!(
            binds.contains(&format!("data-{short}:")) && binds.contains(":ro"),
            "{binds}"
        );
        // No password in the agent's configuration: it is a file inside.
        assert!(!agent["Config"].to_string().contains("owner-pw"));
        assert!(!agent["Config"].to_string().contains("@127.0.0.1"));
    }
    let local_agent = f
        .inspect(&format!("mai-agent-{}", setup.host("local")))
        .unwrap();
    assert!(!local_agent["Config"]["Env"]
        .to_string()
        .contains("postgres://"));

    // Agents ship over TLS, each as its own role.
    wait_until("three agents' heartbeats", Duration::from_secs(30), || {
        f.psql("SELECT count(*) FROM agent_heartbeats") == "3"
    });
    // Read as the superuser: others' TLS state is hidden from the fleet's owner.
    let sessions = psql(
        &setup._pg.admin_url(),
        "SELECT string_agg(DISTINCT a.usename || ':' || s.ssl, ',' ORDER BY a.usename || ':' || s.ssl)
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename LIKE 'mai_agent_%'",
    );
    let roles: Vec<&str> = sessions.split(',').collect();
    assert_eq!(roles.len(), 3, "{sessions}");
    assert!(
        roles.iter().all(|r| r.ends_with(":true")),
        "all over TLS: {sessions}"
    );

    // `status` shows each host's agent.
    let status = f.controller(&["status"]);
    for h in ["local", "ssh", "tcp"] {
        let host = setup.host(h);
        assert!(
            status.stdout.lines().any(|l| l.starts_with(&host)
                && l.contains(env!("CARGO_PKG_VERSION"))
                && l.contains("UTC")),
            "{host} agent in status:\n{}",
            status.all()
        );
    }

    // A second apply restarts nothing, on any engine.
    let before = setup.containers();
    let second = apply(f, &spec);
    assert_eq!(second.code, 0, "{}", second.all());
    assert_eq!(setup.containers(), before, "nothing restarted");
    let plan = f.controller(&["plan", spec.to_str().unwrap()]);
    assert_eq!(plan.code, 0, "{}", plan.all());

    // An agent killed: agent_silent fires; the next apply brings it back.
    let tcp_host = setup.host("tcp");
    setup
        .tcp
        .docker(&["kill", &format!("mai-agent-{tcp_host}")]);
    let alerts_config = dir.join("alerts.yaml");
    std::fs::write(&alerts_config, "agent_interval: 1s\n").unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let evaluated = f
        .controller_command(&["alerts", "evaluate", "--output", "json"])
        .env("MAI_FLEET_ALERTS_CONFIG", &alerts_config)
        .output()
        .unwrap();
    assert!(evaluated.status.success());
    let firing = f.psql(&format!(
        "SELECT count(*) FROM alerts WHERE rule = 'agent_silent' AND state = 'firing' AND labels->>'host' = '{tcp_host}'"
    ));
    assert_eq!(
        firing,
        "1",
        "{}",
        String::from_utf8_lossy(&evaluated.stdout)
    );
    let restore = apply(f, &spec);
    assert_eq!(restore.code, 0, "{}", restore.all());
    assert!(
        restore
            .stdout
            .contains(&format!("agent {tcp_host}: start ok")),
        "{}",
        restore.all()
    );

    // A new agent image: only agents roll; tenants are untouched.
    std::process::Command::new("docker")
        .args(["tag", &agent_image, "mai-fleet/agent:e2e-roll"])
        .output()
        .unwrap();
    let tenants_before: BTreeMap<_, _> = setup
        .containers()
        .into_iter()
        .filter(|(k, _)| !k.contains("mai-agent-"))
        .collect();
    let rolled_spec = setup.spec("rolled.yaml", "mai-fleet/agent:e2e-roll", &BTreeMap::new());
    let roll = apply(f, &rolled_spec);
    assert_eq!(roll.code, 0, "{}", roll.all());
    assert_eq!(
        roll.stdout.matches(": roll ok").count(),
        3,
        "{}",
        roll.all()
    );
    let tenants_after: BTreeMap<_, _> = setup
        .containers()
        .into_iter()
        .filter(|(k, _)| !k.contains("mai-agent-"))
        .collect();
    assert_eq!(
        tenants_after, tenants_before,
        "tenants untouched by the roll"
    );
    assert_eq!(
        setup.ssh.inspect(&format!("mai-agent-{ssh_host}")).unwrap()["Config"]["Image"],
        "mai-fleet/agent:e2e-roll"
    );

    // An agent given a CA that did not sign the database's certificate cannot ship:
    // its deployment fails (no heartbeat) and says why; the right CA mends it.
    let text = std::fs::read_to_string(&rolled_spec).unwrap();
    let tcp_gw = setup.tcp.gateway();
    let rogue = text.replace(
        &format!("agent: {{ database_url: \"postgres://{tcp_gw}:{}/fleet?sslmode=verify-full\" }}", setup._pg.port),
        &format!(
            "agent: {{ database_url: \"postgres://{tcp_gw}:{}/fleet?sslmode=verify-full\", ca_file: {} }}",
            setup._pg.port,
            setup._pg.rogue_ca().display()
        ),
    );
    assert_ne!(rogue, text);
    let rogue_spec = dir.join("rogue-ca.yaml");
    std::fs::write(&rogue_spec, rogue).unwrap();
    let refused = f.controller(&[
        "apply",
        rogue_spec.to_str().unwrap(),
        "--settle",
        "1s",
        "--verify-timeout",
        "8s",
    ]);
    assert_eq!(refused.code, 3, "{}", refused.all());
    let line = refused
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("agent {tcp_host}: roll FAILED")))
        .unwrap_or_else(|| panic!("{}", refused.all()));
    assert!(
        line.contains("no heartbeat") && line.to_lowercase().contains("certificate"),
        "{line}"
    );
    let mended = apply(f, &rolled_spec);
    assert_eq!(mended.code, 0, "{}", mended.all());

    // A tenant whose tracking does not initialise, on a server whose ports only it
    // reaches, is still rolled back.
    let s1 = setup.tenants[2].0.clone();
    let mut images = BTreeMap::new();
    images.insert(s1.clone(), "mai-fleet/tenant:uninit");
    let broken = setup.spec("broken.yaml", "mai-fleet/agent:e2e-roll", &images);
    let rb = apply(f, &broken);
    assert_eq!(rb.code, 3, "{}", rb.all());
    assert!(
        rb.stdout.lines().any(|l| l.contains(s1.as_str())
            && l.contains("ROLLED BACK")
            && l.contains("not initialized")),
        "{}",
        rb.all()
    );
    assert_eq!(
        setup.ssh.inspect(&format!("mai-{s1}")).unwrap()["Config"]["Image"],
        DEV,
        "the previous container serves again"
    );

    // The ssh server gone: its tenants are unreachable, the rest applied, exit 3,
    // within 30 s; back: plan exits 0.
    setup.ssh.stop_sshd();
    let (down, took) = timed(
        f,
        &["apply", rolled_spec.to_str().unwrap(), "--settle", "1s"],
    );
    assert_eq!(down.code, 3, "{}", down.all());
    assert!(took < Duration::from_secs(30), "took {took:?}");
    for (id, h) in &setup.tenants {
        let line = down
            .stdout
            .lines()
            .find(|l| l.contains(id.as_str()))
            .unwrap_or_default();
        if *h == "ssh" {
            assert!(line.contains("unreachable"), "{line}\n{}", down.all());
        } else {
            assert!(line.contains(" ok "), "{line}\n{}", down.all());
        }
    }
    setup.ssh.start_sshd();
    let plan = f.controller(&["plan", rolled_spec.to_str().unwrap()]);
    assert_eq!(plan.code, 0, "{}", plan.all());

    // The rest of the load, then the stores frozen: the fleet must equal every store
    // per tenant, day, user and model, nothing lost and nothing doubled.
    if let Some(rest) = load.checked_sub(load_started.elapsed()) {
        std::thread::sleep(rest);
    }
    for (id, h) in &setup.tenants {
        let name = format!("mai-{id}");
        match setup.engine_of(h) {
            Some(e) => {
                e.docker(&["stop", &name]);
            }
            None => {
                std::process::Command::new("docker")
                    .args(["stop", &name])
                    .output()
                    .unwrap();
            }
        }
    }
    let mut last = String::new();
    let settled = Instant::now();
    loop {
        let mut differ = Vec::new();
        for (id, h) in &setup.tenants {
            let store = store_sums(
                &dir.join(format!("data-{h}")).join(id).join("data"),
                &format!("org_{id}"),
            );
            assert!(store.len() >= 3, "{id}: too little load to test: {store:?}");
            if fleet_sums_in(&f.database_url, id) != store {
                differ.push(id.clone());
            }
        }
        if differ.is_empty() {
            break;
        }
        last = format!("{differ:?}");
        assert!(
            settled.elapsed() < Duration::from_secs(30),
            "fleet and stores differ for {last}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(f.psql("SELECT count(*) FROM store_regressions"), "0");
    drop(last);
}

/// Removes a container by name when dropped (one no fleet's cleanup knows).
struct Squatter(String);

impl Drop for Squatter {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &self.0])
            .output();
    }
}

/// A container that is not this fleet's agent (another fleet's, or anyone's) under
/// the name this fleet's agent would take is never removed to make room: the agent's
/// deployment fails and says why; the other host's agent and the tenants go on.
#[test]
fn a_container_under_the_agents_name_that_is_not_ours_is_left_alone() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("squat");
    assert_eq!(f.controller(&["migrate"]).code, 0);
    let host_a = format!("{}-a", f.name);
    let squatter = Squatter(format!("mai-agent-{host_a}"));
    let run = std::process::Command::new("docker")
        .args(["run", "-d", "--name", &squatter.0])
        .args(["--label", &format!("mai-fleet.agent-of={host_a}")])
        .args(["--label", "mai-fleet.fleet=another-fleet"])
        .args([
            "-e",
            &format!("OPENROUTER_API_KEY={}", mai_fleet_e2e::KEY_C),
        ])
        .arg(DEV)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let id_before = f.inspect(&squatter.0).unwrap()["Id"].clone();

    let location = f
        .database_url
        .rsplit_once('@')
        .map(|(_, l)| l.to_string())
        .unwrap();
    let (a, b) = (f.id("a"), f.id("b"));
    let spec = f.spec(&[(&a, "a", DEV, ""), (&b, "b", DEV, "")]).replacen(
        "hosts:\n",
        &format!("agents: {{ database_url: \"postgres://{location}\", interval: 1s }}\nhosts:\n"),
        1,
    );
    let spec = f.write_spec(&spec);
    let r = f.apply(&spec, &[]);
    assert_eq!(r.code, 3, "{}", r.all());
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("agent {host_a}:")))
        .unwrap_or_else(|| panic!("{}", r.all()));
    assert!(
        line.contains("FAILED") && line.contains("not this fleet's agent"),
        "{line}"
    );
    assert!(
        r.stdout.contains(&format!("agent {}-b: create ok", f.name)),
        "{}",
        r.all()
    );
    assert_eq!(
        f.inspect(&squatter.0).map(|c| c["Id"].clone()),
        Some(id_before),
        "the other container is still there, untouched"
    );
    for id in [&a, &b] {
        assert!(f.inspect(&format!("mai-{id}")).is_some(), "{id} applied");
    }
}
