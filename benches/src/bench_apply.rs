//! `controller apply` against `docker compose up -d` for the same containers (issue 2).
//!
//!     cargo build --release --bin controller && cargo run --release --bin bench-apply [-- 20 100]
//!
//! For each fleet size N (default 20 and 100) on the local engine, in one run: a fresh
//! apply (verification included), a no-op apply, then `up -d` of a compose file
//! generated for the same N containers (same image, env, port, bind mount, limits,
//! restart policy), fresh and no-op. Prints wall times and ratios. `BENCH_PARALLEL`
//! and `BENCH_SETTLE` set apply's `--parallel` and `--settle`. Needs the tenant
//! image (tests/tenant/build-images.sh) and docker-compose or the compose plugin.
//!
//! `BENCH_BASELINE=/path/to/an/earlier/controller` first measures the upgrade: the
//! earlier controller applies the N tenants, this one's `plan` must find nothing to
//! change (no tenant recreated by the upgrade), then the no-op apply of each, 10
//! times alternating, medians and their ratio.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use mai_fleet_e2e::remove_containers_labelled;

mod timing;
use timing::{fail, secs, timed};

const IMAGE: &str = "mai-fleet/tenant:dev";
/// Below the ephemeral port range (32768 and up); compose's copies use +1000.
const BASE_PORT: u16 = 14000;

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![20, 100]
    } else {
        sizes
    };
    let controller = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("controller")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| fail("controller binary not found next to bench-apply: cargo build --release --bin controller"));
    let compose = compose_command();
    let parallel = std::env::var("BENCH_PARALLEL").unwrap_or_else(|_| "32".to_string());
    let settle = std::env::var("BENCH_SETTLE").unwrap_or_else(|_| "2s".to_string());
    let work = std::env::temp_dir().join(format!("mai-fleet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap_or_else(|e| fail(&format!("{}: {e}", work.display())));

    println!("bench-apply: engine {}, compose: {}, apply --parallel {parallel} --settle {settle} (defaults: 32, 2s)", docker_version(), compose.join(" "));
    println!(
        "{:>5}  {:>13}  {:>13}  {:>13}  {:>13}  {:>13}  {:>11}  {:>11}  {:>13}",
        "N",
        "apply fresh",
        "compose fresh",
        "apply no-op",
        "labels no-op",
        "compose no-op",
        "fresh ratio",
        "no-op ratio",
        "labels ratio"
    );
    let baseline = std::env::var_os("BENCH_BASELINE").map(PathBuf::from);
    for n in sizes {
        let dir = work.join(format!("n{n}"));
        std::fs::create_dir_all(&dir).ok();
        let keys: Vec<String> = (0..n)
            .map(|i| format!("sk-or-v1-{:064x}", 0xbe7c_0000_u64 + i as u64))
            .collect();

        let spec = dir.join("tenants.yaml");
        std::fs::write(&spec, spec_yaml(n, &dir.join("data-apply")))
            .unwrap_or_else(|e| fail(&e.to_string()));
        remove_containers_labelled("mai-fleet.fleet=bench");
        let run_with = |binary: &Path, label: &str, args: &[&str]| {
            let mut cmd = Command::new(binary);
            cmd.args(args).env_remove("DATABASE_URL");
            for (i, k) in keys.iter().enumerate() {
                cmd.env(format!("BENCH_KEY_{i}"), k);
            }
            timed(label, &mut cmd)
        };
        if let Some(base) = &baseline {
            let spec_arg = spec.to_str().unwrap_or_default();
            let apply_args = [
                "apply",
                spec_arg,
                "--parallel",
                &parallel,
                "--settle",
                &settle,
            ];
            let fresh = run_with(base, "baseline apply fresh", &apply_args);
            // Exit 0: nothing to change; `timed` fails the benchmark on any other.
            run_with(
                &controller,
                "plan after upgrading (must find nothing to change)",
                &["plan", spec_arg],
            );
            let (mut before, mut after) = (Vec::new(), Vec::new());
            for _ in 0..10 {
                before.push(run_with(base, "baseline apply no-op", &apply_args));
                after.push(run_with(&controller, "apply no-op", &apply_args));
            }
            let median = |mut v: Vec<std::time::Duration>| {
                v.sort();
                v[v.len() / 2]
            };
            let (b, a) = (median(before), median(after));
            println!(
                "N={n} upgrade: earlier controller applied fresh in {:.2}s; this controller's plan: nothing to change; no-op apply (median of 10) earlier {:.3}s, this {:.3}s, ratio {:.2}x",
                secs(fresh),
                secs(b),
                secs(a),
                secs(a) / secs(b)
            );
            remove_containers_labelled("mai-fleet.fleet=bench");
        }
        let apply = |label: &str, extra: &[&str]| {
            let mut cmd = Command::new(&controller);
            cmd.args([
                "apply",
                spec.to_str().unwrap_or_default(),
                "--parallel",
                &parallel,
                "--settle",
                &settle,
            ])
            .args(extra)
            .env_remove("DATABASE_URL");
            for (i, k) in keys.iter().enumerate() {
                cmd.env(format!("BENCH_KEY_{i}"), k);
            }
            timed(label, &mut cmd)
        };
        let apply_fresh = apply("apply fresh", &[]);
        // What each container runs is compared with the spec (drift detection).
        let apply_noop = apply("apply no-op", &[]);
        // The spec-hash labels only, as before drift detection.
        let labels_noop = apply("apply no-op --labels-only", &["--labels-only"]);
        // Printed now: docker-compose v1 sometimes hangs at 100 services, and the
        // figures of apply must survive that.
        eprintln!(
            "N={n}: apply fresh {:.2}s, apply no-op {:.3}s, labels-only no-op {:.3}s",
            secs(apply_fresh),
            secs(apply_noop),
            secs(labels_noop)
        );
        remove_containers_labelled("mai-fleet.fleet=bench");

        let compose_file = dir.join("docker-compose.yml");
        std::fs::write(
            &compose_file,
            compose_yaml(n, &dir.join("data-compose"), &keys),
        )
        .unwrap_or_else(|e| fail(&e.to_string()));
        let up = |label: &str| {
            let mut cmd = Command::new(&compose[0]);
            cmd.args(&compose[1..]).args([
                "-p",
                "maibench",
                "-f",
                compose_file.to_str().unwrap_or_default(),
                "up",
                "-d",
            ]);
            timed(label, &mut cmd)
        };
        let compose_fresh = up("compose fresh");
        let compose_noop = up("compose no-op");
        let mut down = Command::new(&compose[0]);
        down.args(&compose[1..]).args([
            "-p",
            "maibench",
            "-f",
            compose_file.to_str().unwrap_or_default(),
            "down",
            "-t",
            "1",
        ]);
        timed("compose down", &mut down);

        println!(
            "{n:>5}  {:>12.2}s  {:>12.2}s  {:>12.3}s  {:>12.3}s  {:>12.3}s  {:>10.2}x  {:>10.3}x  {:>12.3}x",
            secs(apply_fresh),
            secs(compose_fresh),
            secs(apply_noop),
            secs(labels_noop),
            secs(compose_noop),
            secs(apply_fresh) / secs(compose_fresh),
            secs(apply_noop) / secs(compose_noop),
            secs(labels_noop) / secs(compose_noop),
        );
    }
    println!("ratio = apply time / compose time (below 1: apply is faster); apply fresh includes verification; apply no-op compares what every container runs (drift), labels no-op only the spec-hash labels");
    let _ = std::fs::remove_dir_all(&work);
}

fn compose_command() -> Vec<String> {
    let plugin = Command::new("docker").args(["compose", "version"]).output();
    if plugin.is_ok_and(|o| o.status.success()) {
        return vec!["docker".into(), "compose".into()];
    }
    if Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return vec!["docker-compose".into()];
    }
    fail("neither `docker compose` nor `docker-compose` is installed")
}

fn docker_version() -> String {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn spec_yaml(n: usize, data_root: &Path) -> String {
    let mut s = format!(
        "version: 1\nfleet: bench\ndefaults:\n  image: {IMAGE}\n  resources: {{ memory: 64m, cpus: 0.25 }}\nhosts:\n  - name: bench\n    docker: unix:///var/run/docker.sock\n    data_root: {}\ntenants:\n",
        data_root.display()
    );
    for i in 0..n {
        let _ = writeln!(
            s,
            "  - {{ id: bench-{i}, name: Bench {i}, org_id: bench_{i}, host: bench, port: {}, openrouter: {{ api_key: \"${{env:BENCH_KEY_{i}}}\" }} }}",
            BASE_PORT + i as u16
        );
    }
    s
}

/// The same containers as `spec_yaml` would make, for compose.
fn compose_yaml(n: usize, data_root: &Path, keys: &[String]) -> String {
    let mut s = String::from("version: \"2.4\"\nservices:\n");
    for (i, key) in keys.iter().enumerate().take(n) {
        let data: PathBuf = data_root.join(format!("bench-{i}")).join("data");
        let _ = write!(
            s,
            "  bench-{i}:\n    image: {IMAGE}\n    container_name: mai-bench-c-{i}\n    restart: unless-stopped\n    mem_limit: 64m\n    cpus: 0.25\n    ports: [\"{}:8080\"]\n    volumes: [\"{}:/app/backend/data\"]\n    environment:\n      OPENROUTER_API_KEY: {}\n      OPENROUTER_EXTERNAL_USER: bench_{i}\n      ORGANIZATION_NAME: Bench {i}\n      TZ: Europe/Warsaw\n      DEFAULT_MARKUP_RATE: \"1.3\"\n",
            BASE_PORT + 1000 + i as u16,
            data.display(),
            key
        );
    }
    s
}
