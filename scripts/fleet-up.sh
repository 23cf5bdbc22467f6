#!/usr/bin/env bash
# Runs a local fleet on this machine: PostgreSQL, the tenant images, and the three
# tenants of manifests/examples/tenants.yaml applied to the local Docker engine.
# Re-running it changes nothing (apply is idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
spec=${1:-manifests/examples/tenants.yaml}
docker info >/dev/null 2>&1 || { echo "fleet-up.sh: the Docker engine is not reachable" >&2; exit 1; }
tests/tenant/build-images.sh
. scripts/postgres.sh
cargo build --locked --workspace --bins
controller=target/debug/controller

# Demo keys for the stand-in tenants (they call no OpenRouter): made once, kept
# owner-only, so that re-runs keep them and change nothing.
keys=target/demo-keys.env
if [ ! -s "$keys" ]; then
  umask 077
  for var in NOWAK_OPENROUTER_KEY KOWALSKI_OPENROUTER_KEY ZDROWIE_OPENROUTER_KEY; do
    echo "$var=sk-or-v1-$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
  done > "$keys"
fi
set -a; . "$keys"; set +a

"$controller" migrate
"$controller" validate "$spec"
status=0
"$controller" apply "$spec" || status=$?
echo
echo "fleet database: $DATABASE_URL"
echo "tenants:"
docker ps --filter label=mai-fleet.managed=true --format '  {{.Names}}\t{{.Status}}\t{{.Ports}}'
echo "not built yet: the agent (issue 3) and the dashboard (issue 4); see docs/status.md"
exit $status
