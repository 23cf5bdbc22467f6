//! `apply` over three engines × N tenants against one engine × 3N (issue 11), and
//! what an `ssh://` engine costs per host.
//!
//!     cargo build --release --bins && cargo run --release --bin bench-hosts [-- 20]
//!
//! The three engines: this machine's (`unix://`), one in a network namespace over
//! `ssh://` through OpenSSH, one in another over `tcp://` with TLS client
//! certificates (tests/hosts/engine.sh; run as root). The one engine: this machine's.
//! For each: a fresh apply (verification included) and no-op applies (the median of
//! `BENCH_SSH_RUNS`), in one run.
//! The namespaced engines use the vfs storage driver (each container's root file
//! system is a full copy) where this machine's uses overlay2: their fresh creates cost
//! more, which counts against the three-engine figure. Their tenants publish on
//! 0.0.0.0 so that the controller verifies them directly (no agents here: no
//! database). The tenant image is loaded into them before timing.
//!
//! The ssh cost: `plan` of an empty spec against the ssh engine, with the master
//! connection kept between commands (the default) and with a new connection each
//! time (`MAI_FLEET_SSH_PERSIST=0`), against the same engine through its socket
//! directly (`BENCH_SSH_RUNS` times each, median).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mai_fleet_e2e::hosts::{ssh_key, Access, RemoteEngine};
use mai_fleet_e2e::remove_containers_labelled;

mod timing;
use timing::{fail, secs, timed};

const IMAGE: &str = "mai-fleet/tenant:dev";
const BASE_PORT: u16 = 15000;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let controller = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("controller")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| {
            fail("controller binary not found next to bench-hosts: cargo build --release --bins")
        });
    let runs: usize = std::env::var("BENCH_SSH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let work = std::env::temp_dir().join(format!("mai-fleet-bench-hosts-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap_or_else(|e| fail(&e.to_string()));
    ssh_key(&work.join("id_ed25519"));
    let certs = work.join("docker-certs");
    mai_fleet_e2e::tls::make_certs_for(&certs, &["10.77.72.2"]);
    let ssh = RemoteEngine::start(
        "bhs",
        71,
        &work.join("engine-ssh"),
        &Access::Ssh {
            key: work.join("id_ed25519"),
        },
    );
    let tcp = RemoteEngine::start(
        "bht",
        72,
        &work.join("engine-tcp"),
        &Access::Tls {
            certs: certs.clone(),
        },
    );
    let known_hosts = work.join("known_hosts");
    std::fs::write(&known_hosts, ssh.known_hosts_line()).unwrap_or_else(|e| fail(&e.to_string()));
    for e in [&ssh, &tcp] {
        let load = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker save {IMAGE} | docker -H {} load",
                e.socket()
            ))
            .output()
            .unwrap_or_else(|e| fail(&e.to_string()));
        if !load.status.success() {
            fail(&format!(
                "loading {IMAGE}: {}",
                String::from_utf8_lossy(&load.stderr)
            ));
        }
    }
    let w = work.display();
    let hosts3 = format!(
        "  - {{ name: b-local, docker: \"unix:///var/run/docker.sock\", data_root: {w}/d-local }}\n\
         \x20 - {{ name: b-ssh, docker: \"ssh://root@{}\", data_root: {w}/d-ssh, publish_address: 0.0.0.0, ssh: {{ key: {w}/id_ed25519, known_hosts: {} }} }}\n\
         \x20 - {{ name: b-tcp, docker: \"tcp://{}:2376\", data_root: {w}/d-tcp, publish_address: 0.0.0.0, tls: {{ ca: {c}/ca.pem, cert: {c}/client.pem, key: {c}/client-key.pem }} }}\n",
        ssh.address(),
        known_hosts.display(),
        tcp.address(),
        c = certs.display(),
    );
    let hosts1 = format!(
        "  - {{ name: b-local, docker: \"unix:///var/run/docker.sock\", data_root: {w}/d-one }}\n"
    );
    let three = work.join("three.yaml");
    let placement: Vec<&str> = (0..3 * n)
        .map(|i| ["b-local", "b-ssh", "b-tcp"][i / n])
        .collect();
    std::fs::write(&three, spec(&hosts3, &placement)).unwrap_or_else(|e| fail(&e.to_string()));
    let one = work.join("one.yaml");
    std::fs::write(&one, spec(&hosts1, &vec!["b-local"; 3 * n]))
        .unwrap_or_else(|e| fail(&e.to_string()));

    let keys: Vec<String> = (0..3 * n)
        .map(|i| format!("sk-or-v1-{:064x}", 0xbe7d_0000_u64 + i as u64))
        .collect();
    let control = work.join("ssh-control");
    let run_env = |label: &str, args: &[&str], persist: &str| {
        let mut cmd = Command::new(&controller);
        cmd.args(args)
            .env_remove("DATABASE_URL")
            .env("MAI_FLEET_SSH_CONTROL_DIR", &control)
            .env("MAI_FLEET_SSH_PERSIST", persist);
        for (i, k) in keys.iter().enumerate() {
            cmd.env(format!("BENCH_KEY_{i}"), k);
        }
        timed(label, &mut cmd)
    };
    let run = |label: &str, args: &[&str]| run_env(label, args, "60s");
    let apply = |label: &str, spec: &Path| {
        run(
            label,
            &[
                "apply",
                spec.to_str().unwrap_or_default(),
                "--parallel",
                "32",
                "--settle",
                "2s",
            ],
        )
    };
    let clean = || {
        remove_containers_labelled("mai-fleet.fleet=bench-hosts");
        for e in [&ssh, &tcp] {
            let ids = e.docker(&["ps", "-aq"]);
            let ids: Vec<&str> = ids.lines().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                e.docker(&args);
            }
        }
    };
    // A no-op is short and the machine is shared: the median of several.
    let noop = |label: &str, spec: &Path| {
        let mut times: Vec<Duration> = (0..runs).map(|_| apply(label, spec)).collect();
        times.sort();
        times[times.len() / 2]
    };
    clean();
    let one_fresh = apply("one engine: fresh", &one);
    let one_noop = noop("one engine: no-op", &one);
    clean();
    let three_fresh = apply("three engines: fresh", &three);
    let three_noop = noop("three engines: no-op", &three);
    // Each of the three alone (its 20 tenants), to see where a no-op's time goes.
    let mut per_host = Vec::new();
    for (k, line) in hosts3.lines().enumerate() {
        let name = ["b-local", "b-ssh", "b-tcp"][k];
        let p = work.join(format!("{name}.yaml"));
        std::fs::write(&p, spec_from(&format!("{line}\n"), &vec![name; n], k * n))
            .unwrap_or_else(|e| fail(&e.to_string()));
        per_host.push((name, noop(name, &p)));
    }
    clean();

    // The ssh connection: the same engine, an empty fleet, through ssh and directly.
    let empty = |name: &str, host: &str| {
        let p = work.join(name);
        std::fs::write(
            &p,
            format!("version: 1\nfleet: bench-hosts\nhosts:\n{host}tenants: []\n"),
        )
        .unwrap_or_else(|e| fail(&e.to_string()));
        p
    };
    let via_ssh = empty(
        "ssh.yaml",
        &format!(
            "  - {{ name: b-ssh, docker: \"ssh://root@{}\", data_root: /srv/x, ssh: {{ key: {w}/id_ed25519, known_hosts: {} }} }}\n",
            ssh.address(),
            known_hosts.display()
        ),
    );
    let direct = empty(
        "direct.yaml",
        &format!(
            "  - {{ name: b-ssh, docker: \"{}\", data_root: /srv/x }}\n",
            ssh.socket()
        ),
    );
    let median = |spec: &Path, label: &str, persist: &str| {
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| run_env(label, &["plan", spec.to_str().unwrap_or_default()], persist))
            .collect();
        times.sort();
        times[times.len() / 2]
    };
    let plan_ssh = median(&via_ssh, "plan over ssh, connection kept", "60s");
    let plan_ssh_new = median(&via_ssh, "plan over ssh, new connection", "0");
    let plan_direct = median(&direct, "plan direct", "0");

    let mut out = String::new();
    let _ = writeln!(out, "bench-hosts: {n} tenants on each of 3 engines against {} on 1, apply --parallel 32 --settle 2s", 3 * n);
    let _ = writeln!(
        out,
        "{:>22}  {:>10}  {:>10}  {:>8}",
        "", "1 engine", "3 engines", "3 / 1"
    );
    let _ = writeln!(
        out,
        "{:>22}  {:>9.2}s  {:>9.2}s  {:>7.2}x",
        "fresh apply",
        secs(one_fresh),
        secs(three_fresh),
        secs(three_fresh) / secs(one_fresh)
    );
    let _ = writeln!(
        out,
        "{:>22}  {:>9.3}s  {:>9.3}s  {:>7.2}x",
        "no-op apply",
        secs(one_noop),
        secs(three_noop),
        secs(three_noop) / secs(one_noop)
    );
    let _ = writeln!(
        out,
        "no-op of each engine alone ({n} tenants): {}",
        per_host
            .iter()
            .map(|(h, d)| format!("{h} {:.3}s", secs(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "ssh cost per host (plan of an empty fleet, median of {runs}): engine's socket {:.3}s; ssh:// with the connection kept {:.3}s (+{:.3}s, {:.2}x); ssh:// with a new connection {:.3}s (+{:.3}s, {:.2}x)",
        secs(plan_direct),
        secs(plan_ssh),
        secs(plan_ssh) - secs(plan_direct),
        secs(plan_ssh) / secs(plan_direct),
        secs(plan_ssh_new),
        secs(plan_ssh_new) - secs(plan_direct),
        secs(plan_ssh_new) / secs(plan_direct)
    );
    print!("{out}");
    drop((ssh, tcp));
    let _ = std::fs::remove_dir_all(&work);
}

fn spec(hosts: &str, placement: &[&str]) -> String {
    spec_from(hosts, placement, 0)
}

/// Tenants `offset..offset + placement.len()` of the fleet.
fn spec_from(hosts: &str, placement: &[&str], offset: usize) -> String {
    let mut s = format!(
        "version: 1\nfleet: bench-hosts\ndefaults:\n  image: {IMAGE}\n  resources: {{ memory: 64m, cpus: 0.25 }}\nhosts:\n{hosts}tenants:\n"
    );
    for (j, host) in placement.iter().enumerate() {
        let i = offset + j;
        let _ = writeln!(
            s,
            "  - {{ id: bh-{i}, name: Bench {i}, org_id: bh_{i}, host: {host}, port: {}, openrouter: {{ api_key: \"${{env:BENCH_KEY_{i}}}\" }} }}",
            BASE_PORT + i as u16
        );
    }
    s
}
