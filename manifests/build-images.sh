#!/usr/bin/env bash
# Builds the images of mai-fleet itself from this checkout, offline (FROM scratch,
# static binaries; no registry):
#   mai-fleet/controller:<version>   the control plane (migrate, serve)
#   mai-fleet/agent:<version>        the per-host agent that `controller apply` deploys
#   mai-fleet/postgres:15            (when this machine has PostgreSQL 15 from Debian's
#                                    packages) the database of manifests/compose, for
#                                    machines without a registry; else use postgres:15
# <version> is the workspace's; both are also tagged :latest. `apply` sends the agent
# image to hosts that lack it, so building it on the controller's machine is enough.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)
# Static binaries (the tenant stand-in's too), built once for every image.
bins=$("$root/scripts/build-static.sh")
for name in agent controller; do
  ctx=$(mktemp -d)
  cp "$bins/$name" "$ctx/"
  cp "$root/manifests/images/$name.Dockerfile" "$ctx/Dockerfile"
  mkdir -m 1777 "$ctx/tmp"
  docker build --quiet -t "mai-fleet/$name:$version" -t "mai-fleet/$name:latest" "$ctx" >/dev/null 2>"$ctx/err" ||
    { cat "$ctx/err"; rm -rf "$ctx"; exit 1; }
  rm -rf "$ctx"
done
echo "built mai-fleet/controller:$version and mai-fleet/agent:$version"

pg=/usr/lib/postgresql/15/bin
if [ -x "$pg/postgres" ]; then
  ctx=$(mktemp -d)
  rootfs=$ctx/rootfs
  bins="$pg/postgres $pg/initdb $pg/pg_isready /bin/dash"
  mkdir -p "$rootfs/bin" "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/tmp" \
    "$rootfs/var/run/postgresql" "$rootfs/var/lib/postgresql/data"
  for f in $bins $(ldd $bins | awk '/=>/ {print $3} /ld-linux/ {print $1}' | sort -u); do
    mkdir -p "$rootfs$(dirname "$f")" && cp -L "$f" "$rootfs$f"
  done
  # Extensions, encodings and time zones postgres and initdb load at run time.
  for d in /usr/lib/postgresql/15/lib /usr/share/postgresql/15 /usr/share/zoneinfo; do
    mkdir -p "$rootfs$d" && cp -a "$d/." "$rootfs$d/"
  done
  for l in $(ldd /usr/lib/postgresql/15/lib/*.so 2>/dev/null | awk '/=>/ {print $3}' | sort -u); do
    [ -e "$rootfs$l" ] || { mkdir -p "$rootfs$(dirname "$l")" && cp -L "$l" "$rootfs$l"; }
  done
  ln -s dash "$rootfs/bin/sh"
  cp "$root/manifests/images/postgres-entrypoint.sh" "$rootfs/usr/local/bin/"
  printf 'root:x:0:0::/:/bin/sh\npostgres:x:999:999::/var/lib/postgresql:/bin/sh\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\npostgres:x:999:\n' >"$rootfs/etc/group"
  chown -R 999:999 "$rootfs/var/run/postgresql" "$rootfs/var/lib/postgresql"
  chmod 1777 "$rootfs/tmp"
  cp "$root/manifests/images/postgres.Dockerfile" "$ctx/Dockerfile"
  docker build --quiet -t mai-fleet/postgres:15 "$ctx" >/dev/null 2>"$ctx/err" ||
    { cat "$ctx/err"; rm -rf "$ctx"; exit 1; }
  rm -rf "$ctx"
  echo "built mai-fleet/postgres:15 (from this machine's PostgreSQL packages)"
fi
