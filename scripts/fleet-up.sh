#!/usr/bin/env bash
# Runs a local fleet on this machine: PostgreSQL, the images (tenant stand-in, agent,
# controller), the three tenants of manifests/examples/tenants.yaml applied to the
# local Docker engine with an agent container per host (deployed by apply), and the
# dashboard (controller serve).
# Re-running it changes nothing (apply is idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
spec=${1:-manifests/examples/tenants.yaml}
docker info >/dev/null 2>&1 || { echo "fleet-up.sh: the Docker engine is not reachable" >&2; exit 1; }
# Each binary is built once: the images' static release binaries, the controller's
# among them, which this script runs too.
tests/tenant/build-images.sh
manifests/build-images.sh
. scripts/postgres.sh
controller=$(scripts/build-static.sh)/controller

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

run=target/fleet
mkdir -p "$run"
# Agents started by hand by earlier versions of this script: apply runs them now.
for pidfile in "$run"/agent-*.pid; do
  [ -e "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  rm -f "$pidfile"
done

# The dashboard, with a demo user whose password is made once and kept owner-only.
creds=target/demo-dashboard.env
if [ ! -s "$creds" ]; then
  (umask 077; echo "MAI_FLEET_DEMO_PASSWORD=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')" > "$creds")
fi
. "$creds"
printf '%s\n' "$MAI_FLEET_DEMO_PASSWORD" | "$controller" user add admin --password-stdin
listen=${MAI_FLEET_LISTEN:-127.0.0.1:8080}
[ -e "$run/serve.pid" ] && kill "$(cat "$run/serve.pid")" 2>/dev/null || true
nohup "$controller" serve --listen "$listen" >"$run/serve.log" 2>&1 &
echo $! >"$run/serve.pid"
sleep 2

echo
# The URL holds the owner role's password: shown masked, set again by postgres.sh.
shown_url=$(printf '%s' "$DATABASE_URL" | sed -E 's#//([^:/@]+):[^@]*@#//\1:***@#')
echo "fleet database: $shown_url"
echo "tenants:"
docker ps --filter label=mai-fleet.managed=true --format '  {{.Names}}\t{{.Status}}\t{{.Ports}}'
echo "agents (docker logs mai-agent-<host>):"
docker ps --filter label=mai-fleet.agent-of --format '  {{.Names}}\t{{.Status}}\t{{.Image}}'
# The agents were made before the tenants: wait (30 s at most) for the cycle that
# reads them.
want=$(docker ps -q --filter label=mai-fleet.managed=true | wc -l)
for _ in $(seq 1 30); do
  [ "$(psql "$DATABASE_URL" -qAt -c 'SELECT count(*) FROM tenant_health')" -ge "$want" ] && break
  sleep 1
done
echo "usage in the fleet database:"
psql "$DATABASE_URL" -qAt -F '  ' -c "SELECT '  ' || tenant_id, tracking, (SELECT coalesce(sum(total_tokens), 0) || ' tokens' FROM usage_daily u WHERE u.tenant_id = h.tenant_id) FROM tenant_health h ORDER BY 1"
echo "look closer: . scripts/postgres.sh; $controller status   (or usage)"
echo "billing: . scripts/postgres.sh; $controller billing $(date +%Y-%m)"
echo "dashboard: http://$listen/  user admin, password in $creds (log: $run/serve.log)"
curl -fsS "http://$listen/healthz" >/dev/null && echo "  /healthz ok" || echo "  dashboard not answering; see $run/serve.log"
echo "NBP rates come from ${MAI_FLEET_NBP_URL:-https://api.nbp.pl/api}; without them amounts show in USD only"
echo "alerts: $controller alerts list (receivers: MAI_FLEET_ALERT_WEBHOOK_URL etc., docs/alerts.md)"
exit $status
