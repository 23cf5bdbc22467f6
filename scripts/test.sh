#!/usr/bin/env bash
# Runs every test on a fresh machine: builds the tenant images, starts PostgreSQL
# (unless DATABASE_URL is set), then the unit and end-to-end tests against the real
# Docker engine and database.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v docker >/dev/null || { echo "test.sh: the Docker CLI is required" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "test.sh: the Docker engine is not reachable" >&2; exit 1; }
# The TLS endpoint test puts stunnel in front of the engine's socket.
if ! command -v stunnel >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stunnel4 >/dev/null
  else
    echo "test.sh: stunnel is missing (apt-get install stunnel4); the TLS test will fail" >&2
  fi
fi
# The dashboard's screenshots (target/screenshots/) need Chromium and the DevTools
# client of scripts/screenshots.py.
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "test.sh: chromium is missing (apt-get install chromium); the screenshot step will fail" >&2
  fi
fi
# The control plane's compose file is brought up by the install test.
if ! command -v docker-compose >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
  else
    echo "test.sh: docker-compose is missing (apt-get install docker-compose); the install test will fail" >&2
  fi
fi
# Remote servers in tests: an OpenSSH server in a network namespace of the test's.
if ! command -v sshd >/dev/null && [ ! -x /usr/sbin/sshd ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null
  else
    echo "test.sh: openssh-server is missing; the multi-server test will fail" >&2
  fi
fi
# Invoices are checked against the FA(3) schema with xmllint (libxml2).
if ! command -v xmllint >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libxml2-utils >/dev/null
  else
    echo "test.sh: xmllint is missing (apt-get install libxml2-utils); the invoice tests will fail" >&2
  fi
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
# The Kubernetes hosts' tests run on a real cluster: Kubernetes 1.20.2 built once from
# Debian's source package into a cache outside the checkout (tests/k8s/cluster.sh),
# started for this run and stopped on every path. MAI_FLEET_E2E_KUBECONFIG (with
# MAI_FLEET_E2E_K8S_NODE) runs them against a cluster of your own instead.
if [ -z "${MAI_FLEET_E2E_KUBECONFIG:-}" ]; then
  tests/k8s/cluster.sh build
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
