//! `apply` on a Kubernetes host against `kubectl` with the same objects (issue 21), in
//! one run, N tenants (default 100):
//!
//! - a fresh verified apply (`controller apply`: every object server-side applied,
//!   each pod Ready and its tracking initialized through the pod proxy) against
//!   `kubectl apply --server-side -f` of the same objects (`controller render`) and
//!   `kubectl rollout status` of each StatefulSet, one after the other;
//! - a no-op apply (the median of `BENCH_K8S_RUNS`, default 5, taking turns) against
//!   `kubectl apply --server-side -f` of the same objects again.
//!
//! Run as:
//!
//! ```text
//! cargo build --release --bins
//! MAI_FLEET_E2E_KUBECONFIG=… MAI_FLEET_E2E_K8S_NODE=… MAI_FLEET_E2E_KUBECTL=… \
//!   cargo run --release --bin bench-kubernetes [-- 100]
//! ```
//!
//! The cluster is the test cluster (tests/k8s/cluster.sh) or any whose node runs the
//! tenant image. Each side has a namespace of its own, deleted at the end.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod timing;
use timing::{fail, secs, timed};

const IMAGE: &str = "mai-fleet/tenant:dev";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| fail(&format!("{name} is unset")))
}

fn spec(fleet: &str, node: &str, kubeconfig: &str, data_root: &Path, n: usize) -> String {
    let mut s = format!(
        "version: 1\nfleet: {fleet}\ndefaults:\n  image: {IMAGE}\n  markup_rate: 1.3\n  resources: {{ memory: 32m, cpus: 0.01 }}\nhosts:\n  - name: {fleet}-k\n    kubernetes: {{ kubeconfig: {kubeconfig}, node: {node} }}\n    data_root: {}\ntenants:\n",
        data_root.display()
    );
    for i in 0..n {
        s.push_str(&format!(
            "  - id: t{i:03}\n    name: Klient {i}\n    org_id: org_{i}\n    host: {fleet}-k\n    openrouter: {{ api_key: \"${{env:BENCH_KEY_{i}}}\" }}\n    port: {}\n",
            3000 + i
        ));
    }
    s
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let runs: usize = std::env::var("BENCH_K8S_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let (kubeconfig, node) = (
        env("MAI_FLEET_E2E_KUBECONFIG"),
        env("MAI_FLEET_E2E_K8S_NODE"),
    );
    let kubectl = std::env::var("MAI_FLEET_E2E_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let controller = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("controller")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| fail("controller binary not found next to bench-kubernetes"));
    let work = std::env::temp_dir().join(format!("mai-fleet-bench-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap_or_else(|e| fail(&e.to_string()));
    // A key of its own for each tenant (the spec refuses a key shared).
    let keys: Vec<(String, String)> = (0..n)
        .map(|i| (format!("BENCH_KEY_{i}"), format!("sk-or-v1-{i:064x}")))
        .collect();

    let ours = spec("bench-ours", &node, &kubeconfig, &work.join("ours"), n);
    let ours_path = work.join("ours.yaml");
    std::fs::write(&ours_path, ours).unwrap_or_else(|e| fail(&e.to_string()));
    let peer = spec("bench-peer", &node, &kubeconfig, &work.join("peer"), n);
    let peer_path = work.join("peer.yaml");
    std::fs::write(&peer_path, peer).unwrap_or_else(|e| fail(&e.to_string()));
    let rendered = Command::new(&controller)
        .args(["render", peer_path.to_str().unwrap_or_default()])
        .envs(keys.iter().cloned())
        .output()
        .unwrap_or_else(|e| fail(&e.to_string()));
    if !rendered.status.success() {
        fail(&String::from_utf8_lossy(&rendered.stderr));
    }
    let objects = work.join("peer-objects.yaml");
    std::fs::write(&objects, &rendered.stdout).unwrap_or_else(|e| fail(&e.to_string()));

    let apply = || {
        let mut c = Command::new(&controller);
        c.args([
            "apply",
            ours_path.to_str().unwrap_or_default(),
            "--settle",
            "1s",
            "--verify-timeout",
            "300s",
        ])
        .envs(keys.iter().cloned())
        .env_remove("DATABASE_URL");
        c
    };
    let kubectl_apply = || {
        let mut c = Command::new(&kubectl);
        c.args([
            "--kubeconfig",
            &kubeconfig,
            "apply",
            "--server-side",
            "--field-manager",
            "bench",
            "-f",
            objects.to_str().unwrap_or_default(),
        ]);
        c
    };

    let ours_fresh = timed("controller apply (fresh)", &mut apply());
    let peer_fresh = {
        let applied = timed("kubectl apply --server-side (fresh)", &mut kubectl_apply());
        let mut rollouts = Duration::ZERO;
        for i in 0..n {
            rollouts += timed(
                "kubectl rollout status",
                Command::new(&kubectl).args([
                    "--kubeconfig",
                    &kubeconfig,
                    "-n",
                    "mai-bench-peer",
                    "rollout",
                    "status",
                    &format!("statefulset/mai-t{i:03}"),
                    "--timeout=300s",
                ]),
            );
        }
        applied + rollouts
    };
    let (mut ours_noop, mut peer_noop) = (Vec::new(), Vec::new());
    for run in 0..runs {
        // Taking turns to go first.
        if run % 2 == 0 {
            ours_noop.push(timed("controller apply (no-op)", &mut apply()));
            peer_noop.push(timed("kubectl apply (no-op)", &mut kubectl_apply()));
        } else {
            peer_noop.push(timed("kubectl apply (no-op)", &mut kubectl_apply()));
            ours_noop.push(timed("controller apply (no-op)", &mut apply()));
        }
    }
    let (o, p) = (median(ours_noop), median(peer_noop));
    println!(
        "N={n} fresh verified apply: controller {:.2}s, kubectl apply --server-side + rollout status of each {:.2}s, ratio {:.2}x (goal <= 1x)",
        secs(ours_fresh),
        secs(peer_fresh),
        secs(ours_fresh) / secs(peer_fresh)
    );
    println!(
        "N={n} no-op apply (median of {runs}): controller {:.3}s, kubectl apply --server-side {:.3}s, ratio {:.2}x (goal <= 0.5x)",
        secs(o),
        secs(p),
        secs(o) / secs(p)
    );
    for ns in ["mai-bench-ours", "mai-bench-peer"] {
        let _ = Command::new(&kubectl)
            .args([
                "--kubeconfig",
                &kubeconfig,
                "delete",
                "namespace",
                ns,
                "--wait=true",
                "--timeout=300s",
            ])
            .output();
    }
    let _ = std::fs::remove_dir_all(&work);
}
