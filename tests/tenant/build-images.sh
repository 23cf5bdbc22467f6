#!/usr/bin/env bash
# Builds the tenant stand-in as a static binary and the images the tests, benchmarks
# and the demo use:
#   mai-fleet/tenant:dev     honours the tenant contract (and its silent failure)
#   mai-fleet/tenant:dev2    the same binary under another tag (an "image upgrade")
#   mai-fleet/tenant:crash   exits at start            (a broken release)
#   mai-fleet/tenant:uninit  never initialises tracking (health says initialized: false)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# The static binary, built with the agent's and the controller's in one invocation.
bins=$("$root/scripts/build-static.sh")
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$bins/mai-tenant" "$ctx/"
cp "$root/tests/tenant/Dockerfile" "$ctx/"
docker build --quiet -t mai-fleet/tenant:dev "$ctx" >/dev/null 2>"$ctx/err" || { cat "$ctx/err"; exit 1; }
docker tag mai-fleet/tenant:dev mai-fleet/tenant:dev2
for fault in crash uninit; do
  printf 'FROM mai-fleet/tenant:dev\nENV MAI_TENANT_FAULT=%s\n' "$fault" |
    docker build --quiet -t "mai-fleet/tenant:$fault" - >/dev/null 2>"$ctx/err" || { cat "$ctx/err"; exit 1; }
done
echo "built mai-fleet/tenant:{dev,dev2,crash,uninit}"
