#!/usr/bin/env bash
# Runs every test on a fresh machine: builds the tenant images, starts PostgreSQL
# (unless DATABASE_URL is set), then the unit and end-to-end tests against the real
# Docker engine and database.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v docker >/dev/null || { echo "test.sh: the Docker CLI is required" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "test.sh: the Docker engine is not reachable" >&2; exit 1; }
# What the tests use besides Docker, installed in one go: stunnel (in front of the
# engine's socket for the TLS test), Chromium (the dashboard's screenshots),
# docker-compose (the install test), an OpenSSH server (remote servers in network
# namespaces), xmllint (invoices checked against the FA(3) schema), PostgreSQL.
need=()
command -v stunnel >/dev/null || need+=(stunnel4)
command -v chromium >/dev/null || need+=(chromium)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server openssh-client)
command -v xmllint >/dev/null || need+=(libxml2-utils)
# scripts/postgres.sh would install it later, beside the cluster's build's apt-get.
[ -n "${DATABASE_URL:-}" ] || ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "test.sh: missing ${need[*]} (apt-get install them); the tests that use them will fail" >&2
  fi
fi
# The Kubernetes hosts' tests run on a real cluster: Kubernetes 1.20.2 built once from
# Debian's source package into a cache outside the checkout (tests/k8s/cluster.sh).
# A first build takes minutes and needs nothing of the Rust builds below, so it runs
# beside them (after the apt-get above: one dpkg at a time). MAI_FLEET_E2E_KUBECONFIG
# (with MAI_FLEET_E2E_K8S_NODE) runs the tests against a cluster of your own instead.
k8s_build=
if [ -z "${MAI_FLEET_E2E_KUBECONFIG:-}" ]; then
  k8s_log=$(mktemp /tmp/mai-fleet-k8s-build.XXXXXX)
  tests/k8s/cluster.sh build >"$k8s_log" 2>&1 &
  k8s_build=$!
fi
# The tests judge drafts by the FA(3) schema as published (the PyPI package
# mcp-ksef-pl ships the Ministry's files), not only by the controller's own copy.
if [ -z "${MAI_FLEET_E2E_FA3_SCHEMAS:-}" ]; then
  fa3=target/fa3-schemas
  if [ ! -f "$fa3/mcp_ksef_pl/schemas/schemat_FA(3)_v1-0E.xsd" ]; then
    mkdir -p "$fa3"
    python3 -m pip download -q --no-deps 'mcp-ksef-pl==0.10.1' -d "$fa3"
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$fa3"/mcp_ksef_pl-0.10.1-*.whl "$fa3"
  fi
  export MAI_FLEET_E2E_FA3_SCHEMAS=$PWD/$fa3/mcp_ksef_pl/schemas
fi
python3 -c 'import websocket' 2>/dev/null || python3 -m pip install -q websocket-client
export MAI_FLEET_SCREENSHOTS=1
tests/tenant/build-images.sh
manifests/build-images.sh
. scripts/postgres.sh
cargo build --locked --workspace --bins
# The test cluster, started for this run and stopped on every path.
if [ -n "$k8s_build" ]; then
  wait "$k8s_build" || {
    cat "$k8s_log" >&2
    echo "test.sh: building the test cluster failed (its log above)" >&2
    exit 1
  }
  rm -f "$k8s_log"
  k8s_dir=$(mktemp -d /tmp/mai-fleet-k8s.XXXXXX)
  trap 'tests/k8s/cluster.sh stop "$k8s_dir"' EXIT
  MAI_FLEET_E2E_KUBECONFIG=$(tests/k8s/cluster.sh start "$k8s_dir")
  export MAI_FLEET_E2E_KUBECONFIG MAI_FLEET_E2E_K8S_NODE=mai-k8s-node
  export MAI_FLEET_E2E_KUBECTL=${MAI_FLEET_K8S_CACHE:-/var/cache/mai-fleet/k8s-1.20.2}/bin/kubectl
fi
# Rendered Kubernetes objects are checked against a current Kubernetes's schemas,
# offline: kubernetes-validate (PyPI) bundles them.
if [ -z "${MAI_FLEET_E2E_KUBERNETES_VALIDATE:-}" ]; then
  [ -x target/kubernetes-validate/bin/kubernetes-validate ] || {
    python3 -m venv target/kubernetes-validate &&
      target/kubernetes-validate/bin/pip install -q 'kubernetes-validate==1.37.0'
  }
  export MAI_FLEET_E2E_KUBERNETES_VALIDATE=$PWD/target/kubernetes-validate/bin/kubernetes-validate
fi
cargo test --locked --workspace
