#!/usr/bin/env bash
# Starts a throwaway PostgreSQL for the demo and the tests, from the OS packages,
# unless DATABASE_URL is already set. Source it:  . scripts/postgres.sh
# It exports DATABASE_URL (database mai_fleet, as its owner role mai_fleet, which is
# not a superuser: docs/security.md) and MAI_FLEET_PG_ADMIN_URL (the superuser, for
# tests that create their own databases and roles).
# Local use only: the postgres superuser is trusted on 127.0.0.1 (other roles need
# their password); data under $MAI_FLEET_PGDATA.
if [ -n "${DATABASE_URL:-}" ]; then
  export MAI_FLEET_PG_ADMIN_URL=${MAI_FLEET_PG_ADMIN_URL:-${DATABASE_URL%/*}/postgres}
  return 0 2>/dev/null || exit 0
fi
set -e
pgdata=${MAI_FLEET_PGDATA:-/tmp/mai-fleet-pg}
port=${MAI_FLEET_PGPORT:-54329}
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bindir" ]; then
  echo "postgres.sh: installing PostgreSQL from the OS packages" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
# PostgreSQL refuses to run as root: run it as the postgres user then.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ ! -s "$pgdata/PG_VERSION" ]; then
  mkdir -p "$pgdata"
  [ "$(id -u)" = 0 ] && chown postgres: "$pgdata"
  chmod 700 "$pgdata"
  as_pg "$bindir/initdb" -D "$pgdata" -U postgres --auth=trust -E UTF8 >/dev/null
fi
# The local superuser (these scripts, the tests) is trusted on loopback; every other
# role, agents' included, must give its password.
cat >"$pgdata/pg_hba.conf" <<HBA
local all postgres trust
host  all postgres 127.0.0.1/32 trust
host  all all      127.0.0.1/32 scram-sha-256
HBA
if as_pg "$bindir/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
  as_pg "$bindir/pg_ctl" -D "$pgdata" reload >/dev/null
else
  as_pg "$bindir/pg_ctl" -D "$pgdata" -w -l "$pgdata/server.log" \
    -o "-p $port -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >/dev/null
fi
export MAI_FLEET_PG_ADMIN_URL="postgres://postgres@127.0.0.1:$port/postgres"
# The controller's role: owns the fleet database, may create the agents' roles, and
# is no superuser. Its password is made once and kept owner-only beside the data.
pwfile="${pgdata%/}.owner-password"
if [ ! -s "$pwfile" ]; then
  (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$pwfile")
fi
owner_pw=$(cat "$pwfile")
psql "$MAI_FLEET_PG_ADMIN_URL" -qAt -v ON_ERROR_STOP=1 >/dev/null <<SQL
DO \$\$ BEGIN CREATE ROLE mai_fleet LOGIN CREATEROLE NOSUPERUSER;
EXCEPTION WHEN duplicate_object THEN NULL; END \$\$;
ALTER ROLE mai_fleet LOGIN CREATEROLE NOSUPERUSER PASSWORD '$owner_pw';
SQL
if ! psql "$MAI_FLEET_PG_ADMIN_URL" -Atqc "SELECT 1 FROM pg_database WHERE datname = 'mai_fleet'" | grep -q 1; then
  psql "$MAI_FLEET_PG_ADMIN_URL" -qc "CREATE DATABASE mai_fleet OWNER mai_fleet" >/dev/null
fi
# A database made by an earlier version of this script belonged to the superuser.
psql "$MAI_FLEET_PG_ADMIN_URL" -qc "ALTER DATABASE mai_fleet OWNER TO mai_fleet" >/dev/null
export DATABASE_URL="postgres://mai_fleet:$owner_pw@127.0.0.1:$port/mai_fleet"
set +e
echo "postgres.sh: PostgreSQL on 127.0.0.1:$port (data in $pgdata)" >&2
