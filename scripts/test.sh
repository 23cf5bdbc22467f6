#!/usr/bin/env bash
# Runs every test on a fresh machine: builds the tenant images, starts PostgreSQL
# (unless DATABASE_URL is set), then the unit and end-to-end tests against the real
# Docker engine and database.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v docker >/dev/null || { echo "test.sh: the Docker CLI is required" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "test.sh: the Docker engine is not reachable" >&2; exit 1; }
tests/tenant/build-images.sh
. scripts/postgres.sh
cargo build --locked --workspace --bins
cargo test --locked --workspace
