//! Support for the end-to-end tests: a throwaway fleet on the local Docker engine,
//! its own database, and the `controller` binary run as an operator would run it.
//!
//! The tests use the `docker` and `psql` command-line clients to check results, as
//! an operator would. They need the tenant images (tests/tenant/build-images.sh) and
//! `DATABASE_URL` / `MAI_FLEET_PG_ADMIN_URL` (scripts/postgres.sh); scripts/test.sh
//! provides both.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU16, Ordering};

pub mod dashboard;
pub mod fakes;
pub mod hosts;
pub mod ksef;
pub mod nbp;
pub mod openrouter;
pub mod pg_tls;
pub mod tls;

pub const KEY_A: &str = "sk-or-v1-a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
pub const KEY_B: &str = "sk-or-v1-b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
pub const KEY_C: &str = "sk-or-v1-c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3";
pub const KEYS: [&str; 3] = [KEY_A, KEY_B, KEY_C];

/// The key of tenant `i` in [`Fleet::spec`] (`E2E_KEY_<i>`): one of [`KEYS`], then
/// keys of their own (one key may serve only one tenant).
pub fn key(i: usize) -> String {
    KEYS.get(i)
        .map_or_else(|| format!("sk-or-v1-{i:064x}"), |k| k.to_string())
}

/// The repository's root (scripts, target/).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The directory holding the workspace's built binaries.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("MAI_FLEET_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test> -> target/<profile>
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub fn controller_bin() -> PathBuf {
    let bin = bin_dir().join("controller");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Whether a test that needs Docker and Postgres can run; on CI it must.
pub fn require_services() -> bool {
    let docker = Command::new("docker")
        .args(["image", "inspect", "mai-fleet/tenant:dev"])
        .output();
    let docker_ok = docker.map(|o| o.status.success()).unwrap_or(false);
    let pg_ok = std::env::var("MAI_FLEET_PG_ADMIN_URL").is_ok();
    if docker_ok && pg_ok {
        return true;
    }
    let why = format!(
        "needs the Docker engine with mai-fleet/tenant:dev ({}) and PostgreSQL ({}); run scripts/test.sh",
        if docker_ok { "ok" } else { "missing" },
        if pg_ok { "ok" } else { "MAI_FLEET_PG_ADMIN_URL unset" }
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI: {why}");
    }
    eprintln!("SKIPPED: {why}");
    false
}

static NEXT_PORT_BLOCK: AtomicU16 = AtomicU16::new(0);

/// The first port of 20 for one test, all free when it is chosen. Test ports live in
/// 20000–31999: below the kernel's ephemeral range (32768 and up), where client
/// sockets would collide with them, and above the test cluster's (tests/k8s). The
/// pid spreads runs apart; a block something else listens in is skipped, so a
/// service of the machine's never becomes a test's dashboard or tenant.
fn free_port_block() -> u16 {
    let start = (std::process::id() % 30) as u16 * 400;
    loop {
        let block = NEXT_PORT_BLOCK.fetch_add(1, Ordering::SeqCst);
        let base = 20000 + (start + block * 20) % 12000;
        // 0.0.0.0 conflicts with a listener on any IPv4 address and with a dual-stack
        // [::] one (docker-proxy's published ports).
        if (base..base + 20).all(|p| std::net::TcpListener::bind(("0.0.0.0", p)).is_ok()) {
            return base;
        }
        assert!(block < 600, "no free block of 20 ports in 20000-31999");
    }
}

pub struct RunResult {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl RunResult {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl From<Output> for RunResult {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A fleet of this test's own: fleet name, host entries, ports, data directories and
/// database are unique to it, and its containers are removed when it is dropped.
pub struct Fleet {
    pub name: String,
    pub dir: PathBuf,
    pub base_port: u16,
    pub database_url: String,
    admin_url: String,
    /// Every output of the controller in this test, to check for leaked keys.
    pub transcript: std::cell::RefCell<String>,
}

impl Fleet {
    pub fn new(test: &str) -> Self {
        let name = format!("e2e-{test}-{}", std::process::id()).replace('_', "-");
        let dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let base_port = free_port_block();
        let admin_url = std::env::var("MAI_FLEET_PG_ADMIN_URL").expect("MAI_FLEET_PG_ADMIN_URL");
        let database_url = fresh_database(&admin_url, &name.replace('-', "_"));
        let fleet = Self {
            name,
            dir,
            base_port,
            database_url,
            admin_url,
            transcript: Default::default(),
        };
        fleet.remove_containers();
        fleet
    }

    /// A tenant id unique to this test run (container names are engine-wide).
    pub fn id(&self, short: &str) -> String {
        let tag = self.name.trim_start_matches("e2e-");
        format!("{}-{short}", &tag[..tag.len().min(30)])
    }

    pub fn data_root(&self, host: &str) -> PathBuf {
        self.dir.join(host)
    }

    /// A spec of `tenants` (id, host entry, image, extra env lines) on host entries
    /// `a` and `b`, both on the local engine.
    pub fn spec(&self, tenants: &[(&str, &str, &str, &str)]) -> String {
        let mut s = format!(
            "version: 1\nfleet: {}\ndefaults:\n  timezone: Europe/Warsaw\n  markup_rate: 1.3\n  resources: {{ memory: 128m, cpus: 0.5 }}\n  env: {{ LOG_LEVEL: INFO }}\nhosts:\n",
            self.name
        );
        for h in ["a", "b"] {
            s.push_str(&format!(
                "  - name: {}-{h}\n    docker: unix:///var/run/docker.sock\n    data_root: {}\n",
                self.name,
                self.data_root(h).display()
            ));
        }
        s.push_str("tenants:\n");
        for (i, (id, host, image, env)) in tenants.iter().enumerate() {
            s.push_str(&format!(
                "  - id: {id}\n    name: Klient {id}\n    org_id: org_{id}\n    host: {}-{host}\n    image: {image}\n    openrouter: {{ api_key: \"${{env:E2E_KEY_{i}}}\" }}\n    billing: {{ email: faktury@{id}.pl, nip: \"5260250274\" }}\n    port: {}\n    env: {{ {env} }}\n",
                self.name,
                self.base_port + i as u16
            ));
        }
        s
    }

    pub fn write_spec(&self, text: &str) -> PathBuf {
        let path = self.dir.join("tenants.yaml");
        std::fs::write(&path, text).expect("write spec");
        path
    }

    pub fn controller(&self, args: &[&str]) -> RunResult {
        let out: RunResult = self
            .controller_command(args)
            .output()
            .expect("run controller")
            .into();
        let mut t = self.transcript.borrow_mut();
        t.push_str(&out.stdout);
        t.push_str(&out.stderr);
        out
    }

    pub fn controller_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(controller_bin());
        cmd.args(args)
            .env("DATABASE_URL", &self.database_url)
            .env("MAI_FLEET_ACTOR", "e2e@test")
            // ssh master connections of this test's own, never an earlier run's.
            .env("MAI_FLEET_SSH_CONTROL_DIR", self.dir.join("ssh-control"));
        for i in 0..20 {
            cmd.env(format!("E2E_KEY_{i}"), key(i));
        }
        cmd
    }

    /// One `controller alerts evaluate` with the alerts file `config` and the
    /// backups directory `backups` (for `backup_missing`), which must succeed.
    pub fn evaluate_alerts(&self, config: &Path, backups: Option<&Path>) {
        let mut cmd = self.controller_command(&["alerts", "evaluate"]);
        cmd.env("MAI_FLEET_ALERTS_CONFIG", config);
        if let Some(dir) = backups {
            cmd.env("MAI_FLEET_BACKUP_DIR", dir);
        }
        let out = cmd.output().expect("alerts evaluate");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `controller restore TENANT --from BACKUP --spec SPEC` (`--settle 1s` unless
    /// `extra` says otherwise).
    pub fn restore(&self, tenant: &str, backup: &Path, spec: &Path, extra: &[&str]) -> RunResult {
        let (from, spec) = (backup.display().to_string(), spec.display().to_string());
        let mut args = vec!["restore", tenant, "--from", &from, "--spec", &spec];
        if !extra.contains(&"--settle") {
            args.extend_from_slice(&["--settle", "1s"]);
        }
        args.extend_from_slice(extra);
        self.controller(&args)
    }

    pub fn apply(&self, spec: &Path, extra: &[&str]) -> RunResult {
        let mut args = vec![
            "apply",
            spec.to_str().expect("utf-8 path"),
            "--settle",
            "1s",
            "--verify-timeout",
            "30s",
        ];
        args.extend_from_slice(extra);
        self.controller(&args)
    }

    /// [`Fleet::apply`] that must succeed; its output is shown when it does not.
    pub fn apply_ok(&self, spec: &Path, extra: &[&str]) -> RunResult {
        let r = self.apply(spec, extra);
        assert_eq!(r.code, 0, "apply failed:\n{}", r.all());
        r
    }

    /// `docker inspect` of a container as JSON.
    pub fn inspect(&self, name: &str) -> Option<serde_json::Value> {
        let out = Command::new("docker")
            .args(["inspect", name])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.get(0).cloned()
    }

    /// Names of this fleet's containers, sorted.
    pub fn containers(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args([
                "ps",
                "-a",
                "--filter",
                &format!("label=mai-fleet.fleet={}", self.name),
                "--format",
                "{{.Names}}",
            ])
            .output()
            .expect("docker ps");
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        names.sort();
        names
    }

    /// The health answer of a tenant that may still be starting (up to 10 s).
    pub fn wait_health(&self, port: u16) -> Option<serde_json::Value> {
        for _ in 0..40 {
            if let Some(h) = self.health(port) {
                return Some(h);
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        None
    }

    pub fn health(&self, port: u16) -> Option<serde_json::Value> {
        http(port, "GET", "/health/usage-tracking", None, &[])
            .and_then(|body| serde_json::from_str(&body).ok())
    }

    pub fn psql(&self, sql: &str) -> String {
        psql(&self.database_url, sql)
    }

    /// [`Fleet::psql`] as the server's superuser, for what the fleet's own owner role
    /// may not do (an operator's database settings, catalogs of passwords).
    pub fn psql_admin(&self, sql: &str) -> String {
        let db = self.name.replace('-', "_");
        let server = self
            .admin_url
            .rsplit_once('/')
            .map_or(self.admin_url.as_str(), |(s, _)| s);
        psql(&format!("{server}/{db}"), sql)
    }

    /// Starts tenant `id`'s container by hand on host entry `host`, with this
    /// fleet's labels but no spec hash and only the `env` given (the seeds'
    /// incident); its data directory is the one apply would use.
    pub fn start_by_hand(
        &self,
        id: &str,
        host: &str,
        port: Option<u16>,
        env: &[String],
    ) -> PathBuf {
        let data = self.data_root(host).join(id).join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        let mut cmd = Command::new("docker");
        cmd.args(["run", "-d", "--name", &format!("mai-{id}")]);
        if let Some(p) = port {
            cmd.args(["-p", &format!("{p}:8080")]);
        }
        cmd.args([
            "--label",
            "mai-fleet.managed=true",
            "--label",
            &format!("mai-fleet.tenant={id}"),
        ])
        .args(["--label", &format!("mai-fleet.host={}-{host}", self.name)])
        .args(["--label", &format!("mai-fleet.fleet={}", self.name)]);
        for e in env {
            cmd.args(["-e", e]);
        }
        let out = cmd
            .args([
                "-v",
                &format!("{}:/app/backend/data", data.display()),
                "mai-fleet/tenant:dev",
            ])
            .output()
            .expect("docker run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        data
    }

    /// A dashboard user `name` with `password` (`controller user add`).
    pub fn add_user(&self, name: &str, password: &str) {
        use std::io::Write;
        let mut child = self
            .controller_command(&["user", "add", name, "--password-stdin"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("user add");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{password}\n").as_bytes())
            .expect("password");
        assert!(child.wait().expect("user add").success(), "user add");
    }

    /// `controller serve` on 127.0.0.1:`port` with `env`, once `/healthz` answers.
    pub fn serve_dashboard(&self, port: u16, env: &[(&str, &str)]) -> Running {
        let mut cmd = self.controller_command(&[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--no-rate-sync",
        ]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log_path = self.dir.join(format!("serve-{port}.log"));
        let log = std::fs::File::create(&log_path).expect("serve log");
        let mut server = Running(
            cmd.stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .expect("serve"),
        );
        for _ in 0..100 {
            // A dashboard that exited is not answered for by whoever holds the port.
            if let Ok(Some(status)) = server.0.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("serve on port {port} exited ({status}): {log}");
            }
            if http_full(port, "GET", "/healthz", None, &[]).is_some_and(|r| r.status == 200) {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        panic!("serve on port {port} is not up after 10 s: {log}");
    }

    /// The agent of host entry `host` (`a`, `b`) against this fleet's database.
    pub fn agent_command(&self, host: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin_dir().join("agent"));
        cmd.arg("--host")
            .arg(format!("{}-{host}", self.name))
            .args(args)
            .env("DATABASE_URL", &self.database_url)
            .env("MAI_FLEET_SPOOL_DIR", self.dir.join("spool"));
        cmd
    }

    /// One agent cycle that must succeed; its log.
    pub fn agent_once(&self, host: &str) -> String {
        let out = self
            .agent_command(host, &["--once"])
            .output()
            .expect("run agent");
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "agent --once failed: {text}");
        text
    }

    fn remove_containers(&self) {
        remove_containers_labelled(&format!("mai-fleet.fleet={}", self.name));
        let _ = Command::new("docker")
            .args(["network", "rm", &format!("mai-fleet-net-{}", self.name)])
            .output();
        // Spools of agents `apply` deployed here (hosts named after the fleet).
        if let Ok(out) = Command::new("docker")
            .args([
                "volume",
                "ls",
                "-q",
                "--filter",
                &format!("name=mai-agent-{}", self.name),
            ])
            .output()
        {
            for v in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new("docker")
                    .args(["volume", "rm", "-f", v])
                    .output();
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.remove_containers();
        let _ = std::fs::remove_dir_all(&self.dir);
        let db = self.name.replace('-', "_");
        let _ = Command::new("psql")
            .args([
                &self.admin_url,
                "-qAtc",
                &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            ])
            .output();
        // Agent roles are cluster-wide and outlive the database.
        let drop_roles = format!(
            "DO $$ DECLARE r TEXT; BEGIN FOR r IN SELECT rolname FROM pg_roles WHERE rolname LIKE 'mai_agent_{db}%' \
             LOOP EXECUTE format('DROP ROLE %I', r); END LOOP; END $$"
        );
        let _ = Command::new("psql")
            .args([&self.admin_url, "-qAtc", &drop_roles])
            .output();
    }
}

/// The role the tests' controllers work as: the owner of their databases, allowed to
/// create the agents' roles, and not a superuser (docs/security.md). Made once per
/// test process with a password of its own.
pub const OWNER_ROLE: &str = "mai_fleet_e2e";

fn owner_password(admin_url: &str) -> &'static str {
    static PASSWORD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PASSWORD.get_or_init(|| {
        let mut bytes = [0u8; 16];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").expect("/dev/urandom"),
            &mut bytes,
        )
        .expect("random bytes");
        let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        psql(
            admin_url,
            &format!(
                "DO $$ BEGIN CREATE ROLE {OWNER_ROLE} LOGIN CREATEROLE NOSUPERUSER; \
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$; \
                 ALTER ROLE {OWNER_ROLE} LOGIN CREATEROLE NOSUPERUSER PASSWORD '{password}'"
            ),
        );
        password
    })
}

/// Drops and recreates database `db` on the server of `admin_url`, owned by
/// [`OWNER_ROLE`]; its URL as that role.
pub fn fresh_database(admin_url: &str, db: &str) -> String {
    let password = owner_password(admin_url);
    psql(
        admin_url,
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    );
    psql(
        admin_url,
        &format!("CREATE DATABASE {db} OWNER {OWNER_ROLE}"),
    );
    let server = admin_url.rsplit_once('/').map_or(admin_url, |(s, _)| s);
    let server = server
        .split_once("://")
        .map(|(scheme, rest)| {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://{OWNER_ROLE}:{password}@{host}")
        })
        .unwrap_or_else(|| server.to_string());
    format!("{server}/{db}")
}

/// A process of the test's (agent, server) killed when dropped, so that a failing
/// test leaves none behind.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Force-removes every container carrying `label` (`key=value`).
pub fn remove_containers_labelled(label: &str) {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={label}")])
        .output();
    if let Ok(out) = out {
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .arg("rm")
                .arg("-f")
                .args(&ids)
                .output();
        }
    }
}

/// Like [`psql`], but a failing statement is an `Err` with psql's message.
pub fn try_psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .expect("psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A minimal HTTP/1.0 exchange on loopback; returns the body.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Option<String> {
    http_full(port, method, path, body, headers).map(|r| r.body)
}

/// An HTTP answer: status, headers (names lower-cased) and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub fn http_full(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Option<HttpResponse> {
    http_full_from(None, port, method, path, body, headers)
}

/// [`http_full`] from a chosen loopback address (127.0.0.2, …): another client, as
/// far as the server can tell.
pub fn http_full_from(
    from: Option<std::net::IpAddr>,
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Option<HttpResponse> {
    use std::io::{Read, Write};
    let server = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s: std::net::TcpStream = match from {
        None => std::net::TcpStream::connect(server).ok()?,
        Some(ip) => {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            socket.bind(&std::net::SocketAddr::new(ip, 0).into()).ok()?;
            socket.connect(&server.into()).ok()?;
            socket.into()
        }
    };
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let resp = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(HttpResponse {
        status,
        headers,
        body: body.to_string(),
    })
}

/// Sends one chat completion to a tenant, as a user of the app would.
pub fn chat(port: u16, user: &str, model: &str) -> Option<serde_json::Value> {
    let body = format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"Ile kosztuje VAT?"}}]}}"#
    );
    http(
        port,
        "POST",
        "/api/chat/completions",
        Some(&body),
        &[("X-User-Id", user)],
    )
    .and_then(|b| serde_json::from_str(&b).ok())
}

/// Tokens the tenant recorded in its own store (`client_daily_usage`), read from the
/// data directory on the host.
pub fn store_tokens(data_dir: &Path) -> i64 {
    let db = data_dir.join("webui.db");
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    conn.query_row(
        "SELECT COALESCE(SUM(total_tokens), 0) FROM client_daily_usage",
        [],
        |r| r.get(0),
    )
    .expect("query usage")
}

/// A store (a tenant's or a backup's) read-only, waiting out the app's locks.
pub fn open_store(data_dir: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("webui.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the store");
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy timeout");
    conn
}

/// The tokens of organization `org` in a tenant's own store, read while the app may
/// be writing (read-only, waiting out its locks).
pub fn store_org_tokens(data_dir: &Path, org: &str) -> i64 {
    let conn = open_store(data_dir);
    conn.query_row(
        "SELECT coalesce(sum(total_tokens), 0) FROM client_daily_usage WHERE client_org_id = ?1",
        [org],
        |r| r.get(0),
    )
    .expect("query usage")
}

/// `PRAGMA integrity_check` of the store in `data_dir` (a tenant's or a backup's),
/// read-only: "ok" for a sound one.
pub fn store_integrity(data_dir: &Path) -> String {
    let conn = open_store(data_dir);
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

/// Sums per (day), (user, day) and (model, day) in a tenant's own store, to 6 places,
/// as `key|tokens|requests|raw_cost` lines sorted: what the fleet must hold.
pub fn store_sums(data_dir: &Path, org: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("webui.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open store");
    let mut out = Vec::new();
    for (key, table) in [
        ("usage_date", "client_daily_usage"),
        ("user_id || ' ' || usage_date", "client_user_daily_usage"),
        (
            "model_name || ' ' || usage_date",
            "client_model_daily_usage",
        ),
    ] {
        let sql = format!("SELECT '{table} ' || {key}, total_tokens, total_requests, raw_cost FROM {table} WHERE client_org_id = ?1");
        let mut stmt = conn.prepare(&sql).unwrap();
        let rows = stmt
            .query_map([org], |r| {
                Ok(format!(
                    "{}|{}|{}|{:.6}",
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, f64>(3)?
                ))
            })
            .unwrap();
        out.extend(rows.map(Result::unwrap));
    }
    out.sort();
    out
}

/// The fleet's sums of `tenant` in the database at `url`, as [`store_sums`] has them.
pub fn fleet_sums_in(url: &str, tenant: &str) -> Vec<String> {
    let sql = format!(
        "SELECT 'client_daily_usage ' || usage_date || '|' || total_tokens || '|' || total_requests || '|' || raw_cost FROM usage_daily WHERE tenant_id = '{tenant}'
         UNION ALL SELECT 'client_user_daily_usage ' || user_id || ' ' || usage_date || '|' || total_tokens || '|' || total_requests || '|' || raw_cost FROM usage_user_daily WHERE tenant_id = '{tenant}'
         UNION ALL SELECT 'client_model_daily_usage ' || model_name || ' ' || usage_date || '|' || total_tokens || '|' || total_requests || '|' || raw_cost FROM usage_model_daily WHERE tenant_id = '{tenant}'"
    );
    let mut rows: Vec<String> = psql(url, &sql).lines().map(str::to_string).collect();
    rows.sort();
    rows
}

/// A PostgreSQL server of one test's own, to stop and start without disturbing the
/// tests that share the main one. Removed when dropped.
pub struct PrivatePostgres {
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
    pub url: String,
}

impl PrivatePostgres {
    pub fn start(name: &str, port: u16) -> Self {
        let bindir = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL from the OS packages")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .max()
            .expect("a PostgreSQL version");
        let dir = std::env::temp_dir().join(format!("{name}-pg"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("pg dir");
        let pg = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/mai_fleet"),
            dir,
            bindir,
            port,
        };
        let _ = Command::new("chown")
            .args(["postgres:", pg.dir.to_str().unwrap_or_default()])
            .output();
        let out = pg.as_postgres(
            "initdb",
            &[
                "-D",
                pg.dir.to_str().unwrap_or_default(),
                "-U",
                "postgres",
                "--auth=trust",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.resume();
        psql(
            &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            "CREATE DATABASE mai_fleet",
        );
        pg
    }

    fn as_postgres(&self, tool: &str, args: &[&str]) -> Output {
        let bin = self.bindir.join(tool);
        let running_as_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false);
        let mut cmd = if running_as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&bin);
            c
        } else {
            Command::new(&bin)
        };
        cmd.args(args).output().expect("run a PostgreSQL tool")
    }

    /// Stops the server now (`fast`: connections are cut, as in an outage).
    pub fn stop(&self) {
        let out = self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                self.dir.to_str().unwrap_or_default(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn resume(&self) {
        let opts = format!(
            "-p {} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port
        );
        let log = self.dir.join("server.log");
        let out = self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                self.dir.to_str().unwrap_or_default(),
                "-w",
                "-l",
                log.to_str().unwrap_or_default(),
                "-o",
                &opts,
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                self.dir.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "stop",
            ],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Seconds from `MAI_FLEET_E2E_<NAME>` when set, else `default`: the soak figures of
/// the issues (minutes) are run by setting them; CI runs the short ones.
pub fn seconds(name: &str, default: u64) -> std::time::Duration {
    let secs = std::env::var(format!("MAI_FLEET_E2E_{name}"))
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    std::time::Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flake of a dashboard started on the test cluster's etcd port: a block
    /// with something listening in it is never handed to a test.
    #[test]
    fn a_port_block_with_a_listener_in_it_is_skipped() {
        let start = (std::process::id() % 30) as u16 * 400;
        let next = NEXT_PORT_BLOCK.load(Ordering::SeqCst);
        let taken = 20000 + (start + next * 20) % 12000 + 10;
        let _listener = std::net::TcpListener::bind(("127.0.0.1", taken)).unwrap();
        let base = free_port_block();
        assert!(
            !(base..base + 20).contains(&taken),
            "block {base} holds the taken port {taken}"
        );
        assert!((20000..32000).contains(&base) && base + 20 <= 32000);
    }
}
