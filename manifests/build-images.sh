#!/usr/bin/env bash
# Builds the images of mai-fleet itself from this checkout, offline (FROM scratch,
# static binaries; no registry):
#   mai-fleet/controller:<version>   the control plane (migrate, serve)
#   mai-fleet/agent:<version>        the per-host agent that `controller apply` deploys
# <version> is the workspace's; both are also tagged :latest. `apply` sends the agent
# image to hosts that lack it, so building it on the controller's machine is enough.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
triple=x86_64-unknown-linux-gnu
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)
# crt-static links glibc statically so the binaries run in a FROM scratch image; with
# an explicit --target the flag does not reach build scripts.
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --quiet --release --locked -p mai-fleet-agent -p mai-fleet-controller \
  --target "$triple" --manifest-path "$root/Cargo.toml"
for name in agent controller; do
  ctx=$(mktemp -d)
  cp "$target/$triple/release/$name" "$ctx/"
  cp "$root/manifests/images/$name.Dockerfile" "$ctx/Dockerfile"
  mkdir -m 1777 "$ctx/tmp"
  docker build --quiet -t "mai-fleet/$name:$version" -t "mai-fleet/$name:latest" "$ctx" >/dev/null 2>"$ctx/err" ||
    { cat "$ctx/err"; rm -rf "$ctx"; exit 1; }
  rm -rf "$ctx"
done
echo "built mai-fleet/controller:$version and mai-fleet/agent:$version"
