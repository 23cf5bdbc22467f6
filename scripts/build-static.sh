#!/usr/bin/env bash
# Builds every binary that goes into an image, once, in one cargo invocation: the
# tenant stand-in, the agent and the controller, release, statically linked (they run
# in FROM scratch images). The image scripts and fleet-up.sh call it; a second call
# builds nothing. Prints the directory holding the binaries.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
triple=x86_64-unknown-linux-gnu
# crt-static links glibc statically; with an explicit --target the flag does not
# reach build scripts. One package set for every caller: the same features, so the
# same artefacts.
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --quiet --release --locked -p mai-tenant -p mai-fleet-agent -p mai-fleet-controller \
  --target "$triple" --manifest-path "$root/Cargo.toml" >&2
echo "$target/$triple/release"
