#!/bin/sh
# The control plane's database: the same interface as the official postgres image
# (POSTGRES_USER, POSTGRES_DB, POSTGRES_PASSWORD_FILE, PGDATA; arguments go to
# postgres), for machines that build their images offline.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  [ -n "${POSTGRES_PASSWORD_FILE:-}" ] || { echo "POSTGRES_PASSWORD_FILE is required" >&2; exit 1; }
  initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$POSTGRES_PASSWORD_FILE" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C >/dev/null
  if [ "$POSTGRES_DB" != postgres ]; then
    printf 'CREATE DATABASE "%s" OWNER "%s";\n' "$POSTGRES_DB" "$POSTGRES_USER" |
      postgres --single -D "$PGDATA" -j postgres >/dev/null
  fi
  echo "database $POSTGRES_DB initialised in $PGDATA" >&2
fi
exec postgres -D "$PGDATA" "$@"
